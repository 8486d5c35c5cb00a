"""Celery tasks: ``celery -A kkmtransfer.tasks worker`` and ``celery -A kkmtransfer.tasks beat``.

The configuration is the top-level ``celeryconfig.py`` (broker, beat schedule, time limits, acks-late).
Each task opens its own units of work: one transaction per batch, nothing held across the task.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timezone

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


BUSY_RETRY_SECONDS = 60      # a run busy on another lease is tried again this often…
BUSY_MAX_RETRIES = 60        # …for up to an hour (a lease lasts 10 minutes, renewed while its run lives)


class ExpectedError(Exception):
    """A task refused for a reason an operator can act on (logged as one line, no traceback)."""


# Expected errors fail the task and reach its result, but the worker logs them in one line, without
# "raised unexpected" and a traceback (Celery's Task.throws).
EXPECTED = (ExpectedError, errors.DomainError, ValueError, TypeError)


@app.task(name="kkmtransfer.nightly_regulation", bind=True, max_retries=BUSY_MAX_RETRIES,
          throws=EXPECTED)
def nightly_regulation(self, day: str | None = None) -> list[dict]:
    """Run the nightly regulation up to ``day`` (ISO date; default today in the business zone). Another
    run holding a document's lease (a killed worker's, until it lapses, or a live one): tried again later."""
    from .domain.errors import DomainError
    from .service_layer.nightly import Nightly, RegulationBusy

    try:
        when = date.fromisoformat(day) if day else None
    except (TypeError, ValueError):
        log.error("nightly regulation: not a date (YYYY-MM-DD): %r", day)
        raise ExpectedError(f"not a date (YYYY-MM-DD): {day!r}") from None
    try:
        reports = Nightly(billing()).run(when)
    except RegulationBusy as exc:
        if self.request.retries >= (self.max_retries or 0):
            log.error("nightly regulation %s: %s; gave up after %s tries", day or "today", exc.message,
                      self.request.retries + 1)
            raise ExpectedError(exc.message) from None
        wait = BUSY_RETRY_SECONDS
        if exc.lease_until is not None:  # just after the lease ends (a live run renews it: then again)
            left = (exc.lease_until - datetime.now(timezone.utc)).total_seconds()
            wait = max(1, min(BUSY_RETRY_SECONDS, int(left) + 1))
        log.warning("nightly regulation %s: %s; trying again in %ss", day or "today", exc.message, wait)
        raise self.retry(countdown=wait, exc=ExpectedError(exc.message))
    except DomainError as exc:
        log.error("nightly regulation %s: %s", day or "today", exc.message)
        raise ExpectedError(exc.message) from None
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


@app.task(name="kkmtransfer.release_hung_holds")
def release_hung_holds() -> int:
    """Release the holds (ReserveBonus) not confirmed within KKMTRANSFER_HOLD_TIMEOUT (beat: every minute)."""
    from .service_layer.holds import HoldService

    released = HoldService(billing()).release_hung()
    if released:
        log.info("released %d hung hold(s)", released)
    return released
from . import console_tasks  # noqa: E402,F401  (the web console's long jobs: bonus actions, retries)
