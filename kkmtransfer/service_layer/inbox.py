"""The journal inbox: files dropped into KKMTRANSFER_INBOX_DIR are imported and moved away.

Convention for whoever drops files (documented in docs/offline-format.md): write the file under a name
that does not end in ``.csv`` (e.g. ``kkm7-2026-11-23.csv.part``) or that starts with a dot, and rename
it to its final ``*.csv`` name when it is complete. A rename within one file system is atomic, so a
half-written file is never seen under a ``.csv`` name.

Each file is claimed by renaming it into ``processing/`` (two workers never take the same file), then
moved to ``done/`` (even if some rows were rejected: they are in the rejects table) or, when the file as
a whole cannot be read, to ``failed/`` with a ``.error.txt`` beside it. A file left in ``processing/`` by
a crash is taken again after an hour (the import is idempotent, so nothing is applied twice).

Each file taken is a row of ``journal_files`` (state, rows, progress, what the rows came to), which the
console lists. A file uploaded through the console (``receive``) is written into the inbox the same
way (a hidden ``.part`` name renamed when complete) with its row ``queued``; the worker's
``process_inbox`` then takes it like any dropped file.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..adapters.journal_file import JournalFileError
from ..adapters.journal_files_repo import JournalFilesRepository
from ..domain import errors
from .journal import ImportSummary, JournalImport
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

STALE_SECONDS = 3600


@dataclass
class InboxResult:
    name: str
    moved_to: Path
    summary: ImportSummary | None
    error: str | None = None


def _target(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = folder / f"{stamp}-{name}"
    return target


def _claimable(inbox: Path, processing: Path) -> list[Path]:
    fresh = [p for p in inbox.iterdir()
             if p.is_file() and p.name.lower().endswith(".csv") and not p.name.startswith(".")]
    stale = []
    if processing.is_dir():
        cutoff = time.time() - STALE_SECONDS
        stale = [p for p in processing.iterdir() if p.is_file() and p.stat().st_mtime < cutoff]
    return sorted(stale) + sorted(fresh)


class _Tracker:
    """The ``journal_files`` row of one file being imported: started, progress per batch, finished."""

    def __init__(self, billing, name: str, size: int):
        self.billing = billing
        now = billing.clock()
        with UnitOfWork(billing.engine, write=True) as uow:
            repo = JournalFilesRepository(uow.conn)
            row = repo.open_row(name)
            if row is None:
                self.id = repo.add(name=name, state="processing", size=size, created_at=now, started_at=now,
                                   processed=0)
            else:
                self.id = row["id"]
                repo.set(self.id, state="processing", started_at=now, processed=0, size=size)
            uow.commit()
        self.processed = 0

    def _set(self, **values) -> None:
        with UnitOfWork(self.billing.engine, write=True) as uow:
            JournalFilesRepository(uow.conn).set(self.id, **values)
            uow.commit()

    def rows(self, n: int) -> None:
        self._set(rows=n)

    def advance(self, n: int) -> None:
        self.processed += n
        self._set(processed=self.processed)

    def done(self, summary: ImportSummary) -> None:
        self._set(state="done", rows=summary.rows, processed=summary.rows, applied=summary.applied,
                  already=summary.already, rejected=summary.rejected, finished_at=self.billing.clock())

    def failed(self, error: str) -> None:
        self._set(state="failed", error=error[:2000], finished_at=self.billing.clock())


def process_inbox(billing, inbox: Path) -> list[InboxResult]:
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    processing, done, failed = inbox / "processing", inbox / "done", inbox / "failed"
    processing.mkdir(exist_ok=True)
    results = []
    for path in _claimable(inbox, processing):
        claimed = processing / path.name
        try:
            if path != claimed:
                os.rename(path, claimed)
            os.utime(claimed)  # a fresh claim is not stale
        except FileNotFoundError:
            continue  # another worker took it
        tracker = _Tracker(billing, path.name, claimed.stat().st_size)
        importer = JournalImport(billing, progress=tracker.advance)
        try:
            tracker.rows(JournalImport.rows_in([claimed]))
            summary = importer.import_file(claimed)
        except JournalFileError as exc:
            target = _target(failed, path.name)
            os.rename(claimed, target)
            target.with_name(target.name + ".error.txt").write_text(str(exc) + "\n", encoding="utf-8")
            log.error("inbox: %s failed: %s", path.name, exc)
            tracker.failed(str(exc))
            results.append(InboxResult(path.name, target, None, str(exc)))
            continue
        target = _target(done, path.name)
        os.rename(claimed, target)
        tracker.done(summary)
        results.append(InboxResult(path.name, target, summary))
    return results


# -- uploads from the console ------------------------------------------------------------------------
def upload_name(filename: str) -> str:
    """A safe name in the inbox for an uploaded file: its base name, letters, digits and ``._-`` only,
    ending in .csv (ValidationError otherwise)."""
    base = Path((filename or "").replace("\\", "/")).name
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".")
    if not safe.lower().endswith(".csv") or len(safe) <= 4:
        raise errors.ValidationError("нужен файл журнала с расширением .csv")
    return safe[-200:]


def receive(billing, inbox: Path, filename: str, data: bytes, operator: str) -> str:
    """Put an uploaded journal file into the inbox for the worker (row ``queued``, uploaded by
    ``operator``); the name it has there (a stamp in front when the name is taken). Nothing is imported
    here."""
    if not data:
        raise errors.ValidationError("файл пуст")
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    name = upload_name(filename)
    with UnitOfWork(billing.engine, write=True) as uow:
        repo = JournalFilesRepository(uow.conn)
        if repo.exists_name(name) or (inbox / name).exists() or (inbox / "processing" / name).exists():
            name = billing.clock().strftime("%Y%m%dT%H%M%S%f") + "-" + name
        file_id = repo.add(name=name, state="queued", size=len(data), uploaded_by=operator,
                           created_at=billing.clock(), processed=0)
        uow.commit()
    part = inbox / f".{name}.part"
    try:
        with open(part, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(part, inbox / name)  # complete: now the worker may see it
    except OSError as exc:
        part.unlink(missing_ok=True)
        with UnitOfWork(billing.engine, write=True) as uow:
            JournalFilesRepository(uow.conn).set(file_id, state="failed", error=f"not stored: {exc}",
                                                 finished_at=billing.clock())
            uow.commit()
        raise errors.ValidationError(f"файл не сохранён в папку журналов: {exc.strerror or exc}") from None
    return name


def files(billing, inbox: Path, page: int = 1, per_page: int | None = 50) -> tuple[list[dict], int, int, int]:
    """(rows, total, page, pages): the files dropped into the inbox and not yet taken (state
    ``waiting``), then the files taken or uploaded, newest first, each with its pending rejects."""
    inbox = Path(inbox)
    with UnitOfWork(billing.engine) as uow:
        repo = JournalFilesRepository(uow.conn)
        unfinished = repo.names_unfinished()
        total, _ = repo.page(0, 0)
        pages = max(1, -(-total // per_page)) if per_page else 1
        page = min(max(1, page), pages)
        _, rows = repo.page((page - 1) * per_page if per_page else 0, per_page)
        pending = repo.pending_rejects([r["name"] for r in rows])
    waiting = []
    if page == 1 and inbox.is_dir():
        for p in sorted(inbox.iterdir()):
            if p.is_file() and p.name.lower().endswith(".csv") and not p.name.startswith(".") \
                    and p.name not in unfinished:
                waiting.append(dict(id=None, name=p.name, state="waiting", size=p.stat().st_size, rows=None,
                                    processed=0, applied=None, already=None, rejected=None, error=None,
                                    uploaded_by=None, created_at=None, started_at=None, finished_at=None))
    for r in rows:
        r["pending_rejects"] = pending.get(r["name"], 0)
        r["percent"] = 100 if r["state"] in ("done", "failed") else (
            100 * (r["processed"] or 0) // r["rows"] if r["rows"] else 0)
    for w in waiting:
        w["pending_rejects"], w["percent"] = 0, 0
    return waiting + rows, total + len(waiting), page, pages


FILES_HEADER = ["name", "state", "size", "rows", "processed", "applied", "already", "rejected", "pending_rejects",
                "uploaded_by", "created_at", "started_at", "finished_at", "error"]


def files_rows(billing, inbox: Path) -> list[list]:
    def iso(v):
        return v.isoformat(timespec="seconds") if v else ""

    rows, *_ = files(billing, inbox, 1, None)
    return [[r["name"], r["state"], r["size"] if r["size"] is not None else "", _n(r["rows"]), r["processed"] or 0,
             _n(r["applied"]), _n(r["already"]), _n(r["rejected"]), r["pending_rejects"], r["uploaded_by"] or "",
             iso(r["created_at"]), iso(r["started_at"]), iso(r["finished_at"]), r["error"] or ""] for r in rows]


def _n(value) -> str | int:
    return "" if value is None else value
