"""Card ranges as operators mean them: ``--from 1 --to 5`` is cards 1 to 5, not every ``2000…`` card.

When both ends are digit strings, the range holds the cards whose numbers are digit strings and whose
values lie between the ends: leading zeros are ignored and a longer number (without them) is a larger
one, so same-length numbers compare as numbers. Otherwise the ends compare as text.
"""
from __future__ import annotations

from sqlalchemy import and_, func, or_

from ..adapters.db import cards
from ..domain import errors


def _numeric(*values: str) -> bool:
    return all(v.isascii() and v.isdigit() for v in values)


def check_range(first: str | None, last: str | None) -> None:
    """A range needs both ends, and --from must not come after --to."""
    if first is None or last is None or not str(first).strip() or not str(last).strip():
        raise errors.ValidationError("give both --from and --to")
    if _numeric(first, last):
        if int(first) > int(last):
            raise errors.ValidationError(f"--from {first} is after --to {last}")
    elif first > last:
        raise errors.ValidationError(f"--from {first} is after --to {last} (compared as text)")


def range_condition(first: str, last: str, column=cards.c.number):
    """The SQL condition selecting ``column`` in first..last (see the module's doc)."""
    check_range(first, last)
    if not _numeric(first, last):
        return column.between(first, last)
    lo, hi = first.lstrip("0"), last.lstrip("0")
    digits = func.ltrim(column, "0")
    width = func.length(digits)
    return and_(
        column.regexp_match("^[0-9]+$"),
        or_(width > len(lo), and_(width == len(lo), digits >= lo)),
        or_(width < len(hi), and_(width == len(hi), digits <= hi)),
    )
