"""kkmtransfer receipts: receipts' bonuses."""
from __future__ import annotations

import click

from ..service_layer import audit
from . import _billing, actor, domain_errors, main


@main.group()
def receipts():
    """Receipts' bonuses."""


@receipts.command("annul")
@click.argument("operation_id")
@click.option("--note", help="Why.")
@domain_errors
def receipts_annul(operation_id, note):
    """Take back the bonuses receipt OPERATION_ID accrued ("Аннулировать бонусы чека"), less what its
    returns took back; may leave a debt that later accruals pay."""
    billing = _billing()
    result, amount = billing.annul_receipt(operation_id, note)
    if result.status == "AlreadyApplied":
        click.echo(f"already annulled ({amount}); nothing changed")
    else:
        # annul_receipt takes no actor: the audit row follows the change in a transaction of its own
        audit.record_now(billing.engine, actor(), "receipts.annul", operation_id, amount=amount,
                         card=result.card.number, operation=result.operation_id, note=note)
        click.echo(f"annulled {amount} bonus; card {result.card.number} balance now {result.card.balances.bonus}")
