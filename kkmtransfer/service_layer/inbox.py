"""The journal inbox: files dropped into KKMTRANSFER_INBOX_DIR are imported and moved away.

Convention for whoever drops files (documented in docs/offline-format.md): write the file under a name
that does not end in ``.csv`` (e.g. ``kkm7-2026-11-23.csv.part``) or that starts with a dot, and rename
it to its final ``*.csv`` name when it is complete. A rename within one file system is atomic, so a
half-written file is never seen under a ``.csv`` name.

Each file is claimed by renaming it into ``processing/`` (two workers never take the same file), then
moved to ``done/`` (even if some rows were rejected: they are in the rejects table) or, when the file as
a whole cannot be read, to ``failed/`` with a ``.error.txt`` beside it. A file left in ``processing/`` by
a crash is taken again after an hour (the import is idempotent, so nothing is applied twice).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..adapters.journal_file import JournalFileError
from .journal import ImportSummary, JournalImport

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


def process_inbox(billing, inbox: Path) -> list[InboxResult]:
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    processing, done, failed = inbox / "processing", inbox / "done", inbox / "failed"
    processing.mkdir(exist_ok=True)
    results = []
    importer = JournalImport(billing)
    for path in _claimable(inbox, processing):
        claimed = processing / path.name
        try:
            if path != claimed:
                os.rename(path, claimed)
            os.utime(claimed)  # a fresh claim is not stale
        except FileNotFoundError:
            continue  # another worker took it
        try:
            summary = importer.import_file(claimed)
        except JournalFileError as exc:
            target = _target(failed, path.name)
            os.rename(claimed, target)
            target.with_name(target.name + ".error.txt").write_text(str(exc) + "\n", encoding="utf-8")
            log.error("inbox: %s failed: %s", path.name, exc)
            results.append(InboxResult(path.name, target, None, str(exc)))
            continue
        target = _target(done, path.name)
        os.rename(claimed, target)
        results.append(InboxResult(path.name, target, summary))
    return results
