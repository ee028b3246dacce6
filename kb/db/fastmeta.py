"""Schema version and meta of a case base, without importing SQLAlchemy.

The query path calls :func:`read_state` on every run to learn whether its
persisted index is still current; importing SQLAlchemy would cost ~200 ms,
so SQLite files are read with the stdlib ``sqlite3`` module. Only other
databases fall back to :class:`kb.db.store.CaseStore`.

The connection is opened read-write although it only reads: a writer killed
inside its transaction leaves a hot journal (or uncommitted WAL frames), and
SQLite rolls that back on the next connection, which a ``mode=ro`` connection
cannot do ("attempt to write a readonly database" on every later query). A
file the user may not write is still opened, read-only, by the same call.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from kb.db._common import locked_message, one_line, resolve_lock_timeout
from kb.errors import DatabaseError

_SQLITE_URL = re.compile(r"^sqlite(\+\w+)?://(?P<rest>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class DbState:
    """What the query path needs to know about a database."""

    schema_version: str | None
    revision: str | None
    meta: dict[str, str] = field(default_factory=dict)


def read_state(url: str) -> DbState | None:
    """The state of ``url``; None when its SQLite file does not exist."""
    path = _sqlite_file(url)
    if path is not None:
        return _read_sqlite(path) if path.exists() else None
    from kb.db.store import CaseStore  # PostgreSQL, in-memory or URI-style SQLite

    with CaseStore(url) as store:
        return store.state()


def _sqlite_file(url: str) -> Path | None:
    """The file of a plain path or ``sqlite:///`` URL, read as ``make_url`` would."""
    if "://" not in url:
        return Path(url).expanduser().resolve()
    match = _SQLITE_URL.match(url)
    if match is None or "uri=" in url:
        return None
    database = unquote(match.group("rest").split("?", 1)[0])
    database = database[1:] if database.startswith("/") else database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _read_sqlite(path: Path) -> DbState:
    timeout = resolve_lock_timeout()
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as err:
        raise DatabaseError(f"cannot open database file {path}: {one_line(err)}") from None
    try:
        conn.execute("BEGIN")  # one snapshot for both reads
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            version = row[0] if row else None
        meta: dict[str, str] = {}
        if "kbq_meta" in tables:
            meta = {key: value for key, value in conn.execute("SELECT key, value FROM kbq_meta")}
        return DbState(schema_version=version, revision=meta.get("revision"), meta=meta)
    except sqlite3.Error as err:
        text = str(err).lower()
        if "locked" in text:
            raise DatabaseError(locked_message(str(path), timeout)) from None
        if "not a database" in text:
            raise DatabaseError(f"not a SQLite database: {path}") from None
        raise DatabaseError(f"database error on {path}: {one_line(err)}") from None
    finally:
        conn.close()
