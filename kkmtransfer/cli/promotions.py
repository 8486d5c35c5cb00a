"""kkmtransfer promotions."""
from __future__ import annotations

import click

from . import _billing, actor, domain_errors, main


@main.group()
def promotions():
    """Promotions ("Назначение акции") and their bonus life rules."""


@promotions.command("add")
@click.argument("code")
@click.option("--name", required=True, help="What the promotion is called.")
@click.option("--delay-days", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bonuses become spendable this many calendar days after the receipt's business day.")
@click.option("--lifetime-days", type=click.IntRange(min=1),
              help="Bonuses can be spent on this many days from the day they start, then burn.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Bonuses can be spent up to and including this day (business time zone), then burn.")
@click.option("--valid-from", type=click.DateTime(["%Y-%m-%d"]), help="First receipt day the promotion applies to.")
@click.option("--valid-to", type=click.DateTime(["%Y-%m-%d"]), help="Last receipt day the promotion applies to.")
@domain_errors
def promotions_add(code, name, delay_days, lifetime_days, until, valid_from, valid_to):
    """Create promotion CODE. Registers name it in RegisterOperation.PromotionCode; its rule decides
    when the receipt's bonuses start and burn. Without --lifetime-days or --until they never burn."""
    if lifetime_days and until:
        raise click.UsageError("--lifetime-days and --until exclude each other")
    _billing().add_promotion(code, name, delay_days, lifetime_days, until and until.date(),
                             valid_from and valid_from.date(), valid_to and valid_to.date(), actor())
    click.echo(f"promotion {code} created")


@promotions.command("list")
def promotions_list():
    """List promotions with their rules and validity."""
    from ..domain.rules import LifeRule

    rows = _billing().list_promotions()
    if not rows:
        click.echo("no promotions")
    for p in rows:
        rule = LifeRule(p["delay_days"], p["lifetime_days"], p["until_date"]).describe()
        period = f"{p['valid_from'] or '…'} – {p['valid_to'] or '…'}"
        state = "closed" if p["closed_at"] else "open"
        click.echo(f"{p['code']}\t{p['name']}\t{period}\t{state}\t{rule}")


@promotions.command("close")
@click.argument("code")
@domain_errors
def promotions_close(code):
    """Close promotion CODE: receipts after today can no longer name it (returns still can)."""
    end = _billing().close_promotion(code, actor())
    click.echo(f"promotion {code} closed; last day {end}")
