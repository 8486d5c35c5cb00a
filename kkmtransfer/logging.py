"""One log format for the application, gunicorn and Celery.

Text (default)::

    2026-11-29T19:50:01.123Z INFO kkmtransfer.soap.http req=3f2a… user=kassa1 op=RegisterOperation: message

JSON, one object a line, for log shippers (``KKMTRANSFER_LOG_FORMAT=json``)::

    {"time": "2026-11-29T19:50:01.123Z", "level": "INFO", "logger": "…", "request_id": "…", "user": "…",
     "operation": "…", "message": "…"}

Times are UTC, marked ``Z``. The request id, the HTTP user and the SOAP operation come from the WSGI
environ of the request being served (``LogContext`` puts it in a context variable); outside a request
they are ``-`` (text) or absent (JSON). What comes from the wire is escaped: a line break in a user
name cannot forge a log line.

gunicorn: ``gunicorn -c contrib/gunicorn.conf.py kkmtransfer.wsgi:application`` (its ``logconfig_dict``
is :func:`gunicorn_logconfig_dict`). Celery: celeryconfig.py connects :func:`configure` to its
``setup_logging`` signal.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

FORMAT_ENV = "KKMTRANSFER_LOG_FORMAT"
LEVEL_ENV = "KKMTRANSFER_LOG_LEVEL"
MAX_MESSAGE = 4000  # characters of one message kept (a malformed 1 MB body is not logged whole)

_environ: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kkmtransfer_environ", default=None)

# the set-up lines alembic prints on every check of the schema are noise
QUIET = {"alembic": logging.WARNING, "alembic.runtime.migration": logging.WARNING}


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", " ": "\\x20"}


def _clean(value, limit: int = 200) -> str:
    """A field from the wire as one word: no space, no line break, nothing unprintable."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return "".join(c if c.isprintable() and not c.isspace() else _ESCAPES.get(c, f"\\u{ord(c):04x}")
                   for c in text)


def request_fields() -> dict:
    """request_id, user and operation of the request being served (empty outside a request)."""
    environ = _environ.get()
    if environ is None:
        return {}
    fields = {}
    request_id = environ.get("kkmtransfer.request_id")
    if request_id:
        fields["request_id"] = _clean(request_id, 64)
    user = environ.get("REMOTE_USER")
    if user:
        fields["user"] = _clean(user, 64)
    operation = environ.get("kkmtransfer.operation") or environ.get("HTTP_SOAPACTION", "").strip('"\' ')
    if operation:
        fields["operation"] = _clean(operation.rsplit("/", 1)[-1].rsplit("#", 1)[-1], 64)
    return fields


class ContextFilter(logging.Filter):
    """Adds request_id, user and operation to every record (``-`` when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = request_fields()
        for name in ("request_id", "user", "operation"):
            if not hasattr(record, name):
                setattr(record, name, fields.get(name, "-"))
        return True


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f"… ({len(message)} characters)"
    return message.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``<UTC time>Z LEVEL logger req=… user=… op=…: message`` (tracebacks follow on their own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        ContextFilter().filter(record)
        line = (f"{_utc(record)} {record.levelname} {record.name} req={record.request_id} user={record.user} "
                f"op={record.operation}: {_message(record)}")
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        ContextFilter().filter(record)
        data = {"time": _utc(record), "level": record.levelname, "logger": record.name}
        for name in ("request_id", "user", "operation"):
            if getattr(record, name, "-") != "-":
                data[name] = getattr(record, name)
        data["message"] = _message(record)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def formatter_class(kind: str | None = None) -> type[logging.Formatter]:
    kind = (kind or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    return JsonFormatter if kind == "json" else TextFormatter


def make_formatter(kind: str | None = None) -> logging.Formatter:
    """A factory for dictConfig (``"()": "kkmtransfer.logging.make_formatter"``)."""
    return formatter_class(kind)()


def configure(level: str | int | None = None, stream=None) -> None:
    """Log to stderr in the configured format; replaces the root logger's handlers."""
    level = level or os.environ.get(LEVEL_ENV) or "INFO"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)


def gunicorn_logconfig_dict(level: str | None = None) -> dict:
    """gunicorn's ``logconfig_dict``: its error and access logs in the same format, to stderr."""
    level = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    handler = {"class": "logging.StreamHandler", "formatter": "kkmtransfer", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kkmtransfer": {"()": "kkmtransfer.logging.make_formatter"}},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            **{name: {"level": logging.getLevelName(quiet)} for name, quiet in QUIET.items()},
        },
    }


class LogContext:
    """WSGI middleware: the request's environ is the log context while the request is served. Other
    attributes (``billing``, ``settings``) are the wrapped application's."""

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):
        return getattr(self.app, name)

    def __call__(self, environ, start_response):
        token = _environ.set(environ)
        try:
            return self.app(environ, start_response)
        finally:
            _environ.reset(token)
