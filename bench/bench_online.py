"""Online benchmark: gunicorn on PostgreSQL driven by wrk, beside the SOAP stack's and the database's ceilings.

    .venv/bin/python bench/bench_online.py [--seconds 5] [--connections 1,8,32] [--cards 20000]
                                           [--workers N] [--threads 1] [--scaling 1,2] [--rounds 4]
                                           [--round-seconds 3] [--profile DIR] [--keep]
    make bench        (all benchmarks; BENCH_ONLINE_ARGS="--seconds 8" passes options to this one)

What it does, in one run:
1. creates a fresh PostgreSQL database (kkmbench_online_<random>; the server is KKMTRANSFER_BENCH_PG_URL,
   default postgresql+psycopg2://postgres@127.0.0.1:5432/postgres), migrates it, and seeds ``--cards``
   cards with bonus by set-based SQL (an InitialBalance operation per card: a dated bonus lot, the
   never-ending bonus bucket, accumulation and receipt count, each with its credit entry), and one register
   user;
2. starts gunicorn with the production settings of docs/operations.md (``--workers`` = 2 x CPU cores,
   ``--threads 1``: the sync worker, ``kkmtransfer.wsgi:application``) and ``KKMTRANSFER_BENCH_ECHO=1``, which mounts the
   no-database echo of ``kkmtransfer/soap/echo.py`` at /KKMTransferEcho (the contract's WSDL is unchanged);
3. checks each prebuilt envelope once (HTTP 200, the expected answer), warms every worker up, then runs
   wrk (one connection per wrk thread, so that a connection's requests keep their order) for ``--seconds``
   at each concurrency, in this order: the echo, GetCardInfo, RegisterOperation (a Sale with accrual and
   spend, a new OperationId on every request, spread over all cards), CalculateReceipt (20 lines) and
   ReserveBonus + RegisterOperation confirming it, when the served WSDL has them, and the echo again: the
   echo ceiling is the mean of the runs before and after; then ``--rounds`` short rounds at 8 connections
   (``--round-seconds`` each run), one after the other: the echo, GetCardInfo, the sale, and the echo once
   more at the end, so that each call has an echo measured next to it several times over (the machine's
   speed drifts within a run); the ratio targets are judged on the median of the main run's ratio and the
   rounds';
4. runs the bare psycopg2 transactions at the same concurrencies (processes): the read GetCardInfo needs
   (the card and its lots, one statement in autocommit) and the ledger writes of the same sale (BEGIN with
   the card's lock and the read of its lots; the operation, its entries and the lots' new remaining in one
   statement with COMMIT: two round trips, as the product's): the database's ceiling; prepared once per
   connection as the product's are (``--bare-text``: as text);
5. restarts gunicorn with 1 and 2 workers (``--scaling``) and runs the echo, GetCardInfo and
   RegisterOperation at 8 connections: how the service scales with processes;
6. checks the ledger: every answered RegisterOperation wrote its operation exactly once (the operations
   written equal the answers, plus at most the requests in flight when wrk stopped), and
   ``Reports.verify()`` finds nothing;
7. prints the tables with every ratio against its ceiling measured in this run, writes them to
   bench/results/online-<UTC time>.csv, and drops the database (``--keep`` leaves it).

``--profile DIR`` also records py-spy flame graphs (SVG) of the workers under GetCardInfo and
RegisterOperation at 8 connections (extra runs, not in the tables; needs ``pip install py-spy``).
Only the ratios mean something across machines; absolute numbers depend on the machine and on what else
runs on it.
"""
from __future__ import annotations

import argparse
import base64
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ADMIN_URL, table, temp_database  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from kkmtransfer.domain.model import CardStatus, Kind, Measure, Role, Source  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
USER, PASSWORD = "bench-kassa", "bench-password-1"
CARD_PREFIX, CARD_WIDTH = "C", 7
KKM = "BENCH-KKM"
NS = "urn:kkmtransfer:1"
ENDPOINT, ECHO_ENDPOINT = "/KKMTransfer", "/KKMTransferEcho"
SALE_ECHO_NAME = "echo of the sale (no database)"

# Seeded per card (hundredths): a dated bonus lot, the never-ending bonus bucket, accumulation, receipts.
SEED_DATED_BONUS, SEED_BONUS, SEED_ACCUMULATION, SEED_RECEIPTS = 50_000, 500_000, 1_000_000, 1_000
# The sale every RegisterOperation request makes (and the bare transaction copies).
SALE_SUM, SALE_ACCRUED, SALE_SPENT = "100.00", "5.00", "1.00"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sql_literal(value) -> str:
    value = getattr(value, "value", value)
    return "'" + str(value).replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------------
