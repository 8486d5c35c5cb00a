"""kkmtransfer certificates (and report certificates): gift certificates in the back office: ``kkmtransfer certificates …``, ``report certificates``."""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import click

from . import _billing, domain_errors, main
from .report import _write_csv, report


def _service():
    from ..service_layer.certificates import CertificateService

    return CertificateService(_billing())


@main.group()
def certificates():
    """Gift certificates: group input of printed ones, look-up, blocking (see also `report certificates`)."""


@certificates.command("add-range")
@click.option("--from", "first", type=click.IntRange(min=0), required=True, help="First number.")
@click.option("--to", "last", type=click.IntRange(min=0), required=True, help="Last number (inclusive).")
@click.option("--nominal", required=True, help="Face value, e.g. 1000.00.")
@click.option("--kind", type=click.Choice(["single-use", "multi-use"]), default="multi-use", show_default=True,
              help="single-use: redeemed whole at once (the rest is lost); multi-use: keeps its rest.")
@click.option("--prefix", default="", help="Text before the number.")
@click.option("--width", default=0, type=click.IntRange(min=0, max=27), help="Zero-pad numbers to this width.")
@click.option("--valid-days", type=click.IntRange(min=1), help="Valid for D days counted from the sale.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Valid through this day, whenever sold.")
@click.option("--pin", "with_pin", is_flag=True, help="Generate a random PIN for each (asked at payment).")
@click.option("--pins-out", type=click.Path(dir_okay=False, path_type=Path),
              help="With --pin: the file the PINs are written to, once (never overwritten).")
