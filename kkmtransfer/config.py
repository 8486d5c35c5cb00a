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
| KKMTRANSFER_JOURNAL_JOBS        | 2: worker threads (and database connections) of one journal import, rows routed by card; 1 on SQLite |
| KKMTRANSFER_INBOX_DIR           | ./var/inbox: journal files dropped here are imported |
| KKMTRANSFER_PUBLIC_URL          | empty: the WSDL's address is built from the request's Host; set e.g. https://kkm.example.org |
| KKMTRANSFER_DB_CONNECT_TIMEOUT  | 3 seconds to connect to PostgreSQL (the web service) |
| KKMTRANSFER_DB_STATEMENT_TIMEOUT | 5 seconds per SQL statement of a SOAP call (PostgreSQL) |
| KKMTRANSFER_PG_PREPARED         | on: the online path's hot statements are server-side prepared on each connection (PostgreSQL); 0/off behind PgBouncer in transaction pooling |
| KKMTRANSFER_MAX_ELEMENTS / _MAX_ATTRIBUTES | 5000 / 1000 per SOAP request, counted before spyne parses it |
| KKMTRANSFER_MAX_FUTURE_HOURS    | 24: an OperationTime further ahead of the server's clock is refused |
| KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE | 30d: an OperationTime more than this before the card's created_at is refused; `off` turns the rule off (e.g. 7d, 36h, 90m, 0) |
| KKMTRANSFER_AUTH_MAX_FAILURES   | 5 failed logins (per user name and per client address) before throttling |
| KKMTRANSFER_AUTH_WINDOW_SECONDS | 300: failures older than this are forgotten |
| KKMTRANSFER_AUTH_MAX_DELAY_SECONDS | 300: the longest refusal (1 s, 2 s, 4 s … after the limit) |
| KKMTRANSFER_AUTH_CACHE_TTL      | 5: seconds a verified register login (and its KKM/store binding) is reused in a process; 0: off |
| KKMTRANSFER_TRUSTED_PROXIES     | 127.0.0.1,::1: from these, the client address is the last X-Forwarded-For entry |
| KKMTRANSFER_SPEND_CODE          | off / all / per-card: which cards need an SMS code to spend bonuses |
| KKMTRANSFER_SPEND_CODE_LENGTH / _TTL_SECONDS / _SECRET | 6 digits / 300 s / empty: a key kept in the database |
| KKMTRANSFER_SMS_PROVIDER        | stream-telecom / console; default: stream-telecom when _SMS_LOGIN is set |
| KKMTRANSFER_SMS_URL / _LOGIN / _PASSWORD / _SENDER / _TEXT | the Stream Telecom HTTPS GET gateway |
| KKMTRANSFER_HOLD_TIMEOUT        | 900: seconds after which an unconfirmed hold (ReserveBonus) is released |

