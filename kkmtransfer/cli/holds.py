"""kkmtransfer holds: bonuses held by ReserveBonus, waiting for their sale."""
from __future__ import annotations

import click

from . import _billing, actor, domain_errors, main


def _service():
    from ..service_layer.holds import HoldService

    return HoldService(_billing())


def _age(delta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


@main.group()
def holds():
    """Holds (ReserveBonus) not yet confirmed or cancelled; hung ones are released by the periodic task."""


@holds.command("list")
@click.option("--hung", is_flag=True, help="Only those past KKMTRANSFER_HOLD_TIMEOUT.")
@domain_errors
def holds_list(hung):
    """List open holds: id, register, card, amount, age, when it runs out."""
    svc = _service()
    rows = svc.list(hung=hung)
    if not rows:
        click.echo("no hung holds" if hung else "no open holds")
        return
    tz = svc.settings.tz
    click.echo("operation_id\tkkm\tcard\tamount\tage\texpires_at")
    for h in rows:
        click.echo(f"{h['id']}\t{h['kkm']}\t{h['card_number']}\t{h['amount']}\t{_age(h['age'])}\t"
                   f"{h['expires_at'].astimezone(tz).isoformat(timespec='seconds')}")
    click.echo(f"{len(rows)} hold(s), {sum(h['amount'] for h in rows)} bonus held")


@holds.command("release")
@click.argument("operation_id")
@domain_errors
def holds_release(operation_id):
    """Release hold OPERATION_ID by hand: its bonuses go back to the card. A sale confirming it later
    still applies when the balance allows."""
    result = _service().release_by_hand(operation_id, actor=actor())
    if result.status == "AlreadyCancelled":
        click.echo(f"hold {result.operation_id} was already released; nothing changed")
    else:
        click.echo(f"hold {result.operation_id} released; card {result.card.number} balance now "
                   f"{result.card.balances.bonus}")
