"""Benchmark of the web console's pages on PostgreSQL: a card with a long history, beside bare SQL.

    .venv/bin/python bench/bench_console.py [--operations 10000] [--cards 10000] [--runs 20]

One card gets --operations sales (each accrues bonus into one lot, with its entry), --cards other cards
exist. Timed through Flask's test client (the whole request: session, operator, queries, template): the
card's page (history page 1 and the last page), the card search by phone, the dashboard over 30 days.
The bare SQL: the newest 50 operations of the card by one SELECT on the (card, time) index. Target: a
page under 200 ms for a card with 10,000 operations.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time

from common import seed_cards, table, temp_database
from sqlalchemy import create_engine, text

from kkmtransfer.app import create_billing
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.operators import Operators
from kkmtransfer.web import create_app

CARD = "HIST0000001"
TARGET_MS = 200.0

SEED_OPERATIONS = """
INSERT INTO operations (id, card_number, kind, source, kkm, receipt_number, operation_time, business_date,
                        content_hash, receipt_sum, bonus_accrued, bonus_spent, accumulation_delta,
                        receipt_count_delta, created_at)
SELECT md5('op' || g)::uuid::text, :card, 'Sale', 'Online', 'KKM-1', 'R' || g,
       now() - make_interval(mins => :n - g), (now() - make_interval(mins => :n - g))::date, 'bench',
       100000, 150, 0, 0, 0, now()
FROM generate_series(1, :n) g"""
SEED_LOT = """
INSERT INTO lots (card_number, measure, remaining, created_at, exclusive)
VALUES (:card, 'bonus', 150 * :n, now(), false) RETURNING id"""
SEED_ENTRIES = """
INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount)
SELECT md5('op' || g)::uuid::text, :lot, :card, 'bonus', 'credit', 150 FROM generate_series(1, :n) g"""
BARE = """
SELECT id, operation_time, kind, bonus_accrued FROM operations WHERE card_number = :card
ORDER BY operation_time DESC, created_at DESC, id DESC LIMIT 50"""


def median_ms(fn, runs: int) -> float:
    fn()  # warm: templates compiled, connections pooled
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    n = args.operations
    print(f"console benchmark: a card with {n:,} operations among {args.cards:,} cards, PostgreSQL")
    with temp_database("kkmbench_console") as url:
        engine = create_engine(url)
        seed_cards(engine, args.cards)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO cards (number, status, phone, created_at, accumulation_delay_days, "
                              "count_delay_days) VALUES (:c, 'Active', '9160000001', now(), 0, 0)"), {"c": CARD})
            conn.execute(text(SEED_OPERATIONS), {"card": CARD, "n": n})
            lot = conn.execute(text(SEED_LOT), {"card": CARD, "n": n}).scalar_one()
            conn.execute(text(SEED_ENTRIES), {"card": CARD, "n": n, "lot": lot})
            conn.execute(text("ANALYZE"))
        billing = create_billing(Settings(database_url=url))
        Operators(billing).add("bench", "viewer", "bench-password")
        app = create_app(billing, "b" * 48)
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))[1]
        assert client.post("/login", data=dict(csrf_token=token, name="bench", password="bench-password")
                           ).status_code == 302
        last_page = max(1, -(-n // 50))

        def get(path, status=200):
            def run():
                r = client.get(path)
                assert r.status_code == status, (path, r.status_code)
            return run

        first_ms = median_ms(get(f"/cards/{CARD}"), args.runs)
        html = client.get(f"/cards/{CARD}").get_data(as_text=True)
        assert f"Страница 1 из {last_page}" in html and f"R{n}<" in html
        last_ms = median_ms(get(f"/cards/{CARD}?page={last_page}"), args.runs)
        search_ms = median_ms(get("/cards/?q=8+916+000-00-01", 302), args.runs)
        dash_ms = median_ms(get("/"), max(3, args.runs // 4))

        def bare():
            with engine.connect() as conn:
                conn.execute(text(BARE), {"card": CARD}).all()

        bare_ms = median_ms(bare, args.runs)
        billing.engine.dispose()
        engine.dispose()
    rows = [
        ("product: card page, history page 1", first_ms),
        (f"product: card page, history page {last_page} (last)", last_ms),
        ("product: search by phone (redirect)", search_ms),
        (f"product: dashboard, 30 days, {args.cards + 1:,} cards", dash_ms),
        ("bare: SELECT newest 50 operations of the card", bare_ms),
    ]
    print(table([(what, f"{ms:.1f}", f"{ms / bare_ms:.1f}x") for what, ms in rows], ("what", "median ms", "vs bare")))
    worst = max(first_ms, last_ms)
    print(f"card page target {TARGET_MS:.0f} ms: {'met' if worst < TARGET_MS else 'NOT met'} (worst {worst:.1f} ms)")


if __name__ == "__main__":
    main()
