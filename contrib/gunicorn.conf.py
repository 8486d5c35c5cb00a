"""gunicorn settings for kkmtransfer: ``gunicorn -c contrib/gunicorn.conf.py kkmtransfer.wsgi:application``.

Every value can be overridden on the command line (``--workers 8``) or with GUNICORN_CMD_ARGS. The logs
of gunicorn itself (error and access) get the application's format: UTC times marked Z, the request id,
KKMTRANSFER_LOG_FORMAT=json for log shippers (kkmtransfer/logging.py).
"""
import os

from kkmtransfer.logging import gunicorn_logconfig_dict

bind = os.environ.get("KKMTRANSFER_BIND", "127.0.0.1:8080")


def _whole(name: str, default: int, low: int, high: int) -> int:
    """A whole number from the environment, or one line saying what is wrong (never a traceback)."""
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"Error: {name}: {raw[:40]!r} is not a whole number (default {default})") from None
    if not low <= value <= high:
        raise SystemExit(f"Error: {name}: must be {low} to {high}, got {value}")
    return value


workers = _whole("KKMTRANSFER_WORKERS", 4, 1, 256)
# One thread per process (gunicorn's sync worker) behind the TLS proxy, which buffers the registers' requests
# and answers and keeps their connections alive: the tail of the answers' times is about half gthread's
# (docs/performance.md §5.7). Without a buffering proxy in front, give each process threads (e.g. 4).
threads = _whole("KKMTRANSFER_THREADS", 1, 1, 256)
graceful_timeout = 20
timeout = 60

logconfig_dict = gunicorn_logconfig_dict()
accesslog = "-"
# the request id is the X-Request-Id header the application answers with
access_log_format = 'access %(h)s "%(r)s" %(s)s %(B)s %(M)sms req=%({x-request-id}o)s user=%(u)s'


# -- Prometheus metrics (GET /metrics) over every worker --------------------------------------------------
# Set PROMETHEUS_MULTIPROC_DIR to a directory only this service writes (e.g. /run/kkmtransfer/metrics, a
# tmpfs): each worker keeps its counters in files there and /metrics sums them. Stale files of a previous
# run are removed at start; a dead worker's live gauges are folded away (its counters are kept).
def on_starting(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
