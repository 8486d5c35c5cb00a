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


def require_schema(engine, url: str) -> None:
    from .adapters.migrate import current_revision, head_revision

    current, head = current_revision(engine), head_revision(url)
    if current != head:
        raise SchemaError(f"the database schema is at {current or 'nothing'}, this version needs {head}: "
                          "run `kkmtransfer db upgrade` first")


def create_billing(settings: Settings | None = None, engine=None, clock=utcnow) -> BillingService:
    settings = settings or Settings.from_env()
    engine = engine or make_engine(settings.database_url)
    return BillingService(engine, settings, clock)


def create_wsgi_app(settings: Settings | None = None, engine=None, clock=utcnow):
    from .soap.http import KKMTransferApp

    from .logging import LogContext

    billing = create_billing(settings, engine, clock)
    return LogContext(KKMTransferApp(billing, billing.settings))
