"""One settings object, read from the environment.

| variable                        | default                                   |
|---------------------------------|-------------------------------------------|
| KKMTRANSFER_DATABASE_URL        | sqlite:///./var/kkmtransfer.sqlite3        |
| KKMTRANSFER_TIMEZONE            | Europe/Moscow                             |
| KKMTRANSFER_MAX_REQUEST_BYTES   | 1048576 (1 MiB)                           |
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
    tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        try:
            object.__setattr__(self, "tz", ZoneInfo(self.timezone_name))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"KKMTRANSFER_TIMEZONE: unknown time zone {self.timezone_name!r}") from exc
        if self.max_request_bytes <= 0:
            raise ConfigError("KKMTRANSFER_MAX_REQUEST_BYTES must be a positive number of bytes")

    @classmethod
    def from_env(cls, environ=None) -> "Settings":
        env = os.environ if environ is None else environ
        url = env.get("KKMTRANSFER_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"
        raw_max = env.get("KKMTRANSFER_MAX_REQUEST_BYTES") or str(1024 * 1024)
        try:
            max_bytes = int(raw_max)
        except ValueError as exc:
            raise ConfigError(f"KKMTRANSFER_MAX_REQUEST_BYTES: not a whole number: {raw_max!r}") from exc
        return cls(
            database_url=url,
            timezone_name=env.get("KKMTRANSFER_TIMEZONE") or "Europe/Moscow",
            max_request_bytes=max_bytes,
        )
