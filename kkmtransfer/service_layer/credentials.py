"""Verified register credentials remembered per process for a short time (KKMTRANSFER_AUTH_CACHE_TTL).

Checking a register's credentials costs a unit of work (a connection, BEGIN, the users row, ROLLBACK) on
every request. A successful check is therefore remembered, with the user's scope (the KKM codes and the
store it may post for), for ``ttl`` seconds:

- the key is the user name and an HMAC of the password under a key made at random when the process starts;
  the password is never kept, and a wrong password makes another key, so it can never match the positive
  entry of the right one (it goes to the database and scrypt as before, and is counted by the throttle);
- only successes are remembered; an entry is used until ``ttl`` seconds after the check that made it, then
  the next request checks the database again. Disabling a user, changing its password or its binding, or
  deleting it from another process (the CLI, the console) therefore takes effect within ``ttl`` seconds;
  from this process (the same BillingService) at once. ``ttl`` 0 turns the cache off.
"""
from __future__ import annotations

import hmac
import os
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """A register user whose credentials were verified: its name and what it may post for."""
    name: str
    kkms: tuple[str, ...] = ()
    store: str | None = None

    @classmethod
    def from_row(cls, row) -> "Principal":
        return cls(name=row["name"], kkms=tuple(k for k in (row["kkms"] or "").split(",") if k),
                   store=row["store"] or None)


def principal_of(repo, actor: str | None, principal: Principal | None) -> Principal | None:
    """What ``actor`` may post for: ``principal`` when it is that user (the authenticated user of this request,
    from the login's cache), else its users row read in the caller's transaction; None for no user or an
    unknown one."""
    if actor is None:
        return None
    if principal is not None and principal.name == actor:
        return principal
    row = repo.get_user(actor)
    return Principal.from_row(row) if row is not None else None


class CredentialCache:
    def __init__(self, ttl: float, max_entries: int = 10_000, clock=time.monotonic):
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self.clock = clock
        self._key = os.urandom(32)
        self._entries: dict[tuple[str, bytes], tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def _digest(self, name: str, password: str) -> bytes:
        # hmac.digest: the same bytes as hmac.new(...).digest(), in one C call (no HMAC object)
        return hmac.digest(self._key, "\0".join((name, password)).encode("utf-8", "surrogatepass"), "sha256")

    def get(self, name: str, password: str) -> Principal | None:
        """The principal of these credentials if they were verified less than ``ttl`` seconds ago."""
        if self.ttl <= 0:
            return None
        key = (name, self._digest(name, password))
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry[0]:
                del self._entries[key]
                return None
            return entry[1]

    def put(self, name: str, password: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        key = (name, self._digest(name, password))
        now = self.clock()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now + self.ttl, principal)

    def forget(self, name: str) -> None:
        """Drop every entry of this user (its password, binding or state changed in this process)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == name]:
                del self._entries[key]
