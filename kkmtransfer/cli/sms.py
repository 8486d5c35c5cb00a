"""kkmtransfer sms / cards set-spend-code / report spend-codes: SMS codes before spending bonuses."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path

import click

from ..domain.model import normalise_phone
from . import _billing, _settings, actor, confirm_many, domain_errors, main
from .cards import cards
from .report import _write_csv, report


@main.group()
def sms():
    """The SMS gateway (codes before spending bonuses)."""


@sms.command("test")
@click.argument("phone")
@click.option("--text", default="kkmtransfer: проверка отправки SMS", show_default=True, help="The message.")
@domain_errors
def sms_test(phone, text):
    """Send one SMS to PHONE through the configured gateway and print the gateway's message id."""
    from ..adapters.sms import SmsError, provider_from_settings
    from ..domain.spend_codes import gateway_phone

    settings = _settings()
    provider = provider_from_settings(settings)
    dadr = gateway_phone(normalise_phone(phone))
    try:
        message_id = provider.send(dadr, text)
    except SmsError as exc:
        raise click.ClickException(f"SMS not sent ({provider.name}): {exc.reason}")
    click.echo(f"SMS sent by {provider.name} to {dadr}: message id {message_id}")


@cards.command("set-spend-code")
@click.argument("args", nargs=-1, required=True, metavar="[NUMBER] on|off")
@click.option("--from", "first", help="First card number of a range (digit strings compare as numbers).")
@click.option("--to", "last", help="Last card number of the range (inclusive).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Show how many cards would change, change nothing.")
@domain_errors
def cards_set_spend_code(args, first, last, yes, dry_run):
    """Whether card NUMBER, or every card from --from to --to, needs an SMS code to spend bonuses (used
    when KKMTRANSFER_SPEND_CODE=per-card). A range is shown first and asked for (--yes for scripts)."""
    ranged = first is not None or last is not None
    if ranged and (first is None or last is None):
        raise click.UsageError("give both --from and --to")
    if len(args) != (1 if ranged else 2) or args[-1].lower() not in ("on", "off"):
        raise click.UsageError("usage: cards set-spend-code NUMBER on|off, or --from A --to B on|off")
    required = args[-1].lower() == "on"
    billing = _billing()
    service = billing.spend_codes
    if ranged:
        total, flagged = service.count_between(first, last)
        if total == 0:
            raise click.ClickException(f"no card numbered {first} .. {last}: nothing changed")
        changes = (total - flagged) if required else flagged
        summary = (f"{total} card(s) numbered {first} .. {last}, {flagged} of them need a code now: "
                   f"{changes} will change to {'needing' if required else 'not needing'} one")
        if not confirm_many(summary, yes, dry_run):
            return
        service.set_required(first, last, required, actor())
        click.echo(f"{total} card(s) {'need' if required else 'do not need'} an SMS code to spend bonuses")
    else:
        if dry_run:
            click.echo(f"dry run: card {args[0]} would {'' if required else 'not '}need an SMS code")
            return
        service.set_required(args[0], None, required, actor())
        click.echo(f"card {args[0]} {'needs' if required else 'does not need'} an SMS code to spend bonuses")
    if billing.settings.spend_code != "per-card":
        click.echo(f"note: KKMTRANSFER_SPEND_CODE is {billing.settings.spend_code}; the cards' marks count only "
                   f"with per-card", err=True)


@report.command("spend-codes")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First day (business zone; default today).")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive; default --from).")
@click.option("--card", help="Only this card.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="At most this many.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Write CSV instead.")
@domain_errors
def report_spend_codes(first, last, card, limit, csv_file):
    """Every SMS code request and check: time, card, register, user, outcome."""
    billing = _billing()
    tz = billing.settings.tz
    day_from = first.date() if first else billing.clock().astimezone(tz).date()
    day_to = last.date() if last else day_from
    if day_to < day_from:
        raise click.UsageError("--to is before --from")
    since = datetime.combine(day_from, time(), tz)
    until = datetime.combine(day_to + timedelta(days=1), time(), tz)
    rows = billing.spend_codes.events(since, until, card, limit)
    header = ["time", "action", "outcome", "card", "kkm", "user", "operation_id", "detail"]

    def cells(e):
        return [e["at"].astimezone(tz).isoformat(timespec="seconds"), e["action"], e["outcome"], e["card_number"],
                e["kkm"] or "", e["who"] or "", e["operation_id"] or "", e["detail"] or ""]

    if csv_file:
        click.echo(f"{_write_csv(csv_file, header, map(cells, rows))} event(s) written to {csv_file}")
        return
    if not rows:
        click.echo(f"no spend-code events {day_from} .. {day_to}")
        return
    click.echo("\t".join(header))
    for e in rows:
        click.echo("\t".join(cells(e)))
