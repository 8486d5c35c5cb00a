"""kkmtransfer export: files for registers."""
from __future__ import annotations

from pathlib import Path

import click

from . import _billing, domain_errors, main, output_path


@main.group()
def export():
    """Files for registers."""


@export.command("balances")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--cards", "cards_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Only these cards: a file with one card number per line.")
@domain_errors
def export_balances(out, cards_file):
    """Write every card's (or the listed cards') current bonus, accumulation and receipt count for
    registers working pseudo-online (docs/offline-format.md)."""
    from ..service_layer.billing_admin import BillingAdmin

    output_path(out)
    numbers = cards_file.read_text(encoding="utf-8-sig").splitlines() if cards_file else None
    n = BillingAdmin(_billing()).export(out, numbers)
    click.echo(f"{n} card(s) written to {out}")
