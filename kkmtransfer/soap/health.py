"""``GET /health``: 200 when the database answers at the schema revision this version needs, 503 otherwise.

A short JSON body: the database (ok or the error), the schema revision (current and head), the last
business date whose nightly documents are both done, and the broker (a Redis ping with a short timeout),
which is a warning when unreachable, never a failure (calls are served without it). Bounded: the database
through the engine's timeouts, the broker by ``BROKER_TIMEOUT``.
"""
from __future__ import annotations

import json
import os

BROKER_TIMEOUT = 0.5
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


def broker_status(url: str | None = None) -> str:
    url = url or os.environ.get("KKMTRANSFER_BROKER_URL") or DEFAULT_BROKER
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=BROKER_TIMEOUT,
                                      retry_on_timeout=False)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure is "unreachable", reported as a warning
        return f"unreachable: {_one_line(exc)}"
    return "ok"


def check(engine, database_url: str) -> tuple[int, dict]:
    """(HTTP status, body) of the health check."""
    from ..adapters.migrate import current_revision, head_revision
    from ..adapters.regulation import last_completed_day
    from ..app import _heads

    body: dict = {"status": "ok", "database": "ok",
                  "schema": {"current": None, "head": None}, "last_nightly_date": None}
    healthy = True
    try:
        body["schema"]["head"] = _heads.get(database_url) or _heads.setdefault(database_url, head_revision(database_url))
    except Exception as exc:  # noqa: BLE001
        body["schema"]["head"] = None
        body["database"] = f"error: migrations unreadable: {_one_line(exc)}"
        healthy = False
    try:
        current = current_revision(engine)
        body["schema"]["current"] = current
        if healthy and current != body["schema"]["head"]:
            healthy = False
            body["database"] = "error: the schema is not at head: run `kkmtransfer db upgrade`"
        if current is not None:
            with engine.connect() as conn:
                day = last_completed_day(conn)
            body["last_nightly_date"] = day.isoformat() if day else None
    except Exception as exc:  # noqa: BLE001 - the database is down or refuses: 503 with one line
        healthy = False
        body["database"] = f"error: {_one_line(exc)}"
    body["broker"] = broker_status()
    if body["broker"] != "ok":
        body["warnings"] = [f"broker {body['broker']} (nightly and journal tasks wait for it)"]
    if not healthy:
        body["status"] = "fail"
    return (200 if healthy else 503), body


def serve(start, engine, database_url: str):
    status, body = check(engine, database_url)
    data = (json.dumps(body, sort_keys=True) + "\n").encode()
    start("200 OK" if status == 200 else "503 Service Unavailable",
          [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
           ("Cache-Control", "no-store")])
    return [data]