# seeding (set-based; not timed)
# --------------------------------------------------------------------------------------------------
def seed(url: str, n_cards: int) -> None:
    engine = create_engine(url)
    q = sql_literal
    try:
        with engine.begin() as conn:
            params = {"p": CARD_PREFIX, "w": CARD_WIDTH, "n": n_cards}
            conn.execute(text(
                "INSERT INTO cards (number, status, holder, phone, created_at, accumulation_delay_days, "
                "count_delay_days) SELECT :p || lpad(g::text, :w, '0'), " + q(CardStatus.ACTIVE) +
                ", 'Holder ' || g, NULL, now() - interval '1 year', 0, 0 FROM generate_series(1, :n) g"), params)
            conn.execute(text(
                "INSERT INTO operations (id, card_number, kind, source, operation_time, business_date, "
                "content_hash, receipt_sum, bonus_accrued, bonus_spent, accumulation_delta, receipt_count_delta, "
                "note, created_at) SELECT md5('bench-seed/' || number)::uuid::text, number, "
                f"{q(Kind.INITIAL_BALANCE)}, {q(Source.BACKOFFICE)}, now() - interval '30 days', "
                "current_date - 30, 'bench-seed', 0, :bonus, 0, :acc, :cnt, 'bench seed', now() FROM cards"),
                {"bonus": SEED_DATED_BONUS + SEED_BONUS, "acc": SEED_ACCUMULATION, "cnt": SEED_RECEIPTS // 100})
            conn.execute(text(
                "INSERT INTO lots (card_number, measure, remaining, available_from, expires_at, created_at, "
                "origin_operation_id, exclusive) "
                "SELECT c.number, v.measure, v.amount, NULL, "
                "CASE WHEN v.dated THEN now() + interval '100 days' END, now() - interval '30 days', "
                "md5('bench-seed/' || c.number)::uuid::text, false "
                "FROM cards c CROSS JOIN (VALUES "
                f"({q(Measure.BONUS)}, :dated_bonus, true), ({q(Measure.BONUS)}, :bonus, false), "
                f"({q(Measure.ACCUMULATION)}, :acc, false), ({q(Measure.RECEIPT_COUNT)}, :cnt, false)"
                ") AS v(measure, amount, dated) ORDER BY c.number"),
                {"dated_bonus": SEED_DATED_BONUS, "bonus": SEED_BONUS, "acc": SEED_ACCUMULATION,
                 "cnt": SEED_RECEIPTS})
            conn.execute(text(
                "INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount) "
                f"SELECT origin_operation_id, id, card_number, measure, {q(Role.CREDIT)}, remaining FROM lots"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


def card_number(i: int) -> str:
    return f"{CARD_PREFIX}{i:0{CARD_WIDTH}d}"


# --------------------------------------------------------------------------------------------------
# envelopes and the wrk script
# --------------------------------------------------------------------------------------------------
def envelope(ns: str, body: str) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?>'
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:k="{ns}"><soap:Body>{body}</soap:Body></soap:Envelope>')


def operation_xml(op_time: str, spent: str = SALE_SPENT) -> str:
    return ("<k:Operation><k:OperationId>{OPID}</k:OperationId><k:CardNumber>{CARD}</k:CardNumber>"
            f"<k:KKM>{KKM}</k:KKM><k:Store>S-1</k:Store><k:ReceiptNumber>R-{{N}}</k:ReceiptNumber>"
            f"<k:OperationTime>{op_time}</k:OperationTime><k:Kind>Sale</k:Kind>"
            f"<k:ReceiptSum>{SALE_SUM}</k:ReceiptSum><k:BonusAccrued>{SALE_ACCRUED}</k:BonusAccrued>"
            f"<k:BonusSpent>{spent}</k:BonusSpent></k:Operation>")


def receipt_lines(n: int) -> str:
    lines = []
    for i in range(1, n + 1):
        price = f"{10 + i * 3}.50"
        lines.append(f"<k:ReceiptLine><k:LineNumber>{i}</k:LineNumber><k:Article>A-{i:04d}</k:Article>"
                     f"<k:Group>G-{i % 4}</k:Group><k:Quantity>1.000</k:Quantity><k:Price>{price}</k:Price>"
                     f"<k:Sum>{price}</k:Sum></k:ReceiptLine>")
    return "".join(lines)


@dataclass
class Scenario:
    """A wrk load: each connection sends the ``steps`` in turn; {OPID} is new for every round, {CARD} is
    a card spread over all cards, {N} a number unique to the request."""

    name: str
    path: str
    steps: list[tuple[str, str]]  # (SOAPAction, envelope template)
    writes: bool = False          # every round writes one operation (checked against the database)
    expect: list[str] = field(default_factory=list)  # a fragment of each step's answer


def scenarios(op_time: str, available: set[str]) -> dict[str, Scenario]:
    get_info = envelope(NS, "<k:GetCardInfo><k:CardNumber>{CARD}</k:CardNumber></k:GetCardInfo>")
    found = {
        "echo": Scenario("echo (no database)", ECHO_ENDPOINT, [("GetCardInfo", envelope(
            NS, "<k:GetCardInfo><k:CardNumber>{CARD}</k:CardNumber></k:GetCardInfo>"))],
            expect=["BonusBalance>1234.56<"]),
        "echo_sale": Scenario(SALE_ECHO_NAME, ECHO_ENDPOINT, [("RegisterOperation", envelope(
            NS, f"<k:RegisterOperation>{operation_xml(op_time)}</k:RegisterOperation>"))],
            expect=["BonusBalance>1234.56<"]),
        "info": Scenario("GetCardInfo", ENDPOINT, [("GetCardInfo", get_info)], expect=["BonusBalance>"]),
        "sale": Scenario("RegisterOperation (sale)", ENDPOINT, [("RegisterOperation", envelope(
            NS, f"<k:RegisterOperation>{operation_xml(op_time)}</k:RegisterOperation>"))],
            writes=True, expect=["Applied<"]),
    }
    if "CalculateReceipt" in available:
        found["calc"] = Scenario("CalculateReceipt (20 lines)", ENDPOINT, [("CalculateReceipt", envelope(
            NS, "<k:CalculateReceipt><k:Receipt><k:OperationId>{OPID}</k:OperationId>"
                f"<k:CardNumber>{{CARD}}</k:CardNumber><k:KKM>{KKM}</k:KKM><k:Store>S-1</k:Store>"
                f"<k:OperationTime>{op_time}</k:OperationTime><k:Lines>{receipt_lines(20)}</k:Lines>"
                "<k:BonusToSpend>10.00</k:BonusToSpend></k:Receipt></k:CalculateReceipt>"))],
            expect=["MaxBonusPayment"])
    if "ReserveBonus" in available:
        found["hold"] = Scenario("ReserveBonus + confirm", ENDPOINT, [
            ("ReserveBonus", envelope(
                NS, "<k:ReserveBonus><k:OperationId>{OPID}</k:OperationId><k:CardNumber>{CARD}</k:CardNumber>"
                    f"<k:KKM>{KKM}</k:KKM><k:Amount>{SALE_SPENT}</k:Amount></k:ReserveBonus>")),
            ("RegisterOperation", envelope(
                NS, f"<k:RegisterOperation>{operation_xml(op_time)}</k:RegisterOperation>")),
        ], writes=True, expect=["Reserved<", "Applied<"])
    return found


LUA = r"""
-- generated by bench_online.py: %(name)s
local auth = "Basic %(auth)s"
local path = "%(path)s"
local steps = { %(steps)s }
local actions = { %(actions)s }
local cards = %(cards)d
local run = %(run)d
local counter, round, step, thread_id = 0, 0, 0, 0
local opid, card = "", ""
local n_threads = 0

function setup(thread)
  n_threads = n_threads + 1
  thread:set("tid", n_threads)
end

function init(args)
  thread_id = tid
end

local function fill(template)
  template = template:gsub("{OPID}", opid)
  template = template:gsub("{CARD}", card)
  template = template:gsub("{N}", tostring(counter))
  return template
end

function request()
  if step == 0 then
    round = round + 1
    opid = string.format("%%08x-%%04x-4%%03x-a%%03x-%%012x", run, thread_id, 0, 0, round)
    local k = (round * 64 + thread_id) * 7919 %% cards + 1
    card = string.format("%(card_format)s", k)
  end
  counter = counter + 1
  local i = step + 1
  step = (step + 1) %% #steps
  local headers = { ["Authorization"] = auth, ["Content-Type"] = "text/xml; charset=utf-8",
                    ["SOAPAction"] = '"' .. actions[i] .. '"' }
  return wrk.format("POST", path, headers, fill(steps[i]))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT requests=%%d duration_us=%%d connect=%%d read=%%d write=%%d status=%%d "
    .. "timeout=%%d p50=%%d p90=%%d p99=%%d max=%%d mean=%%.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_string(s: str) -> str:
    level = "=" * 3
    assert f"]{level}]" not in s
    return f"[{level}[{s}]{level}]"


def write_lua(scn: Scenario, directory: Path, n_cards: int, run: int) -> Path:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    # Lua patterns: {OPID} etc. are replaced with gsub, whose pattern treats { } literally; % must not
    # appear in the templates
    for _, t in scn.steps:
        assert "%" not in t
    script = LUA % dict(
        name=scn.name, auth=auth, path=scn.path, cards=n_cards, run=run,
        steps=", ".join(lua_string(t) for _, t in scn.steps),
        actions=", ".join(lua_string(a) for a, _ in scn.steps),
        card_format=f"{CARD_PREFIX}%0{CARD_WIDTH}d")
    path = directory / f"wrk-{run}.lua"
    path.write_text(script)
    return path


@dataclass
class Result:
    section: str
    workers: int
    threads: int
    what: str
    connections: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    app_cpu_ms: float | None = None  # CPU time of the gunicorn workers per request
    timeouts: int = 0                # of the errors: requests unanswered after wrk's --timeout (5 s)
    db_cpu_ms: float | None = None   # CPU time of the database's backends per request

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class Wrk:
    def __init__(self, directory: Path, n_cards: int):
        self.directory = directory
        self.n_cards = n_cards
        self.runs = 0

    def run(self, base_url: str, scn: Scenario, connections: int, seconds: float) -> dict:
        self.runs += 1
        # the run number goes into every OperationId: no two runs (or processes of this script) collide
        run_tag = (int(time.time()) * 1000 + self.runs) & 0x7FFFFFFF
        script = write_lua(scn, self.directory, self.n_cards, run_tag)
        cmd = ["wrk", "-t", str(connections), "-c", str(connections), "-d", f"{int(seconds)}s", "--timeout", "5s",
               "-s", str(script), base_url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKRESULT")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        values = dict(kv.split("=") for kv in line.split()[1:])
        out = {k: float(v) for k, v in values.items()}
        out["errors"] = sum(out[k] for k in ("connect", "read", "write", "status", "timeout"))
        return out


# --------------------------------------------------------------------------------------------------
# gunicorn
# --------------------------------------------------------------------------------------------------
def at_least(low: int):
    """An argparse type: an integer of at least ``low`` (argparse's one-line error otherwise)."""
    def parse(value: str) -> int:
        n = int(value)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {n}")
        return n
    parse.__name__ = "int"  # argparse's "invalid int value" for what is not a number
    return parse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    def __init__(self, url: str, workers: int, threads: int, log_path: Path):
        self.port = free_port()
        self.workers, self.threads = workers, threads
        env = dict(os.environ, KKMTRANSFER_DATABASE_URL=url, KKMTRANSFER_BENCH_ECHO="1")
        self.log_path = log_path
        self._out = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(threads),
             "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "3", "kkmtransfer.wsgi:application"],
            env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=HERE.parent)
        self.base = f"http://127.0.0.1:{self.port}"
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.base + ENDPOINT + "?wsdl", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"gunicorn did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        # all workers up (gunicorn answers as soon as the first one is)
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < workers and time.monotonic() < deadline:
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:
            return []
        return [int(p) for p in out.split()]

    def wsdl(self) -> str:
        import requests

        return requests.get(self.base + ENDPOINT + "?wsdl", timeout=10).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


OPTIONAL = ("calc", "hold")  # measured when the server has them and answers their envelopes


def check_envelopes(base: str, scns: dict[str, Scenario], op_time: str) -> list[str]:
    """Send each scenario's steps once (card 1, fresh ids) and check the answers: a wrong envelope would
    otherwise be measured as a fast fault. An optional scenario the server refuses is dropped (and named in
    the report); a refused core one stops the run."""
    import requests

    auth = (USER, PASSWORD)
    dropped = []
    for key, scn in list(scns.items()):
        opid = str(uuid.uuid4())
        for (action, template), expect in zip(scn.steps, scn.expect or [""] * len(scn.steps)):
            body = template.replace("{OPID}", opid).replace("{CARD}", card_number(1)).replace("{N}", "0")
            r = requests.post(base + scn.path, data=body.encode(), auth=auth, timeout=30,
                              headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'})
            if r.status_code != 200 or expect not in r.text:
                problem = f"{scn.name}: {action} answered {r.status_code}, expected {expect!r}"
                if key not in OPTIONAL:
                    raise SystemExit(f"{problem}:\n{r.text[:2000]}")
                log(f"{problem}; not measured:\n{r.text[:1000]}")
                dropped.append(f"{scn.name} (its envelope was refused)")
                del scns[key]
                break
    return dropped


# --------------------------------------------------------------------------------------------------
# the database's ceiling: bare psycopg2 in processes
# --------------------------------------------------------------------------------------------------
BARE_READ = ("SELECT c.number, c.status, c.holder, l.id, l.measure, l.remaining, l.available_from, l.expires_at "
             "FROM cards c LEFT JOIN lots l ON l.card_number = c.number AND (l.remaining <> 0 OR "
             "(l.available_from IS NULL AND l.expires_at IS NULL)) WHERE c.number = %(card)s ORDER BY l.id")
BARE_LOCK = ("SELECT c.status, l.id, l.measure, l.remaining, l.expires_at FROM cards c "
             "LEFT JOIN lots l ON l.card_number = c.number AND (l.remaining <> 0 OR "
             "(l.available_from IS NULL AND l.expires_at IS NULL)) WHERE c.number = %(card)s "
             "ORDER BY l.id FOR UPDATE OF c")
# the operation, its four entries (spend from the dated lot, accrual into the bonus bucket, accumulation
# and receipt count into theirs) and the lots' new remaining, in one statement
BARE_WRITE = """
WITH op AS (
  INSERT INTO operations (id, card_number, kind, source, kkm, store, receipt_number, operation_time, business_date,
                          content_hash, receipt_sum, bonus_accrued, bonus_spent, accumulation_delta,
                          receipt_count_delta, created_at)
  VALUES (%(id)s, %(card)s, 'Sale', 'Online', 'BARE', 'S-1', 'R', now(), current_date, 'bare', %(sum)s, %(acc)s,
          %(spent)s, %(sum)s, 1, now()) RETURNING id),
moves(lot_id, measure, role, amount) AS (VALUES (%(spend_lot)s::bigint, 'bonus', 'spend', -%(spent)s::bigint),
  (%(bonus_lot)s::bigint, 'bonus', 'credit', %(acc)s::bigint),
  (%(acc_lot)s::bigint, 'accumulation', 'credit', %(sum)s::bigint),
  (%(cnt_lot)s::bigint, 'receipt_count', 'credit', 100::bigint)),
e AS (INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount)
      SELECT op.id, m.lot_id, %(card)s, m.measure, m.role, m.amount FROM op, moves m)
UPDATE lots SET remaining = lots.remaining + m.amount FROM moves m WHERE lots.id = m.lot_id
"""
# As the product sends its hot statements (KKMTRANSFER_PG_PREPARED, on by default): prepared once per
# connection, the write with the generic plan (docs/performance.md §5.3). ``--bare-text`` sends them as text.
_BARE_PARAMS = {"read": ("card",), "lock": ("card",),
                "write": ("id", "card", "sum", "acc", "spent", "spend_lot", "bonus_lot", "acc_lot", "cnt_lot")}
_BARE_TYPES = {"id": "text", "card": "text"}


def _bare_prepared(name: str, sql: str, params: tuple) -> tuple[str, str]:
    """(PREPARE bare_NAME (...) AS sql-with-$n, EXECUTE bare_NAME (%(p)s, ...))"""
    body = sql
    for i, p in enumerate(params):
        body = body.replace(f"%({p})s", f"${i + 1}")
    types = ", ".join(_BARE_TYPES.get(p, "bigint") for p in params)
    return (f"PREPARE bare_{name} ({types}) AS {body}",
            f"EXECUTE bare_{name} ({', '.join(f'%({p})s' for p in params)})")


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = [f"dbname={u.database}", f"host={u.host or '127.0.0.1'}", f"port={u.port or 5432}",
             f"user={u.username or 'postgres'}"]
    if u.password:
        parts.append(f"password={u.password}")
    return " ".join(parts)


def _bare_worker(dsn, kind, n_cards, seconds, worker, barrier, queue, finished, prepared=True) -> None:
    import psycopg2

    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        queue.put(f"could not connect: {exc}".strip())
        barrier.abort()  # the others stop waiting
        return
    cur = conn.cursor()
    read_sql, lock_sql, write_sql = BARE_READ, BARE_LOCK, BARE_WRITE
    if prepared:
        forms = {name: _bare_prepared(name, sql, _BARE_PARAMS[name])
                 for name, sql in (("read", BARE_READ), ("lock", BARE_LOCK), ("write", BARE_WRITE))}
        for prepare, _ in forms.values():
            cur.execute(prepare)
        cur.execute("SET plan_cache_mode = force_generic_plan")
        conn.commit()
        read_sql, lock_sql, write_sql = (forms[n][1] for n in ("read", "lock", "write"))
    # in as few round trips as the product (§5.6, §5.8): the read alone in autocommit, the write's transaction
    # as BEGIN with the lock and COMMIT with the write
    conn.autocommit = True
    lock_sql, write_sql = "BEGIN; " + lock_sql, write_sql + "; COMMIT"
    latencies: list[float] = []
    i = 0
    try:
        barrier.wait()  # every process connected before the clock starts
    except threading.BrokenBarrierError:
        queue.put("another process could not connect")
        conn.close()
        return
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        i += 1
        card = card_number((i * 64 + worker) * 7919 % n_cards + 1)
        if kind == "read":
            cur.execute(read_sql, {"card": card})
            cur.fetchall()
        else:
            cur.execute(lock_sql, {"card": card})
            found = {}
            for status, lot_id, measure, remaining, expires_at in cur.fetchall():
                if measure == "bonus" and expires_at is not None and remaining >= 1 and "spend" not in found:
                    found["spend"] = lot_id
                if expires_at is None:
                    found.setdefault(measure, lot_id)
            cur.execute(write_sql, dict(
                id=str(uuid.uuid4()), card=card, sum=10_000, acc=500, spent=100,
                spend_lot=found.get("spend", found["bonus"]), bonus_lot=found["bonus"],
                acc_lot=found["accumulation"], cnt_lot=found["receipt_count"]))
        latencies.append(time.perf_counter() - t0)
    queue.put(latencies)
    finished.wait(60)  # the connection stays until the backends' CPU time is read
    conn.close()


def bare(url: str, kind: str, concurrency: int, seconds: float, n_cards: int, prepared: bool = True) -> dict:
    """``concurrency`` processes, each on its own connection, doing the bare transaction for ``seconds``."""
    ctx = get_context("spawn")
    barrier, queue, finished = ctx.Barrier(concurrency), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_bare_worker,
                         args=(_dsn(url), kind, n_cards, seconds, w + 1, barrier, queue, finished, prepared))
             for w in range(concurrency)]
    for p in procs:
        p.start()
    # the backends' CPU, from when they are all connected (the barrier opens) to the end
    while len(backend_pids(url)) < concurrency and all(p.is_alive() for p in procs):
        time.sleep(0.05)
    db0 = cpu_seconds(backend_pids(url))
    got = [queue.get(timeout=seconds + 120) for _ in procs]
    db1 = cpu_seconds(backend_pids(url))
    finished.set()
    for p in procs:
        p.join()
    failed = [g for g in got if isinstance(g, str)]
    if failed:
        raise SystemExit(f"bare {kind} with {concurrency} processes: {failed[0]}")
    lat = sorted(x for g in got for x in g)
    n = len(lat)

    def pct(p):  # microseconds, as wrk reports them
        return lat[min(n - 1, int(p / 100 * n))] * 1e6 if n else 0.0

    return dict(requests=n, duration_us=seconds * 1e6, errors=0, p50=pct(50), p90=pct(90), p99=pct(99),
                max=(lat[-1] * 1e6 if n else 0), db_cpu_s=_delta(db0, db1))


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------
def bench_operations(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM operations WHERE kkm = :k AND kind = 'Sale'"),
                                {"k": KKM}).scalar_one()
    finally:
        engine.dispose()


def verify_ledger(url: str) -> list[str]:
    from kkmtransfer.app import create_billing
    from kkmtransfer.config import Settings
    from kkmtransfer.service_layer.reports import Reports

    billing = create_billing(Settings(database_url=url))
    try:
        return Reports(billing).verify()
    finally:
        billing.engine.dispose()


# --------------------------------------------------------------------------------------------------
def cpu_seconds(pids) -> dict[int, float]:
    """user + system CPU seconds of each process (from /proc; empty where there is no /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / tick
    return found


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def backend_pids(url: str) -> list[int]:
    """The PostgreSQL server processes serving the benchmark's database (same host only)."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    engine = _admin_engine()
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :n AND "
                                      "pid <> pg_backend_pid()"), {"n": name}).scalars())


