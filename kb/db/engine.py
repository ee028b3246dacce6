"""Database URLs, engines and error translation.

SQLite is the default (one file per user), PostgreSQL the shared option.
Every SQLite transaction starts with ``BEGIN IMMEDIATE`` so a writer takes
the write lock before it reads, waits at most ``lock_timeout`` for another
writer and never fails half-way through an ingest with "database is locked".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from kb.db._common import (known_problem, locked_message, mask_password, no_schema_message, one_line,
                            outdated_schema_message, resolve_lock_timeout)
from kb.errors import DatabaseError

PG_CONNECT_TIMEOUT = 5
# Execution option: ``engine.execution_options(kbq_read_only=True)`` for readers.
READ_ONLY_OPTION = "kbq_read_only"
_PG_ALIASES = {"postgres", "postgresql"}
_SCHEMA_MISSING_STATES = {"42P01"}  # undefined_table
_SCHEMA_OLD_STATES = {"42703"}  # undefined_column
_PG_LOCK_STATES = {"55P03"}  # lock_not_available (lock_timeout)


def normalize_url(db: str) -> str:
    """A path or SQLAlchemy URL as one canonical URL, or DatabaseError.

    Paths become absolute ``sqlite:///`` URLs so the same database is named
    the same way from any working directory; ``postgres(ql)://`` gets the
    psycopg 3 driver we ship with. The driver is imported here so a missing
    one is reported before anything else happens.
    """
    text = (db or "").strip()
    if not text:
        raise DatabaseError("empty database URL: give a file path or a SQLAlchemy URL")
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().resolve())).render_as_string(False)
    try:
        url = make_url(text)
    except (exc.ArgumentError, ValueError) as err:
        raise DatabaseError(f"cannot parse database URL {mask_password(text)}: {one_line(err)}") from None
    if url.drivername in _PG_ALIASES:
        url = url.set(drivername="postgresql+psycopg")
    shown = url.render_as_string(hide_password=True)
    try:
        dialect = url.get_dialect()
    except exc.NoSuchModuleError:
        raise DatabaseError(f"unknown database dialect in URL {shown}") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise DatabaseError(f"database driver for {shown} is not installed: {one_line(err)}") from None
    if url.get_backend_name() == "sqlite":
        url = _absolute_sqlite(url)
    return url.render_as_string(hide_password=False)


def _file_database(url: URL) -> str | None:
    """The file name of a SQLite URL; None for in-memory and ``file:`` URIs."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or "uri" in url.query:
        return None
    return database


def _absolute_sqlite(url: URL) -> URL:
    database = _file_database(url)
    return url if database is None else url.set(database=str(Path(database).expanduser().resolve()))


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory ones."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise DatabaseError(f"cannot parse database URL {mask_password(url)}") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = _file_database(parsed)
    return Path(database) if database else None


def describe(url: str) -> str:
    """How messages name a database: the file for SQLite, else the masked URL."""
    try:
        path = sqlite_path(url)
        return str(path) if path else make_url(url).render_as_string(hide_password=True)
    except DatabaseError:
        return mask_password(url)


def reader(engine: Engine) -> Engine:
    """The same engine for read-only work: no write lock taken on SQLite."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def make_engine(url: str, *, lock_timeout: float | None = None) -> Engine:
    """An engine for ``url`` with kbq's locking and timeout rules applied."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, resolve_lock_timeout(lock_timeout))
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT}
    return create_engine(url, **kwargs)


def _sqlite_engine(url: str, timeout: float) -> Engine:
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        # A mistyped --db must not leave a tree of new directories behind; kbq creates
        # only its own per-user home (kb.service).
        raise DatabaseError(f"cannot open database {path}: directory {path.parent} does not exist")
    engine = create_engine(url, connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module; _on_begin emits our own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if path is not None:
            _use_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Readers that opt out keep a deferred BEGIN: SQLite lets them read
        # while a writer holds its RESERVED lock.
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _use_wal(cursor: Any) -> None:
    """Put the file in write-ahead-log mode: readers never wait for a writer nor block its
    commit (chat turns and queries beside an ingest), and a killed writer's frames are simply
    ignored by the next connection. The mode is kept in the file, so it is only read here once
    set: switching needs the file to itself, and SQLite refuses the switch at once, without
    waiting, while another connection is open (two first runs at the same moment). A refused
    switch is left to the next connection; the file is consistent in either mode."""
    import sqlite3

    (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() == "wal":
        return
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as err:
        if "locked" not in str(err).lower() and "busy" not in str(err).lower():
            raise


@contextmanager
def translate_errors(url: str, *, lock_timeout: float | None = None) -> Iterator[None]:
    """Turn SQLAlchemy and driver errors into one-line DatabaseErrors."""
    try:
        yield
    except DatabaseError:
        raise
    except exc.SQLAlchemyError as err:
        raise DatabaseError(error_message(err, url, lock_timeout)) from err


def error_message(err: Exception, url: str, lock_timeout: float | None = None) -> str:
    """The one line a user sees for a database failure on ``url``."""
    where = describe(url)
    if isinstance(err, (exc.ArgumentError, exc.NoSuchModuleError)):
        return f"invalid database URL {where}: {one_line(err)}"
    orig = getattr(err, "orig", None) or err
    detail = one_line(orig)
    state = getattr(orig, "sqlstate", None)
    if state in _PG_LOCK_STATES:
        return locked_message(where, resolve_lock_timeout(lock_timeout))
    if state in _SCHEMA_MISSING_STATES:
        return no_schema_message(where)
    if state in _SCHEMA_OLD_STATES:
        return outdated_schema_message(where)
    known = known_problem(str(orig), where, lock_timeout)
    if known:
        return known
    if isinstance(err, exc.OperationalError) and not url.startswith("sqlite"):
        reason = _connect_reason(detail)
        if reason:
            return f"cannot connect to database {where}: {reason}"
    return f"database error on {where}: {detail}"


_CONNECT_REASONS = (
    ("connection refused", "connection refused"),
    ("timeout expired", "connection timed out"),
    ("timed out", "connection timed out"),
    ("could not translate host name", "unknown host"),
    ("name or service not known", "unknown host"),
    ("password authentication failed", "password authentication failed"),
    ("no password supplied", "no password supplied"),
    ("no route to host", "no route to host"),
)


def _connect_reason(detail: str) -> str | None:
    """A short cause for a failed PostgreSQL connection; None if it is not one."""
    lowered = detail.lower()
    for needle, reason in _CONNECT_REASONS:
        if needle in lowered:
            return reason
    match = re.search(r'database "([^"]+)" does not exist', detail)
    if match:
        return f'database "{match.group(1)}" does not exist'
    if lowered.startswith("connection failed") or "connection to server" in lowered:
        return re.sub(r"^(FATAL|ERROR):\s+", "", detail.rsplit(" failed: ", 1)[-1])
    return None
