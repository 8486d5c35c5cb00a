"""Registers' passwords: scrypt (a slow, memory-hard KDF) with a per-user salt.

A register calls many times a minute; checking scrypt on each call would cost ~50 ms of CPU. A verified
(user, password, stored hash) triple is therefore remembered in memory, keyed by a keyed hash, for a
few minutes; changing or disabling the user changes the stored hash and so misses the cache.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time

N, R, P = 2 ** 14, 8, 1
# Checked when the user is unknown, so that an unknown name costs as much as a wrong password.
DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
_CACHE_SECONDS = 300
_cache: dict[bytes, float] = {}
_cache_lock = threading.Lock()
_cache_key = os.urandom(32)


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("an empty password is not allowed")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def _verify_slow(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def verify_password(user: str, password: str, stored: str) -> bool:
    key = hmac.new(_cache_key, "\0".join((user, password, stored)).encode(), hashlib.sha256).digest()
    now = time.monotonic()
    with _cache_lock:
        seen = _cache.get(key)
        if seen is not None and now - seen < _CACHE_SECONDS:
            return True
    if not _verify_slow(password, stored):
        return False
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[key] = now
    return True
