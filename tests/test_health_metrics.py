"""GET /health and GET /metrics over HTTP: the health check's 200 and 503 (database down, schema behind), and
the Prometheus counters summed over two gunicorn workers, the database's gauges, the optional Basic auth."""
from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kkmtransfer.adapters.migrate import head_revision, upgrade
from kkmtransfer.app import web_engine
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.nightly import Nightly
from kkmtransfer.soap.service import NS

from .conftest import METRICS_PASSWORD, METRICS_USER, PASSWORD, USER, free_port, zeep_client
from .helpers import ISSUED, op_dict
from .test_journal import journal, line


def soap_envelope(op: str, inner: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
            f' xmlns:k="{NS}"><s:Body><k:{op}>{inner}</k:{op}></s:Body></s:Envelope>').encode()


def serve(app):
    from kkmtransfer.soap.devserver import make_server

    httpd = make_server("127.0.0.1", 0, app)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def app_on(url: str):
    from kkmtransfer.app import create_wsgi_app

    settings = Settings(database_url=url, db_connect_timeout=2)
    return create_wsgi_app(settings, web_engine(settings))


# -- /health ---------------------------------------------------------------------------------------------

def test_health_is_200_with_the_schema_and_the_last_nightly_date(db, server, monkeypatch):
    monkeypatch.delenv("KKMTRANSFER_BROKER_URL", raising=False)
    base = server.rsplit("/", 1)[0]
    first = requests.get(base + "/health", timeout=10)
    assert first.status_code == 200, first.text
    assert first.headers["Content-Type"] == "application/json" and first.headers["X-Request-Id"]
    body = first.json()
    head = head_revision(db.settings.database_url)
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["schema"] == {"current": head, "head": head}
    assert body["last_nightly_date"] is None        # no nightly run yet
    assert body["broker"] == "ok"                   # the machine's Redis
    db.add_card_range(1, 1, "H", 0, None, issued=ISSUED)
    Nightly(db).run(date(2026, 11, 13))
    assert requests.get(base + "/health", timeout=10).json()["last_nightly_date"] == "2026-11-13"


def test_health_reports_an_unreachable_broker_as_a_warning_not_a_failure(db, server, monkeypatch):
    monkeypatch.setenv("KKMTRANSFER_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    started = datetime.now()
    answer = requests.get(server.rsplit("/", 1)[0] + "/health", timeout=10)
    assert (datetime.now() - started).total_seconds() < 3
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["broker"].startswith("unreachable")
    assert any("broker" in w for w in body["warnings"])


def test_health_is_503_when_the_database_is_down():
    down = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/kkm"
    httpd, base = serve(app_on(down))
    try:
        started = datetime.now()
        answer = requests.get(base + "/health", timeout=15)
        assert (datetime.now() - started).total_seconds() < 10
        assert answer.status_code == 503
        assert answer.headers["Content-Type"] == "application/json"
        body = answer.json()
        assert body["status"] == "fail" and body["database"].startswith("error:")
        assert body["schema"]["current"] is None and body["schema"]["head"] == head_revision(down)
        # /metrics still answers, and says the database is down
        metrics = requests.get(base + "/metrics", timeout=15)
        assert metrics.status_code == 200 and "kkmtransfer_database_up 0.0" in metrics.text
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_health_is_503_while_the_schema_is_behind_and_200_once_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'behind.sqlite3'}"
    head = head_revision(url)
    upgrade(url, "0005")
    httpd, base = serve(app_on(url))
    try:
        answer = requests.get(base + "/health", timeout=10)
        assert answer.status_code == 503
        body = answer.json()
        assert body["schema"] == {"current": "0005", "head": head} and "db upgrade" in body["database"]
        upgrade(url)
        again = requests.get(base + "/health", timeout=10)
        assert again.status_code == 200 and again.json()["schema"]["current"] == head
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_health_and_metrics_refuse_other_methods_without_html(server):
    base = server.rsplit("/", 1)[0]
    for path in ("/health", "/metrics"):
        answer = requests.post(base + path, data=b"x", timeout=10)
        assert answer.status_code == 405 and "html" not in answer.headers["Content-Type"]


# -- /metrics under gunicorn with 2 workers ------------------------------------------------------------------

