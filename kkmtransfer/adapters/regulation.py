"""Set-based SQL of the nightly regulation: burning what expired, posting deferred credits.

Each function works on one batch inside the caller's transaction. Batches are read through partial
indexes (``ix_lots_due_expiry``, ``ix_lots_due_accrual``) that hold only what is still due, so a batch
costs the same however large the ledger is.

The write-off takes each expired lot once: the lots whose end came by the cutoff and that no WriteOff has
taken (``expiry_document_id IS NULL``). It burns what they hold (``remaining > 0``: an entry under the card's
Expiry line, the lot emptied) and marks every lot it takes with its document, also a lot that holds nothing
(no entry, no line for it). Nothing lands in a burnt lot afterwards without burning at once in its own
operation (``CardLedger._burn_if_expired``), so a lot taken once never has anything left to burn.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (BigInteger, Integer, String, bindparam, column, func, insert, or_, select, text, type_coerce,
                        update, values)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..domain.model import DEFERRED_ROLES, Kind, Measure, Role, Source
from .db import UTCDateTime, documents, entries, lots, operations, pg_text_array
from .server_ids import IdTaken, namespace, server_id, uuid5_many

LINE_NAMESPACE = uuid.UUID("6b1f3c1e-2f4a-4d7e-9a51-0c4d1e8a7f10")
WRITE_OFF, ACCRUAL = "WriteOff", "Accrual"
RUNNING, DONE = "running", "done"


def document_id(conn: Connection, kind: str, day: date) -> str:
    """The id of the date's document of ``kind``: the stored one, or the one it will be made with (derived
    with the installation's secret, so no register can send an operation under it first)."""
    stored = conn.execute(select(documents.c.id).where(documents.c.kind == kind,
                                                       documents.c.business_date == day)).scalar()
    return stored or server_id(namespace(conn), "document", kind, day.isoformat())


def line_id(doc_id: str, card_number: str) -> str:
    """One line per card in a document; the same id on every run, so nothing is ever written twice. The
    document's id is secret-derived, and so, through it, is every line's."""
    return str(uuid.uuid5(LINE_NAMESPACE, f"{doc_id}/{card_number}"))


def line_ids(doc_id: str, cards) -> list[str]:
    """``[line_id(doc_id, card) for card in cards]`` without a UUID object per card (a batch's line ids cost a
    fifth)."""
    return uuid5_many(LINE_NAMESPACE, f"{doc_id}/", cards)


def _document_row(conn: Connection, kind: str, day: date):
    return conn.execute(select(documents).where(documents.c.kind == kind,
                                                documents.c.business_date == day)).mappings().first()


def ensure_document(conn: Connection, kind: str, day: date, now: datetime):
    row = _document_row(conn, kind, day)
    if row is None:
        doc_id = document_id(conn, kind, day)
        try:
            with conn.begin_nested():
                conn.execute(insert(documents).values(id=doc_id, kind=kind, business_date=day, status=RUNNING,
                                                      lines=0, started_at=now))
        except IntegrityError:
            pass  # another run made it first
        row = _document_row(conn, kind, day)
    return row


def claim(conn: Connection, doc_id: str, runner: str, now: datetime, until: datetime) -> bool:
    """Take (or renew) the document's lease with a conditional UPDATE: one run at a time works on it."""
    result = conn.execute(
        update(documents)
        .where(documents.c.id == doc_id, documents.c.status == RUNNING,
               or_(documents.c.leased_by.is_(None), documents.c.leased_by == runner,
                   documents.c.lease_until < now))
        .values(leased_by=runner, lease_until=until))
    return result.rowcount == 1


def take_over(conn: Connection, doc_id: str, gone: str, runner: str, until: datetime) -> bool:
    """Take the lease of a run known to be gone (its process no longer exists)."""
    result = conn.execute(update(documents).where(documents.c.id == doc_id, documents.c.status == RUNNING,
                                                  documents.c.leased_by == gone)
                          .values(leased_by=runner, lease_until=until))
    return result.rowcount == 1


