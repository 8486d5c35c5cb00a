"""kkmtransfer config: the settings in effect."""
from __future__ import annotations

import dataclasses
import os

import click

from . import _safe_url, _settings, main

# read outside Settings: by celeryconfig.py, kkmtransfer/logging.py, the audit trail and gunicorn.conf.py
OTHER = {
    "KKMTRANSFER_BROKER_URL": "redis://127.0.0.1:6379/0",
    "KKMTRANSFER_RESULT_BACKEND": "(the broker URL)",
    "KKMTRANSFER_INBOX_EVERY_SECONDS": "60",
    "KKMTRANSFER_LOG_FORMAT": "text",
    "KKMTRANSFER_LOG_LEVEL": "INFO",
    "KKMTRANSFER_ACTOR": "(the OS user)",
    "KKMTRANSFER_BIND": "127.0.0.1:8080 (contrib/gunicorn.conf.py)",
    "KKMTRANSFER_WORKERS": "4 (contrib/gunicorn.conf.py)",
    "KKMTRANSFER_THREADS": "1 (contrib/gunicorn.conf.py)",
}


def _mask(value: str) -> str:
    if "://" in value:
        try:
            return _safe_url(value)
        except Exception:  # not a URL after all
            return value
    return value


@main.group()
def config():
    """The settings (from the environment)."""


@config.command("show")
def config_show():
    """Print every setting with the value in effect (passwords in URLs masked) and where it came from."""
    settings = _settings()
    names = {"timezone_name": "KKMTRANSFER_TIMEZONE"}
    for field in dataclasses.fields(settings):
        if not field.init:
            continue
        env = names.get(field.name, f"KKMTRANSFER_{field.name.upper()}")
        value = getattr(settings, field.name)
        origin = "environment" if os.environ.get(env, "").strip() else "default"
        click.echo(f"{env} = {_mask('' if value is None else str(value))}\t({origin})")
    for env, default in OTHER.items():
        raw = os.environ.get(env, "").strip()
        click.echo(f"{env} = {_mask(raw) if raw else default}\t({'environment' if raw else 'default'})")
