"""One log format (issue 12 §4): UTC times marked Z, request id, user and operation; JSON on demand; the
same under gunicorn with contrib/gunicorn.conf.py; no alembic set-up lines at INFO."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from kkmtransfer.logging import LogContext, configure

from .conftest import PASSWORD, USER, free_port, zeep_client
from .helpers import op_dict

ROOT = Path(__file__).resolve().parent.parent
TEXT_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ "
                       r"req=(\S+) user=(\S+) op=(\S+): (.*)$")


@pytest.fixture
def captured(monkeypatch):
    def setup(kind: str):
        monkeypatch.setenv("KKMTRANSFER_LOG_FORMAT", kind)
        stream = io.StringIO()
        configure("INFO", stream)
        return stream

    saved = logging.getLogger().handlers[:], logging.getLogger().level
    yield setup
    root = logging.getLogger()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _served(environ):
    """A WSGI app that logs while it serves, wrapped like create_wsgi_app wraps the SOAP app."""

    def app(environ, start_response):
        environ["kkmtransfer.request_id"] = "abc123"
        environ["REMOTE_USER"] = "kassa\nFORGED 2026-01-01 INFO admin logged in"
        logging.getLogger("kkmtransfer.test").info("applied %s", "x" * 10)
        start_response("200 OK", [])
        return [b""]

    LogContext(app)(environ, lambda *a: None)


def test_text_lines_are_utc_with_request_user_operation_and_cannot_be_forged(captured):
    stream = captured("text")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    _served({"HTTP_SOAPACTION": '"RegisterOperation"'})
    logging.getLogger("kkmtransfer.test").warning("outside\r\na request")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    m = TEXT_LINE.match(lines[0])
    assert m, lines[0]
    when = datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc)
    assert before <= when <= datetime.now(timezone.utc) + timedelta(seconds=1)  # UTC, not local time
    assert m.group(3) == "abc123" and m.group(5) == "RegisterOperation"
    assert m.group(4).startswith("kassa\\nFORGED\\x20")
    m2 = TEXT_LINE.match(lines[1])
    assert m2 and m2.group(3, 4, 5) == ("-", "-", "-") and m2.group(6) == "outside\\r\\na request"


def test_json_lines_for_log_shippers(captured):
    stream = captured("json")
    _served({"HTTP_SOAPACTION": "RegisterOperation"})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("kkmtransfer.test").exception("failed")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["time"].endswith("Z") and first["level"] == "INFO" and first["logger"] == "kkmtransfer.test"
    assert first["request_id"] == "abc123" and first["operation"] == "RegisterOperation"
    assert first["user"].startswith("kassa\\nFORGED") and first["message"] == "applied " + "x" * 10
    assert "request_id" not in second and "ValueError: boom" in second["exception"]


def test_a_huge_message_is_cut(captured):
    stream = captured("text")
    logging.getLogger("kkmtransfer.test").info("%s", "B" * 1_000_000)
    assert len(stream.getvalue()) < 5000


def test_gunicorn_with_the_contrib_config_logs_in_the_one_format(db, database_url, tmp_path):
    db.add_card_range(1, 1, "G", 0)
    db.add_user(USER, PASSWORD)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url, KKMTRANSFER_BIND=f"127.0.0.1:{port}",
               KKMTRANSFER_WORKERS="2", KKMTRANSFER_THREADS="2")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "contrib" / "gunicorn.conf.py"),
                                 "--graceful-timeout", "2", "kkmtransfer.wsgi:application"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/KKMTransfer"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "?wsdl", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client = zeep_client(url, USER, PASSWORD)
        client.service.RegisterOperation(Operation=op_dict("G1"))
        answer = requests.post(url, data=b"<x/>", auth=("nobody\nFORGED", "pw"), timeout=5)
        request_id = answer.headers["X-Request-Id"]
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(15)
    lines = log.read_text().splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), "\n".join(lines)
    assert any("gunicorn.error" in line and "Booting worker" in line for line in lines)
    assert any("gunicorn.access" in line and f"req={request_id}" in line and " 401 " in line for line in lines)
    assert not any(line.split(" ")[1] == "INFO" and " alembic" in line for line in lines)
    assert not any(line.startswith("FORGED") for line in lines)


@pytest.mark.parametrize("name, value, says", [
    ("KKMTRANSFER_THREADS", "abc", "KKMTRANSFER_THREADS: 'abc' is not a whole number"),
    ("KKMTRANSFER_THREADS", "0", "KKMTRANSFER_THREADS: must be 1 to 256, got 0"),
    ("KKMTRANSFER_WORKERS", "4x", "KKMTRANSFER_WORKERS: '4x' is not a whole number"),
])
def test_the_contrib_config_refuses_a_bad_count_in_one_line(name, value, says):
    """contrib/gunicorn.conf.py: a bad KKMTRANSFER_WORKERS / _THREADS stops gunicorn with one line, no traceback."""
    conf = ROOT / "contrib" / "gunicorn.conf.py"
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(conf), "--check-config",
                           "kkmtransfer.wsgi:application"], env=dict(os.environ, **{name: value}),
                          capture_output=True, text=True, timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0
    assert says in out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
