"""Managing the console's operators (admins only): the list, adding one or changing its role and
password, disabling one. The same use cases as `kkmtransfer operators`."""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from ..domain import errors
from ..domain.operators import OperatorRole, Permission
from ..service_layer.operators import Operators, record_audit
from . import billing_of
from .auth import requires

bp = Blueprint("operators", __name__, url_prefix="/operators")


@bp.route("/")
@requires(Permission.MANAGE_OPERATORS, "operators.list")
def index():
    return render_template("operators.html", rows=Operators(billing_of()).list(), roles=list(OperatorRole))


@bp.route("/", methods=["POST"])
@requires(Permission.MANAGE_OPERATORS, "operators.add")
def add():
    form = request.form
    name = (form.get("name") or "").strip()
    try:
        if form.get("password") != form.get("password2"):
            raise errors.ValidationError("пароли не совпадают")
        created = Operators(billing_of()).add(name, form.get("role", ""), form.get("password") or "")
    except errors.DomainError as exc:
        record_audit(billing_of(), g.operator.name, "operators.add", name, "failed", exc.message)
        flash(f"Не выполнено: {exc.message}", "error")
    else:
        record_audit(billing_of(), g.operator.name, "operators.add", name, "done",
                     f"{'created' if created else 'updated; its sessions ended'}, role {form.get('role')}")
        if name == g.operator.name:  # one's own new password: this session goes on, the others end
            from flask import session

            session["epoch"] = Operators(billing_of()).get(name).session_epoch
        flash(f"Оператор {name} {'создан' if created else 'изменён'}.", "ok")
    return redirect(url_for("operators.index"))


@bp.route("/<name>/disable", methods=["POST"])
@requires(Permission.MANAGE_OPERATORS, "operators.disable")
def disable(name):
    if name == g.operator.name:
        flash("Нельзя отключить самого себя.", "error")
        return redirect(url_for("operators.index"))
    try:
        Operators(billing_of()).disable(name)
    except errors.DomainError as exc:
        flash(f"Не выполнено: {exc.message}", "error")
    else:
        record_audit(billing_of(), g.operator.name, "operators.disable", name, "done")
        flash(f"Оператор {name} отключён.", "ok")
    return redirect(url_for("operators.index"))
