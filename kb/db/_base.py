"""What every store over a kbq database shares: engine, transactions, schema check.

:class:`kb.db.store.CaseStore` and :class:`kb.db.interactions.InteractionStore`
open the same database the same way, so both get one-line DatabaseErrors,
readers that do not wait for a writer, and writers that wait at most
``lock_timeout`` (``BEGIN IMMEDIATE`` on SQLite, ``lock_timeout`` on PostgreSQL).
What a writer additionally locks is up to each store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql, sqlite

from kb.db._common import locked_message, no_schema_message, resolve_lock_timeout, utc  # noqa: F401 - utc: for the stores
from kb.db.engine import describe, make_engine, normalize_url, reader, translate_errors
from kb.db.migrate import HEAD
from kb.db.queries import SCHEMA_VERSION
from kb.errors import DatabaseError


# The dialects' INSERT with ON CONFLICT, for writes that must be atomic under concurrency.
CONFLICT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

# One lock per SQLite database for the writers of this process (see StoreBase._writer_turn).
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


class StoreBase:
    """One database (SQLite file or PostgreSQL URL) and its transactions."""

    def __init__(self, url: str, *, lock_timeout: float | None = None) -> None:
        self.url = normalize_url(url)
        self.lock_timeout = lock_timeout
        self.engine = make_engine(self.url, lock_timeout=lock_timeout)
        self._reader = reader(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one snapshot, no writer lock taken."""
        with translate_errors(self.url, lock_timeout=self.lock_timeout), self._reader.begin() as conn:
            yield conn

    @contextmanager
    def _begin_write(self) -> Iterator[Connection]:
        """A write transaction that waits for other writers at most ``lock_timeout``.

        On SQLite the ``BEGIN IMMEDIATE`` of the engine already holds the
        database's write lock; on PostgreSQL only the rows a store locks or
        writes are contended, so the wait is bounded here instead.
        """
        with translate_errors(self.url, lock_timeout=self.lock_timeout), self._writer_turn(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Wait for another writer as long as SQLite would, then fail cleanly.
                conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": _pg_ms(self.lock_timeout)})
            yield conn

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, this process's writers of the database take turns before ``BEGIN IMMEDIATE``.

        SQLite lets one writer in at a time and its busy handler has waiters poll with growing
        sleeps (up to 100 ms), so under a steady stream of writes (chat turns from many request
        threads, each holding the lock for milliseconds) newcomers keep winning and an early
        waiter can pass ``lock_timeout``. Queued here, a waiter is woken when the lock is
        released, and SQLite's lock has one contender per process. The wait is bounded alike.
        """
        if self.engine.dialect.name != "sqlite":
            yield
            return
        with _SQLITE_WRITERS_GUARD:
            turn = _SQLITE_WRITERS.setdefault(self.url, threading.RLock())
        timeout = resolve_lock_timeout(self.lock_timeout)
        if not turn.acquire(timeout=timeout):
            raise DatabaseError(locked_message(describe(self.url), timeout))
        try:
            yield
        finally:
            turn.release()

    def _require_head(self, version: str | None) -> None:
        """Refuse to write to a database whose schema is not the one this code knows."""
        if version is None:
            raise DatabaseError(no_schema_message(describe(self.url)))
        if version != HEAD:
            raise DatabaseError(
                f"database {describe(self.url)} is at schema {version}, kbq needs {HEAD}: run `kbq db upgrade`"
            )


class SideStore(StoreBase):
    """A store of tables beside the case base (feedback, chat sessions, the GitHub bot's
    answers): its transactions check the schema is the one this code knows, so an old
    database is told to upgrade rather than failing with "no such table", and its writes
    leave the case base's ``revision`` alone."""

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with super()._read() as conn:
            self._require_head(schema_version(conn))
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._begin_write() as conn:
            self._require_head(schema_version(conn))
            yield conn


def schema_version(conn: Connection) -> str | None:
    return conn.scalar(text(SCHEMA_VERSION))


def _pg_ms(lock_timeout: float | None) -> str:
    return f"{max(1, int(resolve_lock_timeout(lock_timeout) * 1000))}ms"
