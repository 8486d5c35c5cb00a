"""The WSGI entry point for gunicorn: ``gunicorn kkmtransfer.wsgi:application``.

Configured from the environment (KKMTRANSFER_DATABASE_URL, KKMTRANSFER_TIMEZONE, … see config.py).
Importing this touches no database: a worker boots while the database is down or not yet migrated, answers
``Server`` faults meanwhile, and serves calls as soon as the database is back at the needed schema.
"""
from .app import configure_logging, create_wsgi_app

configure_logging()
application = create_wsgi_app()
