"""Registers' journals: upload a journal file (imported on the Celery worker through the inbox, as
`kkmtransfer journal inbox` does), the files uploaded or dropped into the inbox with their state, row
counts, progress and rejects; the rejected rows with their reasons, retry them all (on the worker) or
dismiss one."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for

from ..console_tasks import IMPORT_TASK, RETRY_TASK
from ..domain import errors
from ..domain.operators import Permission
from ..service_layer import console, inbox
from ..service_layer.operators import record_audit
from . import billing_of, page_arg
from .actions import dispatch
from .auth import requires
from .csvout import csv_response

bp = Blueprint("journal", __name__, url_prefix="/journal")

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024


def inbox_dir() -> Path:
    """The inbox the console writes uploads into; the worker must see the same folder."""
    return Path(current_app.config.get("INBOX_DIR") or billing_of().settings.inbox_dir)


@bp.route("/")
@requires(Permission.READ)
def index():
    rows, total, page, pages = console.rejects(billing_of(), page_arg())
    files, files_total, fpage, fpages = inbox.files(billing_of(), inbox_dir(), page_arg("fpage"))
    busy = any(f["state"] in ("queued", "processing") for f in files)
    return render_template("journal.html", rows=rows, total=total, page=page, pages=pages, files=files,
                           files_total=files_total, fpage=fpage, fpages=fpages, refresh=busy,
                           max_upload=current_app.config.get("JOURNAL_MAX_BYTES", DEFAULT_MAX_UPLOAD))


@bp.route("/upload", methods=["POST"])
@requires(Permission.IMPORT_JOURNAL, "journal.import")
def upload():
    """Store the file in the inbox and hand the import to the worker; nothing is imported here."""
    limit = current_app.config.get("JOURNAL_MAX_BYTES", DEFAULT_MAX_UPLOAD)
    f = request.files.get("file")
    name = getattr(f, "filename", "") or ""
    try:
        if f is None or not name:
            raise errors.ValidationError("выберите файл журнала")
        data = f.stream.read(limit + 1)
        if len(data) > limit:
            raise errors.ValidationError(f"файл больше {limit // (1024 * 1024)} МБ: загрузите его частями "
                                         "или положите в папку журналов")
        stored = inbox.receive(billing_of(), inbox_dir(), name, data, g.operator.name)
    except errors.DomainError as exc:
        record_audit(billing_of(), g.operator.name, "journal.import", name, "failed", exc.message)
        flash(f"Не загружено: {exc.message}", "error")
        return redirect(url_for("journal.index")), 303
    if dispatch(IMPORT_TASK, operator=g.operator.name, inbox=str(inbox_dir()), name=stored):
        record_audit(billing_of(), g.operator.name, "journal.import", stored, "queued", f"{len(data)} bytes")
        flash(f"Файл {stored} загружен и поставлен в очередь на обработку.", "ok")
    else:
        flash(f"Файл {stored} лежит в папке журналов и будет загружен при следующем обходе папки.", "error")
    return redirect(url_for("journal.index")), 303


@bp.route("/files.csv")
@requires(Permission.READ)
def files_csv():
    return csv_response("journal_files.csv", inbox.FILES_HEADER, inbox.files_rows(billing_of(), inbox_dir()))


@bp.route("/rejects.csv")
@requires(Permission.READ)
def rejects_csv():
    """The pending rejects (?status=all: every reject, also resolved and dismissed ones)."""
    status = None if request.args.get("status") == "all" else "pending"
    return csv_response("journal_rejects.csv", console.REJECTS_HEADER, console.rejects_rows(billing_of(), status))


@bp.route("/retry", methods=["POST"])
@requires(Permission.RESOLVE_REJECT, "journal.retry")
def retry():
    if dispatch(RETRY_TASK, operator=g.operator.name):
        record_audit(billing_of(), g.operator.name, "journal.retry", "rejects", "queued")
        flash("Повтор отклонённых строк запущен; обновите страницу через минуту.", "ok")
    return redirect(url_for("journal.index"))


@bp.route("/<int:reject_id>/dismiss", methods=["POST"])
@requires(Permission.RESOLVE_REJECT, "journal.dismiss")
def dismiss(reject_id):
    """Close a pending reject by hand, with its reason (`kkmtransfer journal rejects dismiss ID --reason`)."""
    from ..service_layer.journal import JournalImport

    reason = (request.form.get("reason") or "").strip()
    try:
        JournalImport(billing_of()).dismiss(reject_id, reason, actor=g.operator.name)
    except errors.DomainError as exc:
        record_audit(billing_of(), g.operator.name, "journal.dismiss", str(reject_id), "failed", exc.message)
        flash(f"Не выполнено: {exc.message}", "error")
    else:
        record_audit(billing_of(), g.operator.name, "journal.dismiss", str(reject_id), "done", reason)
        flash(f"Строка #{reject_id} отклонена окончательно: {reason}", "ok")
    return redirect(url_for("journal.index", page=request.form.get("page") or None))
