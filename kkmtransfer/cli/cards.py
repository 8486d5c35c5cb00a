"""kkmtransfer cards: group input, look-up, blocking, phone, rules."""
from __future__ import annotations

import click

from ..domain.model import CardStatus
from . import _billing, actor, confirm_many, domain_errors, main


@main.group()
def cards():
    """Discount cards: group input, look-up, blocking, phone."""


@cards.command("add-range")
@click.option("--from", "first", required=True, type=click.IntRange(min=0), help="First number of the range.")
@click.option("--to", "last", required=True, type=click.IntRange(min=0), help="Last number (inclusive).")
@click.option("--prefix", default="", help="Text put before each number, e.g. 2000.")
@click.option("--width", default=0, type=click.IntRange(0, 32), help="Zero-pad the number to this many digits.")
@click.option("--holder", default=None, help="Holder's display name for all the new cards.")
@click.option("--issued", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The day the cards were handed out, when before today (business time zone): receipts "
                   "from that day on are accepted (KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE).")
@domain_errors
def cards_add_range(first, last, prefix, width, holder, issued):
    """Create the cards PREFIX+N for N from --from to --to (group input). Existing ones are left alone."""
    from datetime import datetime, time

    billing = _billing()
    since = None if issued is None else datetime.combine(issued.date(), time(0), tzinfo=billing.settings.tz)
    result = billing.add_card_range(first, last, prefix, width, holder, actor=actor(), issued=since)
    click.echo(f"{len(result.created)} cards created, {len(result.skipped)} already existed")
    if result.created:
        click.echo(f"first {result.created[0]}, last {result.created[-1]}")


@cards.command("show")
@click.argument("number")
@domain_errors
def cards_show(number):
    """Show a card's status and balances."""
    view = _billing().card_info(number)
    click.echo(format_card(view))


def format_card(view) -> str:
    b = view.balances
    lines = [
        f"card          {view.number}",
        f"status        {view.status.value}",
        f"holder        {view.holder or '-'}",
        f"bonus         {b.bonus} (pending {b.bonus_pending})",
        f"next expiry   {b.next_expiry_date or '-'} {b.next_expiry_amount if b.next_expiry_date else ''}".rstrip(),
        f"accumulation  {b.accumulation} (pending {b.accumulation_pending})",
        f"receipts      {b.receipt_count} (pending {b.receipt_count_pending})",
    ]
    return "\n".join(lines)


@cards.command("block")
@click.argument("number")
@domain_errors
def cards_block(number):
    """Block a card: it can still be read, but not used in receipts."""
    _billing().set_card_status(number, CardStatus.BLOCKED, actor())
    click.echo(f"card {number} blocked")


@cards.command("unblock")
@click.argument("number")
@domain_errors
def cards_unblock(number):
    """Unblock a card."""
    _billing().set_card_status(number, CardStatus.ACTIVE, actor())
    click.echo(f"card {number} active")


@cards.command("set-phone")
@click.argument("number")
@click.argument("phone")
@domain_errors
def cards_set_phone(number, phone):
    """Set the holder's phone (any common notation; stored as 10 digits). Use '' to clear it."""
    digits = _billing().set_card_phone(number, phone or None, actor())
    click.echo(f"card {number} phone {digits or '(none)'}")


@cards.command("set-holder")
@click.argument("number")
@click.argument("holder")
@domain_errors
def cards_set_holder(number, holder):
    """Set the holder's display name. Use '' to clear it."""
    _billing().set_card_holder(number, holder or None, actor())
    click.echo(f"card {number} holder {holder or '(none)'}")


@cards.command("set-rule")
@click.argument("number", required=False)
@click.option("--from", "first", help="First card number of a range (digit strings compare as numbers).")
@click.option("--to", "last", help="Last card number of the range (inclusive).")
@click.option("--accumulation-delay-days", type=click.IntRange(min=0),
              help="Accumulation counts this many calendar days after the receipt's day.")
@click.option("--accumulation-lifetime-days", type=click.IntRange(min=0),
              help="Accumulation burns after this many days of life (0: never).")
@click.option("--count-delay-days", type=click.IntRange(min=0),
              help="Receipt counts count this many calendar days after the receipt's day.")
@click.option("--count-lifetime-days", type=click.IntRange(min=0),
              help="Receipt counts burn after this many days of life (0: never).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Show how many cards would change, change nothing.")
@domain_errors
def cards_set_rule(number, first, last, yes, dry_run, **rules):
    """Set the deferral and lifetime of accumulation and receipt count for card NUMBER, or for every card
    from --from to --to (group processing). Options not given stay as they are. The rule applies to
    receipts registered from now on. A range is shown first and asked for (--yes for scripts)."""
    if bool(number) == bool(first or last) or (first is None) != (last is None):
        raise click.ClickException("give either NUMBER or both --from and --to")
    billing = _billing()
    given = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in rules.items() if v is not None)
    if not number:
        count = billing.set_card_rules(first, last, dry_run=True, **rules)
        if count == 0:
            raise click.ClickException(f"no card numbered {first} .. {last}: nothing changed")
        if not confirm_many(f"set {given} on {count} card(s) numbered {first} .. {last}", yes, dry_run):
            return
    elif dry_run:
        billing.set_card_rules(number, dry_run=True, **rules)
        click.echo(f"dry run: set {given} on card {number}")
        return
    changed = billing.set_card_rules(number or first, None if number else last, actor(), **rules)
    click.echo(f"rules set on {changed} card(s)")
