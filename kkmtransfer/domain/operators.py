"""Back-office operators: their roles, what each role may do, and the login throttle. Pure rules.

Operators are people at the web console ("операторы"), separate from the registers' users of the SOAP
service. A viewer reads; an operator also runs the commands that change cards and receipts; an admin
also manages operators, promotions and the bonus program.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from .errors import ValidationError


class OperatorRole(str, Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(str, Enum):
    READ = "read"                        # every page, every report, CSV downloads
    BLOCK_CARD = "block_card"            # block / unblock a card
    ANNUL_RECEIPT = "annul_receipt"      # "Аннулировать бонусы чека"
    RUN_ACTION = "run_action"            # bonus actions, zeroing, cancelling them
    RESOLVE_REJECT = "resolve_reject"    # journal rejects: retry, dismiss
    IMPORT_JOURNAL = "import_journal"    # upload a register's journal file for import
    MANAGE_OPERATORS = "manage_operators"
    MANAGE_PROGRAM = "manage_program"    # promotions, the bonus program's settings


_OPERATOR_PERMISSIONS = frozenset({Permission.READ, Permission.BLOCK_CARD, Permission.ANNUL_RECEIPT,
                                   Permission.RUN_ACTION, Permission.RESOLVE_REJECT, Permission.IMPORT_JOURNAL})
ROLE_PERMISSIONS: dict[OperatorRole, frozenset[Permission]] = {
    OperatorRole.VIEWER: frozenset({Permission.READ}),
    OperatorRole.OPERATOR: _OPERATOR_PERMISSIONS,
    OperatorRole.ADMIN: _OPERATOR_PERMISSIONS | {Permission.MANAGE_OPERATORS, Permission.MANAGE_PROGRAM},
}

ROLE_TITLES = {OperatorRole.VIEWER: "Просмотр", OperatorRole.OPERATOR: "Оператор",
               OperatorRole.ADMIN: "Администратор"}


def parse_role(value) -> OperatorRole:
    try:
        return OperatorRole(str(value).strip().lower())
    except ValueError:
        names = ", ".join(r.value for r in OperatorRole)
        raise ValidationError(f"unknown role {value!r}: one of {names}") from None


def allows(role: OperatorRole | str, permission: Permission) -> bool:
    """Whether ``role`` may do ``permission``. An unknown role may do nothing."""
    try:
        role = OperatorRole(role)
    except ValueError:
        return False
    return permission in ROLE_PERMISSIONS[role]


def check_operator_name(name) -> str:
    text = "" if name is None else str(name).strip()
    if not text:
        raise ValidationError("an operator name is required")
    if len(text) > 64:
        raise ValidationError("an operator name is at most 64 characters")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValidationError("an operator name must not contain spaces or control characters")
    return text


MIN_PASSWORD = 8


def check_password(password: str) -> str:
    if password is None or len(password) < MIN_PASSWORD:
        raise ValidationError(f"a password must be at least {MIN_PASSWORD} characters long")
    return password


# -- login throttle -----------------------------------------------------------------------------
MAX_FAILURES = 10
LOCK_TIME = timedelta(minutes=15)


@dataclass(frozen=True)
class ThrottleState:
    """Failed logins for one name (known or not) since the last success or the last lock's end."""

    failures: int = 0
    locked_until: datetime | None = None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def retry_after(self, now: datetime) -> int:
        """Whole seconds until a login may be tried again (0: now)."""
        if not self.locked(now):
            return 0
        return max(1, int((self.locked_until - now).total_seconds() + 0.999))

    def after_failure(self, now: datetime) -> "ThrottleState":
        """The state after one more failed login. The tenth failure in a row locks the name for
        LOCK_TIME; once a lock has run out, counting starts again from zero."""
        failures = self.failures
        if self.locked_until is not None and now >= self.locked_until:
            failures = 0
        failures += 1
        if failures >= MAX_FAILURES:
            return ThrottleState(failures, now + LOCK_TIME)
        return ThrottleState(failures, None)
