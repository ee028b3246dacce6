"""Schema version and meta of a case base, without importing SQLAlchemy.

The query path calls :func:`read_state` on every run to learn whether its
persisted index is still current; importing SQLAlchemy would cost ~200 ms,
so SQLite files are read with the stdlib ``sqlite3`` module. Only other
databases fall back to :class:`kb.db.store.CaseStore`. :func:`snapshot` opens a SQLite file
the same way for the read-only commands (:mod:`kb.db.fastread`).

The connection is opened read-write although it only reads: a writer killed
inside its transaction leaves a hot journal (or uncommitted WAL frames), and
SQLite rolls that back on the next connection, which a ``mode=ro`` connection
cannot do ("attempt to write a readonly database" on every later query). A
file the user may not write is still opened, read-only, by the same call.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from kb.db._common import known_problem, one_line, resolve_lock_timeout
from kb.db.queries import META, SCHEMA_VERSION
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
    path = sqlite_file(url)
    if path is not None:
        if not path.exists():
            return None
        with snapshot(path) as conn:
            return _state(conn)
    from kb.db.store import CaseStore  # PostgreSQL, in-memory or URI-style SQLite

    with CaseStore(url) as store:
        return store.state()


def sqlite_file(url: str) -> Path | None:
    """The file of a plain path or ``sqlite:///`` URL, read as ``make_url`` would; None for
    other databases, in-memory ones and URI-style SQLite URLs."""
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


@contextmanager
def snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the SQLite file ``path`` inside one read transaction (one consistent view
    for every read in it). Errors become the one-line DatabaseErrors the SQLAlchemy layer gives."""
    timeout = resolve_lock_timeout()
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as err:
        raise DatabaseError(f"cannot open database file {path}: {one_line(err)}") from None
    try:
        conn.execute("BEGIN")
        yield conn
    except sqlite3.Error as err:
        raise DatabaseError(known_problem(str(err), str(path), timeout) or f"database error on {path}: {one_line(err)}") from None
    finally:
        conn.close()


def _state(conn: sqlite3.Connection) -> DbState:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    version = None
    if "alembic_version" in tables:
        row = conn.execute(SCHEMA_VERSION).fetchone()
        version = row[0] if row else None
    meta: dict[str, str] = {}
    if "kbq_meta" in tables:
        meta = {key: value for key, value in conn.execute(META)}
    return DbState(schema_version=version, revision=meta.get("revision"), meta=meta)
