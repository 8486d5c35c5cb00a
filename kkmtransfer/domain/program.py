"""The bonus program and the calculation of a receipt by it: pure Python, no SQL, no SOAP.

A program says, for a receipt line, what share of its Sum may be paid by bonus and what percent of it
is accrued. Percent of accrual, in this order of precedence: an excluded goods group earns nothing; a
group with its own percent earns that; a promotion with a percent earns that; otherwise the card's tier
by Accumulation (the highest tier whose threshold the card has reached), or the program's base percent.
The share payable by bonus: 0 for an excluded group, else the group's own share, else the program's.

Amounts are exact to the kopeck: per-line amounts are shares of a total made with ``allocate`` (each line
its pro-rata share rounded down, the kopecks left over to the largest line, then the next largest, each
never above its cap), so lines always sum to the totals.

``Program()`` (no program set) keeps today's behaviour: nothing is accrued by the server and a receipt
may be paid by bonus in full (the register decides, as before).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Iterable, Mapping, Sequence

from .errors import ValidationError
from .model import CENT, ZERO, money, required_text, optional_text

HUNDRED = Decimal(100)
WHOLE = Decimal(1)
QTY = Decimal("0.001")
ROUNDINGS = ("kopeck", "whole")


def percent(value, name: str) -> Decimal:
    """A percent 0..100 with at most 2 fraction digits."""
    if isinstance(value, float):
        raise ValidationError(f"{name}: a percent must not be a float")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError(f"{name}: not a number: {value!r}") from exc
    if not dec.is_finite() or dec < 0 or dec > HUNDRED:
        raise ValidationError(f"{name}: must be from 0 to 100, got {value}")
    if dec != dec.quantize(CENT):
        raise ValidationError(f"{name}: at most 2 fraction digits allowed, got {value}")
    return dec.quantize(CENT) + ZERO


@dataclass(frozen=True)
class GroupRule:
    """A goods group's own rule. None: the program's value."""

    accrual_percent: Decimal | None = None
    max_payment_percent: Decimal | None = None
    excluded: bool = False  # earns nothing and cannot be paid by bonus

    def describe(self) -> str:
        if self.excluded:
            return "excluded (earns nothing, not payable by bonus)"
        parts = []
        if self.accrual_percent is not None:
            parts.append(f"accrual {self.accrual_percent}%")
        if self.max_payment_percent is not None:
            parts.append(f"max payment {self.max_payment_percent}%")
        return ", ".join(parts) or "the program's rules"


@dataclass(frozen=True)
class Program:
    accrual_percent: Decimal = ZERO
    max_payment_percent: Decimal = HUNDRED
    tiers: tuple[tuple[Decimal, Decimal], ...] = ()  # (from Accumulation, percent), ascending
    accrue_on_bonus_paid: bool = False
    rounding: str = "kopeck"
    groups: Mapping[str, GroupRule] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "accrual_percent", percent(self.accrual_percent, "accrual percent"))
        object.__setattr__(self, "max_payment_percent", percent(self.max_payment_percent, "max payment percent"))
        if self.rounding not in ROUNDINGS:
            raise ValidationError(f"rounding: kopeck or whole, got {self.rounding!r}")
        tiers = {}
        for threshold, pct in self.tiers:
            threshold = money(threshold, "tier accumulation")
            if threshold in tiers:
                raise ValidationError(f"two tiers from the same accumulation {threshold}")
            tiers[threshold] = percent(pct, "tier percent")
        object.__setattr__(self, "tiers", tuple(sorted(tiers.items())))
        groups = {}
        for name, rule in dict(self.groups).items():
            groups[name] = GroupRule(
                None if rule.accrual_percent is None else percent(rule.accrual_percent, f"group {name} accrual percent"),
                None if rule.max_payment_percent is None else percent(rule.max_payment_percent,
                                                                      f"group {name} max payment percent"),
                rule.excluded)
        object.__setattr__(self, "groups", groups)

    # -- rules of one line ---------------------------------------------------------------------
    def base_percent(self, accumulation: Decimal) -> Decimal:
        pct = self.accrual_percent
        for threshold, tier_pct in self.tiers:
            if accumulation >= threshold:
                pct = tier_pct
        return pct

    def line_percent(self, group: str | None, accumulation: Decimal, promotion_percent: Decimal | None) -> Decimal:
        rule = self.groups.get(group) if group else None
        if rule is not None and rule.excluded:
            return ZERO
        if rule is not None and rule.accrual_percent is not None:
            return rule.accrual_percent
        if promotion_percent is not None:
            return promotion_percent
        return self.base_percent(accumulation)

    def line_max_payment_percent(self, group: str | None) -> Decimal:
        rule = self.groups.get(group) if group else None
        if rule is not None and rule.excluded:
            return ZERO
        if rule is not None and rule.max_payment_percent is not None:
            return rule.max_payment_percent
        return self.max_payment_percent

    # -- changing ------------------------------------------------------------------------------
    def changed(self, **values) -> "Program":
        """A copy with the values given (not None) changed."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def with_group(self, name: str, rule: GroupRule | None) -> "Program":
        groups = dict(self.groups)
        if rule is None:
            groups.pop(name, None)
        else:
            groups[name] = rule
        return replace(self, groups=groups)

    # -- storage -------------------------------------------------------------------------------
    def to_json(self) -> str:
        def opt(v):
            return None if v is None else str(v)

        return json.dumps({
            "accrual_percent": str(self.accrual_percent),
            "max_payment_percent": str(self.max_payment_percent),
            "tiers": [[str(a), str(p)] for a, p in self.tiers],
            "accrue_on_bonus_paid": self.accrue_on_bonus_paid,
            "rounding": self.rounding,
            "groups": {name: {"accrual_percent": opt(r.accrual_percent),
                              "max_payment_percent": opt(r.max_payment_percent), "excluded": r.excluded}
                       for name, r in sorted(self.groups.items())},
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Program":
        raw = json.loads(text)

        def opt(v):
            return None if v is None else Decimal(v)

        return cls(
            accrual_percent=Decimal(raw["accrual_percent"]),
            max_payment_percent=Decimal(raw["max_payment_percent"]),
            tiers=tuple((Decimal(a), Decimal(p)) for a, p in raw["tiers"]),
            accrue_on_bonus_paid=bool(raw["accrue_on_bonus_paid"]),
            rounding=raw["rounding"],
            groups={name: GroupRule(opt(g["accrual_percent"]), opt(g["max_payment_percent"]), bool(g["excluded"]))
                    for name, g in raw["groups"].items()},
        )

    def describe(self) -> list[str]:
        lines = [f"accrual percent: {self.accrual_percent}",
                 f"max payment percent: {self.max_payment_percent}",
                 "tiers: " + (", ".join(f"from {a}: {p}%" for a, p in self.tiers) or "none"),
                 f"accrue on bonus paid: {'yes' if self.accrue_on_bonus_paid else 'no'}",
                 f"rounding: {self.rounding}"]
        for name, rule in sorted(self.groups.items()):
            lines.append(f"group {name}: {rule.describe()}")
        return lines


# A change of the program: only what it changes. Keys: accrual_percent, max_payment_percent, tiers,
# accrue_on_bonus_paid, rounding, groups ({name: GroupRule, or None to drop the group's own rule}).
# The program in force at a time is the default Program with every change that started by then applied
# in order of start, so a change made now also holds in a change planned for later, unless that planned
# change sets the same value itself.
CHANGE_KEYS = ("accrual_percent", "max_payment_percent", "tiers", "accrue_on_bonus_paid", "rounding", "groups")


def apply_change(program: Program, change: Mapping) -> Program:
    unknown = set(change) - set(CHANGE_KEYS)
    if unknown:
        raise ValidationError(f"unknown program settings: {sorted(unknown)}")
    values = {k: v for k, v in change.items() if k != "groups"}
    result = program.changed(**values)
    for name, rule in (change.get("groups") or {}).items():
        result = result.with_group(name, rule)
    return result


def change_to_json(change: Mapping) -> str:
    def opt(v):
        return None if v is None else str(v)

    out = {}
    for key, value in change.items():
        if key == "tiers":
            out[key] = [[str(a), str(p)] for a, p in value]
        elif key == "groups":
            out[key] = {name: None if r is None else {"accrual_percent": opt(r.accrual_percent),
                                                      "max_payment_percent": opt(r.max_payment_percent),
                                                      "excluded": r.excluded}
                        for name, r in value.items()}
        elif isinstance(value, Decimal):
            out[key] = str(value)
        else:
            out[key] = value
    return json.dumps(out, sort_keys=True)


def change_from_json(text: str) -> dict:
    raw = json.loads(text)

    def opt(v):
        return None if v is None else Decimal(v)

    out = {}
    for key, value in raw.items():
        if key == "tiers":
            out[key] = tuple((Decimal(a), Decimal(p)) for a, p in value)
        elif key == "groups":
            out[key] = {name: None if g is None else GroupRule(opt(g["accrual_percent"]), opt(g["max_payment_percent"]),
                                                               bool(g["excluded"]))
                        for name, g in value.items()}
        elif key in ("accrual_percent", "max_payment_percent"):
            out[key] = Decimal(value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class ProgramVersion:
    valid_from: datetime | None  # UTC; None: the built-in default (in force since always)
    program: Program
    created_at: datetime | None = None


def fold(changes: Iterable[tuple[datetime, Mapping]]) -> list[ProgramVersion]:
    """The versions made by changes (start, change) in order of start (the order given breaks ties):
    each the program in force from its start on."""
    program = Program()
    out = []
    for start, change in sorted(changes, key=lambda c: c[0]):
        program = apply_change(program, change)
        out.append(ProgramVersion(start, program))
    return out


def version_at(versions: Iterable[ProgramVersion], when: datetime) -> Program:
    """The program in force at ``when``: the latest version that started at or before it (of two that
    start at once, the later in the list); the default Program when none did."""
    best = Program()
    for v in sorted(versions, key=lambda v: v.valid_from):
        if v.valid_from is not None and v.valid_from <= when:
            best = v.program
    return best


# -- receipt lines ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceiptLine:
    line_number: int
    article: str
    group: str | None
    quantity: Decimal
    price: Decimal
    sum: Decimal

    @classmethod
    def build(cls, *, line_number, article, group=None, quantity, price, sum) -> "ReceiptLine":
        where = f"Lines[LineNumber={line_number}]"
        if isinstance(line_number, bool) or not isinstance(line_number, int) or line_number < 1:
            raise ValidationError(f"LineNumber: must be a whole number >= 1, got {line_number!r}")
        return cls(line_number=line_number,
                   article=required_text(article, f"{where}.Article", 64),
                   group=optional_text(group, f"{where}.Group", 64),
                   quantity=quantity_value(quantity, f"{where}.Quantity"),
                   price=money(price, f"{where}.Price"),
                   sum=money(sum, f"{where}.Sum"))


def quantity_value(value, name: str, *, allow_zero: bool = False) -> Decimal:
    if value is None:
        raise ValidationError(f"{name} is required")
    if isinstance(value, float):
        raise ValidationError(f"{name}: must not be a float")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError(f"{name}: not a number: {value!r}") from exc
    if not dec.is_finite() or dec > Decimal("999999999"):
        raise ValidationError(f"{name}: out of range")
    if dec < 0 or (dec == 0 and not allow_zero):
        raise ValidationError(f"{name}: must be > 0, got {value}")
    if dec != dec.quantize(QTY):
        raise ValidationError(f"{name}: at most 3 fraction digits allowed, got {value}")
    return dec.quantize(QTY)


def check_lines(lines: Sequence[ReceiptLine]) -> None:
    if not lines:
        raise ValidationError("Lines: at least one line is required")
    seen = set()
    for line in lines:
        if line.line_number in seen:
            raise ValidationError(f"Lines: LineNumber {line.line_number} appears twice")
        seen.add(line.line_number)


# -- the arithmetic ------------------------------------------------------------------------------
def floor_to(value: Decimal, unit: Decimal = CENT) -> Decimal:
    """Round down (toward zero) to ``unit``; the result carries two fraction digits."""
    return value.quantize(unit, rounding=ROUND_DOWN) + ZERO


def allocate(total: Decimal, weights: Sequence[Decimal], caps: Sequence[Decimal] | None = None) -> list[Decimal]:
    """Split ``total`` (kopecks) over lines pro rata to ``weights``: each line its share rounded down to
    the kopeck, the kopecks left over to the largest weight first (ties: the first line), never above a
    line's cap. The result sums to ``total`` exactly; the caller makes sure the caps hold it."""
    n = len(weights)
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("negative amounts cannot be allocated")
    if caps is not None and sum(caps, ZERO) < total:
        raise ValueError(f"{total} does not fit in caps summing to {sum(caps, ZERO)}")
    weight = sum(weights, ZERO)
    if total == 0:
        return [ZERO] * n
    if weight == 0:
        if caps is None:
            raise ValueError("nothing to allocate to")
        weights, weight = list(caps), sum(caps, ZERO)
    shares = [floor_to(total * w / weight) for w in weights]
    if caps is not None:
        shares = [min(s, c) for s, c in zip(shares, caps)]
    left = total - sum(shares, ZERO)
    for i in sorted(range(n), key=lambda i: (-weights[i], i)):
        if left == 0:
            break
        room = left if caps is None else min(left, caps[i] - shares[i])
        if room > 0:
            shares[i] += room
            left -= room
    assert left == 0, "allocation left kopecks over"
    return shares


@dataclass(frozen=True)
class LineResult:
    line_number: int
    max_payment: Decimal
    spent: Decimal
    accrued: Decimal
    percent: Decimal


@dataclass(frozen=True)
class Calculation:
    lines: tuple[LineResult, ...]
    max_payment: Decimal
    spent: Decimal
    accrued: Decimal

    def line(self, number: int) -> LineResult:
        return next(x for x in self.lines if x.line_number == number)


def calculate(program: Program, lines: Sequence[ReceiptLine], *, accumulation: Decimal = ZERO,
              to_spend: Decimal = ZERO, balance: Decimal | None = None,
              promotion_percent: Decimal | None = None, strict: bool = False) -> Calculation:
    """Calculate a receipt. ``to_spend`` is capped by ``balance`` (None: no cap) and by the lines'
    maxima; with ``strict`` (a register reporting what it spent) a spend above the maxima is an error."""
    check_lines(lines)
    maxima = [floor_to(line.sum * program.line_max_payment_percent(line.group) / HUNDRED) for line in lines]
    max_total = sum(maxima, ZERO)
    spend = to_spend
    if strict and spend > max_total:
        raise ValidationError(f"BonusSpent {to_spend} is above what the lines may be paid by bonus: {max_total}")
    if balance is not None:
        spend = min(spend, max(balance, ZERO))
    spend = min(spend, max_total)
    spent = allocate(spend, maxima, maxima)

    percents = [program.line_percent(line.group, accumulation, promotion_percent) for line in lines]
    exact = []
    for line, paid, pct in zip(lines, spent, percents):
        base = line.sum if program.accrue_on_bonus_paid else line.sum - paid
        exact.append(base * pct / HUNDRED)
    unit = WHOLE if program.rounding == "whole" else CENT
    accrued_total = floor_to(sum(exact, ZERO), unit)
    accrued = allocate(accrued_total, exact) if accrued_total > 0 else [ZERO] * len(lines)
    return Calculation(
        lines=tuple(LineResult(line.line_number, m, s, a, p)
                    for line, m, s, a, p in zip(lines, maxima, spent, accrued, percents)),
        max_payment=max_total, spent=spend + ZERO, accrued=accrued_total)


def share_of(total: Decimal, done_before: Decimal, quantity_before: Decimal, quantity_now: Decimal,
             quantity_all: Decimal) -> Decimal:
    """What a partial return of ``quantity_now`` of a line takes of the line's ``total``: the cumulative
    share after it (rounded down to the kopeck; the whole line's total once everything is returned) less
    what the earlier returns took. Never negative; the returns of a line add up to its total exactly."""
    after = quantity_before + quantity_now
    if after > quantity_all:
        raise ValidationError(f"quantity {quantity_now} is above what is left: {quantity_all - quantity_before}")
    target = total if after == quantity_all else floor_to(total * after / quantity_all)
    return max(target - done_before, ZERO)
