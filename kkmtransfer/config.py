"""One settings object, read from the environment.

| variable                        | default                                   |
|---------------------------------|-------------------------------------------|
| KKMTRANSFER_DATABASE_URL        | sqlite:///./var/kkmtransfer.sqlite3        |
| KKMTRANSFER_TIMEZONE            | Europe/Moscow                             |
| KKMTRANSFER_MAX_REQUEST_BYTES   | 1048576 (1 MiB)                           |
| KKMTRANSFER_BONUS_DELAY_DAYS    | 0: bonuses without a promotion count at once |
| KKMTRANSFER_BONUS_LIFETIME_DAYS | empty: bonuses without a promotion never burn |
| KKMTRANSFER_ACCUMULATION_DELAY_DAYS / _LIFETIME_DAYS | 0 / empty: the rule given to new cards |
| KKMTRANSFER_COUNT_DELAY_DAYS / _LIFETIME_DAYS        | 0 / empty: the rule given to new cards |
| KKMTRANSFER_NIGHTLY_BATCH       | 1000 lots per transaction of the nightly regulation |
| KKMTRANSFER_INBOX_DIR           | ./var/inbox: journal files dropped here are imported |

Celery's own settings (KKMTRANSFER_BROKER_URL, KKMTRANSFER_RESULT_BACKEND, KKMTRANSFER_INBOX_EVERY_SECONDS)
are read by the top-level celeryconfig.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_SQLITE_PATH = Path("var") / "kkmtransfer.sqlite3"


class ConfigError(ValueError):
    """A setting in the environment is unusable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    timezone_name: str = "Europe/Moscow"
    max_request_bytes: int = 1024 * 1024
    bonus_delay_days: int = 0
    bonus_lifetime_days: int | None = None
    accumulation_delay_days: int = 0
    accumulation_lifetime_days: int | None = None
    count_delay_days: int = 0
    count_lifetime_days: int | None = None
    nightly_batch: int = 1000
    inbox_dir: Path = Path("var") / "inbox"
    tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        try:
            object.__setattr__(self, "tz", ZoneInfo(self.timezone_name))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"KKMTRANSFER_TIMEZONE: unknown time zone {self.timezone_name!r}") from exc
        if self.max_request_bytes <= 0:
            raise ConfigError("KKMTRANSFER_MAX_REQUEST_BYTES must be a positive number of bytes")
        if self.nightly_batch <= 0:
            raise ConfigError("KKMTRANSFER_NIGHTLY_BATCH must be positive")
        for name in ("bonus", "accumulation", "count"):
            delay, life = getattr(self, f"{name}_delay_days"), getattr(self, f"{name}_lifetime_days")
            if delay < 0 or (life is not None and life <= 0):
                raise ConfigError(f"KKMTRANSFER_{name.upper()}_DELAY_DAYS must be >= 0 and "
                                  f"KKMTRANSFER_{name.upper()}_LIFETIME_DAYS > 0 (or empty)")

    def rule(self, name: str):
        """The configured default LifeRule for 'bonus', 'accumulation' or 'count'."""
        from .domain.rules import LifeRule

        return LifeRule(delay_days=getattr(self, f"{name}_delay_days"),
                        lifetime_days=getattr(self, f"{name}_lifetime_days"))

    @classmethod
    def from_env(cls, environ=None) -> "Settings":
        env = os.environ if environ is None else environ
        url = env.get("KKMTRANSFER_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"

        def whole(name: str, default):
            raw = env.get(name, "")
            if raw.strip() == "":
                return default
            try:
                return int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: not a whole number: {raw!r}") from exc

        return cls(
            database_url=url,
            timezone_name=env.get("KKMTRANSFER_TIMEZONE") or "Europe/Moscow",
            max_request_bytes=whole("KKMTRANSFER_MAX_REQUEST_BYTES", 1024 * 1024),
            bonus_delay_days=whole("KKMTRANSFER_BONUS_DELAY_DAYS", 0),
            bonus_lifetime_days=whole("KKMTRANSFER_BONUS_LIFETIME_DAYS", None),
            accumulation_delay_days=whole("KKMTRANSFER_ACCUMULATION_DELAY_DAYS", 0),
            accumulation_lifetime_days=whole("KKMTRANSFER_ACCUMULATION_LIFETIME_DAYS", None),
            count_delay_days=whole("KKMTRANSFER_COUNT_DELAY_DAYS", 0),
            count_lifetime_days=whole("KKMTRANSFER_COUNT_LIFETIME_DAYS", None),
            nightly_batch=whole("KKMTRANSFER_NIGHTLY_BATCH", 1000),
            inbox_dir=Path(env.get("KKMTRANSFER_INBOX_DIR") or Path("var") / "inbox"),
        )