def finish(conn: Connection, doc_id: str, now: datetime) -> int:
    lines = conn.execute(select(func.count()).select_from(operations)
                         .where(operations.c.document_id == doc_id)).scalar_one()
    conn.execute(update(documents).where(documents.c.id == doc_id)
                 .values(status=DONE, completed_at=now, lines=lines, leased_by=None, lease_until=None))
    return lines


def _due_expiry(cutoff: datetime):
    """Lots that burnt by ``cutoff`` and that no WriteOff has taken yet (read through ix_lots_due_expiry)."""
    return (lots.c.expiry_document_id.is_(None), lots.c.expires_at <= cutoff)


def _due_accrual(cutoff: datetime):
    """Deferred lots that started by ``cutoff`` and are not posted yet (read through ix_lots_due_accrual)."""
    return (lots.c.accrual_document_id.is_(None), lots.c.available_from.is_not(None),
            lots.c.available_from <= cutoff)


def due_expiry_count(conn: Connection, cutoff: datetime) -> int:
    """The due lots that hold something to burn (the ones the write-off counts)."""
    return conn.execute(select(func.count()).select_from(lots)
                        .where(*_due_expiry(cutoff), lots.c.remaining > 0)).scalar_one()


def due_accrual_count(conn: Connection, cutoff: datetime) -> int:
    return conn.execute(select(func.count()).select_from(lots).where(*_due_accrual(cutoff))).scalar_one()


def _take_batch(conn: Connection, due, order, limit: int, postgres: bool):
    """The next ``limit`` due lots (id, card, measure, remaining); on PostgreSQL locked, skipping lots another run holds."""
    order = order if isinstance(order, tuple) else (order,)
    stmt = (select(lots.c.id, lots.c.card_number, lots.c.measure, lots.c.remaining)
            .where(*due).order_by(*order, lots.c.id).limit(limit))
    if postgres:
        stmt = stmt.with_for_update(skip_locked=True)
    return conn.execute(stmt).all()


def _line_rows(doc_id: str, kind: Kind, cards, day: date, cutoff: datetime, now: datetime):
    return [dict(id=line_id(doc_id, c), card_number=c, kind=kind.value, source=Source.NIGHTLY.value, kkm=None,
                 store=None, receipt_number=None, operation_time=cutoff, business_date=day,
                 content_hash=line_id(doc_id, c), receipt_sum=Decimal("0.00"), bonus_accrued=Decimal("0.00"),
                 bonus_spent=Decimal("0.00"), accumulation_delta=Decimal("0.00"), receipt_count_delta=0,
                 promotion_code=None, original_operation_id=None, note=None, created_at=now, document_id=doc_id)
            for c in cards]


def _insert_missing_lines(conn: Connection, rows: list[dict]) -> list[dict]:
    """Insert the lines that do not exist yet (a card's lots may span batches); the existing ones."""
    ids = [r["id"] for r in rows]
    found = conn.execute(select(operations.c.id, operations.c.kind, operations.c.document_id,
                                operations.c.card_number).where(operations.c.id.in_(ids))).all()
    wanted = {r["id"]: r for r in rows}
    for f in found:  # an existing row under a line's id must be that line, never another operation
        w = wanted[f.id]
        if (f.kind, f.document_id, f.card_number) != (w["kind"], w["document_id"], w["card_number"]):
            raise IdTaken(f"operation {f.id} ({f.kind}, card {f.card_number}) holds the id of the "
                          f"{w['kind']} line of card {w['card_number']}: run `kkmtransfer ledger verify`")
    have = {f.id for f in found}
    missing = [r for r in rows if r["id"] not in have]
    if missing:
        conn.execute(insert(operations), missing)
    return [r for r in rows if r["id"] in have]


