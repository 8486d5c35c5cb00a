"""The registers' offline transaction journal: a UTF-8, ';'-separated text file with a header line.

See docs/offline-format.md. Rows are read one at a time (the file is never held in memory); each row
becomes either an ``OperationRequest`` or a reason why it is not one.
"""
from __future__ import annotations

import codecs
import csv
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..domain import errors
from ..domain.certificates import CertificateOperationRequest
from ..domain.model import OperationRequest
from .server_ids import server_id

COLUMNS = ["KKM", "TransactionNumber", "TransactionTime", "Kind", "CardNumber", "ReceiptNumber", "ReceiptSum",
           "BonusAccrued", "BonusSpent", "AccumulationDelta", "ReceiptCountDelta", "OperationId",
           "PromotionCode", "OriginalOperationId"]
HEADER = ";".join(COLUMNS)
DELIMITER = ";"
# Rows without an OperationId get server_id(<the installation's namespace>, "journal", KKM, TransactionNumber,
# TransactionTime in UTC) (adapters/server_ids.py): no register can compute it and send it first.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")   # xs:decimal, ASCII digits only
_INTEGER = re.compile(r"[+-]?[0-9]+")
# the times the business zone can still express (any offset, any zone): older or later is refused
_EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(9998, 12, 31, tzinfo=timezone.utc)
ENCODINGS = ("utf-8-sig", "cp1251")  # registers write cp1251
CERTIFICATE_KIND_PREFIX = "Certificate"  # CertificateSell, CertificateRedeem, CertificateRefund, CertificateReturnSale


class JournalFileError(ValueError):
    """The file as a whole cannot be read (no header, wrong columns, not UTF-8)."""


@dataclass
class JournalRow:
    line_no: int
    raw: str                       # the row in the canonical column order, for the rejects table
    request: OperationRequest | CertificateOperationRequest | None = None
    journal_key: tuple[str, str, datetime] | None = None  # (KKM, TransactionNumber, time) when id was made
    error: errors.DomainError | None = None

    @property
    def row_key(self) -> str:
        if self.request is not None:
            return f"op:{self.request.operation_id}"
        import hashlib

        return "raw:" + hashlib.sha256(self.raw.encode()).hexdigest()


def _decimal(values: dict[str, str], name: str) -> str | None:
    """A money field: the xs:decimal lexical form, or with a decimal comma; spaces between digit groups
    are allowed. Exponents, underscores and non-ASCII digits are refused."""
    raw = values[name]
    text = _DECIMAL_SEEN.get(raw)  # a field seen before (amounts in files repeat): its text, checked
    if text is not None:
        return text
    text = raw.strip().replace(",", ".", 1).replace("\u00a0", "").replace(" ", "")
    if not text:
        return None
    if not _DECIMAL.fullmatch(text):
        raise errors.ValidationError(f"{name}: not a decimal number (digits 0-9 with '.' or ','): {raw.strip()!r}")
    if len(_DECIMAL_SEEN) >= 8192:
        _DECIMAL_SEEN.clear()
    _DECIMAL_SEEN[raw] = text
    return text


_DECIMAL_SEEN: dict[str, str] = {}


def _time(text: str) -> datetime:
    text = text.strip()
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise errors.ValidationError(f"TransactionTime: not an ISO 8601 date and time: {text!r}") from exc
    if value.tzinfo is None:
        raise errors.ValidationError(f"TransactionTime: the time must carry a UTC offset: {text!r}")
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST <= utc <= _LATEST:
        raise errors.ValidationError(f"TransactionTime: out of range (1900-01-01 .. 9998-12-31): {text!r}")
    return value


def parse_row(values: dict[str, str], line_no: int, ns: uuid.UUID, raw: str | None = None) -> JournalRow:
    """One row: a request (its id derived in the namespace ``ns`` when the row has none), or the reason
    it is not one. Never raises for what the row holds. ``raw``: the row in the canonical column order
    when the caller has it (a file whose header is in that order)."""
    if raw is None:
        raw = DELIMITER.join([values.get(c, "") for c in COLUMNS])
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
            op_id = server_id(ns, "journal", kkm, number, key_time.isoformat())
            row.journal_key = (kkm, number, key_time)
        kind = values["Kind"].strip()
        if kind.startswith(CERTIFICATE_KIND_PREFIX):
            row.request = _certificate_request(values, op_id, kkm, when, kind)
            return row
        count = values["ReceiptCountDelta"].strip()
        if count and not _INTEGER.fullmatch(count):
            raise errors.ValidationError(f"ReceiptCountDelta: not a whole number (digits 0-9): {count!r}")
        count_value = int(count) if count else None
        row.request = OperationRequest.build(
            operation_id=op_id, card_number=values["CardNumber"], kkm=kkm, operation_time=when,
            kind=kind, receipt_sum=_decimal(values, "ReceiptSum"),
            bonus_accrued=_decimal(values, "BonusAccrued"), bonus_spent=_decimal(values, "BonusSpent"),
            accumulation_delta=_decimal(values, "AccumulationDelta"), receipt_count_delta=count_value,
            receipt_number=values["ReceiptNumber"], promotion_code=values["PromotionCode"],
            original_operation_id=values["OriginalOperationId"].strip() or None,
        )
    except errors.DomainError as exc:
        row.request, row.journal_key, row.error = None, None, exc
    except (ValueError, ArithmeticError) as exc:  # whatever else a hostile row holds: a reject, never a stop
        row.request, row.journal_key = None, None
        row.error = errors.ValidationError(f"the row cannot be read: {type(exc).__name__}: {exc}")
    return row


