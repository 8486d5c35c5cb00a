"""The dashboard: turnovers per day over a chosen period (drawn by the vendored Chart.js), the bonus
liability, cards, the nightly regulation's last runs and the journal rejects waiting."""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, render_template, request

from ..domain import errors
from ..domain.operators import Permission
from ..service_layer import console
from ..service_layer.reports import TURNOVERS
from . import billing_of
from .auth import requires
from .formatting import parse_day

bp = Blueprint("dashboard", __name__)

DEFAULT_DAYS = 30


def period(args):
    """(first, last) from ?from=&to= (default: the last 30 business days up to today)."""
    billing = billing_of()
    today = billing.clock().astimezone(billing.settings.tz).date()
    last = parse_day(args.get("to"), today)
    first = parse_day(args.get("from"), last - timedelta(days=DEFAULT_DAYS - 1))
    return first, last


@bp.route("/")
@requires(Permission.READ)
def index():
    error = None
    try:
        first, last = period(request.args)
        data = console.dashboard(billing_of(), first, last)
    except errors.DomainError as exc:
        error = exc.message
        first, last = period({})
        data = console.dashboard(billing_of(), first, last)
    chart = dict(labels=[f"{d.day:%d.%m}" for d in data.days],
                 series={t: [str(getattr(d, t)) for d in data.days] for t in TURNOVERS})
    return render_template("dashboard.html", d=data, chart=chart, error=error), 400 if error else 200
