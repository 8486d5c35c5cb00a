"""kkmtransfer nightly: the nightly regulation without Celery."""
from __future__ import annotations

import contextlib

import click

from . import _billing, _progress, domain_errors, main


@main.command()
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]),
              help="Business date to run (default: today in the business time zone). Missed dates before it "
                   "are run first.")
@click.option("--batch", type=click.IntRange(min=1), help="Lots per transaction (default KKMTRANSFER_NIGHTLY_BATCH).")
@domain_errors
def nightly(day, batch):
    """Run the nightly regulation without Celery: burn what expired (WriteOff document) and post deferred
    credits whose day came (Accrual document). Safe to re-run: a date already done adds nothing, an
    interrupted one is completed."""
    from ..service_layer.nightly import Nightly

    with contextlib.ExitStack() as stack:
        bars = {}

        def progress(what, done, total):  # one bar per document, its length known when it starts
            if what not in bars:
                bars[what] = stack.enter_context(_progress(f"{what:9}", total))
            bars[what](done - bars[what].pos)

        reports = Nightly(_billing(), batch=batch, progress=progress).run(day and day.date())
    for r in reports:
        state = "already done" if r.skipped else "done"
        click.echo(f"{r.day}: {state}; write-off {r.expired_lots} lots in {r.write_off_lines} lines, "
                   f"accrual {r.accrued_lots} lots in {r.accrual_lines} lines")
