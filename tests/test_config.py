"""Settings read from the environment: the database URL every entry point shares, durations."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from kkmtransfer.config import ConfigError, Settings, parse_duration


@pytest.mark.parametrize("url, expected", [
    ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
    ("postgresql://u:p@h/d", "postgresql+psycopg2://u:p@h/d"),
    ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
    ("sqlite:///var/x.sqlite3", "sqlite:///var/x.sqlite3"),
])
def test_the_database_url_is_normalised_where_config_reads_it(url, expected):
    assert Settings.from_env({"KKMTRANSFER_DATABASE_URL": url}).database_url == expected


@pytest.mark.parametrize("url, words", [("not a url", "not a database URL"),
                                        ("mysql://u@h/d", "unsupported database"),
                                        ("postgresql+asyncpg://u@h/d", "not installed")])
def test_an_unusable_database_url_is_a_config_error(url, words):
    with pytest.raises(ConfigError, match=words):
        Settings.from_env({"KKMTRANSFER_DATABASE_URL": url})


@pytest.mark.postgres
def test_gunicorn_console_and_celery_accept_a_postgres_url(database_url, monkeypatch):
    """`postgres://` (as hosting platforms hand it out) works in the SOAP app, the console and Celery, not
    only in the CLI: each builds its engine from Settings.from_env and reaches the database."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL URLs")
    from kkmtransfer import tasks
    from kkmtransfer.app import create_wsgi_app, require_schema

    plain = "postgres://" + database_url.split("://", 1)[1]
    monkeypatch.setenv("KKMTRANSFER_DATABASE_URL", plain)
    monkeypatch.setenv("KKMTRANSFER_SECRET_KEY", "k" * 64)
    soap = create_wsgi_app()
    try:
        assert soap.billing.engine.url.drivername == "postgresql+psycopg2"
        require_schema(soap.billing.engine, soap.billing.settings.database_url)  # connects
    finally:
        soap.billing.engine.dispose()
    # the console's module builds it (and checks the schema: connects) on import, in a process of its own
    proc = subprocess.run([sys.executable, "-c", "from kkmtransfer.web.wsgi import application; print('ok')"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    monkeypatch.setattr(tasks, "_billing", None)
    worker = tasks.billing()
    try:
        assert worker.engine.url.drivername == "postgresql+psycopg2"
    finally:
        worker.engine.dispose()


@pytest.mark.parametrize("raw, expected", [
    ("", timedelta(days=30)), ("30d", timedelta(days=30)), ("7", timedelta(days=7)), ("36h", timedelta(hours=36)),
    ("90m", timedelta(minutes=90)), ("3600s", timedelta(hours=1)), ("0", timedelta(0)), ("off", None),
    ("OFF", None), ("none", None),
])
def test_the_grace_before_a_card_existed_is_a_duration_or_off(raw, expected):
    settings = Settings.from_env({"KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE": raw})
    assert settings.optime_before_card_grace == expected
    assert parse_duration("X", raw, timedelta(days=30)) == expected


@pytest.mark.parametrize("raw", ["-1d", "1w", "1.5d", "30 days", "9999999d", "d"])
def test_a_grace_that_is_no_duration_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE"):
        Settings.from_env({"KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE": raw})


def test_the_journal_import_workers_default_to_two_and_stay_within_one_to_eight():
    assert Settings.from_env({}).journal_jobs == 2
    assert Settings.from_env({"KKMTRANSFER_JOURNAL_JOBS": "1"}).journal_jobs == 1
    assert Settings.from_env({}).journal_processes is True
    assert Settings.from_env({"KKMTRANSFER_JOURNAL_PROCESSES": "off"}).journal_processes is False
    with pytest.raises(ConfigError, match="KKMTRANSFER_JOURNAL_PROCESSES"):
        Settings.from_env({"KKMTRANSFER_JOURNAL_PROCESSES": "forks"})
    for raw in ("0", "9", "two"):
        with pytest.raises(ConfigError, match="KKMTRANSFER_JOURNAL_JOBS"):
            Settings.from_env({"KKMTRANSFER_JOURNAL_JOBS": raw})