def _add_to_accrual_lines(conn: Connection, rows: list[dict]) -> None:
    """Add amounts to lines an earlier batch made: on PostgreSQL one UPDATE ... FROM (VALUES ...) for all
    of them; SQLite (in process, no round trips) takes them one by one."""
    if conn.dialect.name != "postgresql":
        conn.execute(update(operations).where(operations.c.id == bindparam("line")).values(
            bonus_accrued=operations.c.bonus_accrued + bindparam("b", type_=operations.c.bonus_accrued.type),
            accumulation_delta=operations.c.accumulation_delta
            + bindparam("a", type_=operations.c.accumulation_delta.type),
            receipt_count_delta=operations.c.receipt_count_delta + bindparam("c")),
            [dict(line=r["id"], b=r["bonus_accrued"], a=r["accumulation_delta"], c=r["receipt_count_delta"])
             for r in rows])
        return
    cents = [(r["id"], int(r["bonus_accrued"].scaleb(2)), int(r["accumulation_delta"].scaleb(2)),
              r["receipt_count_delta"]) for r in rows]
    v = values(column("line", String), column("b", BigInteger), column("a", BigInteger), column("c", Integer),
               name="added").data(cents)
    raw_b, raw_a = type_coerce(operations.c.bonus_accrued, BigInteger), type_coerce(operations.c.accumulation_delta,
                                                                                     BigInteger)
    conn.execute(update(operations).where(operations.c.id == v.c.line).values(
        bonus_accrued=type_coerce(raw_b + v.c.b, operations.c.bonus_accrued.type),
        accumulation_delta=type_coerce(raw_a + v.c.a, operations.c.accumulation_delta.type),
        receipt_count_delta=operations.c.receipt_count_delta + v.c.c))


# -- PostgreSQL: each batch is two statements whatever its size --------------------------------------------
# 1. take the batch (locked, skipping lots another run holds) and answer its lot ids and distinct cards as two
#    arrays; 2. one statement with data-modifying CTEs writes the batch's lines (their ids, derived in Python
#    from the secret-derived document id, come as an array beside their cards), its entries and the lots'
#    new state, all INSERT ... SELECT / UPDATE ... WHERE id = ANY. The lines are inserted with ON CONFLICT, so
#    a line an earlier batch made (a card's lots may span batches) is kept (expiry) or added to (accrual);
#    the same statement counts the rows under a line's id that are not that line (a squatted id), and the
#    caller then raises IdTaken, which rolls the batch back.
_PG_DUE_EXPIRY = "expiry_document_id IS NULL AND expires_at <= :cutoff"
_PG_DUE_ACCRUAL = "accrual_document_id IS NULL AND available_from IS NOT NULL AND available_from <= :cutoff"
_PG_LINE_COLUMNS = ("id, card_number, kind, source, operation_time, business_date, content_hash, receipt_sum, "
                    "bonus_accrued, bonus_spent, accumulation_delta, receipt_count_delta, created_at, document_id")
_PG_V = ("v AS (SELECT * FROM unnest(CAST(CAST(:cards AS text) AS text[]), CAST(CAST(:lines AS text) AS text[])) "
         "AS v(card, line))")
# the write-off's cards come with whether this run has yet to write (or check) their line: a line the run's earlier
# batch wrote is neither inserted again nor probed again (ExpiryLines)
_PG_V_FRESH = ("v AS (SELECT * FROM unnest(CAST(CAST(:cards AS text) AS text[]), CAST(CAST(:lines AS text) AS text[]), "
               "CAST(CAST(:fresh AS text) AS boolean[])) AS v(card, line, fresh))")
# one primary-key probe per line (LATERAL ... OFFSET 0): as a join, the planner hashed the whole operations table
# at every batch while it was small next to the batch (a sequential scan of 40,000 rows: 20-50 ms a batch)
_PG_SQUATTED = ("(SELECT count(*) FROM {v} v CROSS JOIN LATERAL "
                "(SELECT kind, document_id, card_number FROM operations o "
                "WHERE o.id = v.line OFFSET 0) o WHERE o.kind <> :kind "
                "OR o.document_id IS DISTINCT FROM :doc OR o.card_number <> v.card)")
