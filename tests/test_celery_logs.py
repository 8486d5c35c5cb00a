"""A Celery worker logs in the application's format, without alembic set-up lines, and an expected error
(a date in the future, a bad argument) in one line without a traceback (issue 12 §4)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta

import pytest

from kkmtransfer.tasks import nightly_regulation

from .test_celery import ROOT, TZ_NAME, client_app, redis_url  # noqa: F401 (fixtures)
from .test_logging import TEXT_LINE


def test_expected_task_errors_are_one_line_and_every_line_has_the_format(db, database_url, redis_url,  # noqa: F811
                                                                        client_app, tmp_path):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    queue, node = f"kkmlog-{tag}", f"kkmlog-{tag}@localhost"
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KKMTRANSFER_")}
    env.update(KKMTRANSFER_BROKER_URL=redis_url, KKMTRANSFER_RESULT_BACKEND=redis_url,
               KKMTRANSFER_DATABASE_URL=database_url, KKMTRANSFER_TIMEZONE=TZ_NAME)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kkmtransfer.tasks", "worker", "--pool", "solo",
             "--loglevel", "INFO", "--queues", queue, "--hostname", node, "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not client_app.control.ping(destination=[node], timeout=1.0):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        future = (date.today() + timedelta(days=30)).isoformat()
        for kwargs in ({"day": future}, {"day": "not-a-date"}):
            result = client_app.send_task(nightly_regulation.name, kwargs=kwargs, queue=queue)
            with pytest.raises(Exception):
                result.get(timeout=60)
        assert client_app.send_task(nightly_regulation.name, queue=queue).get(timeout=60)  # today: works
    finally:
        proc.terminate()
        proc.wait(15)
    text = log.read_text()
    assert "Traceback" not in text and "raised unexpected" not in text, text
    lines = [line for line in text.splitlines() if TEXT_LINE.match(line)]
    assert any("in the future" in line for line in lines), text
    assert any("not-a-date" in line for line in lines), text
    assert not any(" alembic" in line and " INFO " in line for line in lines), text
