"""The console as its own WSGI app for production:
``gunicorn --bind 127.0.0.1:8081 kkmtransfer.web.wsgi:application`` (pages under /admin/).

Needs KKMTRANSFER_SECRET_KEY (at least 32 characters; it signs the session cookies: keep it secret and
the same across workers and restarts) and the usual KKMTRANSFER_DATABASE_URL / KKMTRANSFER_TIMEZONE. Set
KKMTRANSFER_CONSOLE_SECURE_COOKIES=1 when the console is reached only over TLS (the cookie is marked
Secure on requests that came over TLS in any case).
"""
from __future__ import annotations

import os

from ..app import configure_logging, create_billing, require_schema


def create_application(environ=None):
    """The console mounted at /admin, the root redirecting there."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.utils import redirect

    from . import PREFIX, create_app, secret_key_from_env

    env = os.environ if environ is None else environ
    key = secret_key_from_env(env)
    billing = create_billing()
    require_schema(billing.engine, billing.settings.database_url)
    secure = env.get("KKMTRANSFER_CONSOLE_SECURE_COOKIES", "").lower() in ("1", "true", "yes")
    app = create_app(billing, key, config={"SESSION_COOKIE_SECURE": secure})
    return DispatcherMiddleware(redirect(PREFIX + "/"), {PREFIX: app})


configure_logging()
application = create_application()
