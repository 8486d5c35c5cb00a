"""The receipt session's back-office commands: program, holds, receipts show."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from kkmtransfer.domain.program import ReceiptLine
from kkmtransfer.service_layer.holds import HoldService
from kkmtransfer.service_layer.program import ProgramService

from .helpers import new_id, request
from .test_cli import cli


def test_program_set_show_group_and_refusals(db, database_url):
    out = cli(database_url, "program", "show").stdout
    assert "no program set" in out and "accrual percent: 0.00" in out and "max payment percent: 100.00" in out
    cli(database_url, "program", "set", "--accrual-percent", "5", "--max-payment-percent", "50",
        "--tier", "10000:7", "--tier", "50000:10")
    later = (datetime.now(timezone.utc) + timedelta(days=30)).astimezone(timezone(timedelta(hours=3)))
    cli(database_url, "program", "group", "TOBACCO", "--excluded", "--from", later.isoformat())
    cli(database_url, "program", "set", "--rounding", "whole")  # now: holds in the planned version too
    out = cli(database_url, "program", "show").stdout
    now_part, planned = out.split("planned from")
    assert "tiers: from 10000.00: 7.00%, from 50000.00: 10.00%" in now_part and "rounding: whole" in now_part
    assert "TOBACCO" not in now_part
    assert "group TOBACCO: excluded" in planned and "rounding: whole" in planned
    svc = ProgramService(db)
    assert svc.in_force().rounding == "whole"
    assert svc.in_force(later).groups["TOBACCO"].excluded

    for args, text in [
        (("program", "set", "--from", "2020-01-01T00:00:00+03:00", "--accrual-percent", "1"), "in the past"),
        (("program", "set", "--from", "2030-01-01T00:00:00", "--accrual-percent", "1"), "no UTC offset"),
        (("program", "set", "--accrual-percent", "101"), "from 0 to 100"),
        (("program", "set",), "nothing to change"),
        (("program", "set", "--tier", "abc"), "ACCUMULATION:PERCENT"),
        (("program", "group", "X"), "give --accrual-percent"),
        (("program", "group", "X", "--excluded", "--accrual-percent", "3"), "--excluded takes no percent"),
    ]:
        proc = cli(database_url, *args, check=False)
        assert proc.returncode != 0 and text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert len(svc.versions()) == 3


def test_holds_list_release_and_receipt_show(db, database_url):
    db.add_card_range(1, 1, "CL", 0, None)
    db.register_operation(request("CL1", accrued="50.00"))
    hold = new_id()
    HoldService(db).reserve(hold, "CL1", "KKM-7", D("20.00"))
    out = cli(database_url, "holds", "list").stdout
    assert hold in out and "KKM-7" in out and "CL1" in out and "20.00" in out
    assert "no hung holds" in cli(database_url, "holds", "list", "--hung").stdout
    out = cli(database_url, "holds", "release", hold).stdout
    assert "released" in out and "balance now 50.00" in out
    assert "already released" in cli(database_url, "holds", "release", hold).stdout
    proc = cli(database_url, "holds", "release", new_id(), check=False)
    assert proc.returncode == 1 and "Client.HoldNotFound" in proc.stderr

    ProgramService(db).set(accrual_percent="10")
    sale = new_id()
    lines = [ReceiptLine.build(line_number=1, article="MILK", group="DAIRY", quantity=D("2"), price=D("50.00"),
                               sum=D("100.00"))]
    db.register_operation(request("CL1", receipt_sum="100.00", accrued=None, op_id=sale, lines=lines))
    out = cli(database_url, "receipts", "show", sale).stdout
    assert "accrued 10.00" in out and "1\tMILK\tDAIRY\t2.000\t50.00\t100.00\t100.00\t0.00\t10.00" in out
