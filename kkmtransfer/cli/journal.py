"""kkmtransfer journal: offline transaction journals."""
from __future__ import annotations

from pathlib import Path

import click

from ..service_layer import audit
from . import _billing, _progress, actor, domain_errors, main


@main.group()
def journal():
    """Registers' offline transaction journals (docs/offline-format.md)."""


def _summary_lines(summary) -> list[str]:
    line = (f"{summary.file}: {summary.rows} rows, {summary.applied} applied, {summary.already} already "
            f"applied, {summary.rejected} rejected")
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(summary.reasons.items()))
    return [line + (f" ({reasons})" if reasons else "")]


REJECTED_EXIT = 3


@journal.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 10000),
              help="Rows per transaction.")
@click.option("--jobs", type=click.IntRange(1, 8), default=None,
              help="Workers, rows routed by card (default KKMTRANSFER_JOURNAL_JOBS; 1 on SQLite).")
@click.option("--threads", is_flag=True,
              help="Run the workers as threads of this process, not as processes of their own (default: "
                   "processes, one core each, unless KKMTRANSFER_JOURNAL_PROCESSES=off).")
@domain_errors
def journal_import(files, batch, jobs, threads):
    """Load journal FILES. Each row is applied exactly once, whatever was applied before (online or from
    other files); rows that cannot be applied are kept as rejects (see `journal rejects`). Exit status:
    0 every row applied, 1 a file could not be read, 3 rows were rejected (the others are applied)."""
    from ..adapters.journal_file import JournalFileError
    from ..service_layer.journal import ImportSummary, JournalImport

    total = ImportSummary(file="total")
    failed = 0
    billing = _billing()  # a bad setting or a database that is down: one line, before any progress bar
    with _progress("rows", JournalImport.rows_in(files)) as advance:
        importer = JournalImport(billing, batch=batch, progress=advance, jobs=jobs,
                                 processes=billing.settings.journal_processes and not threads)
        results = []
        for path in files:
            try:
                results.append(importer.import_file(path))
            except JournalFileError as exc:
                failed += 1
                results.append(str(exc))
    for result in results:
        if isinstance(result, str):
            click.echo(f"FAILED {result}", err=True)
        else:
            total.add(result)
            click.echo(_summary_lines(result)[0])
    if len(files) > 1:
        click.echo(_summary_lines(total)[0])
    if failed:
        raise click.ClickException(f"{failed} file(s) could not be read")
    if total.rejected:
        click.echo(f"{total.rejected} row(s) rejected: see `kkmtransfer journal rejects`, then "
                   "`kkmtransfer journal retry` once the cause is fixed", err=True)
        click.get_current_context().exit(REJECTED_EXIT)


@journal.group("rejects", invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Also list rejects resolved since.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.pass_context
def journal_rejects(ctx, show_all, limit):
    """List rows of journals that could not be applied: file, line, reason and the row itself.
    `journal rejects dismiss ID --reason TEXT` closes one by hand."""
    from ..service_layer.journal import PENDING, JournalImport

    if ctx.invoked_subcommand is not None:
        return
    rows = JournalImport(_billing()).rejects(None if show_all else PENDING, limit)
    if not rows:
        click.echo("no rejects" if show_all else "no pending rejects")
    for r in rows:
        click.echo(f"#{r['id']}\t{r['status']}\t{r['file_name']}:{r['line_no']}\t{r['fault_code']}: {r['reason']}"
                   f"\t(tries {r['attempts']})\n\t{r['raw_row']}")


@journal_rejects.command("dismiss")
@click.argument("reject_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why it is closed by hand (kept with the reject and audited).")
@domain_errors
def journal_rejects_dismiss(reject_id, reason):
    """Close a pending reject by hand: it stays listed (--all) as dismissed with the reason, and is never
    retried nor reopened when the same row comes again."""
    from ..service_layer.journal import JournalImport

    who, billing = actor(), _billing()
    row = JournalImport(billing).dismiss(reject_id, reason, actor=who)
    audit.record_now(billing.engine, who, "journal.dismiss", str(reject_id), reason=reason)
    click.echo(f"reject #{row['id']} ({row['file_name']}:{row['line_no']}) dismissed: {row['note']}")


@journal.command("retry")
def journal_retry():
    """Apply the pending rejects again (e.g. after a top-up or once the card exists)."""
    from ..service_layer.journal import JournalImport

    importer = JournalImport(_billing())
    with _progress("rejects", len(importer.rejects())) as advance:
        importer.progress = advance
        summary = importer.retry()
    click.echo(f"{summary.rows} retried: {summary.applied} applied, {summary.already} already applied, "
               f"{summary.rejected} still rejected")


@journal.command("inbox")
@click.option("--dir", "inbox", type=click.Path(file_okay=False, path_type=Path),
              help="The inbox folder (default KKMTRANSFER_INBOX_DIR).")
@domain_errors
def journal_inbox(inbox):
    """Import every *.csv file in the inbox once, moving each to done/ or failed/ (what the Celery task
    does every minute)."""
    from ..service_layer.inbox import process_inbox

    billing = _billing()
    results = process_inbox(billing, inbox or billing.settings.inbox_dir)
    if not results:
        click.echo("inbox empty")
    for r in results:
        if r.error:
            click.echo(f"FAILED {r.name} -> {r.moved_to}: {r.error}", err=True)
        else:
            click.echo(_summary_lines(r.summary)[0] + f" -> {r.moved_to}")
