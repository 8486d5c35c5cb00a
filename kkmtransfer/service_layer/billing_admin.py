"""Billing start and stop ("включение/выключение биллинга"), and the balance export for registers
("Синхронизация накоплений по ДК для Псевдо-Онлайн")."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import BigInteger, and_, case, delete, func, insert, or_, select, type_coerce, update
from sqlalchemy.exc import IntegrityError

from ..adapters.db import (billing_state, cards, certificates, documents, entries, holds, journal_keys,
                           journal_rejects, lots, operations, receipt_lines)
from ..adapters.repository import CERTIFICATE_ACCOUNT
from ..adapters.server_ids import IdTaken, namespace, server_id
from ..domain import errors
from ..domain.ledger import CardLedger
from ..domain.model import ZERO, Kind, Measure, Source, money
from .unit_of_work import UnitOfWork

OPENING_COLUMNS = ["CardNumber", "Bonus", "Accumulation", "ReceiptCount"]
EXPORT_COLUMNS = ["CardNumber", "Status", "Bonus", "BonusPending", "Accumulation", "AccumulationPending",
                  "ReceiptCount", "ReceiptCountPending", "AsOf"]
CONFIRMATION = "DELETE ALL BILLING DATA"


@dataclass(frozen=True)
class Opening:
    card: str
    bonus: Decimal
    accumulation: Decimal
    receipt_count: int


def read_opening_balances(path: Path) -> list[Opening]:
    """``CardNumber;Bonus;Accumulation;ReceiptCount`` with a header; every error is listed at once."""
    problems, rows, seen = [], [], set()
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=";")
        header = [h.strip() for h in next(reader, [])]
        if header != OPENING_COLUMNS:
            raise errors.ValidationError(f"{path}: the header must be {';'.join(OPENING_COLUMNS)}")
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            where = f"line {reader.line_num}"
            try:
                if len(fields) != 4:
                    raise errors.ValidationError(f"{len(fields)} fields, expected 4")
                number = fields[0].strip()
                if not number or number in seen:
                    raise errors.ValidationError(f"card number missing or repeated: {number!r}")
                seen.add(number)
                count = fields[3].strip() or "0"
                if not count.isdigit():
                    raise errors.ValidationError(f"ReceiptCount: not a whole number >= 0: {count!r}")
                rows.append(Opening(number, money(fields[1].strip().replace(",", ".") or "0", "Bonus"),
                                    money(fields[2].strip().replace(",", ".") or "0", "Accumulation"),
                                    int(count)))
            except errors.DomainError as exc:
                problems.append(f"{where}: {exc.message}")
    if problems:
        shown = "\n".join(problems[:50]) + (f"\n… and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise errors.ValidationError(f"{path}: {len(problems)} bad line(s):\n{shown}")
    return rows


class BillingAdmin:
    def __init__(self, billing):
        self.billing = billing
        self.settings = billing.settings

    def state(self):
        with UnitOfWork(self.billing.engine) as uow:
            return uow.conn.execute(select(billing_state)).mappings().first()

    def enable(self, start: date, opening_file: Path, progress=lambda n: None) -> int:
        """Write one InitialBalance operation per card, dated the last second of the day before
        ``start``. Refused for a future start date and when billing was enabled already."""
        tz = self.settings.tz
        now = self.billing.clock()
        if start > now.astimezone(tz).date():
            raise errors.ValidationError(f"the start date {start} is in the future: give today or a past date")
        openings = read_opening_balances(opening_file)
        when = datetime.combine(start - timedelta(days=1), time(23, 59, 59), tzinfo=tz)
        with UnitOfWork(self.billing.engine, write=True) as uow:
            conn = uow.conn
            enabled_already = errors.ValidationError("billing is enabled already (kkmtransfer billing disable first)")
            if conn.execute(select(billing_state.c.id)).first() is not None:
                raise enabled_already
            try:  # two `billing enable` at once: the second waits for the first and then finds its row
                conn.execute(insert(billing_state).values(id=1, start_date=start, enabled_at=now,
                                                          opening_file=str(opening_file)[:255], cards=len(openings)))
            except IntegrityError:
                raise enabled_already from None
            known = uow.repo.existing_card_numbers([o.card for o in openings])
            unknown = [o.card for o in openings if o.card not in known]
            if unknown:
                raise errors.CardNotFound(f"{len(unknown)} card(s) of the file do not exist, e.g. "
                                          f"{', '.join(unknown[:10])} (create them with cards add-range)")
            ns = namespace(conn)
            op_ids = {o.card: server_id(ns, "opening", o.card) for o in openings}
            for chunk in range(0, len(openings), 500):
                taken = conn.execute(select(operations).where(operations.c.id.in_(
                    [op_ids[o.card] for o in openings[chunk:chunk + 500]]))).mappings().first()
                if taken is not None:
                    raise IdTaken(f"operation {taken['id']} ({taken['kind']}, card {taken['card_number']}) holds "
                                  "the id of an opening balance: run `kkmtransfer ledger verify` and report it")
            for i, o in enumerate(openings, 1):
                op_id = op_ids[o.card]
                uow.repo.insert_operation(
                    id=op_id, card_number=o.card, kind=Kind.INITIAL_BALANCE.value, source=Source.BACKOFFICE.value,
                    operation_time=when, business_date=when.date(), content_hash=op_id, receipt_sum=ZERO,
                    bonus_accrued=o.bonus, bonus_spent=ZERO, accumulation_delta=o.accumulation,
                    receipt_count_delta=o.receipt_count, note=f"opening balance from {opening_file.name}",
                    created_at=now)
                ledger = CardLedger(uow.repo.load_lots(o.card), now)
                ledger.credit(Measure.BONUS, o.bonus)
                ledger.credit(Measure.ACCUMULATION, o.accumulation)
                ledger.credit(Measure.RECEIPT_COUNT, Decimal(o.receipt_count))
                uow.repo.save_moves(o.card, op_id, ledger.moves, now)
                if i % 500 == 0:
                    progress(500)
            progress(len(openings) % 500)
            uow.commit()
        return len(openings)

    def disable(self) -> dict[str, int]:
        """Delete every billing record: operations (with their receipt lines and holds), lots, entries,
        documents, journal keys and rejects, and the billing start. Cards, users, promotions, the bonus
        program and gift certificates (back to Issued) stay."""
        removed = {}
        with UnitOfWork(self.billing.engine, write=True) as uow:
            for table in (receipt_lines, holds, entries, lots, operations, documents, journal_keys, journal_rejects,
                          billing_state):
                removed[table.name] = uow.conn.execute(delete(table)).rowcount
            # gift certificates stay, as printed: Issued, unsold (their sales were billing records)
            removed["certificate sales"] = uow.conn.execute(
                update(certificates).where(certificates.c.state != "Issued").values(
                    state="Issued", expires_at=None, sale_operation_id=None, sold_at=None,
                    valid_until=case((certificates.c.valid_days.is_not(None), None),
                                     else_=certificates.c.valid_until))).rowcount
            uow.commit()
        return removed

    # -- export -------------------------------------------------------------------------------
    def balances(self, numbers: Iterable[str] | None = None) -> Iterator[tuple]:
        """(card, status, bonus, bonus pending, accumulation, acc. pending, count, count pending) for every
        card or the listed ones, as of now, computed in SQL and streamed."""
        now = self.billing.clock()
        raw = type_coerce(lots.c.remaining, BigInteger)
        started = or_(lots.c.available_from.is_(None), lots.c.available_from <= now)
        alive = or_(lots.c.expires_at.is_(None), lots.c.expires_at > now)

        def total(measure: Measure, pending: bool):
            cond = and_(lots.c.measure == measure.value, ~started if pending else and_(started, alive))
            return func.coalesce(func.sum(case((cond, raw), else_=0)), 0)

        sums = (select(lots.c.card_number,
                       total(Measure.BONUS, False).label("b"), total(Measure.BONUS, True).label("bp"),
                       total(Measure.ACCUMULATION, False).label("a"), total(Measure.ACCUMULATION, True).label("ap"),
                       total(Measure.RECEIPT_COUNT, False).label("c"), total(Measure.RECEIPT_COUNT, True).label("cp"))
                .where(lots.c.remaining != 0).group_by(lots.c.card_number).subquery())
        stmt = (select(cards.c.number, cards.c.status, sums.c.b, sums.c.bp, sums.c.a, sums.c.ap, sums.c.c, sums.c.cp)
                .select_from(cards.outerjoin(sums, sums.c.card_number == cards.c.number))
                .where(cards.c.status != CERTIFICATE_ACCOUNT)  # gift certificates' accounts are no cards
                .order_by(cards.c.number))
        wanted = None if numbers is None else list(dict.fromkeys(n.strip() for n in numbers if n.strip()))
        with self.billing.engine.connect() as conn:
            chunks = [None] if wanted is None else [wanted[i:i + 500] for i in range(0, len(wanted), 500)]
            found = set()
            for chunk in chunks:
                query = stmt if chunk is None else stmt.where(cards.c.number.in_(chunk))
                for r in conn.execution_options(yield_per=2000).execute(query):
                    found.add(r[0])
                    yield (r[0], r[1], *(Decimal(int(v or 0)).scaleb(-2).quantize(Decimal("0.01"))
                                         for v in r[2:6]), int(r[6] or 0) // 100, int(r[7] or 0) // 100)
            if wanted is not None and len(found) != len(wanted):
                missing = [n for n in wanted if n not in found]
                raise errors.CardNotFound(f"{len(missing)} listed card(s) do not exist, e.g. {', '.join(missing[:10])}")

    def export(self, out: Path, numbers: Iterable[str] | None = None) -> int:
        """Write the balances file atomically (a temporary file renamed into place)."""
        as_of = self.billing.clock().astimezone(self.settings.tz).isoformat(timespec="seconds")
        tmp = out.with_name(f".{out.name}.tmp")
        n = 0
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, delimiter=";", lineterminator="\n")
                writer.writerow(EXPORT_COLUMNS)
                for row in self.balances(numbers):
                    writer.writerow([*row, as_of])
                    n += 1
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        return n
