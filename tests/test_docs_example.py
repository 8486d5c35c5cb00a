"""docs/examples/zeep_client.py runs against a real server and leaves the balances its operations imply."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "zeep_client.py"

USER, PASSWORD = "kassa-example", "example-password-1"
CARD = "EX1"


def example_module():
    """The example's amounts, read from the script itself (its main() does not run on import)."""
    spec = importlib.util.spec_from_file_location("docs_zeep_client", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zeep_example_runs_and_leaves_the_expected_balances(db, server):
    db.add_user(USER, PASSWORD)
    created = db.add_card_range(1, 1, "EX", 0, None).created
    assert created == [CARD]

    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", server, "--user", USER, "--password", PASSWORD, "--card", CARD],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "AlreadyApplied" in done.stdout
    assert "Client.InsufficientBonus" in done.stdout
    assert done.stdout.rstrip().endswith("OK")

    ex = example_module()
    # The card starts empty. Sale 1 and sale 2 credit and spend; the return of part of sale 2 gives
    # back spent bonuses and takes back accrued ones. The re-sent sale 1 and the refused overdraft
    # change nothing.
    expected_bonus = (ex.SALE1_ACCRUED - ex.SALE1_SPENT
                      + ex.SALE2_ACCRUED - ex.SALE2_SPENT
                      + ex.RETURN_SPENT - ex.RETURN_ACCRUED)
    assert expected_bonus == Decimal("44.00")  # the numbers the docs quote

    b = db.card_info(CARD).balances
    assert b.bonus == expected_bonus
    assert b.bonus_pending == Decimal("0.00")
    # Defaults: a Sale adds ReceiptSum and one receipt, a Return subtracts ReceiptSum and no receipt.
    assert b.accumulation == ex.SALE1_SUM + ex.SALE2_SUM - ex.RETURN_SUM
    assert b.receipt_count == 2

    today = datetime.now(db.settings.tz).date()
    history = db.card_operations(CARD, date_from=today - timedelta(days=1), date_to=today)
    assert [v.kind for v in history] == ["Sale", "Sale", "Return"]
