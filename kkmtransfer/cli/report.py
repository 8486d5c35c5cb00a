"""kkmtransfer report: balances and turnovers, operations, actions."""
from __future__ import annotations

from pathlib import Path

import click

from . import _billing, domain_errors, main, output_path


@main.group()
def report():
    """Reports: balances and turnovers, the operations journal, actions."""


def _check(billing, card=None, first=None, last=None, kind=None) -> None:
    """Refuse what would only print an empty table: an unknown card or kind, --from after --to."""
    from ..domain.model import Kind

    if first and last and last < first:
        raise click.ClickException(f"--from {first:%Y-%m-%d} is after --to {last:%Y-%m-%d}")
    if card is not None:
        billing.card_info(card)  # CardNotFound: one line
    if kind is not None and kind not in {k.value for k in Kind}:
        raise click.ClickException(f"unknown kind {kind!r}: one of {', '.join(k.value for k in Kind)}")


def _write_csv(path: Path, header: list[str], rows) -> int:
    import csv

    n = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


@report.command("balances")
@click.option("--from", "first", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (business zone).")
@click.option("--to", "last", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--card", help="Only this card.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV file.")
@domain_errors
def report_balances(first, last, card, csv_file):
    """Balances and turnovers ("Остатки и обороты") per card and measure, with totals: opening, accrued,
    spent, expired, returned, closing. Turnovers are signed as they move the balance, so opening plus
    turnovers is closing."""
    from ..service_layer.reports import TURNOVERS, Reports

    output_path(csv_file)
    billing = _billing()
    _check(billing, card, first, last)
    result = Reports(billing).balances(first.date(), last.date(), card)
    header = ["card", "measure", "opening", *TURNOVERS, "closing"]

    def cells(line):
        return [line.card, line.measure, line.opening, *(getattr(line, t) for t in TURNOVERS), line.closing]

    rows = [cells(line) for line in result.lines] + [cells(t) for t in result.totals().values()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    click.echo(f"balances and turnovers {result.first} .. {result.last}")
    for r in [header, *rows]:
        click.echo("  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if csv_file:
        _write_csv(csv_file, header, rows)
        click.echo(f"written to {csv_file}")


@report.command("operations")
@click.option("--card", help="Only this card.")
@click.option("--kkm", help="Only this register.")
@click.option("--kind", help="Sale, Return, Accrual, WriteOff, Expiry, Action, Zeroing, Annulment, InitialBalance.")
@click.option("--source", type=click.Choice(["Online", "Offline", "Nightly", "BackOffice"]), help="Only this source.")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First day (business zone).")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Write CSV instead.")
def report_operations(card, kkm, kind, source, first, last, limit, csv_file):
    """The journal of operations, oldest first, with what each moved (bonus, accumulation, receipts)."""
    from ..service_layer.reports import OPERATIONS_HEADER as header
    from ..service_layer.reports import Reports
    from ..service_layer.reports import operation_cells as cells

    output_path(csv_file)
    billing = _billing()
    _check(billing, card, first, last, kind)
    rows = Reports(billing).operations(card, kkm, kind, source, first and first.date(), last and last.date(),
                                          limit)

    if csv_file:
        click.echo(f"{_write_csv(csv_file, header, map(cells, rows))} operation(s) written to {csv_file}")
        return
    click.echo("\t".join(header))
    for r in rows:
        click.echo("\t".join(str(c) for c in cells(r)))


@report.command("actions")
def report_actions():
    """Bonus actions and zeroings with their state."""
    from ..service_layer.actions import Actions

    rows = Actions(_billing()).list()
    if not rows:
        click.echo("no actions")
    for a in rows:
        what = f"credit {a['amount']}" + (f" until {a['until_date']}" if a["until_date"] else "") \
            if a["kind"] == "credit" else f"zero, inactive since {a['inactive_since']}"
        click.echo(f"{a['id']}\t{a['created_at']:%Y-%m-%d %H:%M}Z\t{a['status']}\t{a['cards']} card(s)\t{what}"
                   f"\t{a['note'] or ''}")


@report.command("audit")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First day (business zone).")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--actor", "who", help="Only what this actor did.")
@click.option("--action", "what", help="Only this action (e.g. cards.block, operators.add).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Write CSV instead.")
@domain_errors
def report_audit(first, last, who, what, limit, csv_file):
    """The audit trail of the back office, oldest first: when (UTC), who, what, on what, details.
    Who made each receipt is in `report operations` (the register's user or the journal file)."""
    import json

    from ..service_layer import audit

    output_path(csv_file)
    billing = _billing()
    _check(billing, first=first, last=last)
    rows = audit.rows(billing.engine, first and first.date(), last and last.date(), who, billing.settings.tz,
                      limit, action=what)
    if csv_file:
        n = _write_csv(csv_file, audit.CSV_HEADER, map(audit.csv_cells, rows))
        click.echo(f"{n} audit row(s) written to {csv_file}")
        return
    if not rows:
        click.echo("no audit rows" + (" for these filters" if first or last or who else ""))
    for r in rows:
        details = json.dumps(r.details, ensure_ascii=False, sort_keys=True) if r.details else ""
        click.echo(f"{r.at:%Y-%m-%d %H:%M:%S}Z\t{r.actor}\t{r.action}\t{r.object or '-'}\t{details}")