_PG_EXPIRE = f"""
WITH {_PG_V_FRESH},
lines AS (INSERT INTO operations ({_PG_LINE_COLUMNS})
          SELECT v.line, v.card, :kind, :source, :cutoff, :day, v.line, 0, 0, 0, 0, 0, :now, :doc FROM v WHERE v.fresh
          ON CONFLICT (id) DO NOTHING),
b AS MATERIALIZED (SELECT id, card_number, measure, remaining FROM lots
                   WHERE id = ANY(CAST(CAST(:ids AS text) AS bigint[])) AND remaining > 0),
burnt AS (INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount)
          SELECT v.line, b.id, b.card_number, b.measure, :role, -b.remaining FROM b JOIN v ON v.card = b.card_number),
taken AS (UPDATE lots SET remaining = least(remaining, 0), expiry_document_id = :doc
          WHERE id = ANY(CAST(CAST(:ids AS text) AS bigint[])))
SELECT {_PG_SQUATTED.format(v="(SELECT * FROM v WHERE fresh)")}"""
_PG_ACCRUE = f"""
WITH {_PG_V},
posted AS (UPDATE lots SET accrual_document_id = :doc WHERE id = ANY(CAST(CAST(:ids AS text) AS bigint[]))),
sums AS (SELECT e.card_number,
                coalesce(sum(e.amount) FILTER (WHERE e.measure = :bonus), 0) AS b,
                coalesce(sum(e.amount) FILTER (WHERE e.measure = :accumulation), 0) AS a,
                coalesce(sum(e.amount) FILTER (WHERE e.measure = :receipts), 0) AS r
         FROM entries e
         WHERE e.lot_id = ANY(CAST(CAST(:ids AS text) AS bigint[])) AND e.role = ANY(CAST(:roles AS text[]))
         GROUP BY e.card_number),
due AS (SELECT v.line, v.card, s.b, s.a, floor(s.r / 100.0)::int AS r FROM sums s JOIN v ON v.card = s.card_number
        WHERE s.b <> 0 OR s.a <> 0 OR s.r <> 0),
written AS (INSERT INTO operations ({_PG_LINE_COLUMNS})
            SELECT line, card, :kind, :source, :cutoff, :day, line, 0, b, 0, a, r, :now, :doc FROM due
            ON CONFLICT (id) DO UPDATE SET bonus_accrued = operations.bonus_accrued + excluded.bonus_accrued,
                accumulation_delta = operations.accumulation_delta + excluded.accumulation_delta,
                receipt_count_delta = operations.receipt_count_delta + excluded.receipt_count_delta
            WHERE operations.kind = excluded.kind AND operations.document_id = excluded.document_id
              AND operations.card_number = excluded.card_number
            RETURNING 1)
SELECT (SELECT count(*) FROM due) - (SELECT count(*) FROM written)"""
_PG_TIMES = (bindparam("cutoff", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime()))
# The accrual's take: the cards of the next due lots (a quarter of a batch of them, the candidates), with all
# their due lots up to ``limit``, in card order: a card's lots, which start on different days, mostly fall in
# one batch and its line is written by one INSERT (a line found again, a card cut at a batch's end or whose lots
# another run held, is added to). The lots are found card by card through ix_lots_due_accrual_card (the LATERAL
# with OFFSET 0 keeps the planner from a hash join over every lot still due). The rows are locked inside it, so
# the lots of the cards cut off by ``limit`` are locked too until the batch commits.
# The candidates are read by keyset (``take_accrual_after``): after the last candidate (available_from,
# card_number, id) of the run's previous batch, so a batch does not step over the index entries of the lots the
# earlier batches posted (they stay in ix_lots_due_accrual, dead, until a vacuum; the index scan marks them
# dead on its first look, after that each costs a share of a page read): from the start, each batch read them
# all again, which grows with the square of the document. The statement answers its last candidate, the next
# batch's start; what the keyset leaves behind (a card cut at ``limit``, a lot another transaction held) is
# found by a sweep from the start (``take_accrual``), see _pg_take_accrual.
_PG_AFTER = " AND (available_from, card_number, id) > (:after_from, :after_card, :after_id)"
_PG_TAKE_ACCRUAL = """
WITH x AS (SELECT available_from, card_number, id FROM lots WHERE {due}{after}
           ORDER BY available_from, card_number, id LIMIT :candidates),
c AS (SELECT DISTINCT card_number FROM x),
b AS (SELECT d.id, d.card_number FROM (SELECT card_number FROM c ORDER BY card_number) c2
      CROSS JOIN LATERAL (SELECT id, card_number FROM lots WHERE card_number = c2.card_number AND {due}
                          OFFSET 0) d
      ORDER BY d.card_number, d.id LIMIT :limit FOR UPDATE OF d SKIP LOCKED),
last AS (SELECT available_from, card_number, id FROM x
         ORDER BY available_from DESC, card_number DESC, id DESC LIMIT 1)
SELECT count(*), coalesce(array_agg(id ORDER BY id), '{{}}')::text,
       coalesce(array_agg(DISTINCT card_number), '{{}}'),
       (SELECT available_from FROM last), (SELECT card_number FROM last), (SELECT id FROM last) FROM b"""
