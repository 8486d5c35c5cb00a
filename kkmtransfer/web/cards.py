"""Card search, the card's page and the commands on it (block, unblock, annul a receipt's bonuses)."""
from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from ..domain import errors
from ..domain.model import CardStatus
from ..domain.operators import Permission
from ..service_layer import console
from ..service_layer.operators import record_audit
from . import billing_of, page_arg
from .auth import requires

bp = Blueprint("cards", __name__, url_prefix="/cards")


@bp.route("/")
@requires(Permission.READ)
def search():
    text = request.args.get("q", "").strip()
    if not text:
        return render_template("search.html", q="")
    try:
        number = console.find_card(billing_of(), text)
    except errors.DomainError as exc:
        status = 404 if isinstance(exc, errors.CardNotFound) else 400
        return render_template("search.html", q=text, error=_search_error(exc, text)), status
    return redirect(url_for("cards.show", number=number))


def _search_error(exc: errors.DomainError, text: str) -> str:
    if isinstance(exc, errors.CardNotFound):
        return f"Карта «{text}» не найдена: ни по номеру, ни по телефону."
    if isinstance(exc, errors.AmbiguousPhone):
        return "Этот телефон указан у нескольких карт: введите номер карты."
    return exc.message


@bp.route("/<number>")
@requires(Permission.READ)
def show(number):
    try:
        data = console.card_page(billing_of(), number, page_arg())
    except errors.CardNotFound:
        abort(404)
    return render_template("card.html", p=data)


@bp.route("/<number>/history.csv")
@requires(Permission.READ)
def history_csv(number):
    """The card's whole history (every page), newest first."""
    from .csvout import csv_response

    try:
        rows = console.card_history_rows(billing_of(), number)
    except errors.CardNotFound:
        abort(404)
    return csv_response(f"card_{number}_history.csv", console.HISTORY_HEADER, rows)


def _command(number: str, command: str, run):
    """Run a command on a card; ``run(billing)`` answers (what the audit records — None when the use
    case recorded its own row —, what the operator reads). A refusal of the service layer is shown as
    one line, never a traceback."""
    billing = billing_of()
    try:
        detail, message = run(billing)
    except errors.DomainError as exc:
        record_audit(billing, g.operator.name, command, number, "failed", f"{exc.code}: {exc.message}")
        flash(f"Не выполнено: {exc.message}", "error")
    else:
        if detail is not None:
            record_audit(billing, g.operator.name, command, number, "done", detail)
        flash(message, "ok")
    return redirect(url_for("cards.show", number=number, page=request.form.get("page") or None))


@bp.route("/<number>/block", methods=["POST"])
@requires(Permission.BLOCK_CARD, "cards.block")
def block(number):
    def run(billing):
        billing.set_card_status(number, CardStatus.BLOCKED, actor=g.operator.name)  # audited by the use case
        return None, "Карта заблокирована."

    return _command(number, "cards.block", run)


@bp.route("/<number>/unblock", methods=["POST"])
@requires(Permission.BLOCK_CARD, "cards.unblock")
def unblock(number):
    def run(billing):
        billing.set_card_status(number, CardStatus.ACTIVE, actor=g.operator.name)  # audited by the use case
        return None, "Карта разблокирована."

    return _command(number, "cards.unblock", run)


@bp.route("/<number>/annul/<operation_id>", methods=["POST"])
@requires(Permission.ANNUL_RECEIPT, "receipts.annul")
def annul(number, operation_id):
    """"Аннулировать бонусы чека" from a sale's line in the card's history."""
    from .formatting import money

    if console.operation_card(billing_of(), operation_id) != number:
        abort(404)
    note = (request.form.get("note") or "").strip() or None

    def run(billing):
        result, amount = billing.annul_receipt(operation_id, note)
        if result.status == "AlreadyApplied":
            return (f"receipt {operation_id}: already annulled ({amount})",
                    f"Бонусы этого чека уже были аннулированы ({money(amount)}); ничего не изменилось.")
        return (f"receipt {operation_id}: {amount} taken back",
                f"Бонусы чека аннулированы: списано {money(amount)}. Баланс карты: "
                f"{money(result.card.balances.bonus)}.")

    return _command(number, "receipts.annul", run)
