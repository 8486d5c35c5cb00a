"""Benchmark of a bonus action on PostgreSQL: the product beside one bare INSERT ... SELECT, in one run.

    .venv/bin/python bench/bench_actions.py [--cards 100000] [--batch 1000]

The product: ``Actions(billing).credit(amount, all active cards)``: one operation, one lot and one entry
per card, written in batches of one transaction, each card locked, with GUIDs derived from the action.
The bare SQL: the same rows by INSERT ... SELECT statements over all cards at once, with random GUIDs, no
locks, no batches: the operations, the lots, the entries, and the action's record of what it did to each
card (``actions`` and ``action_cards`` with state and amount: what a cancel reads to reverse it, which the
product writes too); and, alone, the first of them (the operations). (Until the bulk rework the bare side
left the action's record out, so it did less than the product; now both end with the same rows.)
"""
from __future__ import annotations

import argparse
import time

from common import seed_cards, table, temp_database
from sqlalchemy import create_engine, text

from kkmtransfer.app import create_billing
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.actions import Actions, Selection

BARE_OPERATIONS = """
INSERT INTO operations (id, card_number, kind, source, operation_time, business_date, content_hash, receipt_sum,
                        bonus_accrued, bonus_spent, accumulation_delta, receipt_count_delta, note, created_at)
SELECT gen_random_uuid()::text, number, 'Action', 'BackOffice', now(), current_date, 'bare', 0, 500, 0, 0, 0,
       'bare', now()
FROM cards WHERE status = 'Active'"""
BARE_LOTS = """
INSERT INTO lots (card_number, measure, remaining, created_at, origin_operation_id, exclusive)
SELECT card_number, 'bonus', bonus_accrued, now(), id, true FROM operations WHERE note = 'bare'"""
BARE_ENTRIES = """
INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount)
SELECT origin_operation_id, id, card_number, 'bonus', 'credit', remaining FROM lots
WHERE origin_operation_id IN (SELECT id FROM operations WHERE note = 'bare')"""
BARE_ACTION = """
INSERT INTO actions (id, kind, amount, selection, note, status, cards, created_at, completed_at)
SELECT 'bare', 'credit', 500, 'bare', 'bare', 'done', count(*), now(), now() FROM cards WHERE status = 'Active'"""
BARE_ACTION_CARDS = """
INSERT INTO action_cards (action_id, card_number, state, amount)
SELECT 'bare', card_number, 'done', bonus_accrued FROM operations WHERE note = 'bare'"""


def timed(engine, *statements) -> float:
    with engine.begin() as conn:
        start = time.perf_counter()
        for s in statements:
            conn.execute(text(s))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    print(f"bonus action benchmark: {args.cards:,} cards, PostgreSQL")
    with temp_database("kkmbench_action") as url:
        engine = create_engine(url)
        seed_cards(engine, args.cards)
        billing = create_billing(Settings(database_url=url))
        start = time.perf_counter()
        report = Actions(billing, batch=args.batch).credit("5.00", Selection(all_active=True), note="bench")
        t_product = time.perf_counter() - start
        start = time.perf_counter()
        again = Actions(billing, batch=args.batch).credit("5.00", Selection(all_active=True), note="bench")
        t_again = time.perf_counter() - start
        assert report.done == args.cards and again.already_done
        billing.engine.dispose()
        with engine.begin() as conn:  # the bare statements start from the same state: no action rows
            conn.execute(text("DELETE FROM entries"))
            conn.execute(text("DELETE FROM lots"))
            conn.execute(text("DELETE FROM action_cards"))
            conn.execute(text("DELETE FROM operations"))
            conn.execute(text("DELETE FROM actions"))
        t_ops = timed(engine, BARE_OPERATIONS)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM operations"))
        t_bare = timed(engine, BARE_OPERATIONS, BARE_LOTS, BARE_ENTRIES, BARE_ACTION, BARE_ACTION_CARDS)
        with engine.connect() as conn:
            made = conn.execute(text("SELECT count(*) FROM entries")).scalar_one()
        assert made == args.cards
        engine.dispose()
    n = args.cards
    print(table([
        ("product: actions credit (all active)", f"{t_product:.2f}", f"{n / t_product:,.0f}",
         f"{t_product / t_bare:.1f}x"),
        ("product: the same command again (no-op)", f"{t_again:.2f}", "", f"{t_again / t_bare:.2f}x"),
        ("bare: INSERT ... SELECT (ops, lots, entries, action)", f"{t_bare:.2f}", f"{n / t_bare:,.0f}", "1x"),
        ("bare: 1 x INSERT ... SELECT (operations only)", f"{t_ops:.2f}", f"{n / t_ops:,.0f}",
         f"{t_ops / t_bare:.2f}x"),
    ], ("what", "seconds", "cards/s", "vs bare")))


if __name__ == "__main__":
    main()