_PG_STATEMENTS = {
    # every due lot is taken (and marked by the write); only the cards of the lots that hold something get a
    # line; answers (lots taken, lots to burn, their ids, the cards)
    "take_expiry": text(f"""
WITH b AS (SELECT id, card_number, remaining FROM lots WHERE {_PG_DUE_EXPIRY} ORDER BY expires_at, id LIMIT :limit
           FOR UPDATE SKIP LOCKED)
SELECT count(*), count(*) FILTER (WHERE remaining > 0), coalesce(array_agg(id ORDER BY id), '{{}}')::text,
       coalesce(array_agg(DISTINCT card_number) FILTER (WHERE remaining > 0), '{{}}') FROM b""")
    .bindparams(_PG_TIMES[0]),
    "take_accrual": text(_PG_TAKE_ACCRUAL.format(due=_PG_DUE_ACCRUAL, after="")).bindparams(_PG_TIMES[0]),
    "take_accrual_after": text(_PG_TAKE_ACCRUAL.format(due=_PG_DUE_ACCRUAL, after=_PG_AFTER))
    .bindparams(_PG_TIMES[0]),
    "expiry": text(_PG_EXPIRE).bindparams(*_PG_TIMES),
    "accrual": text(_PG_ACCRUE).bindparams(*_PG_TIMES),
}


_pg_array = pg_text_array  # the nightly's name for it


def _pg_write(conn: Connection, what: str, kind: Kind, doc_id: str, day: date, cutoff: datetime, now: datetime,
              ids, cards, lines=None, **params) -> None:
    """A taken batch's one write (``_PG_STATEMENTS[what]``): the lines, the entries and the lots' new state;
    it counts the line ids held by anything but their line (``IdTaken``, the batch rolls back). ``lines``: the
    cards' line ids when the caller has them (else derived here)."""
    squatted = conn.execute(_PG_STATEMENTS[what], dict(
        params, cards=_pg_array(cards), lines=_pg_array(lines or line_ids(doc_id, cards)), ids=ids, doc=doc_id,
        day=day, cutoff=cutoff, now=now, kind=kind.value, source=Source.NIGHTLY.value)).scalar_one()
    if squatted:
        raise IdTaken(f"{squatted} operation(s) hold the ids of {kind.value} lines of document {doc_id}: "
                      "run `kkmtransfer ledger verify`")


@dataclass
class ExpiryLines:
    """The Expiry lines a run of the write-off has written or checked in a batch that committed, card -> line id, in
    memory (one per run of a document; a run that starts again after a crash checks every line again): a later
    batch that burns from such a card's lots neither inserts its line again nor probes it for a squatted id, nor
    derives its id again. A card's expired lots lie on several days, so most batches meet cards an earlier batch
    gave a line. ``pending``: the lines of the batch in progress, known once it commits (``committed``). At most
    ``limit`` cards are kept; the others are checked every time, as before."""
    known: dict = field(default_factory=dict)
    pending: dict = field(default_factory=dict)
    limit: int = 250_000

    def committed(self) -> None:
        if len(self.known) < self.limit:
            self.known.update(self.pending)
        self.pending = {}


