"""kkmtransfer db: the schema (Alembic migrations)."""
from __future__ import annotations

import click

from . import _existing_database, _safe_url, _settings, main


@main.group()
def db():
    """The database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision):
    """Create the schema or bring it up to date. Safe to run again."""
    from ..adapters.db import make_engine
    from ..adapters.migrate import current_revision, head_revision, upgrade

    settings = _settings()
    if head_revision(settings.database_url) is None:
        raise click.ClickException("this installation has no migration scripts: reinstall the package")
    upgrade(settings.database_url, revision, on_wait=lambda message: click.echo(message, err=True))
    engine = make_engine(settings.database_url)
    try:
        click.echo(f"database is at revision {current_revision(engine)}: {_safe_url(settings.database_url)}")
    finally:
        engine.dispose()


@db.command("current")
def db_current():
    """Print the schema revision of the database and the newest one this version knows."""
    from ..adapters.db import make_engine
    from ..adapters.migrate import current_revision, head_revision

    settings = _settings()
    _existing_database(settings.database_url)
    engine = make_engine(settings.database_url)
    click.echo(f"current: {current_revision(engine) or '(empty database)'}")
    click.echo(f"head:    {head_revision(settings.database_url)}")
