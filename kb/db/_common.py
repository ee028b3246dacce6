"""Pieces shared by the SQLAlchemy layer and the SQLAlchemy-free query path.

Nothing here may import SQLAlchemy: :mod:`kb.db.fastmeta` depends on it.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone

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


def outdated_schema_message(where: str) -> str:
    return f"database {where} has an outdated kbq schema: run `kbq db upgrade`"


_FILE_PROBLEMS = (
    ("unable to open database file", "cannot open database file"),
    ("file is not a database", "not a SQLite database"),
    ("readonly database", "database is read-only"),
)


def known_problem(error_text: str, where: str, lock_timeout: float | None = None) -> str | None:
    """The one line for a database error kbq recognises by its text (a lock, a missing table, a
    file that is no database...), the same whichever layer met it; None for any other error."""
    lowered = error_text.lower()
    if "database is locked" in lowered or "database table is locked" in lowered:
        return locked_message(where, resolve_lock_timeout(lock_timeout))
    if "no such table" in lowered:
        return no_schema_message(where)
    if "no such column" in lowered:
        return outdated_schema_message(where)
    for needle, message in _FILE_PROBLEMS:
        if needle in lowered:
            return f"{message}: {where}"
    return None


def one_line(text: object) -> str:
    """First non-empty line of an error text, so messages stay one line."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip() or "unknown error"


def utc(value: datetime) -> datetime:
    """Aware UTC: SQLite hands back naive datetimes, PostgreSQL its session zone."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