def _pg_expire_batch(conn: Connection, doc_id: str, day: date, cutoff: datetime, now: datetime,
                     limit: int, lines: ExpiryLines | None) -> tuple[int, int]:
    taken, burning, ids, cards = conn.execute(_PG_STATEMENTS["take_expiry"],
                                              {"cutoff": cutoff, "limit": limit}).one()
    if taken:
        known = lines.known if lines is not None else {}
        new = [c for c in cards if c not in known]
        fresh = dict(zip(new, line_ids(doc_id, new)))
        ids_of = [known.get(c) or fresh[c] for c in cards]
        _pg_write(conn, "expiry", Kind.EXPIRY, doc_id, day, cutoff, now, ids, cards, role=Role.EXPIRY.value,
                  lines=ids_of, fresh="{" + ",".join("f" if c in known else "t" for c in cards) + "}")
        if lines is not None:
            lines.pending = fresh
    return taken, burning


def expire_batch(conn: Connection, doc_id: str, day: date, cutoff: datetime, now: datetime, limit: int,
                 postgres: bool, lines: ExpiryLines | None = None) -> tuple[int, int]:
    """Take up to ``limit`` lots whose life ended by ``cutoff`` and that no WriteOff took yet, burn what they
    hold (one Expiry line per card with something to burn) and mark them all with the document. Returns
    (lots taken, lots burnt): 0 taken means nothing is left.

    On PostgreSQL ``lines`` carries the cards whose line the run's committed batches wrote (the caller calls its
    ``committed`` after each commit); SQLite checks every line."""
    if postgres:
        return _pg_expire_batch(conn, doc_id, day, cutoff, now, limit, lines)
    batch = _take_batch(conn, _due_expiry(cutoff), lots.c.expires_at, limit, postgres)
    if not batch:
        return 0, 0
    burn = [r for r in batch if r.remaining > 0]
    if burn:
        _insert_missing_lines(conn, _line_rows(doc_id, Kind.EXPIRY, sorted({r.card_number for r in burn}), day,
                                               cutoff, now))
        # the batch's entries in one multi-row insert (the line ids are known: no join through the document,
        # whose fresh rows the planner cannot estimate mid-run), then one statement empties the lots
        conn.execute(insert(entries), [
            dict(operation_id=line_id(doc_id, r.card_number), lot_id=r.id, card_number=r.card_number,
                 measure=r.measure, role=Role.EXPIRY.value, amount=-r.remaining) for r in burn])
        conn.execute(update(lots).where(lots.c.id.in_(bindparam("ids", expanding=True))).values(remaining=0),
                     {"ids": [r.id for r in burn]})
    conn.execute(update(lots).where(lots.c.id.in_(bindparam("ids", expanding=True)))
                 .values(expiry_document_id=doc_id), {"ids": [r.id for r in batch]})
    return len(batch), len(burn)


@dataclass
class AccrualKeyset:
    """Where a run's accrual stands, in memory (one per run of a document; a run that starts again after a crash
    starts from the beginning): the last candidate (available_from, card_number, id) of its previous batch, or
    None at the start of a sweep; and whether the current sweep took anything."""
    after: tuple | None = None
    took: bool = False
    per_card: float | None = None  # due lots per card in the previous batch (None: not known yet)