def _certificate_request(values: dict[str, str], op_id: str, kkm: str, when: datetime,
                         kind: str) -> CertificateOperationRequest:
    """A gift-certificate row (Kind CertificateSell / CertificateRedeem / CertificateRefund /
    CertificateReturnSale): CardNumber holds the certificate's number, ReceiptSum its Amount; the bonus,
    accumulation, count and promotion columns stay empty."""
    filled = [c for c in ("BonusAccrued", "BonusSpent", "AccumulationDelta", "ReceiptCountDelta", "PromotionCode")
              if values[c].strip()]
    if filled:
        raise errors.ValidationError(f"{', '.join(filled)}: must be empty on a certificate row ({kind})")
    return CertificateOperationRequest.build(
        operation_id=op_id, number=values["CardNumber"], kkm=kkm, operation_time=when,
        kind=kind[len(CERTIFICATE_KIND_PREFIX):], amount=_decimal(values, "ReceiptSum"),
        receipt_number=values["ReceiptNumber"], original_operation_id=values["OriginalOperationId"].strip() or None)


def parse_raw(raw: str, line_no: int, ns: uuid.UUID) -> JournalRow:
    """A row as kept in the rejects table (canonical column order) parsed again."""
    fields = next(csv.reader([raw], delimiter=DELIMITER))
    return parse_row(dict(zip(COLUMNS, fields + [""] * (len(COLUMNS) - len(fields)))), line_no, ns)


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without a byte-order mark), else cp1251 when the whole file decodes as such (what
    registers write); else a JournalFileError that says how to convert the file. Read as a stream."""
    failure = None
    for encoding in ENCODINGS:
        decoder = codecs.getincrementaldecoder(encoding)()
        offset = 0
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    decoder.decode(block)
                    offset += len(block)
                decoder.decode(b"", final=True)
            return encoding
        except UnicodeDecodeError as exc:
            failure = failure or (offset + exc.start, exc.object[exc.start:exc.start + 1])
        except OSError as exc:
            raise JournalFileError(f"{path}: {exc.strerror}") from exc
    at, byte = failure
    raise JournalFileError(f"{path}: neither UTF-8 nor cp1251 text (byte 0x{byte.hex()} at offset {at}): "
                           f"convert it to UTF-8, e.g. iconv -f <its encoding> -t UTF-8 {path.name} > fixed.csv")


def shard_of(number: str | None, shards: int) -> int:
    """The shard (0 … shards-1) of a card's or certificate's number as a request holds it (stripped): a
    stable hash, so that the rows of one card always land together; no number: the first."""
    if shards <= 1 or not number:
        return 0
    return zlib.crc32(number.encode()) % shards


def read_journal(path: Path, ns: uuid.UUID, shard: tuple[int, int] | None = None) -> Iterator[JournalRow]:
    """Stream the rows of a journal file. A row with the wrong number of fields is an invalid row (kept
    as a reject by the importer); a file without the right header is a JournalFileError.

    ``shard=(i, n)``: only the rows of shard ``i`` of ``n`` (``shard_of`` their CardNumber field as the
    request will hold it, stripped), in file order; a line that cannot be split into the header's fields
    belongs to shard 0. Every shard is read from the same file by its own process, so no row is handed
    between processes, and the rows of one card are all in one shard."""
    encoding = detect_encoding(path)
    try:
        handle = open(path, encoding=encoding, newline="")
    except OSError as exc:
        raise JournalFileError(f"{path}: {exc.strerror}") from exc
    with handle:
        # one line is one row, read on its own: a stray quote cannot swallow the lines after it
        lines = enumerate(handle, 1)
        try:
            header = [h.strip() for h in _fields(next(lines)[1])]
        except (StopIteration, csv.Error):
            raise JournalFileError(f"{path}: empty file, expected the header line {HEADER}") from None
        missing = [c for c in COLUMNS if c not in header]
        unknown = [h for h in header if h not in COLUMNS]
        if missing or unknown or len(set(header)) != len(header):
            raise JournalFileError(f"{path}: the header must name the columns {HEADER} "
                                   f"(missing: {missing or '-'}; unknown: {unknown or '-'})")
        canonical = header == COLUMNS  # then a row's fields joined are its canonical form
        mine, shards = shard or (0, 1)
        card_at = header.index("CardNumber")
        for line_no, text in lines:
            if "\x00" in text:  # no database stores it; kept visible in the reject
                if mine == 0:
                    yield JournalRow(line_no=line_no, raw=text.rstrip("\r\n").replace("\x00", "\\x00")[:2000],
                                     error=errors.ValidationError("the row holds a NUL character"))
                continue
            try:
                fields = _fields(text)
            except csv.Error as exc:
                if mine == 0:
                    yield JournalRow(line_no=line_no, raw=text.rstrip("\r\n")[:2000],
                                     error=errors.ValidationError(f"not a ';'-separated row: {exc}"))
                continue
            if not fields or (not fields[0].strip() and all(not f.strip() for f in fields)):
                continue
            if len(fields) != len(header):
                if mine == 0:
                    yield JournalRow(line_no=line_no, raw=DELIMITER.join(fields), error=errors.ValidationError(
                        f"{len(fields)} fields, the header has {len(header)}"))
                continue
            if shards > 1 and shard_of(fields[card_at].strip(), shards) != mine:
                continue  # another worker's card
            yield parse_row(dict(zip(header, fields)), line_no, ns, DELIMITER.join(fields) if canonical else None)


def _fields(text: str) -> list[str]:
    text = text.rstrip("\r\n")
    if '"' not in text:  # no quoting: what the csv module would give, without building a reader per line
        return text.split(DELIMITER) if text else []
    return next(csv.reader([text], delimiter=DELIMITER), [])


def count_rows(path: Path) -> int:
    """Lines after the header, counted fast (for a progress bar)."""
    n = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            n += block.count(b"\n")
    return max(n - 1, 0)
