"""Life rules: when a credited amount starts to count and when it burns.

A receipt's business day is its time in the configured zone. With a delay of N days the credit starts at
the beginning of the day N calendar days later (N = 0: at once). A lifetime of L days lets it be used on L
calendar days from the day it starts, then it burns at the start of the next day; a fixed last date lets it
be used up to and including that day. No lifetime and no date: it never burns.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from .errors import ValidationError


def day_start(day: date, tz: tzinfo) -> datetime:
    """The instant a business day starts, in UTC."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(timezone.utc)


@dataclass(frozen=True)
class LifeRule:
    delay_days: int = 0
    lifetime_days: int | None = None
    until: date | None = None

    def __post_init__(self):
        if self.delay_days < 0:
            raise ValidationError("a delay must not be negative")
        if self.lifetime_days is not None and self.lifetime_days <= 0:
            raise ValidationError("a lifetime must be at least one day")
        if self.lifetime_days is not None and self.until is not None:
            raise ValidationError("give a lifetime in days or a last date, not both")

    def life(self, business_day: date, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
        """(available_from, expires_at) in UTC for a credit made on ``business_day``; None: no bound."""
        return _life(self, business_day, tz)

    def _life(self, business_day: date, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
        start_day = business_day + timedelta(days=self.delay_days)
        available_from = day_start(start_day, tz) if self.delay_days else None
        if self.until is not None:
            expires_at = day_start(self.until + timedelta(days=1), tz)
        elif self.lifetime_days is not None:
            expires_at = day_start(start_day + timedelta(days=self.lifetime_days), tz)
        else:
            expires_at = None
        return available_from, expires_at

    def describe(self) -> str:
        start = f"after {self.delay_days} day(s)" if self.delay_days else "at once"
        if self.until:
            end = f"usable through {self.until.isoformat()}"
        elif self.lifetime_days:
            end = f"usable for {self.lifetime_days} day(s)"
        else:
            end = "never burns"
        return f"starts {start}, {end}"


@lru_cache(maxsize=4096)
def _life(rule: LifeRule, business_day: date, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
    """``LifeRule.life``, remembered: a rule gives the same bounds for the same day (bulk loads ask the
    same few days thousands of times)."""
    return rule._life(business_day, tz)


@dataclass(frozen=True)
class Promotion:
    code: str
    name: str
    rule: LifeRule
    valid_from: date | None = None
    valid_to: date | None = None

    def check_valid_on(self, day: date) -> None:
        if (self.valid_from and day < self.valid_from) or (self.valid_to and day > self.valid_to):
            raise ValidationError(
                f"promotion {self.code} is not valid on {day.isoformat()} "
                f"(valid {self.valid_from or '…'} to {self.valid_to or '…'})")


@dataclass(frozen=True)
class CardRules:
    """Per card: the life of accumulation and of receipt counts."""

    accumulation: LifeRule = LifeRule()
    receipt_count: LifeRule = LifeRule()
