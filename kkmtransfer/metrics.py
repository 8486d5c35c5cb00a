"""Prometheus metrics (``prometheus_client``): what each process counts, and what the database says.

Counters and histograms are kept per process; under gunicorn set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory writable by every worker (the standard multiprocess mode of prometheus_client), so that one
``GET /metrics`` reports the sum over all workers (and over Celery workers and CLI commands on the same host
that share the directory). Values that the database holds (rejects pending, the last nightly run) are read at
scrape time by ``DatabaseCollector``, so they are right whatever process did the work.

Names (all prefixed ``kkmtransfer_``) are listed in docs/operations.md, "Health and metrics".
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

log = logging.getLogger(__name__)


def _usable_multiprocess_dir() -> None:
    """prometheus_client reads PROMETHEUS_MULTIPROC_DIR when imported and fails on every metric when the
    directory cannot be written (a CLI command run by another user): then count in this process only."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            pass
        if not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
            log.warning("PROMETHEUS_MULTIPROC_DIR %s is not a writable directory: metrics of this process "
                        "are not shared", path)
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


_usable_multiprocess_dir()

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

OPERATIONS = ("GetCardInfo", "FindCardByPhone", "RegisterOperation", "GetCardOperations")

REQUESTS = Counter(
    "kkmtransfer_soap_requests", "SOAP endpoint requests by operation and outcome (fault code; 'none' when the "
    "call succeeded; http_NNN when refused before SOAP, e.g. http_401)", ["operation", "fault"])
LATENCY = Histogram(
    "kkmtransfer_soap_request_duration_seconds", "Time to answer a SOAP endpoint request, by operation",
    ["operation"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
APPLIED = Counter(
    "kkmtransfer_operations_applied", "Operations applied (not already applied) by kind and source",
    ["kind", "source"])
JOURNAL_ROWS = Counter(
    "kkmtransfer_journal_rows", "Offline journal rows read by outcome (applied, already, rejected)", ["outcome"])
THROTTLED = Counter(
    "kkmtransfer_login_throttled", "Requests refused with 429 because of too many failed logins")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def operation_label(name: str | None) -> str:
    """A bounded label: one of the contract's operations, or 'other'."""
    return name if name in OPERATIONS else "other"


_CHILDREN: dict[tuple[str, str], tuple] = {}  # (operation, fault) -> the pre-bound children of both metrics


def record_request(operation: str, fault: str, seconds: float) -> None:
    # ``labels()`` checks and joins the label values and takes the metric's lock on every call: the
    # children are bound once per (operation, fault) instead (both labels are bounded: operation_label,
    # the contract's fault codes, http_NNN)
    try:
        count, latency = _CHILDREN[(operation, fault)]
    except KeyError:
        count, latency = REQUESTS.labels(operation, fault), LATENCY.labels(operation)
        if len(_CHILDREN) < 1024:
            _CHILDREN[(operation, fault)] = count, latency
    count.inc()
    latency.observe(seconds)


def record_applied(kind, source: str, count: int = 1) -> None:
    if count:
        APPLIED.labels(getattr(kind, "value", kind), source).inc(count)


def record_journal(applied: int, already: int, rejected: int) -> None:
    for outcome, n in (("applied", applied), ("already", already), ("rejected", rejected)):
        if n:
            JOURNAL_ROWS.labels(outcome).inc(n)


def record_throttled() -> None:
    THROTTLED.inc()


def _seconds(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class DatabaseCollector:
    """Gauges read from the database at each scrape (one short read transaction; on failure
    ``kkmtransfer_database_up`` is 0 and the other gauges are left out)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        from sqlalchemy import func, select

        from .adapters.db import documents, holds, journal_rejects
        from .adapters.regulation import DONE
        from .service_layer.holds import RESERVED

        up = GaugeMetricFamily("kkmtransfer_database_up", "1 when the database answered this scrape")
        try:
            with self.engine.connect() as conn:
                pending = conn.execute(select(func.count()).select_from(journal_rejects)
                                       .where(journal_rejects.c.status == "pending")).scalar()
                open_holds, held = conn.execute(
                    select(func.count(), func.coalesce(func.sum(holds.c.amount), 0))
                    .where(holds.c.status == RESERVED)).one()
                last = {}
                for kind in ("WriteOff", "Accrual"):
                    row = conn.execute(
                        select(documents.c.business_date, documents.c.started_at, documents.c.completed_at,
                               documents.c.lines)
                        .where(documents.c.kind == kind, documents.c.status == DONE)
                        .order_by(documents.c.business_date.desc()).limit(1)).first()
                    if row is not None:
                        last[kind] = row
        except Exception:  # noqa: BLE001 - a scrape must answer even when the database does not
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("kkmtransfer_journal_rejects_pending",
                              "Offline journal rows rejected and still pending (neither resolved nor dismissed)")
        g.add_metric([], pending or 0)
        yield g
        h = GaugeMetricFamily("kkmtransfer_holds_open", "Holds (ReserveBonus) neither confirmed, cancelled nor released")
        h.add_metric([], open_holds or 0)
        yield h
        h = GaugeMetricFamily("kkmtransfer_holds_open_bonus", "Bonus held by the open holds")
        h.add_metric([], float(held or 0))
        yield h
        success = GaugeMetricFamily("kkmtransfer_nightly_last_success_timestamp_seconds",
                                    "When the last completed nightly document of each kind was completed (Unix time)",
                                    labels=["document"])
        duration = GaugeMetricFamily("kkmtransfer_nightly_last_duration_seconds",
                                     "How long the last completed nightly document of each kind took",
                                     labels=["document"])
        lines = GaugeMetricFamily("kkmtransfer_nightly_last_lines",
                                  "Lines (cards) in the last completed nightly document of each kind",
                                  labels=["document"])
        day = GaugeMetricFamily("kkmtransfer_nightly_last_business_date_timestamp_seconds",
                                "The business date of the last completed nightly document of each kind "
                                "(midnight UTC of that date, Unix time)", labels=["document"])
        for kind, row in last.items():
            done_at, started = _seconds(row.completed_at), _seconds(row.started_at)
            if done_at is not None:
                success.add_metric([kind], done_at)
                if started is not None:
                    duration.add_metric([kind], max(0.0, done_at - started))
            lines.add_metric([kind], row.lines or 0)
            day.add_metric([kind], datetime(row.business_date.year, row.business_date.month,
                                            row.business_date.day, tzinfo=timezone.utc).timestamp())
        yield success
        yield duration
        yield lines
        yield day


def render(engine) -> tuple[bytes, str]:
    """The exposition text: every process's counters (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is
    set, this process's otherwise) and the database's gauges."""
    from prometheus_client import REGISTRY

    db_registry = CollectorRegistry(auto_describe=False)
    db_registry.register(DatabaseCollector(engine))
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    return body + generate_latest(db_registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """For gunicorn's ``child_exit`` hook: fold a dead worker's live gauges away (counters are kept)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def metrics_credentials() -> tuple[str | None, str]:
    """Optional HTTP Basic credentials for ``GET /metrics``: KKMTRANSFER_METRICS_USER / _PASSWORD."""
    return os.environ.get("KKMTRANSFER_METRICS_USER") or None, os.environ.get("KKMTRANSFER_METRICS_PASSWORD", "")
