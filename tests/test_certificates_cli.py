"""Gift certificates in the back office: add-range (with PINs), show, block/unblock, report certificates."""
from __future__ import annotations

import csv
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select

from kkmtransfer.adapters.db import cards, certificates
from kkmtransfer.domain import errors
from kkmtransfer.domain.certificates import CertificateOperationRequest, CertKind, verify_pin
from kkmtransfer.service_layer.certificates import CertificateService
from kkmtransfer.service_layer.reports import Reports

from .helpers import new_id, read_all
from .test_cli import cli



def cert_op(number, kind, amount, original=None, pin=None, op_id=None):
    return CertificateOperationRequest.build(operation_id=op_id or new_id(), number=number, kkm="KKM-1",
                                             operation_time=datetime.now(timezone.utc), kind=kind,
                                             amount=D(amount), pin=pin, original_operation_id=original)


def svc_show_nominal(db, number):
    return CertificateService(db).show(number)[0].nominal


def test_add_range_with_pins_show_block_unblock(db, database_url, tmp_path):
    pins = tmp_path / "pins.csv"
    out = cli(database_url, "certificates", "add-range", "--from", "1", "--to", "20", "--width", "4",
              "--nominal", "1500.00", "--kind", "single-use", "--valid-days", "90", "--pin", "--pins-out", str(pins))
    assert "20 certificates created" in out.stdout and "20 PIN(s) written" in out.stdout
    rows = list(csv.reader(pins.read_text().splitlines()[1:], delimiter=";"))
    assert [r[0] for r in rows] == [f"{n:04d}" for n in range(1, 21)]
    assert len({r[1] for r in rows}) > 15 and all(len(r[1]) == 8 and r[1].isdigit() for r in rows)
    with db.engine.connect() as conn:
        stored = dict(conn.execute(select(certificates.c.number, certificates.c.pin_hash)).all())
        accounts = conn.execute(select(func.count()).select_from(cards)
                                .where(cards.c.status == "Certificate")).scalar_one()
    assert accounts == 20
    for number, pin in rows:  # stored hashed, not in clear, and the file's PIN is the one checked
        assert pin not in stored[number] and verify_pin(pin, stored[number])
        assert not verify_pin(str((int(pin) + 1) % 10 ** 8).zfill(8), stored[number])

    # written once: the same file again is refused before anything is created
    again = cli(database_url, "certificates", "add-range", "--from", "30", "--to", "31", "--nominal", "10",
                "--pin", "--pins-out", str(pins), check=False)
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert read_all(db.engine, select(func.count()).select_from(certificates)).scalar_one() == 20
    # PINs without a file are refused
    assert cli(database_url, "certificates", "add-range", "--from", "30", "--to", "31", "--nominal", "10",
               "--pin", check=False).returncode != 0

    # existing numbers are left alone
    assert "18 certificates created, 2 already existed" in cli(
        database_url, "certificates", "add-range", "--from", "19", "--to", "38", "--width", "4", "--nominal", "10",
        "--until", "2099-12-31").stdout
    assert svc_show_nominal(db, "0019") == D("1500.00") and svc_show_nominal(db, "0021") == D("10.00")

    show = cli(database_url, "certificates", "show", "0005").stdout
    assert "Issued" in show and "SingleUse" in show and "1500.00" in show and "PIN: yes" in show
    cli(database_url, "certificates", "block", "0003", "--to", "0007")
    svc = CertificateService(db)
    assert [svc.show(f"{n:04d}")[0].status for n in range(2, 9)] == ["Issued"] + ["Blocked"] * 5 + ["Issued"]
    cli(database_url, "certificates", "unblock", "0005")
    assert svc.show("0005")[0].status == "Issued" and svc.show("0004")[0].status == "Blocked"

    bad = cli(database_url, "certificates", "show", "nope", check=False)
    assert bad.returncode == 1 and "Client.CertificateNotFound" in bad.stderr and "Traceback" not in bad.stderr
    # a certificate's ledger account is not a card
    bad = cli(database_url, "cards", "show", "cert:0001", check=False)
    assert bad.returncode == 1 and "CardNotFound" in bad.stderr


def test_block_range_compares_numbers_as_numbers_like_cards(db, database_url):
    """`block 8 --to 12` is certificates 8 … 12 (as text "8" > "12" and nothing matched), and `2 --to 3`
    is not every "2…" certificate; the count said before blocking is the same range."""
    cli(database_url, "certificates", "add-range", "--from", "1", "--to", "25", "--nominal", "100")
    svc = CertificateService(db)
    done = cli(database_url, "certificates", "block", "8", "--to", "12")
    assert "8 .. 12: 5 in the range" in done.stderr and "5 certificate(s) blocked" in done.stdout
    assert [n for n in map(str, range(1, 26)) if svc.show(n)[0].status == "Blocked"] == ["8", "9", "10", "11", "12"]
    cli(database_url, "certificates", "unblock", "8", "--to", "12")
    done = cli(database_url, "certificates", "block", "2", "--to", "3")
    assert "2 certificate(s) blocked" in done.stdout  # not 20..25 too
    assert [n for n in map(str, range(1, 26)) if svc.show(n)[0].status == "Blocked"] == ["2", "3"]
    bad = cli(database_url, "certificates", "block", "12", "--to", "8", check=False)
    assert bad.returncode == 1 and "before the first number" in bad.stderr and "Traceback" not in bad.stderr


