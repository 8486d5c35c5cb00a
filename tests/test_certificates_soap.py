"""Gift certificates over SOAP (zeep, real HTTP; SQLite and PostgreSQL): GetCertificateInfo and
RegisterCertificateOperation — lifecycle, faults, exactly-once, PIN locking, concurrency."""
from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import entries, lots, operations
from kkmtransfer.domain import errors
from kkmtransfer.domain.certificates import CertKind
from kkmtransfer.domain.model import CardStatus
from kkmtransfer.service_layer.certificates import CertificateService
from kkmtransfer.service_layer.reports import Reports

from .conftest import PASSWORD, USER, zeep_client
from .helpers import new_id, op_dict


def code(exc: Fault) -> str:
    """The fault code after the last colon (the wire carries a QName)."""
    return (exc.code or "").rsplit(":", 1)[-1]


def cop(number, kind, amount, original=None, pin=None, op_id=None, time=None, **extra) -> dict:
    op = dict(OperationId=op_id or new_id(), Number=number, KKM="KKM-1",
              OperationTime=time or datetime.now(timezone.utc), Kind=kind, Amount=D(amount))
    if original:
        op["OriginalOperationId"] = original
    if pin is not None:
        op["Pin"] = pin
    op.update(extra)
    return op


def register(soap, **kw):
    return soap.service.RegisterCertificateOperation(Operation=cop(**kw))


def fault_of(fn, *args, **kwargs) -> str:
    with pytest.raises(Fault) as info:
        fn(*args, **kwargs)
    return code(info.value)


def counts(db):
    with db.engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                     for t in (operations, entries, lots))


@pytest.fixture
def certs(db):
    return CertificateService(db)


def test_multi_use_sell_redeem_part_rest_refund_redeem_again(soap, certs, db):
    certs.add_range(1, 1, D("1000.00"), valid_days=365)
    info = soap.service.GetCertificateInfo("1")
    assert (info.Status, info.Kind, info.Nominal, info.Balance, info.ValidUntil) == (
        "Issued", "MultiUse", D("1000.00"), D("0.00"), None)

    sell = register(soap, number="1", kind="Sell", amount="1000.00")
    assert sell.Status == "Applied" and sell.Certificate.Status == "Active"
    assert sell.Certificate.Balance == D("1000.00") and sell.Certificate.ValidUntil is not None
    r1 = register(soap, number="1", kind="Redeem", amount="350.50")
    assert (r1.Certificate.Status, r1.Certificate.Balance) == ("Active", D("649.50"))
    r2 = register(soap, number="1", kind="Redeem", amount="649.50")
    assert (r2.Certificate.Status, r2.Certificate.Balance) == ("Redeemed", D("0.00"))
    assert fault_of(register, soap, number="1", kind="Redeem", amount="0.01") == "Client.CertificateNotActive"

    ref = register(soap, number="1", kind="Refund", amount="200.00", original=r2.OperationId)
    assert (ref.Certificate.Status, ref.Certificate.Balance) == ("Active", D("200.00"))
    # never more back than that redemption took: 649.50 - 200.00 left
    assert fault_of(register, soap, number="1", kind="Refund", amount="449.51",
                    original=r2.OperationId) == "Client.ReturnExceedsSale"
    again = register(soap, number="1", kind="Redeem", amount="200.00")
    assert (again.Certificate.Status, again.Certificate.Balance) == ("Redeemed", D("0.00"))
    info = soap.service.GetCertificateInfo("1")
    assert (info.Status, info.Balance) == ("Redeemed", D("0.00"))
    # the money went through the ledger: the account's lot and its entries
    with db.engine.connect() as conn:
        moved = conn.execute(select(entries.c.role, func.sum(entries.c.amount)).where(
            entries.c.card_number == "cert:1").group_by(entries.c.role)).all()
    assert dict(moved) == {"credit": D("1000.00"), "spend": D("-1200.00"), "refund": D("200.00")}