Celery's own settings (KKMTRANSFER_BROKER_URL, KKMTRANSFER_RESULT_BACKEND, KKMTRANSFER_INBOX_EVERY_SECONDS)
are read by the top-level celeryconfig.py.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_SQLITE_PATH = Path("var") / "kkmtransfer.sqlite3"
DEFAULT_SMS_URL = "https://gateway.api.sc/get/"
DEFAULT_SMS_TEXT = "Код для списания бонусов: {code}. Никому не сообщайте его, кроме кассира."
SMS_PROVIDERS = ("stream-telecom", "console")
DEFAULT_OPTIME_BEFORE_CARD_GRACE = timedelta(days=30)
_DURATION = re.compile(r"(\d{1,6})\s*([dhms]?)")
_UNITS = {"d": "days", "": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(name: str, raw: str | None, default: timedelta | None) -> timedelta | None:
    """``30d``, ``36h``, ``90m``, ``3600s`` or a bare number of days; ``off`` (or ``none``) is None: the rule
    that uses it is turned off. Empty: the default."""
    text = (raw or "").strip().lower()
    if text == "":
        return default
    if text in ("off", "none", "no", "false"):
        return None
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ConfigError(f"{name}: not a duration: {raw!r} (e.g. 30d, 36h, 90m, 0, or off)")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


class ConfigError(ValueError):
    """A setting in the environment is unusable."""


DATABASE_URL_EXAMPLE = "e.g. postgresql+psycopg2://user:password@host/dbname or sqlite:///var/kkmtransfer.sqlite3"


def normalise_database_url(url: str) -> str:
    """The configured database URL, checked, as every entry point uses it (CLI, gunicorn, console, Celery):
    ``postgres://`` and ``postgresql://`` get the psycopg2 driver this package installs; an unusable URL is
    a ConfigError of one line that says what to do."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"KKMTRANSFER_DATABASE_URL is not a database URL ({DATABASE_URL_EXAMPLE})") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"KKMTRANSFER_DATABASE_URL: unsupported database {parsed.drivername!r} "
                          f"({DATABASE_URL_EXAMPLE})")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg2"):
        raise ConfigError(f"KKMTRANSFER_DATABASE_URL: driver {parsed.drivername!r} is not installed; "
                          f"use postgresql+psycopg2:// or sqlite:///")
    return parsed.render_as_string(hide_password=False)


@functools.lru_cache(maxsize=64)
def _life_rule(delay_days: int, lifetime_days: int | None):
    from .domain.rules import LifeRule

    return LifeRule(delay_days=delay_days, lifetime_days=lifetime_days)


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
    journal_jobs: int = 2  # workers of a journal import (PostgreSQL; SQLite: 1)
    journal_processes: bool = True  # the CLI's import workers are processes (off: threads of one process)
    inbox_dir: Path = Path("var") / "inbox"
    public_url: str | None = None
    db_connect_timeout: int = 3
    db_statement_timeout: int = 5
    pg_prepared: bool = True  # PREPARE/EXECUTE the hot statements (off: PgBouncer in transaction pooling)
    max_elements: int = 5000
    max_attributes: int = 1000
    max_future_hours: int = 24
    # an OperationTime earlier than the card's created_at minus this is refused; None: never
    optime_before_card_grace: timedelta | None = DEFAULT_OPTIME_BEFORE_CARD_GRACE
    auth_max_failures: int = 5
    auth_window_seconds: int = 300
    auth_max_delay_seconds: int = 300
    auth_cache_ttl: float = 5.0
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # SMS codes before spending bonuses (see kkmtransfer.domain.spend_codes)
    spend_code: str = "off"
    spend_code_length: int = 6
    spend_code_ttl_seconds: int = 300
    spend_code_secret: str | None = field(default=None, repr=False)
    sms_provider: str | None = None
    sms_url: str = DEFAULT_SMS_URL
    sms_login: str | None = None
    sms_password: str | None = field(default=None, repr=False)
    sms_sender: str | None = None
    sms_text: str = DEFAULT_SMS_TEXT
    hold_timeout: int = 900
    tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        try:
            object.__setattr__(self, "tz", ZoneInfo(self.timezone_name))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"KKMTRANSFER_TIMEZONE: unknown time zone {self.timezone_name!r}") from exc
        if self.max_request_bytes <= 0:
            raise ConfigError("KKMTRANSFER_MAX_REQUEST_BYTES must be a positive number of bytes")
        if self.hold_timeout <= 0:
            raise ConfigError("KKMTRANSFER_HOLD_TIMEOUT must be a positive number of seconds")
        if self.nightly_batch <= 0:
            raise ConfigError("KKMTRANSFER_NIGHTLY_BATCH must be positive")
        if not 1 <= self.journal_jobs <= 8:
            raise ConfigError("KKMTRANSFER_JOURNAL_JOBS must be 1 to 8")
        for name in ("db_connect_timeout", "db_statement_timeout", "max_elements", "max_attributes",
                     "auth_max_failures", "auth_window_seconds", "auth_max_delay_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"KKMTRANSFER_{name.upper()} must be positive")
        if not 0 <= self.auth_cache_ttl <= 3600:
            raise ConfigError("KKMTRANSFER_AUTH_CACHE_TTL must be 0 (off) to 3600 seconds")
        if self.max_future_hours < 0:
            raise ConfigError("KKMTRANSFER_MAX_FUTURE_HOURS must be >= 0")
        if self.public_url is not None and not re.fullmatch(r"https?://[^\s\"'<>]+", self.public_url):
            raise ConfigError(f"KKMTRANSFER_PUBLIC_URL: not an http(s) URL: {self.public_url!r}")
        for name in ("bonus", "accumulation", "count"):
            delay, life = getattr(self, f"{name}_delay_days"), getattr(self, f"{name}_lifetime_days")
            if delay < 0 or (life is not None and life <= 0):
                raise ConfigError(f"KKMTRANSFER_{name.upper()}_DELAY_DAYS must be >= 0 and "
                                  f"KKMTRANSFER_{name.upper()}_LIFETIME_DAYS > 0 (or empty)")

        if self.spend_code not in ("off", "all", "per-card"):
            raise ConfigError(f"KKMTRANSFER_SPEND_CODE must be off, all or per-card, not {self.spend_code!r}")
        if not 4 <= self.spend_code_length <= 6:
            raise ConfigError("KKMTRANSFER_SPEND_CODE_LENGTH must be 4, 5 or 6 digits")
        if self.spend_code_ttl_seconds <= 0:
            raise ConfigError("KKMTRANSFER_SPEND_CODE_TTL_SECONDS must be positive")
        if self.sms_provider is not None and self.sms_provider not in SMS_PROVIDERS:
            raise ConfigError(f"KKMTRANSFER_SMS_PROVIDER must be one of {', '.join(SMS_PROVIDERS)}, "
                              f"not {self.sms_provider!r}")
        if "{code}" not in self.sms_text:
            raise ConfigError("KKMTRANSFER_SMS_TEXT must contain {code}")
        if self.effective_sms_provider == "stream-telecom" and not (self.sms_login and self.sms_password
                                                                    and self.sms_sender):
            raise ConfigError("the stream-telecom SMS provider needs KKMTRANSFER_SMS_LOGIN, "
                              "KKMTRANSFER_SMS_PASSWORD and KKMTRANSFER_SMS_SENDER")

    @property
    def effective_sms_provider(self) -> str:
        """stream-telecom when a login is configured, console otherwise; KKMTRANSFER_SMS_PROVIDER overrides."""
        return self.sms_provider or ("stream-telecom" if self.sms_login else "console")

    def rule(self, name: str):
        """The configured default LifeRule for 'bonus', 'accumulation' or 'count'."""
        return _life_rule(getattr(self, f"{name}_delay_days"), getattr(self, f"{name}_lifetime_days"))

    @classmethod
    def from_env(cls, environ=None) -> "Settings":
        env = os.environ if environ is None else environ
        url = normalise_database_url(env.get("KKMTRANSFER_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}")

        def number(name: str, default, convert, what: str):
            raw = env.get(name, "")
            if raw.strip() == "":
                return default
            try:
                return convert(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: not {what}: {raw!r}") from exc

        def whole(name: str, default):
            return number(name, default, int, "a whole number")

        def seconds(name: str, default: float) -> float:
            return number(name, default, float, "a number of seconds")

        def switch(name: str, default: bool) -> bool:
            raw = (env.get(name) or "").strip().lower()
            if raw == "":
                return default
            if raw in ("1", "on", "yes", "true"):
                return True
            if raw in ("0", "off", "no", "false"):
                return False
            raise ConfigError(f"{name}: not on or off: {env.get(name)!r}")

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
            journal_jobs=whole("KKMTRANSFER_JOURNAL_JOBS", 2),
            journal_processes=switch("KKMTRANSFER_JOURNAL_PROCESSES", True),
            inbox_dir=Path(env.get("KKMTRANSFER_INBOX_DIR") or Path("var") / "inbox"),
            public_url=env.get("KKMTRANSFER_PUBLIC_URL") or None,
            db_connect_timeout=whole("KKMTRANSFER_DB_CONNECT_TIMEOUT", 3),
            db_statement_timeout=whole("KKMTRANSFER_DB_STATEMENT_TIMEOUT", 5),
            pg_prepared=switch("KKMTRANSFER_PG_PREPARED", True),
            max_elements=whole("KKMTRANSFER_MAX_ELEMENTS", 5000),
            max_attributes=whole("KKMTRANSFER_MAX_ATTRIBUTES", 1000),
            max_future_hours=whole("KKMTRANSFER_MAX_FUTURE_HOURS", 24),
            optime_before_card_grace=parse_duration("KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE",
                                                    env.get("KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE"),
                                                    DEFAULT_OPTIME_BEFORE_CARD_GRACE),
            auth_max_failures=whole("KKMTRANSFER_AUTH_MAX_FAILURES", 5),
            auth_window_seconds=whole("KKMTRANSFER_AUTH_WINDOW_SECONDS", 300),
            auth_max_delay_seconds=whole("KKMTRANSFER_AUTH_MAX_DELAY_SECONDS", 300),
            auth_cache_ttl=seconds("KKMTRANSFER_AUTH_CACHE_TTL", 5.0),
            trusted_proxies=tuple(a.strip() for a in (env.get("KKMTRANSFER_TRUSTED_PROXIES")
                                                      or "127.0.0.1,::1").split(",") if a.strip()),
            spend_code=(env.get("KKMTRANSFER_SPEND_CODE") or "off").strip().lower(),
            spend_code_length=whole("KKMTRANSFER_SPEND_CODE_LENGTH", 6),
            spend_code_ttl_seconds=whole("KKMTRANSFER_SPEND_CODE_TTL_SECONDS", 300),
            spend_code_secret=env.get("KKMTRANSFER_SPEND_CODE_SECRET") or None,
            sms_provider=(env.get("KKMTRANSFER_SMS_PROVIDER") or "").strip().lower() or None,
            sms_url=env.get("KKMTRANSFER_SMS_URL") or DEFAULT_SMS_URL,
            sms_login=env.get("KKMTRANSFER_SMS_LOGIN") or None,
            sms_password=env.get("KKMTRANSFER_SMS_PASSWORD") or None,
            sms_sender=env.get("KKMTRANSFER_SMS_SENDER") or None,
            sms_text=env.get("KKMTRANSFER_SMS_TEXT") or DEFAULT_SMS_TEXT,
            hold_timeout=whole("KKMTRANSFER_HOLD_TIMEOUT", 900),
        )