def _pg_take_accrual(conn: Connection, cutoff: datetime, limit: int, keyset: AccrualKeyset):
    """The next batch of the accrual (taken, lot ids, cards): after ``keyset.after``, which it moves on.

    A sweep reads the due lots in (available_from, card_number, id) order, each batch after the previous one's
    last candidate. It leaves behind the lots of a card cut at a batch's end and the lots another transaction
    held (SKIP LOCKED) that lie before its position; so when a sweep comes to the end having taken something, a
    new sweep starts from the beginning. The document is done when a sweep from the beginning takes nothing (as
    before the keyset: a lot still held by another transaction then is left to the next day's document). Each
    sweep that goes on took at least one lot, so this ends; in practice a run makes two or three sweeps, the
    later ones over what the first left behind. A take whose candidates were all held moves on in the same
    transaction (it locked nothing)."""
    # the candidates' cards bring all their due lots: as many candidates as fill the batch at the lots per card the
    # previous batch saw (a quarter of the batch at first); more would lock rows the batch's limit then cuts off
    per_card = keyset.per_card
    candidates = max(1, limit // 4) if per_card is None else max(1, min(limit, int(limit / per_card)))
    while True:
        params = {"cutoff": cutoff, "limit": limit, "candidates": candidates}
        if keyset.after is None:
            row = conn.execute(_PG_STATEMENTS["take_accrual"], params).one()
        else:
            after_from, after_card, after_id = keyset.after
            row = conn.execute(_PG_STATEMENTS["take_accrual_after"], dict(
                params, after_from=after_from, after_card=after_card, after_id=after_id)).one()
        taken, ids, cards, last_from, last_card, last_id = row
        if last_id is None:  # nothing due after the position: the sweep is over
            if keyset.after is None or not keyset.took:
                return 0, ids, cards  # a whole sweep from the beginning took nothing: done
            keyset.after, keyset.took = None, False  # again from the beginning, for what this sweep left behind
            continue
        keyset.after = (last_from, last_card, last_id)
        if taken:
            keyset.took = True
            keyset.per_card = taken / len(cards) if cards else None
            return taken, ids, cards


def accrue_batch(conn: Connection, doc_id: str, day: date, cutoff: datetime, now: datetime, limit: int,
                 postgres: bool, keyset: AccrualKeyset | None = None) -> int:
    """Post up to ``limit`` deferred lots whose start came by ``cutoff``: one Accrual line per card that
    shows what became usable (what was credited into the lot before it started, less what was taken back
    before it started). Returns lots done; 0 when the document is complete.

    On PostgreSQL ``keyset`` carries the run's position from batch to batch (without it, each batch starts from
    the beginning); SQLite takes each batch from the beginning."""
    if postgres:
        taken, ids, cards = _pg_take_accrual(conn, cutoff, limit, keyset or AccrualKeyset())
        if taken:
            _pg_write(conn, "accrual", Kind.ACCRUAL, doc_id, day, cutoff, now, ids, cards,
                      bonus=Measure.BONUS.value, accumulation=Measure.ACCUMULATION.value,
                      receipts=Measure.RECEIPT_COUNT.value, roles=[r.value for r in DEFERRED_ROLES])
        return taken
    # in card order within a start day: a card's lots fall in one batch, so its line is written once
    batch = _take_batch(conn, _due_accrual(cutoff), (lots.c.available_from, lots.c.card_number), limit, postgres)
    if not batch:
        return 0
    ids = [r.id for r in batch]
    conn.execute(update(lots).where(lots.c.id.in_(bindparam("ids", expanding=True)))
                 .values(accrual_document_id=doc_id), {"ids": ids})
    sums = conn.execute(
        select(entries.c.card_number, entries.c.measure, func.sum(type_coerce(entries.c.amount, BigInteger)))
        .where(entries.c.lot_id.in_(bindparam("ids", expanding=True)),   # through ix_entries_lot_id
               entries.c.role.in_([r.value for r in DEFERRED_ROLES]))
        .group_by(entries.c.card_number, entries.c.measure), {"ids": ids}).all()
    per_card: dict[str, dict[str, int]] = defaultdict(dict)
    for card, measure, cents in sums:
        if cents:
            per_card[card][measure] = int(cents)
    if not per_card:
        return len(ids)
    # new lines are born with their amounts; a line made by an earlier batch gets them added
    rows = _line_rows(doc_id, Kind.ACCRUAL, sorted(per_card), day, cutoff, now)
    for row in rows:
        amounts = per_card[row["card_number"]]
        row["bonus_accrued"] = Decimal(amounts.get(Measure.BONUS.value, 0)).scaleb(-2)
        row["accumulation_delta"] = Decimal(amounts.get(Measure.ACCUMULATION.value, 0)).scaleb(-2)
        row["receipt_count_delta"] = amounts.get(Measure.RECEIPT_COUNT.value, 0) // 100
    existing = _insert_missing_lines(conn, rows)
    if existing:
        _add_to_accrual_lines(conn, existing)
    return len(ids)


def last_completed_day(conn: Connection) -> date | None:
    """The last business date whose two documents are both done."""
    done = (select(documents.c.business_date).where(documents.c.status == DONE)
            .group_by(documents.c.business_date).having(func.count() == 2))
    return conn.execute(select(func.max(done.subquery().c.business_date))).scalar()
