"""Benchmark of gift-certificate group input on PostgreSQL: the product beside a bare INSERT ... SELECT, in one run.

    .venv/bin/python bench/bench_certificates.py [--certificates 100000] [--pins 2000]

The product: ``CertificateService.add_range`` (what `kkmtransfer certificates add-range` runs): the range's
numbers checked against existing certificates and cards, then one account row (``cards``) and one
``certificates`` row per certificate, in one transaction. The bare SQL: the same rows of both tables by two
INSERT ... SELECT over generate_series, nothing checked. Also timed: add-range with PINs (one scrypt hash
per certificate) on a smaller range, per certificate.
"""
from __future__ import annotations

import argparse
import time

from common import table, temp_database
from sqlalchemy import create_engine, text

from kkmtransfer.app import create_billing
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.certificates import CertificateService

BARE_ACCOUNTS = """
INSERT INTO cards (number, status, created_at, accumulation_delay_days, count_delay_days)
SELECT 'cert:B' || lpad(g::text, 8, '0'), 'Certificate', now(), 0, 0 FROM generate_series(1, :n) g"""
BARE_CERTIFICATES = """
INSERT INTO certificates (number, account, kind, nominal, state, blocked, valid_days, pin_failures, created_at)
SELECT 'B' || lpad(g::text, 8, '0'), 'cert:B' || lpad(g::text, 8, '0'), 'MultiUse', 100000, 'Issued', false, 365, 0,
       now()
FROM generate_series(1, :n) g"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certificates", type=int, default=100_000)
    parser.add_argument("--pins", type=int, default=2000, help="How many certificates to enter with PINs.")
    args = parser.parse_args()
    n = args.certificates
    print(f"certificates add-range benchmark: {n:,} certificates, PostgreSQL")
    with temp_database("kkmbench_cert") as url:
        engine = create_engine(url)
        billing = create_billing(Settings(database_url=url))
        certs = CertificateService(billing)
        start = time.perf_counter()
        result = certs.add_range(1, n, "1000.00", width=8, valid_days=365)
        t_product = time.perf_counter() - start
        assert len(result.created) == n
        start = time.perf_counter()
        again = certs.add_range(1, n, "1000.00", width=8, valid_days=365)
        t_again = time.perf_counter() - start
        assert not again.created and len(again.skipped) == n
        pins: list = []
        start = time.perf_counter()
        certs.add_range(1, args.pins, "500.00", prefix="P", width=8, with_pin=True, pins_sink=pins.extend)
        t_pins = time.perf_counter() - start
        assert len(pins) == args.pins
        billing.engine.dispose()
        with engine.begin() as conn:
            start = time.perf_counter()
            conn.execute(text(BARE_ACCOUNTS), {"n": n})
            conn.execute(text(BARE_CERTIFICATES), {"n": n})
            t_bare = time.perf_counter() - start
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM certificates WHERE number LIKE 'B%'")).scalar_one() == n
        engine.dispose()
    print(table([
        ("product: certificates add-range", f"{t_product:.2f}", f"{n / t_product:,.0f}", f"{t_product / t_bare:.1f}x"),
        ("product: the same range again (all skipped)", f"{t_again:.2f}", f"{n / t_again:,.0f}", ""),
        (f"product: add-range --pin of {args.pins:,}", f"{t_pins:.2f}", f"{args.pins / t_pins:,.0f}", ""),
        ("bare: INSERT ... SELECT (accounts + certificates)", f"{t_bare:.2f}", f"{n / t_bare:,.0f}", "1.0x"),
    ], ("what", "seconds", "per second", "vs bare")))


if __name__ == "__main__":
    main()
