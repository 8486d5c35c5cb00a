"""kkmtransfer program: the bonus program the server calculates receipts by (versioned)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

import click

from . import _billing, actor, domain_errors, main


class IsoDateTime(click.ParamType):
    """ISO 8601 with an offset, e.g. 2026-12-01T00:00:00+03:00."""

    name = "DATETIME"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00:00+03:00)", param, ctx)
        if parsed.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset (e.g. 2026-12-01T00:00:00+03:00)", param, ctx)
        return parsed


class Tier(click.ParamType):
    name = "ACCUMULATION:PERCENT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        left, sep, right = value.partition(":")
        try:
            if not sep:
                raise InvalidOperation
            return Decimal(left.strip()), Decimal(right.strip())
        except InvalidOperation:
            self.fail(f"{value!r}: expected ACCUMULATION:PERCENT, e.g. 10000:7", param, ctx)


def _service():
    from ..service_layer.program import ProgramService

    return ProgramService(_billing())


def _echo_version(version, tz, verb="in force") -> None:
    start = version.valid_from.astimezone(tz).isoformat() if version.valid_from else "always (no program set)"
    click.echo(f"{verb} from {start}:")
    for line in version.program.describe():
        click.echo(f"  {line}")


@main.group()
def program():
    """The bonus program: accrual percents, tiers, goods groups, max payment share, rounding.

    Receipts the server calculates (CalculateReceipt, a Sale with Lines) use the version in force at
    their OperationTime. Registers that send their own amounts are not affected."""


@program.command("show")
@click.option("--at", "when", type=IsoDateTime(), help="Show the version in force at this time (default now).")
@domain_errors
def program_show(when):
    """Show the version in force now (or --at) and the changes planned after it."""
    from ..domain.program import Program, ProgramVersion

    svc = _service()
    tz = svc.settings.tz
    now = when or svc.billing.clock()
    versions = svc.versions()
    current = [v for v in versions if v.valid_from <= now]
    _echo_version(current[-1] if current else ProgramVersion(None, Program()), tz)
    for v in versions:
        if v.valid_from > now:
            _echo_version(v, tz, "planned")


_FROM = click.option("--from", "valid_from", type=IsoDateTime(),
                     help="When the change takes effect: ISO 8601 with an offset; default now; not in the past.")


@program.command("set")
@click.option("--accrual-percent", help="Percent of a line's Sum accrued (below the first tier).")
@click.option("--max-payment-percent", help="Largest share of a line payable by bonus, percent.")
@click.option("--tier", "tiers", multiple=True, type=Tier(),
              help="From ACCUMULATION on, PERCENT is accrued (repeat; replaces all tiers).")
@click.option("--no-tiers", is_flag=True, help="Remove every tier.")
@click.option("--accrue-on-bonus-paid/--no-accrue-on-bonus-paid", default=None,
              help="Whether the part of a line paid by bonus earns bonus (default: it does not).")
@click.option("--rounding", type=click.Choice(["kopeck", "whole"]), help="Accruals down to kopecks or to whole bonuses.")
@_FROM
@domain_errors
def program_set(accrual_percent, max_payment_percent, tiers, no_tiers, accrue_on_bonus_paid, rounding, valid_from):
    """Change the program from --from on. Options not given keep their value."""
    if tiers and no_tiers:
        raise click.UsageError("--tier and --no-tiers exclude each other")
    svc = _service()
    version = svc.set(valid_from=valid_from, accrual_percent=accrual_percent, max_payment_percent=max_payment_percent,
                      tiers=() if no_tiers else (tiers or None), accrue_on_bonus_paid=accrue_on_bonus_paid,
                      rounding=rounding, actor=actor())
    _echo_version(version, svc.settings.tz, "set; in force")


@program.command("group")
@click.argument("group")
@click.option("--accrual-percent", help="The group's own accrual percent.")
@click.option("--max-payment-percent", help="The group's own largest share payable by bonus.")
@click.option("--excluded", is_flag=True, help="The group earns nothing and cannot be paid by bonus.")
@click.option("--remove", is_flag=True, help="The group follows the program's rules again.")
@_FROM
@domain_errors
def program_group(group, accrual_percent, max_payment_percent, excluded, remove, valid_from):
    """Give goods group GROUP (ReceiptLine.Group) its own rule from --from on."""
    svc = _service()
    version = svc.set_group(group, valid_from=valid_from, accrual_percent=accrual_percent,
                            max_payment_percent=max_payment_percent, excluded=excluded, remove=remove,
                            actor=actor())
    _echo_version(version, svc.settings.tz, "set; in force")


@program.command("promotion")
@click.argument("code")
@click.option("--accrual-percent", help="The promotion's own accrual percent.")
@click.option("--none", "clear", is_flag=True, help="The promotion no longer sets a percent.")
@domain_errors
def program_promotion(code, accrual_percent, clear):
    """Set promotion CODE's own accrual percent (receipts naming it in PromotionCode)."""
    if bool(accrual_percent) == clear:
        raise click.UsageError("give either --accrual-percent or --none")
    _service().set_promotion_percent(code, None if clear else accrual_percent, actor=actor())
    click.echo(f"promotion {code}: " + (f"accrual {accrual_percent}%" if accrual_percent else "no own percent"))
