"""In-process microbenchmark of the online path: the WSGI application called N times with prebuilt envelopes.

No network, no gunicorn, no wrk: the CPU time this process spends per request (``time.process_time``, one
thread) for the echo, GetCardInfo and a sale with accrual and spend, on a seeded PostgreSQL database (the
same seed as ``bench_online.py``). It finds hot spots without the noise of a shared machine; ``--profile``
prints cProfile's top functions of each operation. Not part of ``make bench`` (it is not a ceiling ratio):
a tool for whoever changes the online path.

    PYTHONPATH=. python bench/micro_online.py --requests 2000 [--profile] [--only info,sale]
"""
from __future__ import annotations

import argparse
import base64
import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("KKMTRANSFER_BENCH_ECHO", "1")

import bench_online as bo  # noqa: E402
from common import temp_database  # noqa: E402


def environ_for(path: str, action: str, body: bytes) -> dict:
    auth = base64.b64encode(f"{bo.USER}:{bo.PASSWORD}".encode()).decode()
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost:8000", "HTTP_AUTHORIZATION": f"Basic {auth}",
        "CONTENT_TYPE": "text/xml; charset=utf-8", "HTTP_SOAPACTION": f'"{action}"',
        "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "wsgi.version": (1, 0), "wsgi.input_terminated": True,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--only", default="echo,info,sale,hold",
                        help="echo, info (GetCardInfo), sale, hold (ReserveBonus + the sale confirming it); "
                             "also echo_sale (the echo's RegisterOperation: spyne's cost of a sale, no database)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="measure each this many times, print the lowest")
    args = parser.parse_args(argv)
    op_time = (datetime.now(timezone(timedelta(hours=3))) - timedelta(minutes=5)).isoformat(timespec="seconds")
    scns = bo.scenarios(op_time, {"ReserveBonus"})

    with temp_database("kkmbench_micro") as url:
        bo.seed(url, args.cards)
        from kkmtransfer.app import configure_logging, create_billing, create_wsgi_app
        from kkmtransfer.config import Settings

        billing = create_billing(Settings(database_url=url))
        billing.add_user(bo.USER, bo.PASSWORD)
        billing.engine.dispose()
        os.environ["KKMTRANSFER_DATABASE_URL"] = url
        configure_logging()
        app = create_wsgi_app(Settings.from_env())
        counter = [0]

        def call(key: str) -> bytes:
            """One request of the scenario: every step, with one OperationId and card."""
            scn = scns[key]
            counter[0] += 1
            n = counter[0]
            op_id, card = str(uuid.uuid4()), bo.card_number(n * 7919 % args.cards + 1)
            for (action, template), expect in zip(scn.steps, scn.expect):
                body = template.replace("{OPID}", op_id).replace("{CARD}", card).replace("{N}", str(n))
                status = []
                out = b"".join(app(environ_for(scn.path, action, body.encode()),
                                   lambda s, h, e=None: status.append(s)))
                if not status[0].startswith("200") or expect.encode() not in out:
                    raise SystemExit(f"{key}: {status[0]} {out[:500]!r}")
            return out

        print(f"{'what':<10} {'requests':>8} {'CPU ms/req':>10} {'wall ms/req':>11} {'db CPU ms/req':>13} "
              f"{'of it kernel':>13}  (lowest of the rounds; db: the database's server processes, of the same round;"
              " kernel: this process's system time, within its CPU)")
        for key in args.only.split(","):
            for _ in range(200):
                call(key)
            best = None
            for _ in range(1 if args.profile else args.rounds):
                prof = cProfile.Profile(time.process_time) if args.profile else None
                pids = bo.backend_pids(url)
                d0 = bo.cpu_seconds(pids)
                t0 = os.times()
                c0, w0 = time.process_time(), time.perf_counter()
                if prof:
                    prof.enable()
                for _ in range(args.requests):
                    call(key)
                if prof:
                    prof.disable()
                c1, w1 = time.process_time(), time.perf_counter()
                t1 = os.times()
                db = bo._delta(d0, bo.cpu_seconds(pids))
                if best is None or c1 - c0 < best[0]:
                    best = (c1 - c0, w1 - w0, db, t1.system - t0.system)
            print(f"{key:<10} {args.requests:>8} {best[0] * 1000 / args.requests:>10.3f} "
                  f"{best[1] * 1000 / args.requests:>11.3f} {best[2] * 1000 / args.requests:>13.3f} "
                  f"{best[3] * 1000 / args.requests:>13.3f}", flush=True)
            if prof:
                stats = pstats.Stats(prof, stream=sys.stdout)
                stats.sort_stats("tottime").print_stats(args.top)
                stats.sort_stats("cumulative").print_stats(args.top)
        app.app.billing.engine.dispose() if hasattr(app, "app") else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