@click.option("--dry-run", is_flag=True, help="Only say what would be created.")
@domain_errors
def certificates_add_range(first, last, nominal, kind, prefix, width, valid_days, until, with_pin, pins_out,
                           dry_run):
    """Enter printed certificates PREFIX+N for N from --from to --to (state Issued: sold at a till).
    Existing numbers are left alone. With --pin the PINs are stored hashed and written to --pins-out only."""
    from ..domain.certificates import CertKind

    if with_pin and not pins_out:
        raise click.ClickException("--pin needs --pins-out FILE: the PINs are shown nowhere else")
    if pins_out and not with_pin:
        raise click.ClickException("--pins-out is only for --pin")
    if pins_out and pins_out.exists():
        raise click.ClickException(f"{pins_out} exists: PINs are written once, to a new file")
    validity = (f"valid {valid_days} day(s) from the sale" if valid_days else
                f"valid through {until.date()}" if until else "without an end of validity")
    click.echo(f"{'would create' if dry_run else 'creating'} certificates {prefix}{first:0{width}d} .. "
               f"{prefix}{last:0{width}d} ({last - first + 1 if last >= first else 0}), {kind}, nominal {nominal}, "
               f"{validity}{', with PINs' if with_pin else ''}", err=True)
    if dry_run:
        return
    written: list[Path] = []

    def write_pins(pins):
        # exclusive create: a file that appeared meanwhile is not overwritten
        fd = os.open(pins_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        written.append(pins_out)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write("number;pin\n")
            handle.writelines(f"{n};{p}\n" for n, p in pins)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        result = _service().add_range(first, last, nominal, CertKind.from_cli(kind), prefix, width, valid_days,
                                      until.date() if until else None, with_pin, write_pins if with_pin else None)
    except FileExistsError:
        raise click.ClickException(f"{pins_out} exists: PINs are written once, to a new file")
    except BaseException:
        for path in written:  # nothing was created: the PINs in the file belong to no certificate
            path.unlink(missing_ok=True)
        raise
    click.echo(f"{len(result.created)} certificates created, {len(result.skipped)} already existed")
    if with_pin:
        click.echo(f"{len(result.created)} PIN(s) written to {pins_out}: print them, then keep or destroy the file")


@certificates.command("show")
@click.argument("number")
@domain_errors
def certificates_show(number):
    """A certificate's state, balance and validity (no PIN asked)."""
    view, cert = _service().show(number)
    click.echo(f"certificate {view.number}: {view.status}, {view.kind.value}")
    click.echo(f"  nominal {view.nominal}, balance {view.balance}")
    click.echo(f"  valid through {view.valid_until or ('-' if not cert.valid_days else f'{cert.valid_days} day(s) from the sale')}")
    if cert.blocked:
        click.echo(f"  blocked ({'5 wrong PINs in a row' if cert.block_reason == 'pin' else 'by the back office'})")
    click.echo(f"  PIN: {'yes' if cert.pin_hash else 'no'}" + (f", {cert.pin_failures} wrong in a row"
                                                             if cert.pin_failures else ""))


def _set_blocked(number, last, blocked: bool):
    svc = _service()
    if last:
        n = svc.count_range(number, last)
        click.echo(f"{'blocking' if blocked else 'unblocking'} certificates {number} .. {last}: {n} in the range",
                   err=True)
    changed = svc.set_blocked(number, last, blocked)
    click.echo(f"{changed} certificate(s) {'blocked' if blocked else 'unblocked'}")


@certificates.command("block")
@click.argument("number")
@click.option("--to", "last", help="Block the range NUMBER .. this number (digit strings compare as numbers).")
@domain_errors
def certificates_block(number, last):
    """Block a certificate (or a range): it can be read, not redeemed nor sold."""
    _set_blocked(number, last, True)


@certificates.command("unblock")
@click.argument("number")
@click.option("--to", "last", help="Unblock the range NUMBER .. this number (digit strings compare as numbers).")
@domain_errors
def certificates_unblock(number, last):
    """Unblock a certificate (or a range), also one locked by wrong PINs (the count starts again)."""
    _set_blocked(number, last, False)


@report.command("certificates")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First day (default: the first of this month).")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last day, inclusive (default: today).")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV file.")
@domain_errors
def report_certificates(first, last, csv_file):
    """Certificates by state now (count, nominal, balance); turnovers in the period (sold, sales returned,
    redeemed, forfeited rest of single-use ones, refunded, expired) with the books at both ends; and the
    outstanding liability: what live certificates are worth now."""
    svc = _service()
    today = svc.clock().astimezone(svc.settings.tz).date()
    last_day = last.date() if last else today
    first_day = first.date() if first else date(last_day.year, last_day.month, 1)
    r = svc.report(first_day, last_day)
    rows = [["state", s, n, nominal, balance] for s, n, nominal, balance in r.by_status]
    counts = {k.removeprefix("Certificate"): v for k, v in r.counts.items()}
    turn = [("opening", r.opening, ""), ("sold", r.sold, counts.get("Sell", 0)),
            ("sales returned", r.returned, counts.get("ReturnSale", 0)),
            ("redeemed", r.redeemed, counts.get("Redeem", 0)), ("forfeited (single-use rest)", r.forfeited, ""),
            ("refunded", r.refunded, counts.get("Refund", 0)), ("expired", r.expired, ""),
            ("closing", r.closing, "")]
    rows += [["period", name, n, amount, ""] for name, amount, n in turn]
    rows.append(["now", "outstanding liability", "", r.liability, ""])
    click.echo(f"gift certificates {r.first} .. {r.last}")
    click.echo("by state now:            count        nominal        balance")
    for s, n, nominal, balance in r.by_status:
        click.echo(f"  {s:<20} {n:>9} {nominal:>14} {balance:>14}")
    click.echo("in the period:           operations     amount")
    for name, amount, n in turn:
        click.echo(f"  {name:<28} {str(n):>5} {amount:>14}")
    click.echo(f"outstanding liability now: {r.liability}")
    if not r.balanced():
        click.echo("WARNING: opening + turnovers differ from closing: run `kkmtransfer ledger verify`", err=True)
    if csv_file:
        _write_csv(csv_file, ["section", "name", "count", "amount", "balance"], rows)
        click.echo(f"written to {csv_file}")
