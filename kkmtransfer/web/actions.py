"""Bonus actions: "Начислить бонусы" and "Обнуление бонусов" with a preview before confirming, the
list of actions with their progress, and cancelling. The work itself runs on the Celery worker."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for

from ..console_tasks import CANCEL_TASK, CREDIT_TASK, ZERO_TASK
from ..domain import errors
from ..domain.model import money
from ..domain.operators import Permission
from ..service_layer import console
from ..service_layer.actions import Actions, Selection
from ..service_layer.operators import record_audit
from . import billing_of
from .auth import requires
from .formatting import parse_day

bp = Blueprint("actions", __name__, url_prefix="/actions")


def dispatch(task: str, **kwargs) -> bool:
    """Hand the job to the worker; False (and a one-line message) when the queue cannot be reached."""
    try:
        current_app.extensions["kkmtransfer.dispatch"](task, kwargs)
    except Exception as exc:  # noqa: BLE001 - the broker's errors are many; the operator needs one line
        record_audit(billing_of(), g.operator.name, task, "", "failed", f"queue unreachable: {exc}")
        flash("Очередь задач недоступна: задание не запущено. Проверьте Redis и Celery worker "
              "(или выполните команду из командной строки).", "error")
        return False
    return True


@bp.route("/")
@requires(Permission.READ)
def index():
    rows = console.actions_list(billing_of())
    running = any(r["status"] in ("running", "cancelling") for r in rows)
    return render_template("actions.html", rows=rows, running=running)


@bp.route("/actions.csv")
@requires(Permission.READ)
def export_csv():
    from .csvout import csv_response

    return csv_response("actions.csv", console.ACTIONS_HEADER, console.actions_rows(billing_of()))


@bp.route("/<action_id>")
@requires(Permission.READ)
def show(action_id):
    row = console.action(billing_of(), action_id)
    queued = request.args.get("queued")  # "1": the action was handed to the worker; "cancel": its cancel
    if row is None and not queued:
        abort(404)
    waiting = row is None or row["status"] in ("running", "cancelling") or (
        queued == "cancel" and row["status"] == "done")
    return render_template("action.html", a=row, action_id=action_id, refresh=waiting,
                           cancel_queued=queued == "cancel" and row is not None and row["status"] == "done")


def _form_selection(form, files) -> tuple[dict, str]:
    """The cards a form chose: a range, an uploaded file of numbers (one a line), or all active."""
    how = form.get("how", "range")
    if how == "all":
        return {"all_active": True}, "все активные карты"
    if how == "file":
        if form.get("numbers"):  # the confirmation form carries the list it previewed
            numbers = [n for n in form["numbers"].split() if n]
        else:
            upload = files.get("file")
            if upload is None or not upload.filename:
                raise errors.ValidationError("выберите файл с номерами карт")
            numbers = [n.strip() for n in upload.read().decode("utf-8-sig", "replace").splitlines() if n.strip()]
        if not numbers:
            raise errors.ValidationError("в файле нет номеров карт")
        return {"numbers": numbers}, f"карты из файла ({len(numbers)})"
    first, last = (form.get("first") or "").strip(), (form.get("last") or "").strip()
    if not first or not last:
        raise errors.ValidationError("укажите первую и последнюю карту диапазона")
    return {"first": first, "last": last}, f"карты с {first} по {last}"


def _selection(sel: dict) -> Selection:
    return Selection(first=sel.get("first"), last=sel.get("last"),
                     numbers=tuple(sel["numbers"]) if "numbers" in sel else None,
                     all_active=bool(sel.get("all_active")))


@bp.route("/credit", methods=["GET", "POST"])
@requires(Permission.RUN_ACTION, "actions.credit")
def credit():
    """GET: the form. POST: the preview (a dry run: how many cards, how much), with a confirm button."""
    if request.method == "GET":
        return render_template("credit.html", form={})
    form = request.form
    try:
        sel, described = _form_selection(form, request.files)
        amount = money((form.get("amount") or "").replace(",", ".").replace(" ", ""), "сумма")
        until = parse_day(form.get("until"), None) if form.get("until") else None
        note = (form.get("note") or "").strip() or None
        report = Actions(billing_of()).credit(amount, _selection(sel), until, note, dry_run=True)
    except errors.DomainError as exc:
        return render_template("credit.html", form=form, error=exc.message), 400
    return render_template("credit_preview.html", report=report, sel=sel, described=described, amount=amount,
                           until=until, note=note or "")


@bp.route("/credit/confirm", methods=["POST"])
@requires(Permission.RUN_ACTION, "actions.credit")
def credit_confirm():
    form = request.form
    try:
        sel, _ = _form_selection(form, request.files)
        amount = money(form.get("amount", ""), "сумма")
        until = parse_day(form.get("until"), None) if form.get("until") else None
        note = form.get("note") or None
        report = Actions(billing_of()).credit(amount, _selection(sel), until, note, dry_run=True)
    except errors.DomainError as exc:
        flash(f"Не выполнено: {exc.message}", "error")
        return redirect(url_for("actions.credit"))
    if report.already_done:
        flash("Такая акция сегодня уже проведена: ничего не изменено.", "error")
        return redirect(url_for("actions.show", action_id=report.action_id))
    if dispatch(CREDIT_TASK, operator=g.operator.name, amount=str(amount), selection=sel,
                until=until.isoformat() if until else None, note=note):
        record_audit(billing_of(), g.operator.name, "actions.credit", report.action_id, "queued",
                     f"{report.cards} card(s) x {amount}")
        flash(f"Акция запущена: {report.cards} карт.", "ok")
    return redirect(url_for("actions.show", action_id=report.action_id, queued=1))


@bp.route("/zero", methods=["GET", "POST"])
@requires(Permission.RUN_ACTION, "actions.zero")
def zero():
    if request.method == "GET":
        return render_template("zero.html", form={})
    form = request.form
    try:
        since = parse_day(form.get("inactive_since"), None)
        if since is None:
            raise errors.ValidationError("укажите дату: карты без покупок с этого дня")
        note = (form.get("note") or "").strip() or None
        report = Actions(billing_of()).zero(since, note, dry_run=True)
    except errors.DomainError as exc:
        return render_template("zero.html", form=form, error=exc.message), 400
    return render_template("zero_preview.html", report=report, since=since, note=note or "")


@bp.route("/zero/confirm", methods=["POST"])
@requires(Permission.RUN_ACTION, "actions.zero")
def zero_confirm():
    try:
        since = parse_day(request.form.get("inactive_since"), None)
        note = request.form.get("note") or None
        report = Actions(billing_of()).zero(since, note, dry_run=True)
    except (errors.DomainError, TypeError) as exc:
        flash(f"Не выполнено: {getattr(exc, 'message', exc)}", "error")
        return redirect(url_for("actions.zero"))
    if dispatch(ZERO_TASK, operator=g.operator.name, inactive_since=since.isoformat(), note=note):
        record_audit(billing_of(), g.operator.name, "actions.zero", report.action_id, "queued",
                     f"{report.cards} card(s), {report.amount}")
        flash(f"Обнуление запущено: {report.cards} карт.", "ok")
    return redirect(url_for("actions.show", action_id=report.action_id, queued=1))


@bp.route("/<action_id>/cancel", methods=["POST"])
@requires(Permission.RUN_ACTION, "actions.cancel")
def cancel(action_id):
    row = console.action(billing_of(), action_id)
    if row is None:
        abort(404)
    if row["status"] != "done":
        flash("Отменить можно только завершённую акцию.", "error")
    elif dispatch(CANCEL_TASK, operator=g.operator.name, action_id=action_id):
        record_audit(billing_of(), g.operator.name, "actions.cancel", action_id, "queued")
        flash("Отмена акции запущена.", "ok")
        return redirect(url_for("actions.show", action_id=action_id, queued="cancel"))
    return redirect(url_for("actions.show", action_id=action_id))
