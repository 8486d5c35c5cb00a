"""The nightly regulation ("Биллинг: дисконтные карты - ночной регламент").

For a business date D (default: today in the configured zone) it writes two documents:
- WriteOff ("Списание с дисконтных карт"): what burnt by the start of D — bonuses, accumulation and
  receipt counts whose last valid day was before D — one Expiry line (operation) per card;
- Accrual ("Начисление на дисконтные карты"): deferred credits whose first day is D or earlier, one
  Accrual line per card.
Balances never wait for it (a register reads lots by the clock); the documents put in the books what
already happened. It runs in batches of one transaction each, so a crash loses at most the batch in
progress and a re-run completes the date; a date already done adds nothing; missed dates are caught up
one by one, oldest first.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable

from ..adapters import regulation as sql
from ..adapters.db import is_postgresql
from ..domain import errors
from ..domain.rules import day_start
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
MAX_CATCH_UP_DAYS = 366


@dataclass
class DayReport:
    day: date
    expired_lots: int = 0
    accrued_lots: int = 0
    write_off_lines: int = 0
    accrual_lines: int = 0
    skipped: bool = False  # already done before this run


class RegulationBusy(errors.DomainError):
    code = "Server.RegulationBusy"

    def __init__(self, message: str, lease_until=None):
        super().__init__(message)
        self.lease_until = lease_until  # when the other run's lease ends (None: unknown)


def _owner_gone(runner: str | None) -> bool:
    """Whether the run holding a lease was a process of this host that no longer exists (a killed worker
    whose task is delivered again): its lease can be taken over at once instead of waiting for it to end."""
    if not runner:
        return False
    host, _, rest = runner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # this process: another Nightly of ours (a thread) holds it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Nightly:
    def __init__(self, billing, batch: int | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.engine = billing.engine
        self.settings = billing.settings
        self.clock = billing.clock
        self.batch = batch or self.settings.nightly_batch
        self.progress = progress or (lambda what, done, total: None)
        self.runner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.postgres = is_postgresql(self.engine)

    def today(self) -> date:
        return self.clock().astimezone(self.settings.tz).date()

    def run(self, day: date | None = None) -> list[DayReport]:
        """Run every date not yet done up to ``day`` (default today), oldest first."""
        day = day or self.today()
        if day > self.today():
            raise errors.ValidationError(f"{day} is in the future: the regulation runs for today or earlier")
        with UnitOfWork(self.engine) as uow:
            last = sql.last_completed_day(uow.conn)
        first = day if last is None or last >= day else last + timedelta(days=1)
        if (day - first).days > MAX_CATCH_UP_DAYS:
            raise errors.ValidationError(f"more than {MAX_CATCH_UP_DAYS} days to catch up since {last}: "
                                         "run older dates explicitly with --date first")
        reports = []
        current = first
        while current <= day:
            reports.append(self.run_day(current))
            current += timedelta(days=1)
        return reports

    def run_day(self, day: date) -> DayReport:
        report = DayReport(day)
        cutoff = day_start(day, self.settings.tz)
        done_before = 0
        # the accrual's batches go by keyset: its position is this run's, in memory (see sql.accrue_batch)
        keyset = sql.AccrualKeyset()
        # the write-off's cards whose line this run wrote in a committed batch (see sql.expire_batch)
        written = sql.ExpiryLines()

        def expire(*args) -> tuple[int, int]:
            return sql.expire_batch(*args, lines=written)

        def accrue(*args) -> tuple[int, int]:  # (lots taken, lots counted), as the write-off answers
            done = sql.accrue_batch(*args, keyset=keyset)
            return done, done
        for kind, step, count, committed in ((sql.WRITE_OFF, expire, sql.due_expiry_count, written.committed),
                                             (sql.ACCRUAL, accrue, sql.due_accrual_count, None)):
            doc, lots, lines = self._run_document(kind, day, cutoff, step, count, committed)
            if doc is None:
                done_before += 1
            if kind == sql.WRITE_OFF:
                report.expired_lots, report.write_off_lines = lots, lines
            else:
                report.accrued_lots, report.accrual_lines = lots, lines
        report.skipped = done_before == 2
        log.info("nightly %s: %s", day, report)
        return report

    def _run_document(self, kind, day, cutoff, step, count, committed=None):
        now = self.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            doc = sql.ensure_document(uow.conn, kind, day, now)
            if doc["status"] == sql.DONE:
                uow.commit()
                return None, 0, doc["lines"]
            if not sql.claim(uow.conn, doc["id"], self.runner, now, now + LEASE) and not (
                    _owner_gone(doc["leased_by"])
                    and sql.take_over(uow.conn, doc["id"], doc["leased_by"], self.runner, now + LEASE)):
                raise RegulationBusy(f"{kind} of {day} is being written by {doc['leased_by']} "
                                     f"(lease until {doc['lease_until']})", doc["lease_until"])
            total = count(uow.conn, cutoff)
            uow.commit()
        done = 0
        self.progress(kind, 0, total)
        while True:
            with UnitOfWork(self.engine, write=True) as uow:
                now = self.clock()
                if not sql.claim(uow.conn, doc["id"], self.runner, now, now + LEASE):
                    raise RegulationBusy(f"{kind} of {day}: the lease was lost to another run")
                n = step(uow.conn, doc["id"], day, cutoff, now, self.batch, self.postgres)
                # (lots taken, lots counted): the write-off takes an expired lot that holds nothing once and
                # marks it, and does not count it
                taken, n = n
                if taken == 0:
                    lines = sql.finish(uow.conn, doc["id"], now)
                    uow.commit()
                    return doc, done, lines
                uow.commit()
            if committed is not None:
                committed()
            done += n
            self.progress(kind, done, max(total, done))
