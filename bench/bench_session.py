"""Benchmark of the receipt session over HTTP on PostgreSQL, beside the echo ceiling, in one run.

    .venv/bin/python bench/bench_session.py [--calls 300] [--lines 20]

Served by the same threaded WSGI server in this process, called over keep-alive HTTP with prepared SOAP
envelopes (no client library cost): the echo ceiling (a WSGI app that returns the request body: HTTP
and the server, nothing of ours), GetCardInfo, CalculateReceipt of a receipt of ``--lines`` lines with a
program of tiers and an excluded group, and the pair ReserveBonus + RegisterOperation confirming it.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import datetime, timezone

import requests
from common import table, temp_database

from kkmtransfer.app import create_billing
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.program import ProgramService
from kkmtransfer.soap.devserver import make_server
from kkmtransfer.soap.http import KKMTransferApp

NS = "urn:kkmtransfer:1"
USER, PASSWORD = "bench", "bench-password"


def envelope(body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
            f'envelope/" xmlns:k="{NS}"><soap:Body>{body}</soap:Body></soap:Envelope>').encode()


def calculate(card: str, lines: int) -> bytes:
    items = "".join(f"<k:ReceiptLine><k:LineNumber>{i}</k:LineNumber><k:Article>A{i}</k:Article>"
                    f"<k:Group>{'TOBACCO' if i % 7 == 0 else 'FOOD'}</k:Group><k:Quantity>1.500</k:Quantity>"
                    f"<k:Price>{100 + i}.00</k:Price><k:Sum>{150 + i}.50</k:Sum></k:ReceiptLine>"
                    for i in range(1, lines + 1))
    now = datetime.now(timezone.utc).isoformat()
    return envelope(f"<k:CalculateReceipt><k:Receipt><k:OperationId>{uuid.uuid4()}</k:OperationId>"
                    f"<k:CardNumber>{card}</k:CardNumber><k:KKM>K1</k:KKM><k:OperationTime>{now}</k:OperationTime>"
                    f"<k:Lines>{items}</k:Lines><k:BonusToSpend>500.00</k:BonusToSpend></k:Receipt>"
                    f"</k:CalculateReceipt>")


def reserve(card: str, op_id: str) -> bytes:
    return envelope(f"<k:ReserveBonus><k:OperationId>{op_id}</k:OperationId><k:CardNumber>{card}</k:CardNumber>"
                    f"<k:KKM>K1</k:KKM><k:Amount>1.00</k:Amount></k:ReserveBonus>")


def confirm(card: str, op_id: str) -> bytes:
    now = datetime.now(timezone.utc).isoformat()
    return envelope(f"<k:RegisterOperation><k:Operation><k:OperationId>{op_id}</k:OperationId>"
                    f"<k:CardNumber>{card}</k:CardNumber><k:KKM>K1</k:KKM><k:OperationTime>{now}</k:OperationTime>"
                    f"<k:Kind>Sale</k:Kind><k:ReceiptSum>100.00</k:ReceiptSum><k:BonusAccrued>1.00</k:BonusAccrued>"
                    f"<k:BonusSpent>0.80</k:BonusSpent></k:Operation></k:RegisterOperation>")


def card_info(card: str) -> bytes:
    return envelope(f"<k:GetCardInfo><k:CardNumber>{card}</k:CardNumber></k:GetCardInfo>")


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def serve(app):
    httpd = make_server("127.0.0.1", 0, app)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/KKMTransfer"


def measure(session, url, make_bodies, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        for body in make_bodies():
            r = session.post(url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"})
            if r.status_code != 200 or b"Fault" in r.content:
                raise SystemExit(f"unexpected answer {r.status_code}: {r.text[:500]}")
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--lines", type=int, default=20)
    args = parser.parse_args()
    print(f"receipt session benchmark: {args.calls} calls each, {args.lines}-line receipts, PostgreSQL")
    with temp_database("kkmbench_session") as url:
        billing = create_billing(Settings(database_url=url))
        billing.add_user(USER, PASSWORD)
        billing.add_card_range(1, 1, "B", 0, None)
        from kkmtransfer.domain.model import OperationRequest

        billing.register_operation(OperationRequest.build(
            operation_id=str(uuid.uuid4()), card_number="B1", kkm="K1", operation_time=datetime.now(timezone.utc),
            kind="Sale", receipt_sum="20000.00", bonus_accrued="100000.00"))
        program = ProgramService(billing)
        program.set(accrual_percent="5", max_payment_percent="50", tiers=[("10000", "7"), ("50000", "10")])
        program.set_group("TOBACCO", excluded=True)

        echo, echo_url = serve(echo_app)
        httpd, soap_url = serve(KKMTransferApp(billing, billing.settings))
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        try:
            receipt = calculate("B1", args.lines)

            def pair():
                op_id = str(uuid.uuid4())
                return [reserve("B1", op_id), confirm("B1", op_id)]

            results = [
                ("echo ceiling (HTTP, no work)", measure(session, echo_url, lambda: [receipt], args.calls)),
                ("GetCardInfo", measure(session, soap_url, lambda: [card_info("B1")], args.calls)),
                (f"CalculateReceipt, {args.lines} lines", measure(session, soap_url, lambda: [receipt], args.calls)),
                ("ReserveBonus + confirming RegisterOperation", measure(session, soap_url, pair, args.calls)),
            ]
        finally:
            httpd.shutdown()
            echo.shutdown()
        ceiling = statistics.median(results[0][1])
        rows = [(name, f"{statistics.median(t) * 1000:.2f}", f"{sorted(t)[int(len(t) * 0.95) - 1] * 1000:.2f}",
                 f"{len(t) / sum(t):.0f}", f"{statistics.median(t) / ceiling:.1f}x")
                for name, t in results]
        print(table(rows, ("call", "median ms", "p95 ms", "per s (1 client)", "x echo")))
        print("x echo: the call's median beside the bare HTTP echo of the same server measured in this run")


if __name__ == "__main__":
    main()
