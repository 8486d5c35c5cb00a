"""Ids the server derives for its own operations, in a key space no register can reach.

Registers choose their own GUIDs, so an id the server derives (an annulment, a nightly document and its
lines, an opening balance, a bonus action and its per-card operations, a journal row without an
OperationId) must not be one a register can compute and send first. Each is ``uuid5(N, text)`` where the
namespace N is made from a random secret of this installation (the one-row table ``server_secret``,
created on first use): deterministic, so a resumed run finds what it wrote before, but unguessable from
outside. ``server_id`` is the only place such ids are made.
"""
from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..domain import errors
from .db import server_secret


def namespace(conn: Connection) -> uuid.UUID:
    """The installation's id namespace (made, and stored, by the first caller)."""
    secret = conn.execute(select(server_secret.c.secret).where(server_secret.c.id == 1)).scalar()
    if secret is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(server_secret).values(id=1, secret=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another process made it first
        secret = conn.execute(select(server_secret.c.secret).where(server_secret.c.id == 1)).scalar_one()
    return uuid.uuid5(uuid.NAMESPACE_OID, f"kkmtransfer-server/{secret}")


def engine_namespace(engine) -> uuid.UUID:
    """``namespace`` in a transaction of its own: a write transaction (SQLite: taken at BEGIN, so two
    processes making it at once never deadlock on a lock upgrade)."""
    with engine.connect().execution_options(kkm_write=True) as conn:
        with conn.begin():
            return namespace(conn)


def server_id(ns: uuid.UUID, purpose: str, *parts: object) -> str:
    """The id of the server's own record ``purpose`` of ``parts`` (e.g. "annulment", sale id)."""
    name = "/".join([purpose, *(str(p) for p in parts)])
    # uuid.uuid5(ns, name), without building a UUID object (the journal makes one per row without an id)
    return _uuid5_text(hashlib.sha1(ns.bytes + name.encode()).digest())


def _uuid5_text(sha1_digest: bytes) -> str:
    """The text of the version-5 UUID whose name-based SHA-1 is ``sha1_digest`` (what ``str(uuid.uuid5(...))``
    gives)."""
    x = bytearray(sha1_digest[:16])
    x[6] = (x[6] & 0x0F) | 0x50  # version 5
    x[8] = (x[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = x.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class IdTaken(errors.DomainError):
    """A derived id is held by a record that is not the one the server meant to write."""

    code = "Server.IdTaken"


def check_own(row, op_id: str, **expected) -> None:
    """Fail loudly (one line) when the operation ``row`` under a derived id is not the server's own."""
    if row is None:
        return
    wrong = {k: row[k] for k, v in expected.items() if row[k] != v}
    if wrong:
        raise IdTaken(f"operation {op_id} is held by another record ({', '.join(f'{k}={v}' for k, v in wrong.items())}, "
                      f"expected {', '.join(f'{k}={v}' for k, v in expected.items() if k in wrong)}); "
                      "run `kkmtransfer ledger verify` and report it")


def uuid5_many(namespace: uuid.UUID, prefix: str, names) -> list[str]:
    """``[str(uuid.uuid5(namespace, prefix + name)) for name in names]`` without a UUID object per name: the
    SHA-1 of the namespace and the prefix is computed once and copied for each name (bulk paths derive a
    batch's ids with it; tests compare it with ``uuid.uuid5``)."""
    head = hashlib.sha1(namespace.bytes + prefix.encode())
    out = []
    for name in names:
        h = head.copy()
        h.update(name.encode())
        out.append(_uuid5_text(h.digest()))
    return out
