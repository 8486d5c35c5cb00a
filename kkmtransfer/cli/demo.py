"""kkmtransfer demo: demo cards and a demo register user."""
from __future__ import annotations

import click

from . import _billing, _safe_url, _settings, actor, domain_errors, main

DEMO_USER = "kassa1"
DEMO_PASSWORD = "kassa1-demo-pass"
DEMO_PREFIX = "777"
DEMO_FIRST, DEMO_LAST, DEMO_WIDTH = 1, 10, 7
DEMO_PHONE = "+7 (916) 123-45-67"
DEMO_OPERATOR, DEMO_OPERATOR_PASSWORD = "admin", "admin-demo"


def _not_demo_data(url: str) -> list[str]:
    """What in the database is not demo data (empty list: nothing, or only what `demo` makes)."""
    from sqlalchemy import func, inspect, select

    from ..adapters.db import billing_state, cards, make_engine, promotions, users
    from ..adapters.migrate import current_revision

    demo_cards = [f"{DEMO_PREFIX}{n:0{DEMO_WIDTH}d}" for n in range(DEMO_FIRST, DEMO_LAST + 1)]
    engine = make_engine(url)
    try:
        if current_revision(engine) is None:
            return []
        tables = set(inspect(engine).get_table_names())
        found = []
        with engine.connect() as conn:
            def count(table, *where):
                if table.name not in tables:
                    return 0
                return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

            checks = [(cards, "card(s) other than the demo ones", [cards.c.number.not_in(demo_cards)]),
                      (users, "user(s) other than the demo one", [users.c.name != DEMO_USER]),
                      (promotions, "promotion(s)", []),
                      (billing_state, "billing start(s)", [])]
            for table, what, where in checks:
                n = count(table, *where)
                if n:
                    found.append(f"{n} {what}")
        return found
    finally:
        engine.dispose()


@main.command()
@domain_errors
def demo():
    """Migrate the database and create demo cards, a demo register user and a demo console operator (what
    `make run` uses). Refuses a database that holds anything but demo data (the demo passwords are
    published)."""
    from ..adapters.migrate import upgrade
    from ..service_layer.operators import Operators

    url = _settings().database_url
    found = _not_demo_data(url) if _sqlite_file_or_server(url) else []
    if found:
        raise click.ClickException(f"{_safe_url(url)} is not a demo database ({', '.join(found)}): "
                                   "demo only fills an empty one; point KKMTRANSFER_DATABASE_URL elsewhere")
    upgrade(url)
    billing = _billing()
    result = billing.add_card_range(DEMO_FIRST, DEMO_LAST, DEMO_PREFIX, DEMO_WIDTH, "Demo holder", actor=actor())
    first = f"{DEMO_PREFIX}{DEMO_FIRST:0{DEMO_WIDTH}d}"
    billing.set_card_phone(first, DEMO_PHONE, actor())
    billing.add_user(DEMO_USER, DEMO_PASSWORD, actor())
    last = f"{DEMO_PREFIX}{DEMO_LAST:0{DEMO_WIDTH}d}"
    click.echo(f"demo cards: {first} .. {last} ({len(result.created)} new); {first} has phone {DEMO_PHONE}")
    click.echo(f"demo register user: {DEMO_USER} / password: {DEMO_PASSWORD}")
    Operators(billing).add(DEMO_OPERATOR, "admin", DEMO_OPERATOR_PASSWORD)
    click.echo(f"demo console operator: {DEMO_OPERATOR} / password: {DEMO_OPERATOR_PASSWORD} (admin)")


def _sqlite_file_or_server(url: str) -> bool:
    """False for a SQLite file that does not exist yet (nothing to look at; it is created)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    from pathlib import Path

    return Path(parsed.database).is_file()
