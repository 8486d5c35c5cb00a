"""kkmtransfer demo: demo cards and a demo register user."""
from __future__ import annotations

import click

from . import _billing, _settings, domain_errors, main

DEMO_USER = "kassa1"
DEMO_PASSWORD = "kassa1-demo-pass"
DEMO_PREFIX = "777"
DEMO_FIRST, DEMO_LAST, DEMO_WIDTH = 1, 10, 7
DEMO_PHONE = "+7 (916) 123-45-67"


@main.command()
@domain_errors
def demo():
    """Migrate the database and create demo cards and a demo register user (what `make run` uses)."""
    from ..adapters.migrate import upgrade

    upgrade(_settings().database_url)
    billing = _billing()
    result = billing.add_card_range(DEMO_FIRST, DEMO_LAST, DEMO_PREFIX, DEMO_WIDTH, "Demo holder")
    first = f"{DEMO_PREFIX}{DEMO_FIRST:0{DEMO_WIDTH}d}"
    billing.set_card_phone(first, DEMO_PHONE)
    billing.add_user(DEMO_USER, DEMO_PASSWORD)
    last = f"{DEMO_PREFIX}{DEMO_LAST:0{DEMO_WIDTH}d}"
    click.echo(f"demo cards: {first} .. {last} ({len(result.created)} new); {first} has phone {DEMO_PHONE}")
    click.echo(f"demo register user: {DEMO_USER} / password: {DEMO_PASSWORD}")

