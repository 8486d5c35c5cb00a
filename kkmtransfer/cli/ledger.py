"""kkmtransfer ledger: the ledger's own checks."""
from __future__ import annotations

import click

from . import _billing, main


@main.group()
def ledger():
    """The ledger's own checks."""


@ledger.command("verify")
def ledger_verify():
    """Recompute every balance from the entries; exit 1 with the list of differences if anything drifted."""
    from ..service_layer.reports import Reports

    problems = Reports(_billing()).verify()
    if problems:
        for p in problems:
            click.echo(p)
        raise click.ClickException(f"{len(problems)} difference(s) found")
    click.echo("ledger consistent: every lot equals the sum of its entries, every receipt moved what it reported")
