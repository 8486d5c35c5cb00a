"""The back-office command line: ``kkmtransfer --help``. One module per command group."""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import click

from ..config import ConfigError, Settings
from ..domain import errors


def _settings() -> Settings:
    """The settings; the database URL is checked and normalised by config (postgres:// gets psycopg2)."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc))


def _existing_database(url: str) -> None:
    """A SQLite file must exist already (a typo in the path must not make a new empty database)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise click.ClickException(f"no database file {parsed.database}: check KKMTRANSFER_DATABASE_URL, "
                                       "or create it with `kkmtransfer db upgrade`")


def _billing():
    """The service layer on the configured database, which must exist and be at this version's schema.
    Only `db upgrade` and `demo` create a schema."""
    from ..adapters.migrate import current_revision
    from ..app import SchemaError, create_billing, require_schema

    settings = _settings()
    _existing_database(settings.database_url)
    billing = create_billing(settings)
    if current_revision(billing.engine) is None:
        raise click.ClickException(f"the database {_safe_url(settings.database_url)} has no schema: "
                                   "run `kkmtransfer db upgrade` (or check KKMTRANSFER_DATABASE_URL)")
    try:
        require_schema(billing.engine, billing.settings.database_url)
    except SchemaError as exc:
        raise click.ClickException(str(exc))
    return billing


def actor() -> str:
    """Who runs the command, for the audit trail: --actor, or the OS user."""
    from ..service_layer.audit import os_actor

    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().params.get("actor") if ctx else None
    return given or os_actor()


def output_path(path: Path | None) -> Path | None:
    """An output file's folder must exist (checked before any work is done)."""
    if path is not None and not path.expanduser().resolve().parent.is_dir():
        raise click.ClickException(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def confirm_many(summary: str, yes: bool, dry_run: bool) -> bool:
    """Show what a command that touches many cards will do; True: go on. A dry run stops here; on a
    terminal the operator confirms; elsewhere --yes is needed."""
    click.echo(("dry run: " if dry_run else "") + summary)
    if dry_run:
        return False
    if yes:
        return True
    if not sys.stdin.isatty():
        raise click.ClickException("not confirmed: nothing changed (give --yes to run it from a script, "
                                   "--dry-run to see what it would do)")
    if not click.confirm("Go on?", default=False, err=True):
        raise click.ClickException("not confirmed: nothing changed")
    return True


def _db_problem(exc) -> str:
    """One line for a database that cannot be used."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if "does not exist" in low and "database" in low:
        hint = "create the database (createdb) or fix KKMTRANSFER_DATABASE_URL"
    elif "connection refused" in low or "could not connect" in low or "could not translate host" in low \
            or "timeout" in low or "no route" in low:
        hint = "is the database server running? check KKMTRANSFER_DATABASE_URL"
    elif "password authentication" in low or "authentication failed" in low:
        hint = "check the user and password in KKMTRANSFER_DATABASE_URL"
    elif "unable to open database file" in low:
        hint = "check the SQLite path in KKMTRANSFER_DATABASE_URL (its folder must exist and be writable)"
    else:
        hint = "check KKMTRANSFER_DATABASE_URL and the database server"
    return f"database error: {text} ({hint})"


class _Main(click.Group):
    """The top group: whatever a command hits in the database or the file system is one line, exit 1."""

    def invoke(self, ctx):
        from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except errors.DomainError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}")
        except DBAPIError as exc:
            raise click.ClickException(_db_problem(exc))
        except NoSuchModuleError as exc:
            raise click.ClickException(f"KKMTRANSFER_DATABASE_URL: {exc}")
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {str(exc).splitlines()[0]}")
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


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


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kkmtransfer")
@click.option("--actor", metavar="NAME", help="Who is acting, for the audit trail (default: the OS user).")
def main(actor):
    """kkmtransfer: the discount-card billing server for cash registers.

    Settings come from the environment: KKMTRANSFER_DATABASE_URL (default: SQLite under ./var/),
    KKMTRANSFER_TIMEZONE (default Europe/Moscow), KKMTRANSFER_MAX_REQUEST_BYTES (default 1 MiB) and
    more: `kkmtransfer config show` prints them all with the values in effect.

    Every command but `db upgrade` and `demo` needs a database with the schema; commands that change
    many cards show what they will do and ask first (--yes for scripts, --dry-run to only look).
    """


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


from . import (  # noqa: E402,F401  (each module adds its commands to main)
    db, serve, users, cards, promotions, nightly, journal, billing, export, actions, receipts, report, ledger, demo,
    config, sms, operators, certificates,
    program, holds,
)
