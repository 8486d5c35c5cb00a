"""The back-office web console (Flask + Jinja2), mounted at /admin.

``create_app(billing, secret_key)`` builds it on a BillingService; its views call the same service
layer as the CLI and SOAP and hold no business rule. Production: ``kkmtransfer.web.wsgi:application``
(needs KKMTRANSFER_SECRET_KEY); `kkmtransfer serve` mounts it beside SOAP for local use.
"""
from __future__ import annotations

from datetime import timedelta

from flask import Flask, g, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from . import formatting

PREFIX = "/admin"
csrf = CSRFProtect()


class _SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is marked Secure whenever the request came over TLS (directly
    or, under gunicorn, from a trusted proxy's X-Forwarded-Proto), or always when configured so."""

    def get_cookie_secure(self, app):
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def celery_dispatch(task_name: str, kwargs: dict) -> None:
    """Send a long job to the Celery worker (the broker of KKMTRANSFER_BROKER_URL)."""
    from ..tasks import app as celery_app

    celery_app.send_task(task_name, kwargs=kwargs, retry=False)


def create_app(billing, secret_key: str, *, config: dict | None = None, dispatch=None) -> Flask:
    """The console on ``billing``. ``dispatch(task_name, kwargs)`` hands long work to the worker
    (default: Celery); tests give one of their own."""
    if not secret_key or len(secret_key) < 16:
        raise ValueError("the console's secret key must be at least 16 characters long")
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_COOKIE_NAME="kkm_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        WTF_CSRF_TIME_LIMIT=8 * 3600,
        MAX_CONTENT_LENGTH=20 * 1024 * 1024,
        JSON_AS_ASCII=False,
    )
    app.config.update(config or {})
    app.session_interface = _SessionInterface()
    app.extensions["kkmtransfer.billing"] = billing
    app.extensions["kkmtransfer.dispatch"] = dispatch or celery_dispatch
    csrf.init_app(app)
    formatting.install(app, billing.settings.tz)

    from . import actions, auth, cards, dashboard, journal, operators, program, reports

    app.register_blueprint(auth.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(journal.bp)
    app.register_blueprint(operators.bp)
    app.register_blueprint(program.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(cards.bp)
    app.register_blueprint(reports.bp)
    auth.install(app)

    @app.errorhandler(CSRFError)
    def _csrf_refused(exc):
        from flask import session

        from ..service_layer.operators import Operators, record_audit

        # the CSRF check runs before the operator of the request is loaded: find it from the session
        from .auth import session_epoch

        op = getattr(g, "operator", None) or Operators(billing).active(session.get("operator"), session_epoch())
        g.operator = op
        record_audit(billing, op.name if op else None, request.endpoint or request.path, request.path,
                     "refused", f"CSRF: {exc.description}")
        return render_template("error.html", code=400, title="Форма устарела",
                               message="Форма отправлена без действительного ключа защиты (CSRF). "
                                       "Обновите страницу и повторите."), 400

    @app.errorhandler(403)
    def _forbidden(_exc):
        return render_template("error.html", code=403, title="Недостаточно прав",
                               message="Ваша роль не позволяет выполнить эту команду. "
                                       "Попытка записана в журнал аудита."), 403

    @app.errorhandler(413)
    def _too_large(_exc):
        return render_template("error.html", code=413, title="Файл слишком большой",
                               message="Запрос больше допустимого размера. Загрузите файл меньше."), 413

    @app.errorhandler(404)
    def _not_found(_exc):
        return render_template("error.html", code=404, title="Не найдено",
                               message="Такой страницы нет."), 404

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        if request.endpoint != "static":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


MIN_SECRET = 32


class ConsoleConfigError(RuntimeError):
    """The console cannot start with these settings."""


def secret_key_from_env(environ=None) -> str:
    """KKMTRANSFER_SECRET_KEY: signs the session cookies; the same in every worker and across restarts."""
    import os

    env = os.environ if environ is None else environ
    key = env.get("KKMTRANSFER_SECRET_KEY", "")
    if len(key) < MIN_SECRET:
        raise ConsoleConfigError(
            f"KKMTRANSFER_SECRET_KEY must be set to a random string of at least {MIN_SECRET} characters "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    return key


def billing_of(app=None):
    from flask import current_app

    return (app or current_app).extensions["kkmtransfer.billing"]


def mount(soap_app, web_app):
    """One WSGI app: the console under /admin, everything else to the SOAP service."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    return DispatcherMiddleware(soap_app, {PREFIX: web_app})


def page_arg(name: str = "page") -> int:
    """A table's page number from the query string (1 when absent, malformed or below 1)."""
    from flask import request

    try:
        return max(1, int(request.args.get(name, "1")))
    except ValueError:
        return 1
