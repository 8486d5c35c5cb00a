"""The web console's long work, run by the Celery worker (never inside a web request).

Each job is a plain function of a BillingService (``JOBS``), so the same code runs in the worker and,
in tests, in-process; the Celery tasks below only bind them to the worker's BillingService. What they
did is recorded in the audit trail with the operator who asked for it.
"""
from __future__ import annotations

import logging
from datetime import date

from .service_layer.actions import Actions, CancelBusy, Selection
from .service_layer.operators import record_audit
from .tasks import app, billing

log = logging.getLogger(__name__)

CREDIT_TASK = "kkmtransfer.console.credit_action"
ZERO_TASK = "kkmtransfer.console.zero_action"
CANCEL_TASK = "kkmtransfer.console.cancel_action"
RETRY_TASK = "kkmtransfer.console.retry_rejects"
IMPORT_TASK = "kkmtransfer.console.import_inbox"


def run_credit(b, operator: str, amount: str, selection: dict, until: str | None = None,
               note: str | None = None) -> dict:
    sel = Selection(first=selection.get("first"), last=selection.get("last"),
                    numbers=tuple(selection["numbers"]) if selection.get("numbers") is not None else None,
                    all_active=bool(selection.get("all_active")))
    report = Actions(b).credit(amount, sel, date.fromisoformat(until) if until else None, note)
    record_audit(b, operator, "actions.credit", report.action_id, "done",
                 f"{report.done} card(s), {report.amount} credited, {report.skipped} skipped")
    return dict(action_id=report.action_id, cards=report.cards, done=report.done, amount=str(report.amount))


def run_zero(b, operator: str, inactive_since: str, note: str | None = None) -> dict:
    report = Actions(b).zero(date.fromisoformat(inactive_since), note)
    record_audit(b, operator, "actions.zero", report.action_id, "done",
                 f"{report.done} card(s), {report.amount} burnt")
    return dict(action_id=report.action_id, cards=report.cards, done=report.done, amount=str(report.amount))


def run_cancel(b, operator: str, action_id: str) -> dict:
    try:
        report = Actions(b).cancel(action_id)
    except CancelBusy as exc:  # the same action cancelled from the command line at the same time
        record_audit(b, operator, "actions.cancel", action_id, "skipped", exc.message)
        return dict(action_id=action_id, skipped=exc.message)
    record_audit(b, operator, "actions.cancel", action_id, "done",
                 ("cancelled already by another command: " if report.already else "")
                 + f"{report.cards} card(s), {report.taken_back} reversed, {report.kept} kept")
    return dict(action_id=action_id, cards=report.cards, taken_back=str(report.taken_back), kept=str(report.kept))


def run_retry(b, operator: str) -> dict:
    from .service_layer.journal import JournalImport

    summary = JournalImport(b).retry()
    record_audit(b, operator, "journal.retry", "rejects", "done",
                 f"{summary.rows} retried, {summary.applied} applied, {summary.rejected} still rejected")
    return dict(rows=summary.rows, applied=summary.applied, already=summary.already, rejected=summary.rejected)


def run_import(b, operator: str, inbox: str, name: str | None = None) -> list[dict]:
    """Import what waits in the inbox (the uploaded file ``name`` among it), as `kkmtransfer journal inbox`
    and the beat's import_inbox do."""
    from pathlib import Path

    from .service_layer.inbox import process_inbox

    out = []
    for r in process_inbox(b, Path(inbox)):
        if r.error:
            record_audit(b, operator, "journal.import", r.name, "failed", r.error)
            out.append(dict(file=r.name, error=r.error))
        else:
            s = r.summary
            record_audit(b, operator, "journal.import", r.name, "done",
                         f"{s.rows} rows, {s.applied} applied, {s.already} already applied, {s.rejected} rejected")
            out.append(dict(file=r.name, rows=s.rows, applied=s.applied, already=s.already, rejected=s.rejected))
    return out


JOBS = {CREDIT_TASK: run_credit, ZERO_TASK: run_zero, CANCEL_TASK: run_cancel, RETRY_TASK: run_retry,
        IMPORT_TASK: run_import}


@app.task(name=CREDIT_TASK)
def credit_action(**kwargs) -> dict:
    return run_credit(billing(), **kwargs)


@app.task(name=ZERO_TASK)
def zero_action(**kwargs) -> dict:
    return run_zero(billing(), **kwargs)


@app.task(name=CANCEL_TASK)
def cancel_action(**kwargs) -> dict:
    return run_cancel(billing(), **kwargs)


@app.task(name=RETRY_TASK)
def retry_rejects(**kwargs) -> dict:
    return run_retry(billing(), **kwargs)


@app.task(name=IMPORT_TASK)
def import_inbox(**kwargs) -> list[dict]:
    return run_import(billing(), **kwargs)
