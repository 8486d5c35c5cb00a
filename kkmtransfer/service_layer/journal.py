"""Loading registers' offline journals into the ledger, exactly once, losing no row.

Rows are applied in batches of one transaction. A refused row never takes its neighbours with it: the
ledger checks everything before it writes anything, so a refusal leaves the transaction clean (and if a
concurrent writer makes an insert fail, the batch is run again with a savepoint per row). A row carrying an OperationId is applied like RegisterOperation (same
rules, same faults): the same id already applied online or from another file is AlreadyApplied. A row
without one gets a GUID made from (KKM, TransactionNumber, TransactionTime), kept in ``journal_keys``,
so loading the same file again, or an overlapping one, changes nothing. A row that is invalid or that
the ledger refuses goes to ``journal_rejects`` with its file, line, row and reason.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import threading
from contextlib import nullcontext
from datetime import timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import column, insert, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError, OperationalError

from .. import metrics
from ..adapters.db import analyze_if_stale, journal_keys, journal_rejects
from ..adapters.batch_repository import BatchRepository, copy_journal_keys
from ..adapters.server_ids import engine_namespace
from ..adapters.journal_file import JournalRow, count_rows, parse_raw, read_journal, shard_of
from ..domain import errors
from ..domain.certificates import CertificateOperationRequest
from ..domain.model import OperationRequest, Source
from .services import ALREADY_APPLIED
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

PENDING, RESOLVED, DISMISSED = "pending", "resolved", "dismissed"
KEY_CHUNK = 500
# PostgreSQL: the stored keys among a batch's (KKM, TransactionNumber, time in UTC), in one statement
_KNOWN_KEYS = text(
    "SELECT k.kkm, k.transaction_number, k.transaction_time, k.operation_id FROM journal_keys k "
    "JOIN unnest(CAST(:kkms AS text[]), CAST(:numbers AS text[]), CAST(:times AS timestamp[])) "
    "AS w (kkm, transaction_number, transaction_time) ON k.kkm = w.kkm "
    "AND k.transaction_number = w.transaction_number AND k.transaction_time = w.transaction_time"
).columns(*[column(c.name, c.type) for c in journal_keys.c if c.name != "created_at"])


class RowFailed(errors.DomainError):
    """A row the ledger could not apply for a reason it did not foresee (kept as a reject)."""

    code = "Server.RowFailed"


class _RowFailed(Exception):
    """Inside a batch without savepoints: run the batch again row by row."""


@dataclass
class ImportSummary:
    file: str
    rows: int = 0
    applied: int = 0
    already: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: "ImportSummary") -> None:
        self.rows += other.rows
        self.applied += other.applied
        self.already += other.already
        self.rejected += other.rejected
        for code, n in other.reasons.items():
            self.reasons[code] = self.reasons.get(code, 0) + n


# a batch whose transaction the server rolled back for a lock cycle is run once more
_RETRY_PGCODES = ("40P01", "40001")  # deadlock_detected, serialization_failure
QUEUED_BATCHES = 2  # batches waiting per worker (memory: jobs x (this + 2) x batch rows at most)
# the tables whose statistics a batch's reads are planned on (the lots of its cards, the stored journal keys)
# and which an import grows: their statistics are refreshed when stale after a worker's 1st, 4th, 16th, 64th …
# batch (the tables grow by about that factor in between), so that a first load into an empty ledger is
# planned on what the tables hold, whether or not autovacuum has come round (``analyze_if_stale``)
PLANNED_TABLES = ["lots", "journal_keys"]


def stream_of(row: JournalRow, jobs: int) -> int:
    """The worker a row goes to: a stable hash of its card (a gift certificate's row: of its certificate);
    a row that did not parse, or without a card, goes to the first. The rows of one card stay in one stream,
    in file order."""
    if jobs <= 1 or row.error is not None or row.request is None:
        return 0
    q = row.request
    return shard_of(q.number if isinstance(q, CertificateOperationRequest) else getattr(q, "card_number", None),
                    jobs)


def _can_fork() -> bool:
    """Whether this process may fork import workers: the fork start method exists and this process is not
    a daemonic one (multiprocessing refuses children there: Celery's pool processes)."""
    return ("fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon)


class JournalImport:
    def __init__(self, billing, batch: int = 500, progress: Callable[[int], None] | None = None,
                 jobs: int | None = None, processes: bool = False):
        from .certificates import CertificateService

        self.billing = billing
        self.certificates = CertificateService(billing)
        self.batch = batch
        self.progress = progress or (lambda n: None)
        self.jobs = jobs  # None: KKMTRANSFER_JOURNAL_JOBS
        self._batches = 0  # batches applied by this importer (this process's workers), for the statistics
        # the workers of one file: processes (each reads the file for its shard of the cards) or threads
        # of this process; processes only where this process may fork them (not in a daemonic one: Celery's)
        self.processes = processes and _can_fork()

    # -- import ------------------------------------------------------------------------------
    def _namespace(self):
        return engine_namespace(self.billing.engine)

    def effective_jobs(self, jobs: int | None = None) -> int:
        """Workers for one file (threads, or processes: ``processes``): the argument, else the importer's,
        else KKMTRANSFER_JOURNAL_JOBS; 1 on SQLite (one writer at a time)."""
        if jobs is None:
            jobs = self.jobs
        if jobs is None:
            jobs = getattr(getattr(self.billing, "settings", None), "journal_jobs", 1)
        if self.billing.engine.dialect.name != "postgresql":
            return 1
        return max(1, int(jobs))

    def import_file(self, path: Path, jobs: int | None = None) -> ImportSummary:
        jobs = self.effective_jobs(jobs)
        if jobs > 1:
            if self.processes:
                summary = self._import_processes(path, jobs)
            else:
                summary = self._import_parallel(path, jobs)
            log.info("journal %s: %s (%d workers)", path.name, summary, jobs)
            metrics.record_journal(summary.applied, summary.already, summary.rejected)
            return summary
        summary = self._import_serial(path)
        log.info("journal %s: %s", path.name, summary)
        metrics.record_journal(summary.applied, summary.already, summary.rejected)
        return summary

    def _import_serial(self, path: Path, shard: tuple[int, int] | None = None,
                       stop: Callable[[], bool] = lambda: False) -> ImportSummary:
        """The rows of the file (of one shard of its cards), in batches, in file order, on this thread."""
        summary = ImportSummary(file=path.name)
        pending: list[JournalRow] = []
        for row in read_journal(path, self._namespace(), shard):
            pending.append(row)
            if len(pending) >= self.batch:
                if stop():
                    return summary
                self._apply_batch(pending, path.name, summary)
                pending = []
        if pending and not stop():
            self._apply_batch(pending, path.name, summary)
        return summary

    def _import_processes(self, path: Path, jobs: int) -> ImportSummary:
        """``jobs`` forked processes, each reading the file and applying the rows of its shard of the cards
        (``read_journal(shard=...)``) in batches of its own transactions, as one serial import does: the
        parsing and the planning, which hold the GIL, run on as many cores as there are workers. Each batch's
        summary goes to this process, which adds them and calls ``progress``. The first error of a worker
        stops the others after the batch in hand and is raised here (a worker that dies without a word is
        an error too); batches committed before it stay committed, and loading the file again applies the
        rest once."""
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        stop = ctx.Event()
        procs = [ctx.Process(target=self._shard_worker, args=(path, i, jobs, results, stop),
                             name=f"journal-{i}", daemon=True) for i in range(jobs)]
        summary = ImportSummary(file=path.name)
        failure: BaseException | None = None
        done: set[int] = set()
        try:
            for p in procs:
                p.start()
            while len(done) < jobs:
                try:
                    message = pickle.loads(results.get(timeout=0.5))
                except queue.Empty:
                    dead = [i for i, p in enumerate(procs) if i not in done and p.exitcode is not None]
                    if not dead:
                        continue
                    try:  # what a worker sent before it exited is in the pipe by now
                        message = pickle.loads(results.get(timeout=1))
                    except queue.Empty:
                        failure = failure or RuntimeError(
                            f"journal worker {dead[0]} ended (exit code {procs[dead[0]].exitcode}) before its "
                            "shard was loaded; load the file again to apply the rest")
                        stop.set()
                        done.update(dead)
                        continue
                kind, i, value = message
                if kind == "batch":
                    part, n = value
                    summary.add(part)
                    self.progress(n)
                elif kind == "done":
                    done.add(i)
                else:  # "error"
                    done.add(i)
                    failure = failure or value
                    stop.set()
        except BaseException:
            stop.set()
            raise
        finally:
            for p in procs:
                if p.pid is not None:
                    p.join(30 if not stop.is_set() else 10)
                    if p.is_alive():
                        p.terminate()
                        p.join()
            results.close()
        if failure is not None:
            raise failure
        return summary

    def _shard_worker(self, path: Path, shard: int, jobs: int, results, stop) -> None:
        """A forked worker: the parent's pooled connections are left alone (a pool of its own), its batches'
        summaries and its end (or its error) reported through ``results``."""
        def send(message) -> None:
            try:
                data = pickle.dumps(message)
            except Exception:  # noqa: BLE001 - an error that does not pickle: its type and text
                kind, i, value = message
                data = pickle.dumps((kind, i, RuntimeError(f"{type(value).__name__}: {value}")))
            results.put(data)

        try:
            self.billing.engine.dispose(close=False)
            self.progress = lambda n: None
            real_apply = self._apply_batch

            def apply(rows, file_name, summary, lock=None):
                part = ImportSummary(file=file_name)
                real_apply(rows, file_name, part)
                summary.add(part)
                send(("batch", shard, (part, len(rows))))

            self._apply_batch = apply
            self._import_serial(path, (shard, jobs), stop.is_set)
            send(("done", shard, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent
            send(("error", shard, exc))
        finally:
            results.close()
            results.join_thread()
            os._exit(0)  # no atexit handlers, no pytest teardown, no flush of the parent's buffers

    @staticmethod
    def rows_in(paths: Iterable[Path]) -> int:
        return sum(count_rows(p) for p in paths)

    def _import_parallel(self, path: Path, jobs: int) -> ImportSummary:
        """The caller's thread reads and routes the rows (``stream_of``); each of ``jobs`` worker threads
        applies its stream's batches in order, in transactions of its own connection. The first error of a
        worker stops the others and is raised here; batches committed before it stay committed."""
        summary = ImportSummary(file=path.name)
        lock = threading.Lock()
        stop = threading.Event()
        failures: list[BaseException] = []
        queues = [queue.Queue(maxsize=QUEUED_BATCHES) for _ in range(jobs)]

        def work(q: queue.Queue) -> None:
            while True:
                rows = q.get()
                if rows is None:
                    return
                if stop.is_set():
                    continue  # keep draining so that the reader never blocks on a stopped worker
                try:
                    self._apply_batch(rows, path.name, summary, lock)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    with lock:
                        failures.append(exc)
                    stop.set()

        threads = [threading.Thread(target=work, args=(q,), name=f"journal-{i}", daemon=True)
                   for i, q in enumerate(queues)]
        for t in threads:
            t.start()

        def hand(i: int, rows: list[JournalRow]) -> bool:
            while not stop.is_set():
                try:
                    queues[i].put(rows, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            pending: list[list[JournalRow]] = [[] for _ in range(jobs)]
            for row in read_journal(path, self._namespace()):
                i = stream_of(row, jobs)
                pending[i].append(row)
                if len(pending[i]) >= self.batch:
                    if not hand(i, pending[i]):
                        break
                    pending[i] = []
            else:
                for i, rows in enumerate(pending):
                    if rows and not hand(i, rows):
                        break
        except BaseException:
            stop.set()
            raise
        finally:
            for q in queues:
                q.put(None)  # the workers drain their queues, so this does not block for long
            for t in threads:
                t.join()
        if failures:
            raise failures[0]
        return summary

    def _apply_batch(self, rows: list[JournalRow], file_name: str, summary: ImportSummary,
                     lock: threading.Lock | None = None) -> None:
        for attempt in (1, 2):
            try:
                try:
                    part = self._run_batch(rows, file_name, savepoints=False)
                except (IntegrityError, _RowFailed):
                    # a concurrent writer inserted one of these operations first, or a row failed in a way
                    # the ledger did not foresee: again row by row, each under a savepoint (a failing row is
                    # a reject)
                    part = self._run_batch(rows, file_name, savepoints=True)
                break
            except OperationalError as exc:
                # a deadlock (two streams or another writer inserting the same OperationId or journal key
                # in opposite orders): the server rolled this batch back; run it once more
                if attempt == 2 or getattr(exc.orig, "pgcode", None) not in _RETRY_PGCODES:
                    raise
                log.warning("journal %s: batch rolled back (%s), run again", file_name,
                            getattr(exc.orig, "pgcode", None))
        with lock if lock is not None else nullcontext():
            summary.add(part)
            self.progress(len(rows))
            self._batches += 1
            done = self._batches
        if done & (done - 1) == 0 and done.bit_length() % 2 == 1:  # 1, 4, 16, 64, … (powers of 4)
            stale = analyze_if_stale(self.billing.engine, PLANNED_TABLES)
            if stale:
                log.info("journal %s: statistics of %s refreshed after %d batches", file_name, ", ".join(stale), done)

    def _run_batch(self, rows: list[JournalRow], file_name: str, savepoints: bool) -> ImportSummary:
        summary = ImportSummary(file=file_name)
        now = self.billing.clock()
        with UnitOfWork(self.billing.engine, write=True) as uow:
            uow.keys, uow.key_set = [], self._known_keys(uow.conn, rows)
            if not savepoints:  # read what the batch needs at once, write it at the end
                good = [r.request for r in rows if r.request is not None]
                uow.repo = BatchRepository(uow.conn, [
                    (q.card_number if isinstance(q, OperationRequest) else None, q.operation_id,
                     getattr(q, "original_operation_id", None)) for q in good])
            has_rejects = uow.conn.execute(
                select(journal_rejects.c.id).where(journal_rejects.c.status == PENDING).limit(1)).first()
            applied_kinds: dict = {}
            for row in rows:
                summary.rows += 1
                outcome = self._apply_row(uow, row, now, savepoints, actor=file_name)
                if isinstance(outcome, errors.DomainError):
                    summary.rejected += 1
                    summary.reasons[outcome.code] = summary.reasons.get(outcome.code, 0) + 1
                    self._reject(uow.conn, row, file_name, outcome, now)
                    continue
                if outcome == ALREADY_APPLIED:
                    summary.already += 1
                else:
                    summary.applied += 1
                    kind = getattr(row.request, "kind", "unknown")
                    applied_kinds[kind] = applied_kinds.get(kind, 0) + 1
                if has_rejects:
                    self._resolve(uow.conn, row.row_key, now)
            if not savepoints:
                uow.repo.flush()
            if uow.keys:
                self._store_keys(uow.conn, uow.keys)
            uow.commit()
        for kind, count in applied_kinds.items():
            metrics.record_applied(kind, "journal", count)
        return summary

    def _apply_row(self, uow, row: JournalRow, now, savepoint: bool = True, actor: str | None = None):
        """'Applied' / 'AlreadyApplied', or the DomainError that refused the row (nothing of it written)."""
        if row.error is not None:
            return row.error
        for attempt in (1, 2):
            sp = uow.conn.begin_nested() if savepoint else None
            try:
                if isinstance(row.request, CertificateOperationRequest):  # a gift certificate's operation
                    result = self.certificates.apply(uow, row.request, Source.OFFLINE, now, actor)
                else:
                    result = self.billing.apply(uow.repo, row.request, Source.OFFLINE, now, with_view=False,
                                                actor=actor)
                if row.journal_key is not None:
                    self._remember_key(uow, row, now, new=result.status != ALREADY_APPLIED)
                if sp is not None:
                    sp.commit()
                return result.status
            except errors.DomainError as exc:  # raised before anything of the row was written
                if sp is not None:
                    sp.rollback()
                return exc
            except IntegrityError:
                # the same operation was committed by a concurrent writer (online, or another import)
                if sp is None or attempt == 2:
                    raise
                sp.rollback()
            except OperationalError:
                raise  # a deadlock or a lost connection: the batch, not the row
            except Exception as exc:  # noqa: BLE001 - one bad row never stops a journal
                if sp is None:
                    raise _RowFailed() from exc
                sp.rollback()
                log.warning("journal row %s refused by an unexpected error: %s: %s", row.line_no,
                            type(exc).__name__, exc)
                return RowFailed(f"the row could not be applied: {type(exc).__name__}: {str(exc)[:300]}")
        raise AssertionError("unreachable")

    @staticmethod
    def _known_keys(conn, rows: list[JournalRow]) -> set:
        """The batch's transaction keys already stored (a file loaded again), a query per 500 keys (a
        statement over thousands of tuples is too deep for PostgreSQL). A row whose key is stored takes
        the GUID stored with it (ids made before the id namespace changed stay the same operation)."""
        wanted = list({r.journal_key for r in rows if r.journal_key is not None})
        key = tuple_(journal_keys.c.kkm, journal_keys.c.transaction_number, journal_keys.c.transaction_time)
        stored = {}
        if wanted and conn.dialect.name == "postgresql":  # one statement: the keys as three arrays
            found = conn.execute(_KNOWN_KEYS, {
                "kkms": [k for k, _, _ in wanted], "numbers": [n for _, n, _ in wanted],
                "times": [t.astimezone(timezone.utc).replace(tzinfo=None) for _, _, t in wanted]}).all()
            stored.update({(r.kkm, r.transaction_number, r.transaction_time): r.operation_id for r in found})
            wanted = []
        for i in range(0, len(wanted), KEY_CHUNK):
            found = conn.execute(select(journal_keys.c.kkm, journal_keys.c.transaction_number,
                                        journal_keys.c.transaction_time, journal_keys.c.operation_id)
                                 .where(key.in_(wanted[i:i + KEY_CHUNK]))).all()
            stored.update({(r.kkm, r.transaction_number, r.transaction_time): r.operation_id for r in found})
        for r in rows:
            if r.journal_key in stored and r.request.operation_id != stored[r.journal_key]:
                r.request = dataclasses.replace(r.request, operation_id=stored[r.journal_key])
        return set(stored)

    @staticmethod
    def _store_keys(conn, keys: list[dict]) -> None:
        if conn.dialect.name == "postgresql":
            copy_journal_keys(conn, keys)
        else:
            conn.execute(insert(journal_keys), keys)

    @staticmethod
    def _remember_key(uow, row: JournalRow, now, new: bool) -> None:
        """Keep (KKM, TransactionNumber, TransactionTime) -> GUID; written with the batch."""
        kkm, number, when = row.journal_key
        if row.journal_key in uow.key_set:  # stored already, or the same row twice in one batch
            return
        if not new and uow.conn.execute(select(journal_keys.c.operation_id).where(
                journal_keys.c.kkm == kkm, journal_keys.c.transaction_number == number,
                journal_keys.c.transaction_time == when)).first() is not None:
            return
        uow.key_set.add(row.journal_key)
        uow.keys.append(dict(kkm=kkm, transaction_number=number, transaction_time=when,
                             operation_id=row.request.operation_id, created_at=now))

    @staticmethod
    def _reject(conn, row: JournalRow, file_name: str, exc: errors.DomainError, now) -> None:
        existing = conn.execute(select(journal_rejects.c.id, journal_rejects.c.attempts, journal_rejects.c.status)
                                .where(journal_rejects.c.row_key == row.row_key)).first()
        if existing is None:
            conn.execute(insert(journal_rejects).values(
                row_key=row.row_key, file_name=file_name[:255], line_no=row.line_no, raw_row=row.raw,
                fault_code=exc.code, reason=exc.message, status=PENDING, attempts=1, created_at=now,
                updated_at=now))
        else:
            conn.execute(update(journal_rejects).where(journal_rejects.c.id == existing.id).values(
                fault_code=exc.code, reason=exc.message, attempts=existing.attempts + 1, updated_at=now,
                status=DISMISSED if existing.status == DISMISSED else PENDING))  # dismissed by hand stays so

    @staticmethod
    def _resolve(conn, row_key: str, now) -> None:
        conn.execute(update(journal_rejects)
                     .where(journal_rejects.c.row_key == row_key, journal_rejects.c.status == PENDING)
                     .values(status=RESOLVED, updated_at=now))

    # -- rejects -----------------------------------------------------------------------------
    def rejects(self, status: str | None = PENDING, limit: int | None = None):
        stmt = select(journal_rejects).order_by(journal_rejects.c.id)
        if status:
            stmt = stmt.where(journal_rejects.c.status == status)
        if limit:
            stmt = stmt.limit(limit)
        with UnitOfWork(self.billing.engine) as uow:
            return [dict(r) for r in uow.conn.execute(stmt).mappings()]

    def retry(self) -> ImportSummary:
        """Apply every pending reject again; those that go through (or were applied meanwhile) are
        resolved, the others stay pending with the new reason."""
        summary = ImportSummary(file="(rejects)")
        last_id = 0
        while True:
            with UnitOfWork(self.billing.engine) as uow:
                batch = uow.conn.execute(
                    select(journal_rejects).where(journal_rejects.c.status == PENDING,
                                                  journal_rejects.c.id > last_id)
                    .order_by(journal_rejects.c.id).limit(self.batch)).mappings().all()
            if not batch:
                return summary
            last_id = batch[-1]["id"]
            now = self.billing.clock()
            ns = self._namespace()
            with UnitOfWork(self.billing.engine, write=True) as uow:
                rows = [parse_raw(rej["raw_row"], rej["line_no"], ns) for rej in batch]
                uow.keys, uow.key_set = [], self._known_keys(uow.conn, rows)
                for rej, row in zip(batch, rows):
                    summary.rows += 1
                    outcome = self._apply_row(uow, row, now, actor=rej["file_name"])
                    if isinstance(outcome, errors.DomainError):
                        summary.rejected += 1
                        summary.reasons[outcome.code] = summary.reasons.get(outcome.code, 0) + 1
                        uow.conn.execute(update(journal_rejects).where(journal_rejects.c.id == rej["id"]).values(
                            fault_code=outcome.code, reason=outcome.message, attempts=rej["attempts"] + 1,
                            updated_at=now))
                        continue
                    summary.applied += outcome != ALREADY_APPLIED
                    summary.already += outcome == ALREADY_APPLIED
                    uow.conn.execute(update(journal_rejects).where(journal_rejects.c.id == rej["id"])
                                     .values(status=RESOLVED, attempts=rej["attempts"] + 1, updated_at=now))
                if uow.keys:
                    self._store_keys(uow.conn, uow.keys)
                uow.commit()
            self.progress(len(batch))

    def dismiss(self, reject_id: int, reason: str, actor: str | None = None) -> dict:
        """Close a pending reject by hand ("journal rejects dismiss ID --reason TEXT"): it is kept, marked
        dismissed with the reason (and who), and no longer retried. Returns the reject as it is now."""
        reason = (reason or "").strip()
        if not reason:
            raise errors.ValidationError("give the reason for dismissing the reject (--reason TEXT)")
        now = self.billing.clock()
        note = f"{reason} (by {actor})" if actor else reason
        with UnitOfWork(self.billing.engine, write=True) as uow:
            row = uow.conn.execute(select(journal_rejects).where(journal_rejects.c.id == reject_id)
                                   .with_for_update()).mappings().first()
            if row is None:
                raise errors.ValidationError(f"no journal reject {reject_id} (see kkmtransfer journal rejects)")
            if row["status"] != PENDING:
                raise errors.ValidationError(f"journal reject {reject_id} is {row['status']}, not pending: "
                                             "only a pending reject can be dismissed")
            uow.conn.execute(update(journal_rejects).where(journal_rejects.c.id == reject_id)
                             .values(status=DISMISSED, note=note[:2000], updated_at=now))
            result = dict(uow.conn.execute(select(journal_rejects).where(journal_rejects.c.id == reject_id))
                          .mappings().one())
            uow.commit()
        log.info("journal reject %s dismissed: %s", reject_id, note)
        return result
