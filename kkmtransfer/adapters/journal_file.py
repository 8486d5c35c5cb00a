"""The registers' offline transaction journal: a UTF-8, ';'-separated text file with a header line.

See docs/offline-format.md. Rows are read one at a time (the file is never held in memory); each row
becomes either an ``OperationRequest`` or a reason why it is not one.
"""
from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..domain import errors
from ..domain.model import OperationRequest

COLUMNS = ["KKM", "TransactionNumber", "TransactionTime", "Kind", "CardNumber", "ReceiptNumber", "ReceiptSum",
           "BonusAccrued", "BonusSpent", "AccumulationDelta", "ReceiptCountDelta", "OperationId",
           "PromotionCode", "OriginalOperationId"]
HEADER = ";".join(COLUMNS)
DELIMITER = ";"
# Rows without an OperationId get uuid5(KEY_NAMESPACE, "KKM/TransactionNumber/TransactionTime in UTC").
KEY_NAMESPACE = uuid.UUID("0d7c9c55-5b1e-4f7a-9f0e-2b8f3c1a6e42")


class JournalFileError(ValueError):
    """The file as a whole cannot be read (no header, wrong columns, not UTF-8)."""


@dataclass
class JournalRow:
    line_no: int
    raw: str                       # the row in the canonical column order, for the rejects table
    request: OperationRequest | None = None
    journal_key: tuple[str, str, datetime] | None = None  # (KKM, TransactionNumber, time) when id was made
    error: errors.DomainError | None = None

    @property
    def row_key(self) -> str:
        if self.request is not None:
            return f"op:{self.request.operation_id}"
        import hashlib

        return "raw:" + hashlib.sha256(self.raw.encode()).hexdigest()


def _decimal(text: str) -> str | None:
    text = text.strip().replace(",", ".").replace("\u00a0", "").replace(" ", "")
    return text or None


def _time(text: str) -> datetime:
    text = text.strip()
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise errors.ValidationError(f"TransactionTime: not an ISO 8601 date and time: {text!r}") from exc
    if value.tzinfo is None:
        raise errors.ValidationError(f"TransactionTime: the time must carry a UTC offset: {text!r}")
    return value


def parse_row(values: dict[str, str], line_no: int) -> JournalRow:
    raw = DELIMITER.join(values.get(c, "") for c in COLUMNS)
    row = JournalRow(line_no=line_no, raw=raw)
    try:
        kkm = values["KKM"].strip()
        number = values["TransactionNumber"].strip()
        when = _time(values["TransactionTime"])
        if not number or len(number) > 64:
            raise errors.ValidationError("TransactionNumber is required (at most 64 characters)")
        op_id = values["OperationId"].strip()
        if not op_id:
            key_time = when.astimezone(timezone.utc)
            op_id = str(uuid.uuid5(KEY_NAMESPACE, f"{kkm}/{number}/{key_time.isoformat()}"))
            row.journal_key = (kkm, number, key_time)
        count = values["ReceiptCountDelta"].strip()
        try:
            count_value = int(count) if count else None
        except ValueError as exc:
            raise errors.ValidationError(f"ReceiptCountDelta: not a whole number: {count!r}") from exc
        row.request = OperationRequest.build(
            operation_id=op_id, card_number=values["CardNumber"], kkm=kkm, operation_time=when,
            kind=values["Kind"].strip(), receipt_sum=_decimal(values["ReceiptSum"]),
            bonus_accrued=_decimal(values["BonusAccrued"]), bonus_spent=_decimal(values["BonusSpent"]),
            accumulation_delta=_decimal(values["AccumulationDelta"]), receipt_count_delta=count_value,
            receipt_number=values["ReceiptNumber"], promotion_code=values["PromotionCode"],
            original_operation_id=values["OriginalOperationId"].strip() or None,
        )
    except errors.DomainError as exc:
        row.request, row.journal_key, row.error = None, None, exc
    return row


def parse_raw(raw: str, line_no: int = 0) -> JournalRow:
    """A row as kept in the rejects table (canonical column order) parsed again."""
    fields = next(csv.reader([raw], delimiter=DELIMITER))
    return parse_row(dict(zip(COLUMNS, fields + [""] * (len(COLUMNS) - len(fields)))), line_no)


def read_journal(path: Path) -> Iterator[JournalRow]:
    """Stream the rows of a journal file. A row with the wrong number of fields is an invalid row (kept
    as a reject by the importer); a file without the right header is a JournalFileError."""
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise JournalFileError(f"{path}: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle, delimiter=DELIMITER)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise JournalFileError(f"{path}: empty file, expected the header line {HEADER}")
        except UnicodeDecodeError as exc:
            raise JournalFileError(f"{path}: not UTF-8 text") from exc
        missing = [c for c in COLUMNS if c not in header]
        unknown = [h for h in header if h not in COLUMNS]
        if missing or unknown or len(set(header)) != len(header):
            raise JournalFileError(f"{path}: the header must name the columns {HEADER} "
                                   f"(missing: {missing or '-'}; unknown: {unknown or '-'})")
        try:
            for fields in reader:
                line_no = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    raw = DELIMITER.join(fields)
                    yield JournalRow(line_no=line_no, raw=raw, error=errors.ValidationError(
                        f"{len(fields)} fields, the header has {len(header)}"))
                    continue
                yield parse_row(dict(zip(header, fields)), line_no)
        except UnicodeDecodeError as exc:
            raise JournalFileError(f"{path}: not UTF-8 text after line {reader.line_num}") from exc


def count_rows(path: Path) -> int:
    """Lines after the header, counted fast (for a progress bar)."""
    n = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            n += block.count(b"\n")
    return max(n - 1, 0)