_ADMIN = []


def _admin_engine():
    if not _ADMIN:
        _ADMIN.append(create_engine(ADMIN_URL, pool_size=1))
    return _ADMIN[0]


def to_result(section, workers, threads, what, connections, raw) -> Result:
    seconds = raw["duration_us"] / 1e6
    return Result(section, workers, threads, what, connections, seconds, int(raw["requests"]),
                  int(raw["errors"]), raw["p50"] / 1000, raw["p90"] / 1000, raw["p99"] / 1000,
                  raw["max"] / 1000, timeouts=int(raw.get("timeout", 0)))


def cpu(ms: float | None) -> str:
    return "" if ms is None else f"{ms:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_ONLINE_SECONDS", 5)),
                        help="seconds per wrk run (default 5, or BENCH_ONLINE_SECONDS)")
    parser.add_argument("--connections", default="1,8,32", help="concurrent connections, comma-separated")
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                        help="gunicorn workers of the main runs (docs/operations.md: about 2 x CPU cores)")
    parser.add_argument("--threads", type=int, default=1,
                        help="gunicorn threads per worker (docs/operations.md: 1, the sync worker, behind the proxy)")
    parser.add_argument("--scaling", default="1,2",
                        help="worker counts for the scaling runs at 8 connections ('' to skip)")
    parser.add_argument("--bare-max", type=int, default=8,
                        help="at most this many bare psycopg2 processes (connections); 2 cores are saturated by "
                             "far fewer, and the server's max_connections is shared")
    parser.add_argument("--bare-text", action="store_true",
                        help="send the bare statements as text (before §5.3 the ceiling did; the product "
                             "prepares them unless KKMTRANSFER_PG_PREPARED=off)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write py-spy flame graphs of GetCardInfo and RegisterOperation into this folder")
    parser.add_argument("--rounds", type=at_least(0), default=4,
                        help="interleaved rounds at 8 connections (echo, GetCardInfo, sale; the echo again at the end) "
                             "whose ratios, with the main runs', give the targets' medians (default 4; 0: none)")
    parser.add_argument("--round-seconds", type=at_least(1), default=3, help="seconds of each run of a round (default 3)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the CSV (default bench/results)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args(argv)
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    scaling = [int(w) for w in args.scaling.split(",") if w.strip()]
    if shutil.which("wrk") is None:
        log("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu package `wrk`)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    op_time = (datetime.now(timezone(timedelta(hours=3))) - timedelta(minutes=5)).isoformat(timespec="seconds")
    results: list[Result] = []
    problems: list[str] = []
    answered_writes = 0
    in_flight = 0
    gun = None

    with tempfile.TemporaryDirectory() as tmp, temp_database("kkmbench_online", keep=args.keep) as url:
        tmp = Path(tmp)
        try:
            t0 = time.perf_counter()
            seed(url, args.cards)
            from kkmtransfer.app import create_billing
            from kkmtransfer.config import Settings

            billing = create_billing(Settings(database_url=url))
            billing.add_user(USER, PASSWORD)
            billing.engine.dispose()
            log(f"seeded {args.cards:,} cards with bonus in {time.perf_counter() - t0:.1f} s (not a result)")

            def start(workers):
                g = Gunicorn(url, workers, args.threads, tmp / "gunicorn.log")
                log(f"gunicorn: {workers} workers x {args.threads} threads on {g.base}")
                return g

            gun = start(args.workers)
            available = set(re.findall(r'<wsdl:operation name="(\w+)"', gun.wsdl()))
            scns = scenarios(op_time, available)
            missing = [n for n in ("CalculateReceipt", "ReserveBonus") if n not in available]
            missing += check_envelopes(gun.base, scns, op_time)
            answered_writes += sum(1 for s in scns.values() if s.writes)
            wrk = Wrk(tmp, args.cards)

            def warm(g):
                """Every worker has its connections, compiled statements and verified credentials."""
                nonlocal answered_writes, in_flight
                for s in scns.values():
                    raw = wrk.run(g.base, s, max(conns), 1)
                    if s.writes and answered_writes is not None:
                        answered_writes += int(raw["requests"]) // len(s.steps)
                        in_flight += max(conns)

            def measure(g, section, key, c, seconds=None):
                nonlocal answered_writes, in_flight
                scn = scns[key]
                app0, db0 = cpu_seconds(g.worker_pids()), cpu_seconds(backend_pids(url))
                raw = wrk.run(g.base, scn, c, seconds or args.seconds)
                app1, db1 = cpu_seconds(g.worker_pids()), cpu_seconds(backend_pids(url))
                res = to_result(section, g.workers, args.threads, scn.name, c, raw)
                if res.requests:
                    res.app_cpu_ms = _delta(app0, app1) * 1000 / res.requests
                    res.db_cpu_ms = _delta(db0, db1) * 1000 / res.requests
                if scn.writes and answered_writes is not None:
                    answered_writes += res.requests // len(scn.steps)
                    in_flight += c
                log(f"  {section:<8} {scn.name:<30} c={c:<3} {res.rate:>8,.0f} req/s  p50 {res.p50_ms:6.1f} ms  "
                    f"p99 {res.p99_ms:7.1f} ms  errors {res.errors}")
                if res.errors > res.timeouts:  # refused, reset or answered with an error: a fault
                    problems.append(f"{scn.name} at {c} connections: {res.errors - res.timeouts} failed requests")
                elif res.timeouts:  # slower than 5 s on an overloaded machine: a target missed, not a fault
                    log(f"    {res.timeouts} request(s) unanswered within wrk's 5 s timeout (target missed)")
                results.append(res)
                return res

            warm(gun)
            order = ["info", "sale"] + [k for k in ("calc", "hold") if k in scns]
            log(f"main runs ({args.seconds:g} s each): echo before, {', '.join(order)}, echo after")
            for c in conns:
                measure(gun, "echo-1", "echo", c)
            # what spyne alone costs a sale (its envelope read, a constant answer of its shape): the sale's floor
            measure(gun, "main", "echo_sale", target_connections(conns))
            for key in order:
                for c in conns:
                    measure(gun, "main", key, c)
            for c in conns:
                measure(gun, "echo-2", "echo", c)
            # the machine's speed drifts within a run (the echo before and after differ by up to a fifth on a
            # shared machine): short rounds of the echo and the two targeted calls, one after the other, give
            # each call's ratio against the echo next to it, several times; the targets are judged on the median
            rc = target_connections(conns)
            if args.rounds > 0:
                log(f"interleaved rounds at {rc} connections ({args.round_seconds:g} s each): "
                    f"{args.rounds} x (echo, GetCardInfo, sale), then the echo")
                for k in range(1, args.rounds + 1):
                    for key in ("echo", "info", "sale"):
                        measure(gun, f"round-{k}", key, rc, args.round_seconds)
                measure(gun, f"round-{args.rounds + 1}", "echo", rc, args.round_seconds)

            if args.profile:
                profile(gun, wrk, scns, args.profile, args.seconds)
                # the profiled runs wrote operations too
                answered_writes, in_flight = None, None
            gun.stop()
            gun = None

            log("bare psycopg2 (the database's ceiling)")
            for kind in ("read", "write"):
                for c in conns:
                    raw = bare(url, kind, min(c, args.bare_max), args.seconds, args.cards,
                               prepared=not args.bare_text)
                    res = to_result("bare", min(c, args.bare_max), 0, f"bare {kind}", c, raw)
                    res.db_cpu_ms = raw["db_cpu_s"] * 1000 / res.requests if res.requests else None
                    log(f"  bare {kind:<5} c={c:<3} {res.rate:>8,.0f} tx/s  p50 {res.p50_ms:6.1f} ms  "
                        f"p99 {res.p99_ms:7.1f} ms")
                    results.append(res)

            for w in scaling:
                gun = start(w)
                warm(gun)
                for key in ("echo", "info", "sale"):
                    measure(gun, f"scale-{w}", key, 8)
                gun.stop()
                gun = None

            log("checking the ledger ...")
            if answered_writes is not None:
                written = bench_operations(url)
                if not answered_writes <= written <= answered_writes + in_flight:
                    problems.append(f"operations written {written:,}, answered {answered_writes:,} "
                                    f"(+ at most {in_flight} in flight): not exactly once")
                log(f"  operations written {written:,}; answered {answered_writes:,} (+ at most {in_flight} "
                    "in flight when wrk stopped)")
            drift = verify_ledger(url)
            problems.extend(drift[:10])
            log(f"  ledger verify: {len(drift)} problems")
        finally:
            if gun is not None:
                gun.stop()

    report(results, args, missing, stamp, problems, time.perf_counter() - started, (load_start, os.getloadavg()[0]))
    return 1 if problems else 0


def profile(gun: Gunicorn, wrk: Wrk, scns: dict[str, Scenario], directory: Path, seconds: float) -> None:
    """py-spy on every worker while wrk runs GetCardInfo, then RegisterOperation, at 8 connections: a flame
    graph (SVG) of one run and the collapsed stacks of another, summarised as the share of samples under
    each layer."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("py-spy is not installed (pip install py-spy): no profile")
        return
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in (("info", "getcardinfo"), ("sale", "registeroperation")):
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            out = directory / f"flame-{name}.{suffix}"
            spy_proc = subprocess.Popen(
                [spy, "record", "--pid", str(gun.proc.pid), "--subprocesses", "--nonblocking", "--rate", "200",
                 "--duration", str(int(seconds) + 1), "--format", fmt, "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(1)
            wrk.run(gun.base, scns[key], 8, seconds)
            _, err = spy_proc.communicate(timeout=seconds + 60)
            if spy_proc.returncode != 0:
                log(f"  py-spy failed: {err[-500:]}")
                return
        log(f"  profile of {scns[key].name}: {directory / f'flame-{name}.svg'}")
        print(f"profile of {scns[key].name} at 8 connections (share of the workers' samples):")
        for label, share in summarise(directory / f"flame-{name}.txt"):
            print(f"  {share:6.1%}  {label}")


# layers of a request, each marked by a frame (py-spy names frames "Class.method (file:line)"); a stack
# counts for the first layer in this list that one of its frames belongs to
LAYERS = [
    ("spyne's gc.collect() (at most once a second per process)",
     lambda f: f.startswith("MethodContext.close (spyne/context.py:40")),
    ("authentication (the users row, the password check)", lambda f: ".authenticate (kkmtransfer/" in f),
    ("SQLAlchemy pool: checkout with pre-ping, return", lambda f: "sqlalchemy/pool/" in f
     or f.startswith("Engine.connect (sqlalchemy")),
    ("commit / rollback", lambda f: "Transaction.commit (sqlalchemy" in f or "Transaction.rollback (sqlalchemy" in f
     or f.startswith("Connection.close (sqlalchemy")),
    ("SQL statements (SQLAlchemy, psycopg2, the database)", lambda f: f.startswith("Connection.execute (sqlalchemy")),
    ("ledger and balances (kkmtransfer/domain)", lambda f: "(kkmtransfer/domain/" in f),
    ("the rest of the use case (kkmtransfer/service_layer)", lambda f: "(kkmtransfer/service_layer/" in f),
    ("SOAP in: parse, validate, deserialize (spyne, lxml)", lambda f: "(spyne/" in f and any(
        k in f for k in ("get_in_object", "create_in_document", "deserialize", "decompose_incoming", "validate",
                         "generate_contexts", "get_in_string"))),
    ("SOAP out: serialize, write (spyne, lxml)", lambda f: "(spyne/" in f and any(
        k in f for k in ("get_out_object", "get_out_string", "serialize", "create_out_string", "to_parent"))),
    ("spyne, the rest (dispatch, contexts, events)", lambda f: "(spyne/" in f),
    ("HTTP front (kkmtransfer/soap/http.py)", lambda f: "(kkmtransfer/soap/http.py" in f),
    ("gunicorn (accept, parse, write, idle threads)", lambda f: "(gunicorn/" in f),
]


def summarise(raw_path: Path) -> list[tuple[str, float]]:
    """Share of samples per layer from py-spy's collapsed stacks ("frame;frame;... count" per line)."""
    counts = {label: 0 for label, _ in LAYERS}
    counts["other"] = 0
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        for label, match in LAYERS:
            if any(match(f) for f in frames):
                counts[label] += int(n)
                break
        else:
            counts["other"] += int(n)
    return [(label, c / total) for label, c in counts.items() if total and c]


def target_connections(conns: list[int]) -> int:
    """The concurrency the ratio targets are judged at: 8 (issue 10), or the middle one measured."""
    return 8 if 8 in conns else sorted(conns)[len(conns) // 2]


def cpu_bound(echo_before: "Result | None", echo_after: "Result | None", call: "Result") -> tuple | None:
    """On cores shared by the application and the database, a CPU-bound closed loop serves requests at about the
    cores' time over the CPU each costs, so a call's ratio to the echo is at most the echo's CPU over (the echo's
    + the call's database CPU): what it would be if the call's application CPU were the echo's (nothing of its
    own). Answers (that bound, the echo's CPU, the call's database CPU) in ms, or None without the figures."""
    echoes = [r.app_cpu_ms for r in (echo_before, echo_after) if r is not None and r.app_cpu_ms]
    if not echoes or not call.db_cpu_ms:
        return None
    echo_cpu = sum(echoes) / len(echoes)
    return echo_cpu / (echo_cpu + call.db_cpu_ms), echo_cpu, call.db_cpu_ms


def stack_bound(bound: tuple | None, sale_echo: "Result | None") -> tuple | None:
    """``cpu_bound``'s bound of the sale (``bound``) with the sale's own echo in place of the call's application
    CPU: the echo's CPU over (the sale's echo's + the sale's database CPU), the ratio a sale reaches when
    nothing but spyne (reading its envelope, writing an answer of its shape) and the database work for it.
    Answers (that bound, the sale's echo's CPU) in ms, or None without the figures."""
    if bound is None or sale_echo is None or not sale_echo.app_cpu_ms:
        return None
    return bound[1] / (sale_echo.app_cpu_ms + bound[2]), sale_echo.app_cpu_ms


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def report(results: list[Result], args, missing, stamp, problems, total, load) -> None:
    def get(section, what, c, workers=None):
        for r in results:
            if r.section == section and r.what == what and r.connections == c and \
                    (workers is None or r.workers == workers):
                return r
        return None

    conns = sorted({r.connections for r in results if r.section == "main"})
    echo_name = "echo (no database)"
    echo = {}
    for c in conns:
        a, b = get("echo-1", echo_name, c), get("echo-2", echo_name, c)
        echo[c] = (a.rate + b.rate) / 2 if a and b else (a or b).rate
    print()
    print(f"kkmtransfer online benchmark: gunicorn {args.workers} workers x {args.threads} threads, PostgreSQL, "
          f"wrk {args.seconds:g} s per run, {args.cards:,} cards; {os.cpu_count()} CPU cores, load average "
          f"{load[0]:.1f} at the start and {load[1]:.1f} at the end (other work on the machine lowers every number)")
    print()
    rows = []
    for c in conns:
        a, b = get("echo-1", echo_name, c), get("echo-2", echo_name, c)
        rows.append(("echo ceiling (before / after)", c, f"{a.rate:,.0f} / {b.rate:,.0f}", f"{a.p50_ms:.1f}",
                     f"{max(a.p99_ms, b.p99_ms):.1f}", "1.00", "", a.errors + b.errors, cpu(a.app_cpu_ms), ""))
    whats = []
    for r in results:
        if r.section == "main" and r.what not in whats:
            whats.append(r.what)
    for what in whats:
        for c in conns:
            r = get("main", what, c)
            if r is None:  # measured at the targets' concurrency only (the sale's echo)
                continue
            db = None
            if what.startswith("GetCardInfo"):
                db = get("bare", "bare read", c)
            elif what.startswith("RegisterOperation") or what.startswith("ReserveBonus"):
                db = get("bare", "bare write", c)
            rows.append((what, c, f"{r.rate:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
                         f"{r.rate / echo[c]:.2f}", f"{r.rate / db.rate:.2f}" if db else "", r.errors,
                         cpu(r.app_cpu_ms), cpu(r.db_cpu_ms)))
    for kind in ("read", "write"):
        for c in conns:
            r = get("bare", f"bare {kind}", c)
            if r:
                rows.append((f"bare psycopg2 {kind}, {r.workers} processes (database ceiling)", c, f"{r.rate:,.0f}", f"{r.p50_ms:.1f}",
                             f"{r.p99_ms:.1f}", f"{r.rate / echo[c]:.2f}", "1.00", "", "", cpu(r.db_cpu_ms)))
    print(table(rows, ("what", "conns", "req/s", "p50 ms", "p99 ms", "vs echo", "vs bare db", "errors",
                       "app CPU ms/req", "db CPU ms/req")))
    print("(CPU per request: of the gunicorn workers and of the database's server processes, from /proc; it "
          "does not depend on what else runs on the machine as much as req/s do)")
    if missing:
        print(f"(not on this server, not measured: {', '.join(missing)})")

    scale_rows = []
    for section in sorted({r.section for r in results if r.section.startswith("scale-")},
                          key=lambda s: int(s.split("-")[1])):
        for r in results:
            if r.section == section:
                e = get(section, echo_name, 8)
                scale_rows.append((r.workers, r.what, f"{r.rate:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
                                   f"{r.rate / e.rate:.2f}", cpu(r.app_cpu_ms), cpu(r.db_cpu_ms)))
    if scale_rows:
        print()
        print(f"processes: gunicorn workers (x {args.threads} threads), 8 connections")
        print(table(scale_rows, ("workers", "what", "req/s", "p50 ms", "p99 ms", "vs its echo", "app CPU ms/req",
                                 "db CPU ms/req")))

    print()
    tc = target_connections(conns)
    rounds = sorted({r.section for r in results if r.section.startswith("round-")}, key=lambda s: int(s.split("-")[1]))

    def round_echo(section):
        """The echo beside a round's calls: the mean of its own (before them) and the next round's (after)."""
        k = int(section.split("-")[1])
        a, b = get(section, echo_name, tc), get(f"round-{k + 1}", echo_name, tc)
        return (a.rate + b.rate) / 2 if a and b else None

    def samples(what):
        """The call's ratios to the echo at the targets' concurrency: the main run's, then each round's."""
        main = get("main", what, tc)
        out = [main.rate / echo[tc]] if main else []
        for section in rounds:
            r, e = get(section, what, tc), round_echo(section)
            if r and e:
                out.append(r.rate / e)
        return out

    if rounds:
        round_rows = []
        for section in rounds:
            e = round_echo(section)
            for r in results:
                if r.section == section and r.what != echo_name and e:
                    round_rows.append((section, r.what, f"{r.rate:,.0f}", f"{e:,.0f}", f"{r.rate / e:.2f}",
                                       f"{r.p99_ms:.1f}", cpu(r.app_cpu_ms), cpu(r.db_cpu_ms)))
        print(f"interleaved rounds at {tc} connections ({args.round_seconds} s a run; the echo beside a round: the "
              "mean of its run before the round's calls and the next one's)")
        print(table(round_rows, ("round", "what", "req/s", "echo req/s", "vs echo", "p99 ms", "app CPU ms/req",
                                 "db CPU ms/req")))
        print()
    print(f"targets at {tc} connections (issue 10): GetCardInfo >= 0.80 of echo, RegisterOperation >= 0.50 (the median "
          "of the main run's ratio and the rounds'); p99 < 25 ms at 8 and < 60 ms at 32 (the main runs); no failed "
          "request")
    for what, share in (("GetCardInfo", 0.8), ("RegisterOperation (sale)", 0.5)):
        r8 = get("main", what, tc)
        r32 = get("main", what, 32)
        if r8:
            verdict = []
            ratios = samples(what)
            mid = median(ratios)
            spread = f" of {len(ratios)}: {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""
            verdict.append(f"{mid:.2f} of echo (median{spread}) ({'met' if mid >= share else 'NOT met'})")
            bound = cpu_bound(get("echo-1", echo_name, tc), get("echo-2", echo_name, tc), r8)
            if bound is not None:
                verdict.append(f"at most {bound[0]:.2f} with the database on these cores (the echo's "
                               f"{bound[1]:.2f} ms of CPU / (the echo's + the call's database {bound[2]:.2f} ms): "
                               "the call's application CPU no more than the echo's)")
            stack = stack_bound(bound, get("main", SALE_ECHO_NAME, tc)) \
                if what.startswith("RegisterOperation") else None
            if stack is not None:
                verdict.append(f"at most {stack[0]:.2f} with spyne's own reading and answering of a sale (the sale's "
                               f"echo, {stack[1]:.2f} ms of CPU) and its database CPU: the ratio the sale would reach "
                               "if the project's own code of a sale cost nothing")
            verdict.append(f"p99 {r8.p99_ms:.1f} ms at {tc} ({'met' if r8.p99_ms < 25 else 'NOT met'})")
            if r32:
                verdict.append(f"p99 {r32.p99_ms:.1f} ms at 32 ({'met' if r32.p99_ms < 60 else 'NOT met'})")
            print(f"  {what}: " + "; ".join(verdict))
    late = [r for r in results if r.timeouts]
    print("  failed requests: " + ("none (met)" if not any(r.errors for r in results) else
                                   "NOT met: " + ", ".join(f"{r.what} at {r.connections}: {r.errors}"
                                                           for r in results if r.errors)
                                   + (" (of them timed out after 5 s: "
                                      + ", ".join(f"{r.what} at {r.connections}: {r.timeouts}" for r in late) + ")"
                                      if late else "")))

    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"online-{stamp}.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["section", "workers", "threads", "what", "connections", "seconds", "requests", "req_per_s",
                    "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "ratio_vs_echo", "ratio_vs_bare_db",
                    "app_cpu_ms_per_req", "db_cpu_ms_per_req", "load_average"])
        for r in results:
            e = echo.get(r.connections)
            if r.section.startswith("scale-"):
                ee = get(r.section, echo_name, 8)
                e = ee.rate if ee else None
            elif r.section.startswith("round-"):
                e = round_echo(r.section)
            db = None
            if r.section == "main" and r.what.startswith("GetCardInfo"):
                db = get("bare", "bare read", r.connections)
            elif r.section == "main" and r.what.startswith(("RegisterOperation", "ReserveBonus")):
                db = get("bare", "bare write", r.connections)
            w.writerow([r.section, r.workers, r.threads, r.what, r.connections, f"{r.seconds:.2f}", r.requests,
                        f"{r.rate:.1f}", f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.max_ms:.2f}",
                        r.errors, f"{r.rate / e:.3f}" if e else "", f"{r.rate / db.rate:.3f}" if db else "",
                        cpu(r.app_cpu_ms), cpu(r.db_cpu_ms), f"{load[0]:.1f}-{load[1]:.1f}"])
    print()
    print(f"written {out}")
    print("RESULT: " + ("all requests answered, ledger consistent" if not problems else
                        "PROBLEMS: " + "; ".join(problems)))
    print(f"total run time {total:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
