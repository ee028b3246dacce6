"""Reading cases from a SQLite file without SQLAlchemy, for the read-only commands and index builds.

``kbq show``, ``kbq list`` and ``kbq stats`` only read; importing SQLAlchemy (and the
pydantic models the store brings along) cost them most of a second, several times the
work itself. On a SQLite file they read through the stdlib ``sqlite3`` module instead,
opened the way :mod:`kb.db.fastmeta` opens it (read-write, so a killed writer's hot
journal is rolled back rather than failing every read). The statements are those of
:mod:`kb.db.queries`, which :class:`kb.db.store.CaseStore` runs too, and the values are
decoded as SQLAlchemy decodes them (JSON documents, naive UTC timestamps made aware), so
both readers return equal :class:`kb.stored.StoredCase` rows. Other databases
(PostgreSQL) are read through the store: :func:`case_reader` picks.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Self

from kb.db import queries
from kb.db._common import utc
from kb.db.fastmeta import snapshot, sqlite_file
from kb.stored import StoredCase, StoredJson


class CaseReader(Protocol):
    """What the read-only commands ask of a database (both readers answer it)."""

    def __enter__(self) -> Self: ...
    def __exit__(self, *_exc: object) -> None: ...
    def get(self, case_id: str) -> StoredCase | None: ...
    def all(self, status: str | None = None) -> list[StoredCase]: ...
    def reviewed_json(self) -> list[StoredJson]: ...
    def counts(self) -> dict[str, int]: ...
    def revision(self) -> str | None: ...


def case_reader(url: str) -> CaseReader:
    """The reader for ``url``: plain ``sqlite3`` for a SQLite file, else the SQLAlchemy store."""
    path = sqlite_file(url)
    if path is not None:
        return SqliteCaseReader(path)
    from kb.db.store import CaseStore

    return CaseStore(url)


class SqliteCaseReader:
    """The read side of :class:`kb.db.store.CaseStore` over one SQLite file, in the stdlib."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        """Nothing held between reads: each opens and closes its own connection."""

    def get(self, case_id: str) -> StoredCase | None:
        with snapshot(self.path) as conn:
            row = conn.execute(queries.CASE_BY_ID, {"id": case_id}).fetchone()
        return _stored(row) if row else None

    def all(self, status: str | None = None) -> list[StoredCase]:
        statement, parameters = queries.cases_query(status)
        with snapshot(self.path) as conn:
            return [_stored(row) for row in conn.execute(statement, parameters)]

    def reviewed_json(self) -> list[StoredJson]:
        """Every reviewed case as an index build reads it (see :meth:`kb.db.store.CaseStore.reviewed_json`)."""
        with snapshot(self.path) as conn:
            return [StoredJson(case_id, status, text, _timestamp(created).isoformat(), _timestamp(updated).isoformat())
                    for case_id, status, text, created, updated in conn.execute(queries.REVIEWED_JSON)]

    def counts(self) -> dict[str, int]:
        """Number of cases by status."""
        with snapshot(self.path) as conn:
            return {status: count for status, count in conn.execute(queries.COUNT_BY_STATUS)}

    def revision(self) -> str | None:
        """Changes on every write (see :meth:`kb.db.store.CaseStore.revision`)."""
        with snapshot(self.path) as conn:
            return dict(conn.execute(queries.META)).get("revision")


def _stored(row: tuple[Any, ...]) -> StoredCase:
    case_id, status, document, created_at, updated_at = row
    return StoredCase(id=case_id, status=status, document=json.loads(document),
                      created_at=_timestamp(created_at), updated_at=_timestamp(updated_at))


def _timestamp(value: str) -> datetime:
    """A DateTime column as SQLAlchemy's SQLite dialect stores it ('2024-05-01 08:30:00.000000',
    UTC without an offset), as an aware UTC datetime."""
    return utc(datetime.fromisoformat(value))
