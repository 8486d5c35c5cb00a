"""Journal rejects: the rows of registers' journals that could not be applied, with their reasons;
retry them all (on the worker) or dismiss one."""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from ..console_tasks import RETRY_TASK
from ..domain import errors
from ..domain.operators import Permission
from ..service_layer import console
from ..service_layer.operators import record_audit
from . import billing_of
from .actions import dispatch
from .auth import requires

bp = Blueprint("journal", __name__, url_prefix="/journal")


@bp.route("/")
@requires(Permission.READ)
def index():
    try:
        page = int(request.args.get("page", "1"))
    except ValueError:
        page = 1
    rows, total, page, pages = console.rejects(billing_of(), page)
    return render_template("journal.html", rows=rows, total=total, page=page, pages=pages)


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