def test_single_use_leaves_nothing_and_refund_gives_back_what_it_paid(soap, certs, db):
    certs.add_range(5, 5, D("500.00"), kind=CertKind.SINGLE_USE)
    register(soap, number="5", kind="Sell", amount="500.00")
    r = register(soap, number="5", kind="Redeem", amount="120.00")
    assert (r.Certificate.Status, r.Certificate.Balance) == ("Redeemed", D("0.00"))
    assert fault_of(register, soap, number="5", kind="Redeem", amount="1.00") == "Client.CertificateNotActive"
    # a refund gives back at most what the receipt took (120.00), not the forfeited rest
    assert fault_of(register, soap, number="5", kind="Refund", amount="120.01",
                    original=r.OperationId) == "Client.ReturnExceedsSale"
    back = register(soap, number="5", kind="Refund", amount="120.00", original=r.OperationId)
    assert back.Certificate.Balance == D("120.00")
    report = certs.report(datetime.now(timezone.utc).date() - timedelta(days=1),
                          datetime.now(timezone.utc).date() + timedelta(days=1))
    assert (report.sold, report.redeemed, report.forfeited, report.refunded, report.liability) == (
        D("500.00"), D("120.00"), D("380.00"), D("120.00"), D("120.00"))


def test_faults_write_nothing(soap, certs, db, clock):
    certs.add_range(1, 3, D("100.00"), valid_days=10)
    assert fault_of(soap.service.GetCertificateInfo, "404") == "Client.CertificateNotFound"
    assert fault_of(register, soap, number="404", kind="Sell", amount="100.00") == "Client.CertificateNotFound"
    before = counts(db)
    # Issued: cannot be redeemed
    assert fault_of(register, soap, number="1", kind="Redeem", amount="10.00") == "Client.CertificateNotActive"
    # a sale is for the nominal; amounts are > 0 with 2 digits
    assert fault_of(register, soap, number="1", kind="Sell", amount="99.00") == "Client.ValidationError"
    assert fault_of(register, soap, number="1", kind="Sell", amount="0.00") == "Client.ValidationError"
    assert counts(db) == before

    register(soap, number="1", kind="Sell", amount="100.00")
    register(soap, number="2", kind="Sell", amount="100.00")
    before = counts(db)
    assert fault_of(register, soap, number="1", kind="Sell", amount="100.00") == "Client.CertificateNotActive"
    assert fault_of(register, soap, number="1", kind="Redeem",
                    amount="100.01") == "Client.InsufficientCertificateBalance"
    assert fault_of(register, soap, number="1", kind="Refund", amount="1.00",
                    original=new_id()) == "Client.OriginalNotFound"
    assert fault_of(register, soap, number="1", kind="Refund", amount="1.00") == "Client.ValidationError"
    # blocked
    certs.set_blocked("2", None, True)
    assert fault_of(register, soap, number="2", kind="Redeem", amount="1.00") == "Client.CertificateNotActive"
    assert soap.service.GetCertificateInfo("2").Status == "Blocked"
    assert counts(db) == before
    # expired: the day after its 10 days (before any nightly has run)
    clock.set(datetime.now(timezone.utc) + timedelta(days=11))
    assert soap.service.GetCertificateInfo("1").Status == "Expired"
    assert soap.service.GetCertificateInfo("1").Balance == D("0.00")
    assert fault_of(register, soap, number="1", kind="Redeem", amount="1.00",
                    time=clock()) == "Client.CertificateExpired"
    assert counts(db) == before


