"""kkmtransfer actions: bonus actions, zeroing, cancelling."""
from __future__ import annotations

from pathlib import Path

import click

from ..service_layer import audit
from . import _billing, _progress, actor, confirm_many, domain_errors, main


@main.group()
def actions():
    """Bonus actions on many cards ("Бонус-акция"), zeroing ("Обнуление бессрочных бонусов"), cancelling."""


def _selection(first, last, cards_file, all_active):
    from ..service_layer.actions import Selection

    numbers = None
    if cards_file is not None:
        numbers = tuple(n.strip() for n in cards_file.read_text(encoding="utf-8-sig").splitlines() if n.strip())
    return Selection(first=first, last=last, numbers=numbers, all_active=all_active)


def _action_report(report, what: str) -> None:
    from ..service_layer.actions import ZERO_KIND

    if report.dry_run:
        state = " (it exists already: nothing would change)" if report.already_done else ""
        click.echo(f"dry run: action {report.action_id} would {what} {report.cards} card(s), "
                   f"{report.amount} in all{state}")
    elif report.already_done:
        click.echo(f"action {report.action_id} was done before: nothing changed ({report.cards} card(s))")
    else:
        verb = "burnt" if report.kind == ZERO_KIND else "credited"
        click.echo(f"action {report.action_id}: {report.done} card(s), {report.amount} {verb}"
                   + (f", {report.skipped} blocked card(s) skipped" if report.skipped else ""))


_YES = click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
_DRY = click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")


@actions.command("credit")
@click.option("--amount", required=True, help="Bonus to credit to each card (> 0, 2 decimals).")
@click.option("--from", "first", help="First card number of a range (digit strings compare as numbers).")
@click.option("--to", "last", help="Last card number of the range (inclusive).")
@click.option("--cards", "cards_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file with one card number per line.")
@click.option("--all-active", is_flag=True, help="Every active card.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Last day the bonus can be spent (inclusive, business time zone); default: never burns.")
@click.option("--note", help="Why (shown in the cards' history and in `report actions`).")
@_DRY
@_YES
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100000), help="Cards per transaction.")
@domain_errors
def actions_credit(amount, first, last, cards_file, all_active, until, note, dry_run, yes, batch):
    """Credit --amount bonus to many cards at once, one operation per card. Shows how many cards and how
    much first and asks (--yes for scripts). Giving the same command again the same day (e.g. after a
    crash) resumes the same action and never credits a card twice; use another --note for a second,
    separate action."""
    from ..service_layer.actions import Actions

    selection = _selection(first, last, cards_file, all_active)
    billing = _billing()
    until = until and until.date()
    preview = Actions(billing).credit(amount, selection, until, note, dry_run=True)
    if dry_run or preview.already_done:
        _action_report(preview, f"credit {amount} to")
        return
    if preview.cards == 0:
        raise click.ClickException("no card in the selection: nothing changed")
    confirm_many(f"action {preview.action_id} will credit {amount} to each of {preview.cards} card(s), "
                 f"{preview.amount} in all" + (" (resuming it)" if preview.resumed else ""), yes, False)
    with _progress("cards") as progress:
        report = Actions(billing, batch=batch, progress=progress).credit(amount, selection, until, note)
    audit.record_now(billing.engine, actor(), "actions.credit", report.action_id, amount=amount,
                     cards=report.done, total=report.amount, until=until, note=note)
    _action_report(report, f"credit {amount} to")


@actions.command("zero")
@click.option("--inactive-since", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Cards without a purchase (sale or return) on or after this day.")
@click.option("--note", help="Why.")
@_DRY
@_YES
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100000), help="Cards per transaction.")
@domain_errors
def actions_zero(inactive_since, note, dry_run, yes, batch):
    """Burn the non-expiring bonuses of cards whose last purchase is before --inactive-since (dated
    bonuses are left alone); one write-off operation per card. Shows how many cards and how much first
    and asks (--yes for scripts)."""
    from ..service_layer.actions import Actions

    billing = _billing()
    since = inactive_since.date()
    preview = Actions(billing).zero(since, note, dry_run=True)
    if dry_run or preview.already_done:
        _action_report(preview, "zero")
        return
    if preview.cards == 0:
        click.echo(f"no card inactive since {since} has non-expiring bonuses: nothing to zero")
        return
    confirm_many(f"action {preview.action_id} will burn {preview.amount} non-expiring bonus on "
                 f"{preview.cards} card(s) inactive since {since}" + (" (resuming it)" if preview.resumed else ""),
                 yes, False)
    with _progress("cards") as progress:
        report = Actions(billing, batch=batch, progress=progress).zero(since, note)
    audit.record_now(billing.engine, actor(), "actions.zero", report.action_id, inactive_since=since,
                     cards=report.done, total=report.amount, note=note)
    _action_report(report, "zero")


def _done_cards(billing, action_id: str):
    """How many cards an action moved, and how much, that a cancel would reverse."""
    from decimal import Decimal

    from sqlalchemy import func, select

    from ..adapters.db import action_cards
    from ..service_layer.unit_of_work import UnitOfWork

    with UnitOfWork(billing.engine) as uow:
        n, total = uow.conn.execute(
            select(func.count(), func.coalesce(func.sum(action_cards.c.amount), 0))
            .where(action_cards.c.action_id == action_id, action_cards.c.state == "done")).one()
    return n, total if isinstance(total, Decimal) else Decimal(total).scaleb(-2)


@actions.command("cancel")
@click.argument("action_id")
@_DRY
@_YES
@domain_errors
def actions_cancel(action_id, dry_run, yes):
    """Reverse an action card by card. For a credit, what is left of it is taken back and the report lists
    what could not be (already spent or burnt); a zeroing gives the bonuses back. Shows how many cards
    first and asks (--yes for scripts)."""
    from ..service_layer.actions import Actions

    billing = _billing()
    row = Actions(billing).get(action_id)
    n, total = _done_cards(billing, action_id)
    verb = "take back up to" if row["kind"] == "credit" else "give back"
    if row["status"] == "cancelled":
        raise click.ClickException(f"action {action_id} is cancelled already: nothing changed")
    confirm_many(f"cancelling action {action_id} ({row['kind']}, {row['status']}) will {verb} {total} on "
                 f"{n} card(s)", yes, dry_run)
    if dry_run:
        return
    report = Actions(billing).cancel(action_id)
    if report.already:  # another cancel (the console's, another terminal's) finished it meanwhile
        click.echo(f"action {action_id} is cancelled already (by another command at the same time): "
                   f"{report.cards} card(s), {report.taken_back} reversed")
        return
    # Actions takes no actor: the audit row follows the change in a transaction of its own
    audit.record_now(billing.engine, actor(), "actions.cancel", action_id, cards=report.cards,
                     reversed=report.taken_back, kept=report.kept)
    click.echo(f"action {action_id} cancelled on {report.cards} card(s): {report.taken_back} reversed, "
               f"{report.kept} could not be taken back")
    for number, kept in report.kept_by_card[:200]:
        click.echo(f"  {number}\t{kept} not taken back (spent or burnt)")
    if len(report.kept_by_card) > 200:
        click.echo(f"  … and {len(report.kept_by_card) - 200} more cards")
