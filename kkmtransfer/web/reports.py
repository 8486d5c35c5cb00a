"""Reports: balances and turnovers ("Остатки и обороты"), the same figures and CSV as
`kkmtransfer report balances`."""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, render_template, request

from ..domain import errors
from ..domain.operators import Permission
from ..service_layer.console import BALANCES_HEADER, balances_rows
from ..service_layer.reports import TURNOVERS, Reports
from . import billing_of, page_arg
from .auth import requires
from .csvout import csv_response
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
    page = page_arg()
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
    name = f"balances_{first:%Y-%m-%d}_{last:%Y-%m-%d}{'_' + card if card else ''}.csv"
    return csv_response(name, BALANCES_HEADER, balances_rows(report))


OPERATIONS_PER_PAGE = 100
KINDS = ['Sale', 'Return', 'Accrual', 'WriteOff', 'Expiry', 'Action', 'Zeroing', 'Annulment', 'InitialBalance']
SOURCES = ['Online', 'Offline', 'Nightly', 'BackOffice']


def _operations_args(args):
    """The CLI's filters of `report operations` from the query string: card, kkm, kind, source, from, to."""
    filters = {k: (args.get(k) or "").strip() or None for k in ("card", "kkm", "kind", "source")}
    if filters["kind"] and filters["kind"] not in KINDS:
        raise errors.ValidationError(f"неизвестный вид операции {filters['kind']!r}")
    if filters["source"] and filters["source"] not in SOURCES:
        raise errors.ValidationError(f"неизвестный источник {filters['source']!r}")
    first = parse_day(args.get("from"), None)
    last = parse_day(args.get("to"), None)
    if first and last and last < first:
        raise errors.ValidationError(f"начало периода {first:%d.%m.%Y} позже конца {last:%d.%m.%Y}")
    return filters, first, last


def _query(args, *keys) -> dict:
    """The filters of a page as they are, for its paging and CSV links."""
    return {k: args.get(k) or None for k in keys}


@bp.route("/operations")
@requires(Permission.READ)
def operations():
    """The journal of operations with the CLI's filters (`kkmtransfer report operations`), oldest first."""
    from itertools import islice

    args = request.args
    try:
        filters, first, last = _operations_args(args)
        page = max(1, int(args.get("page", "1") or 1))
    except (errors.DomainError, ValueError) as exc:
        return render_template("operations.html", error=getattr(exc, "message", str(exc)), rows=[], args=args,
                               page=1, more=False, kinds=KINDS, sources=SOURCES, query={}), 400
    start = (page - 1) * OPERATIONS_PER_PAGE
    found = Reports(billing_of()).operations(filters["card"], filters["kkm"], filters["kind"], filters["source"],
                                             first, last, start + OPERATIONS_PER_PAGE + 1)
    rows = list(islice(found, start, start + OPERATIONS_PER_PAGE + 1))
    more = len(rows) > OPERATIONS_PER_PAGE
    return render_template("operations.html", rows=rows[:OPERATIONS_PER_PAGE], args=args, page=page, more=more,
                           first=first, last=last, kinds=KINDS, sources=SOURCES,
                           query=_query(args, "card", "kkm", "kind", "source", "from", "to"))


@bp.route("/operations.csv")
@requires(Permission.READ)
def operations_csv():
    """Every operation the filters select: the file `kkmtransfer report operations ... --csv` writes."""
    from ..service_layer.reports import OPERATIONS_HEADER, operation_cells

    try:
        filters, first, last = _operations_args(request.args)
    except errors.DomainError as exc:
        return Response(exc.message + "\n", status=400, mimetype="text/plain")
    rows = Reports(billing_of()).operations(filters["card"], filters["kkm"], filters["kind"], filters["source"],
                                            first, last)
    return csv_response("operations.csv", OPERATIONS_HEADER, map(operation_cells, rows))


# -- the audit trail ---------------------------------------------------------------------------------
AUDIT_PER_PAGE = 100


def _audit_args(args):
    actor = (args.get("actor") or "").strip() or None
    action = (args.get("action") or "").strip() or None
    first = parse_day(args.get("from"), None)
    last = parse_day(args.get("to"), None)
    if first and last and last < first:
        raise errors.ValidationError(f"начало периода {first:%d.%m.%Y} позже конца {last:%d.%m.%Y}")
    return actor, action, first, last, args.get("order") != "asc"


@bp.route("/audit")
@requires(Permission.READ)
def audit():
    """The audit trail (`kkmtransfer report audit`): who did what, when, with what outcome; filtered by
    operator, action and period; newest first (or oldest first), 100 a page."""
    from ..service_layer import audit as trail

    args = request.args
    billing = billing_of()
    actions = trail.action_names(billing.engine)
    try:
        actor, action, first, last, newest = _audit_args(args)
        page = max(1, int(args.get("page", "1") or 1))
    except (errors.DomainError, ValueError) as exc:
        return render_template("audit.html", error=getattr(exc, "message", str(exc)), rows=[], args=args, page=1,
                               more=False, actions=actions, query={}, newest=True), 400
    found = trail.rows(billing.engine, first, last, actor, billing.settings.tz, AUDIT_PER_PAGE + 1,
                       action=action, newest_first=newest, offset=(page - 1) * AUDIT_PER_PAGE)
    return render_template("audit.html", rows=found[:AUDIT_PER_PAGE], more=len(found) > AUDIT_PER_PAGE, page=page,
                           args=args, actions=actions, newest=newest,
                           query=_query(args, "actor", "action", "from", "to", "order"))


@bp.route("/audit.csv")
@requires(Permission.READ)
def audit_csv():
    """Every audit row the filters select, oldest first: the file `kkmtransfer report audit --csv` writes."""
    from ..service_layer import audit as trail

    billing = billing_of()
    try:
        actor, action, first, last, _ = _audit_args(request.args)
    except errors.DomainError as exc:
        return Response(exc.message + "\n", status=400, mimetype="text/plain")
    rows = trail.rows(billing.engine, first, last, actor, billing.settings.tz, action=action)
    return csv_response("audit.csv", trail.CSV_HEADER, map(trail.csv_cells, rows))