def test_retried_sell_is_already_applied_and_a_reused_id_is_a_conflict(soap, certs, db):
    certs.add_range(1, 2, D("250.00"))
    soap.service.RegisterCertificateOperation  # noqa: B018 - the operation exists in the WSDL
    sell = cop("1", "Sell", "250.00")
    assert soap.service.RegisterCertificateOperation(Operation=sell).Status == "Applied"
    again = soap.service.RegisterCertificateOperation(Operation=sell)
    assert again.Status == "AlreadyApplied" and again.Certificate.Balance == D("250.00")
    before = counts(db)
    assert fault_of(soap.service.RegisterCertificateOperation,
                    Operation=dict(sell, Number="2")) == "Client.OperationConflict"
    assert fault_of(soap.service.RegisterCertificateOperation,
                    Operation=dict(sell, Kind="Redeem", Amount=D("10.00"))) == "Client.OperationConflict"
    # a card operation's id cannot be reused for a certificate, nor the other way round
    db.add_card_range(1, 1, "C", 0, None)
    card_op = op_dict("C1", op_id=new_id())
    soap.service.RegisterOperation(Operation=card_op)
    assert fault_of(register, soap, number="2", kind="Sell", amount="250.00",
                    op_id=card_op["OperationId"]) == "Client.OperationConflict"
    assert fault_of(soap.service.RegisterOperation,
                    Operation=op_dict("C1", op_id=sell["OperationId"])) == "Client.OperationConflict"
    assert counts(db)[0] == before[0] + 1


def test_return_sale_takes_back_an_untouched_certificate_only(soap, certs, db):
    certs.add_range(1, 2, D("300.00"), valid_days=30)
    s1 = register(soap, number="1", kind="Sell", amount="300.00")
    back = register(soap, number="1", kind="ReturnSale", amount="300.00", original=s1.OperationId)
    assert (back.Certificate.Status, back.Certificate.Balance, back.Certificate.ValidUntil) == (
        "Issued", D("0.00"), None)
    # sold again: a fresh validity, a fresh lot
    s1b = register(soap, number="1", kind="Sell", amount="300.00")
    assert s1b.Certificate.Balance == D("300.00")
    assert fault_of(register, soap, number="1", kind="ReturnSale", amount="300.00",
                    original=s1.OperationId) == "Client.OriginalNotFound"

    s2 = register(soap, number="2", kind="Sell", amount="300.00")
    r = register(soap, number="2", kind="Redeem", amount="10.00")
    register(soap, number="2", kind="Refund", amount="10.00", original=r.OperationId)
    assert fault_of(register, soap, number="2", kind="ReturnSale", amount="300.00",
                    original=s2.OperationId) == "Client.ReturnExceedsSale"


def test_five_wrong_pins_in_a_row_lock_until_unblock(soap, certs, db, tmp_path):
    pins = {}
    certs.add_range(7, 7, D("1000.00"), with_pin=True, pins_sink=lambda got: pins.update(got))
    pin = pins["7"]
    wrong = str((int(pin) + 1) % 10 ** 8).zfill(8)
    register(soap, number="7", kind="Sell", amount="1000.00")  # the till sells without the PIN
    assert fault_of(soap.service.GetCertificateInfo, "7") == "Client.CertificatePinInvalid"
    assert soap.service.GetCertificateInfo("7", pin).Balance == D("1000.00")
    before = counts(db)
    for _ in range(4):
        assert fault_of(register, soap, number="7", kind="Redeem", amount="10.00",
                        pin=wrong) == "Client.CertificatePinInvalid"
    assert fault_of(register, soap, number="7", kind="Redeem", amount="10.00") == "Client.CertificatePinInvalid"
    assert counts(db) == before  # a refused payment wrote nothing in the ledger
    # the right PIN resets the count ...
    assert register(soap, number="7", kind="Redeem", amount="10.00", pin=pin).Certificate.Balance == D("990.00")
    # ... so it takes 5 more wrong ones in a row (GetCertificateInfo counts too)
    for _ in range(4):
        assert fault_of(register, soap, number="7", kind="Redeem", amount="10.00",
                        pin=wrong) == "Client.CertificatePinInvalid"
    assert fault_of(soap.service.GetCertificateInfo, "7", wrong) == "Client.CertificatePinInvalid"
    assert soap.service.GetCertificateInfo("7").Status == "Blocked"
    # locked: even the right PIN cannot pay, nor read the balance
    assert fault_of(register, soap, number="7", kind="Redeem", amount="10.00",
                    pin=pin) == "Client.CertificateNotActive"
    assert certs.show("7")[1].block_reason == "pin"
    certs.set_blocked("7", None, False)
    assert register(soap, number="7", kind="Redeem", amount="90.00", pin=pin).Certificate.Balance == D("900.00")
    assert certs.show("7")[1].pin_failures == 0


