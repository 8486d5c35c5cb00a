"""How the console shows numbers and dates: `1 234,56` and `ДД.ММ.ГГГГ` (business time zone)."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

NBSP = "\u00a0"

KIND_TITLES = {
    "Sale": "Продажа", "Return": "Возврат", "Accrual": "Начисление", "WriteOff": "Списание",
    "Expiry": "Сгорание", "Action": "Бонус-акция", "Zeroing": "Обнуление", "Annulment": "Аннулирование",
    "InitialBalance": "Начальный остаток",
}
SOURCE_TITLES = {"Online": "Касса онлайн", "Offline": "Журнал кассы", "Nightly": "Ночной регламент",
                 "BackOffice": "Бэк-офис"}
MEASURE_TITLES = {"bonus": "Бонусы", "accumulation": "Накопление", "receipt_count": "Количество чеков"}
STATUS_TITLES = {"Active": "Активна", "Blocked": "Заблокирована"}
ACTION_STATUS_TITLES = {"running": "Выполняется", "done": "Завершена", "cancelling": "Отменяется",
                        "cancelled": "Отменена"}
OUTCOME_TITLES = {"done": "выполнено", "queued": "в очереди", "failed": "не выполнено", "refused": "отказано"}
FILE_STATE_TITLES = {"queued": "В очереди", "processing": "Обрабатывается", "done": "Загружен",
                     "failed": "Не прочитан", "waiting": "Ждёт в папке"}
DOCUMENT_TITLES = {"WriteOff": "Списание с дисконтных карт", "Accrual": "Начисление на дисконтные карты"}


def money(value) -> str:
    """1234.5 -> '1 234,50' (the thousands separator a no-break space)."""
    if value is None or value == "":
        return ""
    text = f"{Decimal(value):,.2f}"
    return text.replace(",", NBSP).replace(".", ",")


def whole(value) -> str:
    if value is None:
        return ""
    return f"{int(value):,}".replace(",", NBSP)


def install(app, tz) -> None:
    def day(value) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            value = value.astimezone(tz).date()
        return f"{value:%d.%m.%Y}"

    def moment(value) -> str:
        if value is None:
            return ""
        return f"{value.astimezone(tz):%d.%m.%Y %H:%M}"

    app.jinja_env.filters.update(money=money, whole=whole, day=day, moment=moment,
                                 kind=lambda k: KIND_TITLES.get(k, k),
                                 source=lambda s: SOURCE_TITLES.get(s, s),
                                 measure=lambda m: MEASURE_TITLES.get(m, m),
                                 card_status=lambda s: STATUS_TITLES.get(getattr(s, "value", s), s),
                                 document=lambda d: DOCUMENT_TITLES.get(d, d), phone=phone,
                                 action_status=lambda s: ACTION_STATUS_TITLES.get(s, s),
                                 outcome=lambda s: OUTCOME_TITLES.get(s, s or ""),
                                 file_state=lambda s: FILE_STATE_TITLES.get(s, s))


def phone(digits: str) -> str:
    """'9161234567' -> '+7 916 123-45-67' (a stored phone has its 10 significant digits)."""
    if not digits or len(digits) != 10 or not digits.isdigit():
        return digits or ""
    return f"+7 {digits[:3]} {digits[3:6]}-{digits[6:8]}-{digits[8:]}"


def parse_day(text: str | None, default: date) -> date:
    """A date from a form: 'ГГГГ-ММ-ДД' (an <input type=date>) or 'ДД.ММ.ГГГГ'; empty: the default."""
    from ..domain.errors import ValidationError

    text = (text or "").strip()
    if not text:
        return default
    for fmt in ("%Y-%m-%d", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValidationError(f"дата {text!r}: ожидается ДД.ММ.ГГГГ")
