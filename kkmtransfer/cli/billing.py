"""kkmtransfer billing: starting and stopping billing."""
from __future__ import annotations

from pathlib import Path

import click

from ..service_layer import audit
from . import _billing, _progress, actor, domain_errors, main


@main.group()
def billing():
    """Starting and stopping billing on a live chain."""


@billing.command("enable")
@click.option("--start-date", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="First day billed (today or a past date). Opening balances are dated the day before.")
@click.option("--opening-balances", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CardNumber;Bonus;Accumulation;ReceiptCount file with a header (docs/offline-format.md).")
@domain_errors
def billing_enable(start_date, opening_balances):
    """Start billing: one InitialBalance operation per card of the file. Runs once; a bad line refuses
    the whole file (every bad line is listed)."""
    from ..service_layer.billing_admin import BillingAdmin, read_opening_balances

    billing = _billing()
    admin = BillingAdmin(billing)
    total = len(read_opening_balances(opening_balances))
    with _progress("cards", total) as advance:
        n = admin.enable(start_date.date(), opening_balances, advance)
    # BillingAdmin takes no actor: the audit row follows the change in a transaction of its own
    audit.record_now(billing.engine, actor(), "billing.enable", str(start_date.date()),
                     file=opening_balances.name, cards=n)
    click.echo(f"billing enabled from {start_date.date()}: {n} opening balance(s) written")


@billing.command("disable")
@click.option("--yes-i-have-a-backup", "confirmed", is_flag=True,
              help="Do not ask for the confirmation phrase (for scripts).")
@domain_errors
def billing_disable(confirmed):
    """Delete ALL billing data (operations, lots, documents, journals' keys and rejects, the billing
    start). Cards, users and promotions stay. Make a backup first."""
    from ..service_layer.billing_admin import CONFIRMATION, BillingAdmin

    if not confirmed:
        click.echo("This deletes every billing operation and balance. Cards, users and promotions stay.", err=True)
        typed = click.prompt(f"Type {CONFIRMATION!r} to go on", default="", show_default=False, err=True)
        if typed.strip() != CONFIRMATION:
            raise click.ClickException("not confirmed: nothing deleted")
    billing = _billing()
    removed = BillingAdmin(billing).disable()
    audit.record_now(billing.engine, actor(), "billing.disable", None, **removed)
    click.echo("deleted: " + ", ".join(f"{n} {table}" for table, n in removed.items()))
