"""The WSGI entry point for gunicorn: ``gunicorn kkmtransfer.wsgi:application``.

Configured from the environment (KKMTRANSFER_DATABASE_URL, KKMTRANSFER_TIMEZONE,
KKMTRANSFER_MAX_REQUEST_BYTES).
"""
from .app import configure_logging, create_wsgi_app, require_schema

configure_logging()
application = create_wsgi_app()
# refuse to start on a database that was not migrated (gunicorn prints this and stops)
require_schema(application.billing.engine, application.settings.database_url)