def test_add_range_refuses_what_makes_no_sense(db, database_url, tmp_path):
    for args in (["--nominal", "0"], ["--nominal", "10.001"], ["--nominal", "10", "--valid-days", "5",
                                                              "--until", "2099-01-01"],
                 ["--nominal", "10", "--until", "2000-01-01"], ["--nominal", "abc"]):
        proc = cli(database_url, "certificates", "add-range", "--from", "1", "--to", "2", *args, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, args
    assert read_all(db.engine, select(func.count()).select_from(certificates)).scalar_one() == 0
    # card numbers cannot take the certificates' account key space
    proc = cli(database_url, "cards", "add-range", "--from", "1", "--to", "2", "--prefix", "cert:", check=False)
    assert proc.returncode == 1 and "cert:" in proc.stderr


def test_report_certificates_table_and_csv(db, database_url, tmp_path):
    svc = CertificateService(db)
    svc.add_range(1, 3, D("1000.00"))                      # multi-use
    svc.add_range(10, 11, D("500.00"), kind=CertKind.SINGLE_USE)
    sells = {n: svc.register(cert_op(n, "Sell", a)) for n, a in (("1", "1000.00"), ("2", "1000.00"),
                                                                 ("10", "500.00"), ("11", "500.00"))}
    redeem = svc.register(cert_op("1", "Redeem", "300.00"))
    svc.register(cert_op("1", "Refund", "100.00", original=redeem.operation_id))
    svc.register(cert_op("10", "Redeem", "120.00"))        # single-use: 380.00 forfeited
    svc.register(cert_op("11", "ReturnSale", "500.00", original=sells["11"].operation_id))
    csv_file = tmp_path / "r.csv"
    out = cli(database_url, "report", "certificates", "--csv", str(csv_file)).stdout
    assert "outstanding liability now: 1800.00" in out
    rows = {(r[0], r[1]): r for r in csv.reader(csv_file.read_text().splitlines()[1:], delimiter=";")}
    assert rows[("state", "Active")][2:] == ["2", "2000.00", "1800.00"]
    assert rows[("state", "Redeemed")][2:] == ["1", "500.00", "0.00"]
    assert rows[("state", "Issued")][2:] == ["2", "1500.00", "0.00"]
    amounts = {name: D(rows[("period", name)][3]) for _, name in rows if _ == "period"}
    assert amounts["sold"] == D("3000.00") and amounts["sales returned"] == D("500.00")
    assert amounts["redeemed"] == D("420.00") and amounts["forfeited (single-use rest)"] == D("380.00")
    assert amounts["refunded"] == D("100.00") and amounts["closing"] == D("1800.00")
    assert rows[("period", "sold")][2] == "4" and rows[("period", "redeemed")][2] == "2"
    # a period before anything happened is empty
    empty = svc.report(datetime(2020, 1, 1).date(), datetime(2020, 1, 31).date())
    assert empty.sold == 0 and empty.closing == 0 and empty.liability == D("1800.00")
    assert Reports(db).verify() == []
    # the balances report of discount cards does not list the certificates
    assert all(line.measure != "certificate" for line in Reports(db).balances(
        datetime(2020, 1, 1).date(), datetime(2099, 1, 1).date()).lines)


def test_add_range_in_sql_makes_the_same_numbers_as_python(db):
    """The range is made in the database (generate_series / a recursive CTE): numbers wider than --width
    are not cut, existing ones are skipped, every certificate has its account."""
    svc = CertificateService(db)
    assert svc.add_range(98, 101, D("10.00"), prefix="GC", width=2).created == ["GC98", "GC99", "GC100", "GC101"]
    result = svc.add_range(95, 105, D("20.00"), prefix="GC", width=2, valid_days=7)
    assert result.skipped == ["GC100", "GC101", "GC98", "GC99"]
    assert result.created == ["GC95", "GC96", "GC97", "GC102", "GC103", "GC104", "GC105"]
    with db.engine.connect() as conn:
        got = dict(conn.execute(select(certificates.c.number, certificates.c.account)).all())
        nominal = dict(conn.execute(select(certificates.c.number, certificates.c.nominal)).all())
        valid = dict(conn.execute(select(certificates.c.number, certificates.c.valid_days)).all())
        account_rows = set(conn.execute(select(cards.c.number).where(cards.c.status == "Certificate")).scalars())
    assert got == {n: f"cert:{n}" for n in got} and set(got.values()) == account_rows and len(got) == 11
    assert nominal["GC99"] == D("10.00") and nominal["GC102"] == D("20.00")
    assert valid["GC99"] is None and valid["GC103"] == 7
    assert svc.show("GC104")[0].status == "Issued"


def test_certificate_accounts_stay_out_of_card_exports_actions_and_billing_disable(db, tmp_path):
    from kkmtransfer.service_layer.actions import Actions, Selection
    from kkmtransfer.service_layer.billing_admin import BillingAdmin

    svc = CertificateService(db)
    db.add_card_range(1, 2, "", 0, None)                 # cards "1", "2"
    svc.add_range(1, 2, D("100.00"), valid_days=30)      # certificates "1", "2": accounts cert:1, cert:2
    svc.register(cert_op("1", "Sell", "100.00"))
    assert [row[0] for row in BillingAdmin(db).balances()] == ["1", "2"]
    report = Actions(db).credit("5.00", Selection(first="0", last="z"), note="all")
    assert report.cards == 2                             # the two cards, no certificate account
    with pytest.raises(errors.CardNotFound):             # a list naming an account: it is no card
        Actions(db).credit("5.00", Selection(numbers=("1", "cert:1")), note="list")
    removed = BillingAdmin(db).disable()
    assert removed["certificate sales"] == 1
    view, cert = svc.show("1")
    assert (view.status, view.balance, view.valid_until, cert.valid_days) == ("Issued", D("0.00"), None, 30)
    assert Reports(db).verify() == []
    assert svc.register(cert_op("1", "Sell", "100.00")).certificate.balance == D("100.00")
