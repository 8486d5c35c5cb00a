"""Celery configuration of kkmtransfer (loaded by kkmtransfer.tasks with config_from_object).

Broker and result backend: KKMTRANSFER_BROKER_URL (default redis://127.0.0.1:6379/0).
Beat: the nightly regulation every day at 02:00 in the business time zone (KKMTRANSFER_TIMEZONE), and
the journal inbox (KKMTRANSFER_INBOX_DIR) every KKMTRANSFER_INBOX_EVERY_SECONDS (default 60), and the release
of hung holds (ReserveBonus not confirmed within KKMTRANSFER_HOLD_TIMEOUT) every
KKMTRANSFER_HOLD_RELEASE_EVERY_SECONDS (default 60).
"""
import os

from celery.schedules import crontab
from celery.signals import setup_logging

# Logging: the application's one format (UTC, KKMTRANSFER_LOG_FORMAT=json), not Celery's own. A receiver
# of setup_logging makes Celery leave the root logger to it; the worker's --loglevel is passed on.
worker_hijack_root_logger = False


@setup_logging.connect
def _kkmtransfer_logging(loglevel=None, **_kwargs):
    from kkmtransfer.logging import configure

    configure(loglevel)


broker_url = os.environ.get("KKMTRANSFER_BROKER_URL") or "redis://127.0.0.1:6379/0"
result_backend = os.environ.get("KKMTRANSFER_RESULT_BACKEND") or broker_url
timezone = os.environ.get("KKMTRANSFER_TIMEZONE") or "Europe/Moscow"
enable_utc = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 7 * 24 * 3600

# A task is acknowledged only when it finished: a worker killed mid-run leaves it on the queue and
# another worker re-runs it (the regulation is idempotent, so a re-run completes what was begun).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_time_limit = 4 * 3600          # hard limit: the worker process is killed
task_soft_time_limit = 3 * 3600 + 1800
broker_transport_options = {"visibility_timeout": 5 * 3600}  # longer than the hard limit
broker_connection_retry_on_startup = True

beat_schedule = {
    "nightly-regulation": {
        "task": "kkmtransfer.nightly_regulation",
        "schedule": crontab(hour=2, minute=0),
        "options": {"expires": 20 * 3600},
    },
    "import-inbox": {
        "task": "kkmtransfer.import_inbox",
        "schedule": float(os.environ.get("KKMTRANSFER_INBOX_EVERY_SECONDS") or 60),
        "options": {"expires": 50},
    },
    "release-hung-holds": {
        "task": "kkmtransfer.release_hung_holds",
        "schedule": float(os.environ.get("KKMTRANSFER_HOLD_RELEASE_EVERY_SECONDS") or 60),
        "options": {"expires": 50},
    },
}
