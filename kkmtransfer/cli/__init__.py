"""The back-office command line: ``kkmtransfer --help``. One module per command group."""
from __future__ import annotations

import contextlib
import functools
import sys

import click

from ..config import ConfigError, Settings
from ..domain import errors


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc))


def _billing():
    """The service layer on the configured database. An empty database gets the schema at once (a
    notice says so); an older schema is never changed behind the operator's back: `db upgrade`."""
    from ..adapters.migrate import current_revision, upgrade
    from ..app import SchemaError, create_billing, require_schema

    billing = create_billing(_settings())
    if current_revision(billing.engine) is None:
        upgrade(billing.settings.database_url)
        click.echo(f"empty database: schema created ({_safe_url(billing.settings.database_url)})", err=True)
    try:
        require_schema(billing.engine, billing.settings.database_url)
    except SchemaError as exc:
        raise click.ClickException(str(exc))
    return billing


@contextlib.contextmanager
def _progress(label: str, length: int = 0):
    """A progress bar on stderr; yields ``advance(n)``. The length grows when the work turns out larger
    than announced (or was not known: 0)."""
    with click.progressbar(length=max(length, 1), label=label, file=sys.stderr) as bar:
        yield _Advance(bar)


class _Advance:
    def __init__(self, bar):
        self.bar = bar

    @property
    def pos(self) -> int:
        return self.bar.pos

    def __call__(self, n: int) -> None:
        self.bar.length = max(self.bar.length, self.bar.pos + n)
        self.bar.update(n)


def domain_errors(fn):
    """Show a domain error as a one-line message and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except errors.DomainError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kkmtransfer")
def main():
    """kkmtransfer: the discount-card billing server for cash registers.

    Settings come from the environment: KKMTRANSFER_DATABASE_URL (default: SQLite under ./var/),
    KKMTRANSFER_TIMEZONE (default Europe/Moscow), KKMTRANSFER_MAX_REQUEST_BYTES (default 1 MiB).
    """


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


from . import (  # noqa: E402,F401  (each module adds its commands to main)
    db, serve, users, cards, promotions, nightly, journal, billing, export, actions, receipts, report, ledger, demo,
)
