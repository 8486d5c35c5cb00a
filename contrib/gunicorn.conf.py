"""gunicorn settings for kkmtransfer: ``gunicorn -c contrib/gunicorn.conf.py kkmtransfer.wsgi:application``.

Every value can be overridden on the command line (``--workers 8``) or with GUNICORN_CMD_ARGS. The logs
of gunicorn itself (error and access) get the application's format: UTC times marked Z, the request id,
KKMTRANSFER_LOG_FORMAT=json for log shippers (kkmtransfer/logging.py).
"""
import os

from kkmtransfer.logging import gunicorn_logconfig_dict

bind = os.environ.get("KKMTRANSFER_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("KKMTRANSFER_WORKERS", "4"))
threads = int(os.environ.get("KKMTRANSFER_THREADS", "4"))
graceful_timeout = 20
timeout = 60

logconfig_dict = gunicorn_logconfig_dict()
accesslog = "-"
# the request id is the X-Request-Id header the application answers with
access_log_format = 'access %(h)s "%(r)s" %(s)s %(B)s %(M)sms req=%({x-request-id}o)s user=%(u)s'
