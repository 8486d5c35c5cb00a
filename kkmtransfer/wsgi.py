"""The WSGI entry point for gunicorn: ``gunicorn kkmtransfer.wsgi:application``.

Configured from the environment (KKMTRANSFER_DATABASE_URL, KKMTRANSFER_TIMEZONE,
KKMTRANSFER_MAX_REQUEST_BYTES).
"""
from .app import configure_logging, create_wsgi_app

configure_logging()
application = create_wsgi_app()
