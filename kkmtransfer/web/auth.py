"""Logging in and out, the operator of each request, and the permission check of every view."""
from __future__ import annotations

import functools

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for

from ..domain.operators import ROLE_TITLES, Permission, allows
from ..service_layer.operators import LoginOutcome, Operators, record_audit

bp = Blueprint("auth", __name__)

# views anyone may open: the login form and the static files
PUBLIC = {"auth.login", "static"}


def install(app) -> None:
    @app.before_request
    def _load_operator():
        from . import billing_of

        if request.endpoint == "static":  # the stylesheet, scripts and Chart.js: no database query
            g.operator = None
            return None
        g.operator = Operators(billing_of()).active(session.get("operator"), session_epoch())
        if g.operator is None and session.get("operator"):
            session.clear()  # disabled, removed or its password changed since: the session is worth nothing
        if g.operator is None and request.endpoint not in PUBLIC and request.endpoint is not None:
            here = (request.script_root + request.full_path).rstrip("?") if request.method == "GET" else None
            return redirect(url_for("auth.login", next=here))
        return None

    @app.context_processor
    def _operator_context():
        op = getattr(g, "operator", None)
        return dict(operator=op, role_title=ROLE_TITLES.get(op.role) if op else "", role_titles=ROLE_TITLES,
                    can=lambda permission: op is not None and allows(op.role, Permission(permission)))


def session_epoch() -> int:
    """The operator's session epoch this session was opened in (a cookie without one: epoch 0)."""
    try:
        return int(session.get("epoch", 0))
    except (TypeError, ValueError):
        return -1


def requires(permission: Permission, command: str | None = None):
    """Let the view run only for an operator whose role allows ``permission``; anyone else gets 403,
    and the refusal goes to the audit trail with the operator's name and the command's target."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            from . import billing_of

            op = g.operator
            if not allows(op.role, permission):
                target = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
                record_audit(billing_of(), op.name, command or request.endpoint, target, "refused",
                             f"role {op.role.value} lacks {permission.value}")
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator


def _safe_next(target: str | None) -> str | None:
    """Only a path inside the console (no other host, no scheme-relative //host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    from . import billing_of

    if request.method == "GET":
        if g.operator is not None:
            return redirect(url_for("dashboard.index"))
        return render_template("login.html", next=_safe_next(request.args.get("next")))
    name = request.form.get("name", "").strip()
    result = Operators(billing_of()).login(name, request.form.get("password", ""))
    nxt = _safe_next(request.form.get("next"))
    if result.outcome is LoginOutcome.LOCKED:
        record_audit(billing_of(), name, "login", name, "refused", "locked after too many failed logins")
        minutes = max(1, -(-result.retry_after // 60))
        resp = render_template("login.html", next=nxt, name=name, error=(
            f"Слишком много неудачных попыток входа под этим именем. Повторите через {minutes} мин."))
        return resp, 429, {"Retry-After": str(result.retry_after)}
    if result.outcome is LoginOutcome.BAD:
        record_audit(billing_of(), name, "login", name, "failed", "wrong name or password")
        return render_template("login.html", next=nxt, name=name,
                               error="Неверное имя или пароль."), 401
    session.clear()
    session.permanent = True
    session["operator"] = result.operator.name
    session["epoch"] = result.operator.session_epoch
    record_audit(billing_of(), result.operator.name, "login", result.operator.name, "done")
    if nxt:
        # the path was taken inside the console, where the script root is already part of it
        return redirect(nxt)
    return redirect(url_for("dashboard.index"))


@bp.route("/logout", methods=["POST"])
def logout():
    from . import billing_of

    record_audit(billing_of(), g.operator.name, "logout", g.operator.name, "done")
    session.clear()
    flash("Вы вышли из консоли.")
    return redirect(url_for("auth.login"))