def scrape(base: str) -> dict:
    answer = requests.get(base + "/metrics", auth=(METRICS_USER, METRICS_PASSWORD), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counter_pids(directory) -> set[str]:
    return {p.stem.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")}


def test_metrics_are_summed_over_the_gunicorn_workers(db, gunicorn_metrics, tmp_path):
    base, multiproc = gunicorn_metrics
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 2, "M", 0, None, issued=ISSUED)
    before = scrape(base)

    n = 40
    for i in range(n):
        answer = requests.post(base + "/KKMTransfer", auth=(USER, PASSWORD), timeout=30,
                               data=soap_envelope("GetCardInfo", f"<k:CardNumber>NOPE{i}</k:CardNumber>"),
                               headers={"Content-Type": "text/xml", "Connection": "close"})
        assert answer.status_code == 500 and "CardNotFound" in answer.text
    for i in range(n):
        answer = requests.post(base + "/KKMTransfer", auth=(USER, PASSWORD), timeout=30,
                               data=soap_envelope("GetCardInfo", "<k:CardNumber>M1</k:CardNumber>"),
                               headers={"Content-Type": "text/xml", "Connection": "close"})
        assert answer.status_code == 200
    client = zeep_client(base + "/KKMTransfer")
    ops = [op_dict("M1", accrued="1.00"), op_dict("M2", accrued="2.00"), op_dict("M1", kind="Return",
                                                                                    receipt_sum="10.00")]
    ops[2]["OriginalOperationId"] = ops[0]["OperationId"]
    for op in ops:
        assert client.service.RegisterOperation(Operation=op).Status == "Applied"
    assert client.service.RegisterOperation(Operation=ops[1]).Status == "AlreadyApplied"
    unauthorised = requests.post(base + "/KKMTransfer", auth=(USER, "wrong"), timeout=30,
                                 data=soap_envelope("GetCardInfo", "<k:CardNumber>M1</k:CardNumber>"),
                                 headers={"Content-Type": "text/xml", "Connection": "close"})
    assert unauthorised.status_code == 401

    assert len(counter_pids(multiproc)) >= 2, "one worker served every request: nothing was summed"
    after = scrape(base)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    requests_total = "kkmtransfer_soap_requests_total"
    assert delta(requests_total, operation="GetCardInfo", fault="Client.CardNotFound") == n
    assert delta(requests_total, operation="GetCardInfo", fault="none") == n
    assert delta(requests_total, operation="RegisterOperation", fault="none") == 4
    assert delta(requests_total, operation="none", fault="http_401") == 1
    assert delta("kkmtransfer_soap_request_duration_seconds_count", operation="GetCardInfo") == 2 * n
    assert delta("kkmtransfer_soap_request_duration_seconds_bucket", operation="GetCardInfo", le="+Inf") == 2 * n
    applied = "kkmtransfer_operations_applied_total"
    assert delta(applied, kind="Sale", source="online") == 2
    assert delta(applied, kind="Return", source="online") == 1
    assert value(after, "kkmtransfer_database_up") == 1


def test_metrics_count_login_throttling_over_the_workers(db, gunicorn_metrics):
    base, _ = gunicorn_metrics
    db.add_user(USER, PASSWORD)
    before = value(scrape(base), "kkmtransfer_login_throttled_total")
    refused = 0
    for _ in range(40):   # each worker throttles on its own: after 5 failures per worker, 429s
        answer = requests.post(base + "/KKMTransfer", auth=("throttle-me", "bad"), timeout=30,
                               data=soap_envelope("GetCardInfo", "<k:CardNumber>1</k:CardNumber>"),
                               headers={"Content-Type": "text/xml", "Connection": "close"})
        assert answer.status_code in (401, 429)
        refused += answer.status_code == 429
    assert refused > 0
    assert value(scrape(base), "kkmtransfer_login_throttled_total") - before == refused


def test_metrics_read_rejects_and_the_nightly_from_the_database(db, gunicorn_metrics, tmp_path):
    base, _ = gunicorn_metrics
    db.add_card_range(1, 1, "J", 0, None, issued=ISSUED)
    t0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone(timedelta(hours=3)))
    db.clock.set(t0 + timedelta(days=1))
    summary = JournalImport(db).import_file(journal(tmp_path, "r.csv", line(number="1", accrued="2.00"),
                                                    line(number="2", card="NOPE"),
                                                    line(number="3", total="bad")))
    assert (summary.applied, summary.rejected) == (1, 2)
    [report, *_] = Nightly(db).run(date(2026, 11, 21))
    samples = scrape(base)
    assert value(samples, "kkmtransfer_journal_rejects_pending") == 2
    with db.engine.connect() as conn:
        from sqlalchemy import select

        from kkmtransfer.adapters.db import documents

        docs = {r.kind: r for r in conn.execute(select(documents)).all()}
    assert set(docs) == {"WriteOff", "Accrual"}
    for kind, row in docs.items():
        done = row.completed_at.replace(tzinfo=row.completed_at.tzinfo or timezone.utc)
        started = row.started_at.replace(tzinfo=row.started_at.tzinfo or timezone.utc)
        assert value(samples, "kkmtransfer_nightly_last_success_timestamp_seconds", document=kind) == \
            pytest.approx(done.timestamp())
        assert value(samples, "kkmtransfer_nightly_last_duration_seconds", document=kind) == \
            pytest.approx((done - started).total_seconds())
        assert value(samples, "kkmtransfer_nightly_last_lines", document=kind) == row.lines
    assert value(samples, "kkmtransfer_nightly_last_business_date_timestamp_seconds", document="Accrual") == \
        datetime(2026, 11, 21, tzinfo=timezone.utc).timestamp()


