"""Wiring: settings -> engine -> service layer -> WSGI application."""
from __future__ import annotations

from .adapters.db import make_engine
from .config import Settings
from .service_layer.services import BillingService, utcnow


def configure_logging(level: str | None = None) -> None:
    """One format for every log line (kkmtransfer/logging.py): UTC, request id, user, operation;
    KKMTRANSFER_LOG_FORMAT=json for log shippers, KKMTRANSFER_LOG_LEVEL (default INFO)."""
    from .logging import configure

    configure(level)


class SchemaError(RuntimeError):
    """The database is not at the schema revision this version needs."""


_heads: dict[str, str] = {}


def require_schema(engine, url: str) -> None:
    from .adapters.migrate import current_revision, head_revision

    current = current_revision(engine)
    head = _heads.get(url) or _heads.setdefault(url, head_revision(url))
    if current != head:
        raise SchemaError(f"the database schema is at {current or 'nothing'}, this version needs {head}: "
                          "run `kkmtransfer db upgrade` first")


def create_billing(settings: Settings | None = None, engine=None, clock=utcnow) -> BillingService:
    settings = settings or Settings.from_env()
    engine = engine or make_engine(settings.database_url, pg_prepared=settings.pg_prepared)
    return BillingService(engine, settings, clock)


def web_engine(settings: Settings):
    """The engine of the SOAP service. On PostgreSQL: a connect timeout, a statement timeout and a TCP
    timeout, so that a database that is down or black-holed costs a register seconds, not minutes."""
    from sqlalchemy.engine import make_url

    if make_url(settings.database_url).get_backend_name() != "postgresql":
        return make_engine(settings.database_url)
    ms = settings.db_statement_timeout * 1000
    return make_engine(settings.database_url, pg_prepared=settings.pg_prepared,
                       pool_timeout=settings.db_connect_timeout, connect_args={
        "connect_timeout": settings.db_connect_timeout,
        "options": f"-c statement_timeout={ms}",
        # unacknowledged data (packets dropped) or a silent peer ends the connection instead of a hang
        "tcp_user_timeout": ms + 1000,
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
    })


def create_wsgi_app(settings: Settings | None = None, engine=None, clock=utcnow, check_schema: bool = True):
    """The WSGI app. It starts whatever state the database is in; calls get ``Server`` faults until the
    database answers at the schema revision this version needs (checked lazily, so no restart is needed)."""
    from .soap.http import KKMTransferApp

    from .logging import LogContext

    settings = settings or Settings.from_env()
    billing = create_billing(settings, engine or web_engine(settings), clock)
    return LogContext(KKMTransferApp(billing, billing.settings, check_schema=check_schema))
