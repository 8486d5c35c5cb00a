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


@receipts.command("show")
@click.argument("operation_id")
@domain_errors
def receipts_show(operation_id):
    """Show receipt OPERATION_ID with its lines (what each was paid by bonus and earned) and its returns."""
    from ..domain.model import canonical_guid
    from ..service_layer.receipts import receipt

    billing = _billing()
    op, lines, returns = receipt(billing.engine, canonical_guid(operation_id))
    tz = billing.settings.tz
    click.echo(f"{op['kind']} {op['id']}  card {op['card_number']}  kkm {op['kkm'] or '-'}  "
               f"{op['operation_time'].astimezone(tz).isoformat(timespec='seconds')}")
    click.echo(f"sum {op['receipt_sum']}  accrued {op['bonus_accrued']}  spent {op['bonus_spent']}"
               + (f"  original {op['original_operation_id']}" if op["original_operation_id"] else ""))
    if lines:
        click.echo("line\tarticle\tgroup\tquantity\tprice\tsum\tmax_payment\tspent\taccrued")
        for x in lines:
            click.echo(f"{x['line_number']}\t{x['article']}\t{x['group_name'] or ''}\t{x['quantity']}\t{x['price']}\t"
                       f"{x['sum']}\t{x['max_payment']}\t{x['bonus_spent']}\t{x['bonus_accrued']}")
    else:
        click.echo("no lines (registered by amounts)")
    for rid in returns:
        click.echo(f"returned by {rid}")
