"""Promotions and the bonus program (admins only): the same use cases as `kkmtransfer promotions` and
`kkmtransfer program` (BillingService.add_promotion / close_promotion, ProgramService). Each change is
recorded in the audit trail by its use case, with the operator as the actor; a refused or failed one by
record_audit."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from ..domain import errors
from ..domain.operators import Permission
from ..service_layer.operators import record_audit
from ..service_layer.program import ProgramService
from . import billing_of
from .auth import requires
from .formatting import parse_day

bp = Blueprint("program", __name__, url_prefix="/program")


def _text(name: str) -> str | None:
    return (request.form.get(name) or "").strip() or None


def _number(name: str) -> str | None:
    """A percent or amount as typed ('7,5' or '7.5'); the service validates it."""
    value = _text(name)
    return value.replace(" ", "").replace("\u00a0", "").replace(",", ".") if value else None


def _int(name: str, default: int | None = None) -> int | None:
    value = _text(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise errors.ValidationError(f"«{value}»: ожидается целое число дней") from None


def _moment(name: str) -> datetime | None:
    """A start from an <input type=datetime-local> ('ГГГГ-ММ-ДДTЧЧ:ММ' or 'ДД.ММ.ГГГГ ЧЧ:ММ'), business zone;
    empty: now."""
    value = _text(name)
    if value is None:
        return None
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=billing_of().settings.tz)
        except ValueError:
            continue
    raise errors.ValidationError(f"«{value}»: ожидается ДД.ММ.ГГГГ ЧЧ:ММ")


def _tiers(text: str | None):
    """'10000:7; 20000:10' -> [(10000, 7), (20000, 10)]."""
    if not text:
        return None
    out = []
    for part in text.replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        left, sep, right = part.partition(":")
        try:
            if not sep:
                raise InvalidOperation
            out.append((Decimal(left.strip().replace(",", ".").replace(" ", "")),
                        Decimal(right.strip().replace(",", "."))))
        except InvalidOperation:
            raise errors.ValidationError(f"ступень «{part}»: ожидается НАКОПЛЕНИЕ:ПРОЦЕНТ, например 10000:7") from None
    return out


def _done(message: str):
    flash(message, "ok")
    return redirect(url_for("program.index"))


def _failed(command: str, target: str, exc: errors.DomainError):
    record_audit(billing_of(), g.operator.name, command, target, "failed", exc.message)
    flash(f"Не выполнено: {exc.message}", "error")
    return redirect(url_for("program.index"))


@bp.route("/")
@requires(Permission.MANAGE_PROGRAM, "program.show")
def index():
    from ..domain.program import Program, ProgramVersion
    from ..domain.rules import LifeRule

    billing = billing_of()
    svc = ProgramService(billing)
    now = billing.clock()
    versions = svc.versions()
    current = [v for v in versions if v.valid_from <= now]
    promotions = billing.list_promotions()
    for p in promotions:
        p["rule"] = LifeRule(p["delay_days"], p["lifetime_days"], p["until_date"])
    return render_template("program.html", current=current[-1] if current else ProgramVersion(None, Program()),
                           planned=[v for v in versions if v.valid_from > now], promotions=promotions)


@bp.route("/promotions", methods=["POST"])
@requires(Permission.MANAGE_PROGRAM, "promotions.add")
def promotion_add():
    code = _text("code") or ""
    try:
        lifetime, until = _int("lifetime_days"), parse_day(_text("until"), None)
        if lifetime and until:
            raise errors.ValidationError("срок жизни в днях и последний день исключают друг друга")
        billing_of().add_promotion(code, _text("name") or "", _int("delay_days", 0) or 0, lifetime, until,
                                   parse_day(_text("valid_from"), None), parse_day(_text("valid_to"), None),
                                   actor=g.operator.name)
    except errors.DomainError as exc:
        return _failed("promotions.add", code, exc)
    return _done(f"Акция {code} создана.")


@bp.route("/promotions/<code>/close", methods=["POST"])
@requires(Permission.MANAGE_PROGRAM, "promotions.close")
def promotion_close(code):
    try:
        end = billing_of().close_promotion(code, actor=g.operator.name)
    except errors.DomainError as exc:
        return _failed("promotions.close", code, exc)
    return _done(f"Акция {code} закрыта; последний день {end:%d.%m.%Y}.")


@bp.route("/promotions/<code>/percent", methods=["POST"])
@requires(Permission.MANAGE_PROGRAM, "program.promotion")
def promotion_percent(code):
    value = None if request.form.get("none") else _number("accrual_percent")
    try:
        if value is None and not request.form.get("none"):
            raise errors.ValidationError("укажите процент или отметьте «без своего процента»")
        ProgramService(billing_of()).set_promotion_percent(code, value, actor=g.operator.name)
    except errors.DomainError as exc:
        return _failed("program.promotion", code, exc)
    return _done(f"Акция {code}: " + (f"свой процент {value}%" if value
                                                                  else "без своего процента") + ".")


@bp.route("/set", methods=["POST"])
@requires(Permission.MANAGE_PROGRAM, "program.change")
def program_set():
    form = request.form
    try:
        tiers = [] if form.get("no_tiers") else _tiers(_text("tiers"))
        bonus_paid = {"yes": True, "no": False}.get(form.get("accrue_on_bonus_paid", ""))
        version = ProgramService(billing_of()).set(
            valid_from=_moment("valid_from"), accrual_percent=_number("accrual_percent"),
            max_payment_percent=_number("max_payment_percent"), tiers=tiers, accrue_on_bonus_paid=bonus_paid,
            rounding=_text("rounding"), actor=g.operator.name)
    except errors.DomainError as exc:
        return _failed("program.change", "program", exc)
    return _done(f"Программа изменена с {_shown(version.valid_from)}.")


@bp.route("/group", methods=["POST"])
@requires(Permission.MANAGE_PROGRAM, "program.change")
def program_group():
    group = _text("group") or ""
    how = request.form.get("how", "own")
    try:
        version = ProgramService(billing_of()).set_group(
            group, valid_from=_moment("valid_from"),
            accrual_percent=_number("accrual_percent") if how == "own" else None,
            max_payment_percent=_number("max_payment_percent") if how == "own" else None,
            excluded=how == "excluded", remove=how == "remove", actor=g.operator.name)
    except errors.DomainError as exc:
        return _failed("program.change", f"group {group}", exc)
    return _done(f"Группа {group}: правило задано с {_shown(version.valid_from)}.")


def _shown(moment: datetime) -> str:
    return f"{moment.astimezone(billing_of().settings.tz):%d.%m.%Y %H:%M}"
