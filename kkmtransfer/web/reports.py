"""Reports: balances and turnovers ("Остатки и обороты"), the same figures and CSV as
`kkmtransfer report balances`."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

from flask import Blueprint, Response, render_template, request

from ..domain import errors
from ..domain.operators import Permission
from ..service_layer.console import BALANCES_HEADER, balances_rows
from ..service_layer.reports import TURNOVERS, Reports
from . import billing_of
from .auth import requires
from .formatting import parse_day

bp = Blueprint("reports", __name__, url_prefix="/reports")

LINES_PER_PAGE = 100


def _balances_args():
    billing = billing_of()
    today = billing.clock().astimezone(billing.settings.tz).date()
    last = parse_day(request.args.get("to"), today)
    first = parse_day(request.args.get("from"), last.replace(day=1))
    card = (request.args.get("card") or "").strip() or None
    return first, last, card


@bp.route("/balances")
@requires(Permission.READ)
def balances():
    try:
        first, last, card = _balances_args()
        report = Reports(billing_of()).balances(first, last, card)
    except errors.DomainError as exc:
        return render_template("balances.html", error=exc.message, report=None, args=request.args), 400
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    pages = max(1, -(-len(report.lines) // LINES_PER_PAGE))
    page = min(page, pages)
    lines = report.lines[(page - 1) * LINES_PER_PAGE: page * LINES_PER_PAGE]
    return render_template("balances.html", report=report, lines=lines, totals=report.totals(), page=page,
                           pages=pages, card=card or "", turnovers=TURNOVERS, args=request.args)


@bp.route("/balances.csv")
@requires(Permission.READ)
def balances_csv():
    """The file `kkmtransfer report balances --from F --to T [--card C] --csv FILE` writes, byte for byte."""
    try:
        first, last, card = _balances_args()
        report = Reports(billing_of()).balances(first, last, card)
    except errors.DomainError as exc:
        return Response(exc.message + "\n", status=400, mimetype="text/plain")
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(BALANCES_HEADER)
    writer.writerows(balances_rows(report))
    name = f"balances_{first:%Y-%m-%d}_{last:%Y-%m-%d}{'_' + card if card else ''}.csv"
    return Response(out.getvalue().encode("utf-8"), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


OPERATIONS_PER_PAGE = 100


@bp.route("/operations")
@requires(Permission.READ)
def operations():
    """The journal of operations with the CLI's filters (`kkmtransfer report operations`), oldest first."""
    from itertools import islice

    args = request.args
    filters = {k: (args.get(k) or "").strip() or None for k in ("card", "kkm", "kind", "source")}
    try:
        first = parse_day(args.get("from"), None)
        last = parse_day(args.get("to"), None)
        if first and last and last < first:
            raise errors.ValidationError(f"начало периода {first:%d.%m.%Y} позже конца {last:%d.%m.%Y}")
        page = max(1, int(args.get("page", "1") or 1))
    except (errors.DomainError, ValueError) as exc:
        return render_template("operations.html", error=getattr(exc, "message", str(exc)), rows=[], args=args,
                               page=1, more=False), 400
    start = (page - 1) * OPERATIONS_PER_PAGE
    found = Reports(billing_of()).operations(filters["card"], filters["kkm"], filters["kind"], filters["source"],
                                             first, last, start + OPERATIONS_PER_PAGE + 1)
    rows = list(islice(found, start, start + OPERATIONS_PER_PAGE + 1))
    more = len(rows) > OPERATIONS_PER_PAGE
    return render_template("operations.html", rows=rows[:OPERATIONS_PER_PAGE], args=args, page=page, more=more,
                           first=first, last=last)
