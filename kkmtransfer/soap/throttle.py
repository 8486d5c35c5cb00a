"""Brute-force throttling of HTTP Basic: per user name and per client address, in this process.

After ``threshold`` failures of one key within ``window`` seconds, that key is refused for a delay that
doubles with each further failure (1 s, 2 s, 4 s … up to ``max_delay``), without checking the password (so
an attacker cannot make the worker run scrypt). A success clears the user name's count; an address's count
fades after ``window`` seconds without failures. An address's block does not stop a user who logged in
from that address within ``window`` seconds (a store's registers behind one NAT address keep working while
something there guesses passwords); that user's own failures still block it. Thread-safe; memory is
bounded by ``max_keys``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int
    last: float
    blocked_until: float


class AuthThrottle:
    def __init__(self, threshold: int = 5, window: float = 300.0, max_delay: float = 300.0,
                 max_keys: int = 100_000, clock=time.monotonic):
        self.threshold = threshold
        self.window = window
        self.max_delay = max_delay
        self.max_keys = max_keys
        self.clock = clock
        self._records: dict[tuple[str, str], _Record] = {}
        self._good: dict[tuple[str, str], float] = {}  # (user, address) -> last successful login
        self._lock = threading.Lock()

    def _keys(self, user: str | None, address: str | None):
        keys = []
        if user is not None:
            keys.append(("user", user))
        if address:
            keys.append(("addr", address))
        return keys

    def retry_after(self, user: str | None, address: str | None) -> float:
        """Seconds until these may try again; 0 when they may try now."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            known = user is not None and now - self._good.get((user, address or ""), float("-inf")) <= self.window
            for key in self._keys(user, address):
                if known and key[0] == "addr":
                    continue
                rec = self._records.get(key)
                if rec is not None and rec.blocked_until > now:
                    wait = max(wait, rec.blocked_until - now)
        return wait

    def failure(self, user: str | None, address: str | None) -> None:
        now = self.clock()
        with self._lock:
            if len(self._records) >= self.max_keys:
                self._prune(now)
            for key in self._keys(user, address):
                rec = self._records.get(key)
                if rec is None or now - rec.last > self.window:
                    rec = self._records[key] = _Record(0, now, 0.0)
                rec.failures += 1
                rec.last = now
                over = rec.failures - self.threshold
                if over >= 0:
                    rec.blocked_until = now + min(self.max_delay, 2.0 ** over)

    def success(self, user: str, address: str | None = None) -> None:
        now = self.clock()
        with self._lock:
            self._records.pop(("user", user), None)
            if len(self._good) >= self.max_keys:
                self._good = {k: t for k, t in self._good.items() if now - t <= self.window}
                if len(self._good) >= self.max_keys:
                    self._good.clear()
            self._good[(user, address or "")] = now

    def _prune(self, now: float) -> None:
        stale = [k for k, r in self._records.items() if now - r.last > self.window and r.blocked_until <= now]
        for k in stale:
            del self._records[k]
        if len(self._records) >= self.max_keys:  # still full: drop the oldest half
            for k, _ in sorted(self._records.items(), key=lambda kv: kv[1].last)[: self.max_keys // 2]:
                del self._records[k]
