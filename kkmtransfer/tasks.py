"""Celery tasks: ``celery -A kkmtransfer.tasks worker`` and ``celery -A kkmtransfer.tasks beat``.

The configuration is the top-level ``celeryconfig.py`` (broker, beat schedule, time limits, acks-late).
Each task opens its own units of work: one transaction per batch, nothing held across the task.
"""
from __future__ import annotations

import logging
from datetime import date

from celery import Celery

from .domain import errors

log = logging.getLogger(__name__)

app = Celery("kkmtransfer")
app.config_from_object("celeryconfig")

_billing = None


def billing():
    """One engine per worker process, made on first use (after the fork)."""
    global _billing
    if _billing is None:
        from .app import create_billing, require_schema

        _billing = create_billing()
        require_schema(_billing.engine, _billing.settings.database_url)
    return _billing


# Expected errors (a date in the future, a bad argument, a date being written by another run) fail the
# task and reach its result, but the worker logs them in one line, without "raised unexpected" and a
# traceback (Celery's Task.throws).
EXPECTED = (errors.DomainError, ValueError, TypeError)


@app.task(name="kkmtransfer.nightly_regulation", throws=EXPECTED)
def nightly_regulation(day: str | None = None) -> list[dict]:
    """Run the nightly regulation up to ``day`` (ISO date; default today in the business zone)."""
    from .service_layer.nightly import Nightly

    reports = Nightly(billing()).run(date.fromisoformat(day) if day else None)
    return [dict(day=r.day.isoformat(), expired_lots=r.expired_lots, accrued_lots=r.accrued_lots,
                 write_off_lines=r.write_off_lines, accrual_lines=r.accrual_lines, skipped=r.skipped)
            for r in reports]


@app.task(name="kkmtransfer.import_inbox", throws=EXPECTED)
def import_inbox() -> list[dict]:
    """Import the journal files waiting in KKMTRANSFER_INBOX_DIR (beat: every minute)."""
    from .service_layer.inbox import process_inbox

    b = billing()
    return [dict(file=r.name, moved_to=str(r.moved_to), error=r.error,
                 rows=r.summary.rows if r.summary else 0, applied=r.summary.applied if r.summary else 0,
                 already=r.summary.already if r.summary else 0, rejected=r.summary.rejected if r.summary else 0)
            for r in process_inbox(b, b.settings.inbox_dir)]