def test_certificate_accounts_are_not_cards(soap, certs, db):
    certs.add_range(1, 1, D("100.00"))
    register(soap, number="1", kind="Sell", amount="100.00")
    assert fault_of(soap.service.GetCardInfo, "cert:1") == "Client.CardNotFound"
    assert fault_of(soap.service.RegisterOperation, Operation=op_dict("cert:1")) == "Client.CardNotFound"
    assert fault_of(soap.service.GetCardOperations, "cert:1", datetime(2020, 1, 1).date(),
                    datetime(2099, 1, 1).date()) == "Client.CardNotFound"
    with pytest.raises(errors.CardNotFound):
        db.set_card_status("cert:1", CardStatus.BLOCKED)
    assert Reports(db).verify() == []


@pytest.mark.slow
def test_30_concurrent_redemptions_never_exceed_the_balance(db, gunicorn):
    db.add_user(USER, PASSWORD)
    certs = CertificateService(db)
    certs.add_range(1, 1, D("100.00"))
    client = zeep_client(gunicorn)
    client.service.RegisterCertificateOperation(Operation=cop("1", "Sell", "100.00"))
    amounts = [D("7.00") + D("0.20") * i for i in range(30)]
    clients = [zeep_client(gunicorn) for _ in amounts]
    for c in clients:  # no stale keep-alive connection from the WSDL fetch (gunicorn closes idle ones after 2 s)
        c.transport.session.close()
    barrier = threading.Barrier(len(amounts))
    results: list[object] = [None] * len(amounts)

    def run(i):
        barrier.wait()
        try:
            results[i] = clients[i].service.RegisterCertificateOperation(
                Operation=cop("1", "Redeem", str(amounts[i]))).Status
        except Fault as exc:
            results[i] = code(exc)
        except Exception as exc:  # noqa: BLE001 - shown by the assertion
            results[i] = repr(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(amounts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # a redemption that finds the certificate used up to the kopeck (Redeemed) is told it is not active
    assert set(results) <= {"Applied", "Client.InsufficientCertificateBalance", "Client.CertificateNotActive"}, results
    spent = sum((a for a, r in zip(amounts, results) if r == "Applied"), D("0.00"))
    balance = certs.show("1")[0].balance
    assert D("0.00") <= balance == D("100.00") - spent
    assert "Client.CertificateNotActive" not in results or balance == 0
    assert all(a > balance for a, r in zip(amounts, results) if r != "Applied")
    with db.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(operations)
                         .where(operations.c.kind == "CertificateRedeem")).scalar_one()
    assert n == Counter(results)["Applied"] > 0


def test_an_operation_time_far_in_the_future_is_refused(soap, certs, db):
    certs.add_range(1, 1, D("100.00"))
    far = datetime.now(timezone.utc) + timedelta(hours=db.settings.max_future_hours + 1)
    assert fault_of(register, soap, number="1", kind="Sell", amount="100.00", time=far) == "Client.ValidationError"
    assert soap.service.GetCertificateInfo("1").Status == "Issued"


def test_a_register_user_bound_to_its_kkm_posts_certificate_operations_only_for_it(db, server, certs):
    db.add_user("kassa-9", "kassa-9-password-12", kkms=["KKM-9"])
    client = zeep_client(server, "kassa-9", "kassa-9-password-12")
    certs.add_range(1, 1, D("100.00"))
    assert fault_of(register, client, number="1", kind="Sell", amount="100.00") == "Client.ValidationError"
    ok = client.service.RegisterCertificateOperation(Operation=dict(cop("1", "Sell", "100.00"), KKM="KKM-9"))
    assert ok.Status == "Applied"
    with db.engine.connect() as conn:
        assert conn.execute(select(operations.c.actor).where(
            operations.c.id == ok.OperationId)).scalar_one() == "kassa-9"
