"""Gift-certificate operations in the registers' offline journal: the same dedup and rejects as receipts."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

from kkmtransfer.adapters.journal_file import HEADER
from kkmtransfer.domain.certificates import CertificateOperationRequest
from kkmtransfer.service_layer.certificates import CertificateService
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.reports import Reports

from .helpers import ISSUED, new_id


def row(kind, number, n, amount, op_id="", original="", time="2026-11-20T10:00:00+03:00", **extra):
    # KKM;TransactionNumber;TransactionTime;Kind;CardNumber;ReceiptNumber;ReceiptSum;BonusAccrued;BonusSpent;
    # AccumulationDelta;ReceiptCountDelta;OperationId;PromotionCode;OriginalOperationId
    return ";".join(["KKM-7", str(n), time, kind, number, "", amount, extra.get("accrued", ""), "", "", "",
                     op_id, "", original])


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def test_certificate_rows_apply_once_and_bad_ones_are_rejects(db, tmp_path):
    certs = CertificateService(db)
    pins = {}
    certs.add_range(1, 2, D("500.00"), valid_days=365, with_pin=True, pins_sink=lambda got: pins.update(got))
    db.add_card_range(1, 1, "C", 0, None, issued=ISSUED)
    db.clock.set(datetime(2026, 11, 20, 12, tzinfo=timezone.utc))
    sell_id, redeem_id = new_id(), new_id()
    # the sale went online first; the journal has it too
    certs.register(CertificateOperationRequest.build(
        operation_id=sell_id, number="1", kkm="KKM-7", operation_time=datetime.fromisoformat("2026-11-20T10:00:00+03:00"),
        kind="Sell", amount=D("500.00")))
    path = write(tmp_path, "kkm7.csv", [
        row("CertificateSell", "1", 1, "500.00", op_id=sell_id),
        row("CertificateRedeem", "1", 2, "120,50", op_id=redeem_id, time="2026-11-20T10:05:00+03:00"),
        row("CertificateRedeem", "1", 3, "450.00", time="2026-11-20T10:06:00+03:00"),       # above the balance
        row("CertificateRefund", "1", 4, "20.50", original=redeem_id, time="2026-11-20T10:07:00+03:00"),
        row("CertificateRedeem", "1", 5, "1.00", time="2026-11-20T10:08:00+03:00", accrued="5"),  # bad column
        row("CertificateSell", "2", 6, "500.00", time="2026-11-20T10:09:00+03:00"),           # no OperationId
        row("CertificateRedeem", "2", 7, "50.00", time="2026-11-20T10:10:00+03:00"),          # a PIN one, offline
        row("CertificateRedeem", "404", 8, "1.00", time="2026-11-20T10:11:00+03:00"),
        "KKM-7;9;2026-11-20T10:12:00+03:00;Sale;C1;;100.00;5.00;0;;;;;",                     # a card receipt
    ])
    importer = JournalImport(db)
    first = importer.import_file(path)
    assert (first.rows, first.applied, first.already, first.rejected) == (9, 5, 1, 3), first
    assert first.reasons == {"Client.InsufficientCertificateBalance": 1, "Client.ValidationError": 1,
                             "Client.CertificateNotFound": 1}
    assert certs.show("1")[0].balance == D("400.00")      # 500 - 120.50 + 20.50
    assert certs.show("2")[0].balance == D("450.00")
    assert db.card_info("C1").balances.bonus == D("5.00")
    # the same file again: nothing changes, the rejects are not doubled
    again = importer.import_file(path)
    assert (again.applied, again.already, again.rejected) == (0, 6, 3)
    assert len(importer.rejects()) == 3
    assert certs.show("1")[0].balance == D("400.00") and certs.show("2")[0].balance == D("450.00")
    # a row's derived id is the same operation when it is loaded again from another file
    overlap = write(tmp_path, "kkm7-again.csv", [row("CertificateSell", "2", 6, "500.00",
                                                     time="2026-11-20T07:09:00+00:00")])
    assert importer.import_file(overlap).already == 1
    # the refused redemption goes through once there is money for it (retry)
    certs.register(CertificateOperationRequest.build(
        operation_id=new_id(), number="1", kkm="KKM-7", operation_time=db.clock(), kind="Refund",
        amount=D("100.00"), original_operation_id=redeem_id))
    retried = importer.retry()
    assert retried.applied == 1 and certs.show("1")[0].balance == D("50.00")
    assert Reports(db).verify() == []
