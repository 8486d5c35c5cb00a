"""kkmtransfer actions: bonus actions, zeroing, cancelling."""
from __future__ import annotations

from pathlib import Path

import click

from . import _billing, _progress, domain_errors, main


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


@actions.command("credit")
@click.option("--amount", required=True, help="Bonus to credit to each card (> 0, 2 decimals).")
@click.option("--from", "first", help="First card number of a range (compared as text).")
@click.option("--to", "last", help="Last card number of the range (inclusive).")
@click.option("--cards", "cards_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file with one card number per line.")
@click.option("--all-active", is_flag=True, help="Every active card.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Last day the bonus can be spent (inclusive, business time zone); default: never burns.")
@click.option("--note", help="Why (shown in the cards' history and in `report actions`).")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100000), help="Cards per transaction.")
@domain_errors
def actions_credit(amount, first, last, cards_file, all_active, until, note, dry_run, batch):
    """Credit --amount bonus to many cards at once, one operation per card. Giving the same command again
    the same day (e.g. after a crash) resumes the same action and never credits a card twice; use another
    --note for a second, separate action."""
    from ..service_layer.actions import Actions

    selection = _selection(first, last, cards_file, all_active)
    with _progress("cards") as progress:
        report = Actions(_billing(), batch=batch, progress=progress).credit(
            amount, selection, until and until.date(), note, dry_run)
    _action_report(report, f"credit {amount} to")


@actions.command("zero")
@click.option("--inactive-since", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Cards without a purchase (sale or return) on or after this day.")
@click.option("--note", help="Why.")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100000), help="Cards per transaction.")
@domain_errors
def actions_zero(inactive_since, note, dry_run, batch):
    """Burn the non-expiring bonuses of cards whose last purchase is before --inactive-since (dated
    bonuses are left alone); one write-off operation per card."""
    from ..service_layer.actions import Actions

    with _progress("cards") as progress:
        report = Actions(_billing(), batch=batch, progress=progress).zero(inactive_since.date(), note, dry_run)
    _action_report(report, "zero")


@actions.command("cancel")
@click.argument("action_id")
@domain_errors
def actions_cancel(action_id):
    """Reverse an action card by card. For a credit, what is left of it is taken back and the report lists
    what could not be (already spent or burnt); a zeroing gives the bonuses back."""
    from ..service_layer.actions import Actions

    report = Actions(_billing()).cancel(action_id)
    click.echo(f"action {action_id} cancelled on {report.cards} card(s): {report.taken_back} reversed, "
               f"{report.kept} could not be taken back")
    for number, kept in report.kept_by_card[:200]:
        click.echo(f"  {number}\t{kept} not taken back (spent or burnt)")
    if len(report.kept_by_card) > 200:
        click.echo(f"  … and {len(report.kept_by_card) - 200} more cards")
