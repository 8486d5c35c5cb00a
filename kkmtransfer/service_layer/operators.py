"""Use cases of the back-office operators: adding them, their roles, logging in (with the throttle), and
the audit trail's single call point for the web console.

The console calls these, the CLI (`kkmtransfer operators ...`) calls these; the rules live in
``domain.operators``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..adapters.db import operators
from ..adapters.operator_repository import OperatorRepository
from ..domain import errors
from ..domain.operators import (
    OperatorRole,
    ThrottleState,
    check_operator_name,
    check_password,
    parse_role,
)
from . import passwords
from .unit_of_work import UnitOfWork

audit_log = logging.getLogger("kkmtransfer.audit")


@dataclass(frozen=True)
class Operator:
    name: str
    role: OperatorRole
    disabled: bool
    created_at: datetime
    session_epoch: int = 0  # a console session opened in an earlier epoch is over


class LoginOutcome(str, Enum):
    OK = "ok"
    BAD = "bad"          # unknown name, disabled operator or wrong password: the same answer
    LOCKED = "locked"    # too many failures for this name: try again after retry_after seconds


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    operator: Operator | None = None
    retry_after: int = 0


def _operator(row) -> Operator:
    return Operator(row["name"], OperatorRole(row["role"]), bool(row["disabled"]), row["created_at"],
                    int(row["session_epoch"] or 0))


def record_audit(billing, operator: str | None, command: str, target: str = "", outcome: str = "done",
                 detail: str = "") -> None:
    """THE one place the web console records what an operator did or was refused, in the audit trail
    (service_layer/audit.py, table ``audit``): actor = the operator's name ("anonymous" before a login),
    action = the command (the same names as the CLI's: cards.block, receipts.annul, actions.credit, ...),
    object = its target, details = {"via": "console", "outcome": done / queued / failed / refused, ...}.
    Changes whose use case records its own row with the actor (card block/unblock) do not come here.
    A line also goes to the ``kkmtransfer.audit`` logger. If the row cannot be written (the database is
    down), the line says so and the request goes on: a refusal stays a refusal."""
    from . import audit

    audit_log.info("operator=%s command=%s target=%s outcome=%s detail=%s",
                   operator or "-", command, target or "-", outcome, detail or "-")
    try:
        audit.record_now(billing.engine, operator or "anonymous", command, target or None, via="console",
                         outcome=outcome, detail=detail or None)
    except SQLAlchemyError as exc:
        audit_log.error("audit row not written (operator=%s command=%s): %s", operator or "-", command, exc)


class Operators:
    def __init__(self, billing):
        self.billing = billing
        self.engine = billing.engine
        self.clock = billing.clock

    def add(self, name: str, role: OperatorRole | str, password: str) -> bool:
        """Create operator NAME with ROLE, or give an existing one a new role and password (and enable
        it again). True when created. Giving an existing operator a password ends its console sessions
        (its session epoch moves on)."""
        name = check_operator_name(name)
        role = parse_role(role)
        hashed = passwords.hash_password(check_password(password))
        for attempt in (1, 2):
            try:
                with UnitOfWork(self.engine, write=True) as uow:
                    repo = OperatorRepository(uow.conn)
                    if repo.get(name) is None:
                        repo.insert(name=name, role=role.value, password_hash=hashed, created_at=self.clock(),
                                    disabled=False)
                        created = True
                    else:
                        repo.update(name, role=role.value, password_hash=hashed, disabled=False,
                                    session_epoch=operators.c.session_epoch + 1)
                        created = False
                    repo.clear_throttle(name)
                    uow.commit()
                return created
            except IntegrityError:  # created concurrently: update it instead
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def set_role(self, name: str, role: OperatorRole | str) -> None:
        role = parse_role(role)
        with UnitOfWork(self.engine, write=True) as uow:
            if not OperatorRepository(uow.conn).update(name, role=role.value):
                raise errors.ValidationError(f"no operator {name}")
            uow.commit()

    def disable(self, name: str) -> None:
        """Disable NAME: it cannot log in, and its console sessions end at their next request."""
        with UnitOfWork(self.engine, write=True) as uow:
            if not OperatorRepository(uow.conn).update(name, disabled=True,
                                                       session_epoch=operators.c.session_epoch + 1):
                raise errors.ValidationError(f"no operator {name}")
            uow.commit()

    def list(self) -> list[Operator]:
        with UnitOfWork(self.engine) as uow:
            return [_operator(r) for r in OperatorRepository(uow.conn).all()]

    def get(self, name: str) -> Operator | None:
        """The operator, or None when there is none of that name."""
        with UnitOfWork(self.engine) as uow:
            row = OperatorRepository(uow.conn).get(name)
        return _operator(row) if row is not None else None

    def active(self, name: str | None, epoch: int | None = None) -> Operator | None:
        """The operator of a session: None when unknown or disabled, or (``epoch`` given) when the session
        was opened before the operator's password changed or it was disabled: the session is then worth
        nothing."""
        if not name:
            return None
        op = self.get(name)
        if op is None or op.disabled:
            return None
        if epoch is not None and epoch != op.session_epoch:
            return None
        return op

    # -- logging in --------------------------------------------------------------------------
    def login(self, name: str, password: str) -> LoginResult:
        """Check a login. After MAX_FAILURES failed tries for one name (whether an operator of that name
        exists or not) the name is locked for LOCK_TIME: every try is refused unchecked."""
        name = (name or "").strip()[:64]
        now = self.clock()
        with UnitOfWork(self.engine) as uow:
            repo = OperatorRepository(uow.conn)
            state = self._state(repo.throttle(name))
            row = repo.get(name)
        if state.locked(now):
            return LoginResult(LoginOutcome.LOCKED, retry_after=state.retry_after(now))
        if row is None or row["disabled"]:
            passwords.verify_password(name, password or "", passwords.DUMMY_HASH)  # same cost either way
            ok = False
        else:
            ok = bool(password) and passwords.verify_password("operator:" + name, password, row["password_hash"])
        if ok:
            if state.failures:
                with UnitOfWork(self.engine, write=True) as uow:
                    OperatorRepository(uow.conn).clear_throttle(name)
                    uow.commit()
            return LoginResult(LoginOutcome.OK, _operator(row))
        self._count_failure(name, now)
        return LoginResult(LoginOutcome.BAD)

    @staticmethod
    def _state(row) -> ThrottleState:
        if row is None:
            return ThrottleState()
        return ThrottleState(row["failures"], row["locked_until"])

    def _count_failure(self, name: str, now: datetime) -> None:
        for attempt in (1, 2):
            try:
                with UnitOfWork(self.engine, write=True) as uow:
                    repo = OperatorRepository(uow.conn)
                    row = repo.throttle(name, lock=True)
                    state = self._state(row).after_failure(now)
                    repo.save_throttle(name, state.failures, state.locked_until, now, exists=row is not None)
                    uow.commit()
                return
            except IntegrityError:  # a concurrent first failure inserted the row: count on it
                if attempt == 2:
                    raise
