"""Pieces shared by the SQLAlchemy layer and the SQLAlchemy-free query path.

Nothing here may import SQLAlchemy: :mod:`kb.db.fastmeta` depends on it.
"""

from __future__ import annotations

import os
import re

from kb.errors import DatabaseError

DEFAULT_LOCK_TIMEOUT = 5.0
LOCK_TIMEOUT_ENV = "KBQ_LOCK_TIMEOUT"

_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")


def resolve_lock_timeout(lock_timeout: float | None = None) -> float:
    """Seconds to wait for another writer: the argument, else the env, else 5."""
    if lock_timeout is not None:
        return float(lock_timeout)
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise DatabaseError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise DatabaseError(f"{LOCK_TIMEOUT_ENV} must not be negative, got {raw!r}")
    return value


def mask_password(url: str) -> str:
    """The URL with any password replaced, for messages (works on unparseable URLs too)."""
    return _PASSWORD.sub(r"\1***@", url)


def locked_message(where: str, waited: float) -> str:
    return f"database is locked by another writer (waited {waited:g} s): {where}"


def no_schema_message(where: str) -> str:
    return f"database {where} has no kbq schema: run `kbq db upgrade`"


def one_line(text: object) -> str:
    """First non-empty line of an error text, so messages stay one line."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip() or "unknown error"