def test_metrics_count_the_open_holds_from_the_database(db, gunicorn_metrics):
    from decimal import Decimal

    from kkmtransfer.service_layer.holds import HoldService

    from .helpers import new_id, request

    base, _ = gunicorn_metrics
    db.add_card_range(1, 1, "H", 0, None, issued=ISSUED)
    db.register_operation(request("H1", receipt_sum="500.00", accrued="50.00"))
    holds = HoldService(db)
    first, second = new_id(), new_id()
    holds.reserve(first, "H1", "KKM-1", Decimal("12.50"))
    holds.reserve(second, "H1", "KKM-1", Decimal("7.50"))
    samples = scrape(base)
    assert value(samples, "kkmtransfer_holds_open") == 2
    assert value(samples, "kkmtransfer_holds_open_bonus") == 20.0
    holds.cancel(second)
    samples = scrape(base)
    assert value(samples, "kkmtransfer_holds_open") == 1
    assert value(samples, "kkmtransfer_holds_open_bonus") == 12.5


def test_metrics_need_the_configured_basic_auth_and_health_needs_none(gunicorn_metrics):
    base, _ = gunicorn_metrics
    for auth in (None, (METRICS_USER, "wrong"), ("someone", METRICS_PASSWORD)):
        answer = requests.get(base + "/metrics", auth=auth, timeout=10)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        assert "html" not in answer.headers["Content-Type"] and "kkmtransfer_" not in answer.text
    assert requests.get(base + "/health", timeout=10).status_code == 200


def test_journal_imports_are_counted_by_kind_and_outcome(db, tmp_path):
    from prometheus_client import REGISTRY

    def get(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    db.add_card_range(1, 1, "J", 0, None, issued=ISSUED)
    t0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone(timedelta(hours=3)))
    db.clock.set(t0 + timedelta(days=1))
    before = (get("kkmtransfer_operations_applied_total", kind="Sale", source="journal"),
              get("kkmtransfer_journal_rows_total", outcome="applied"),
              get("kkmtransfer_journal_rows_total", outcome="rejected"),
              get("kkmtransfer_journal_rows_total", outcome="already"))
    path = journal(tmp_path, "k.csv", line(number="1", accrued="2.00"), line(number="2", accrued="1.00"),
                   line(number="3", card="NOPE"))
    JournalImport(db).import_file(path)
    JournalImport(db).import_file(path)
    after = (get("kkmtransfer_operations_applied_total", kind="Sale", source="journal"),
             get("kkmtransfer_journal_rows_total", outcome="applied"),
             get("kkmtransfer_journal_rows_total", outcome="rejected"),
             get("kkmtransfer_journal_rows_total", outcome="already"))
    assert [a - b for a, b in zip(after, before)] == [2, 2, 2, 2]
