"""The SQL that reads cases, written once for both ways kbq reads a database.

:class:`kb.db.store.CaseStore` runs these statements through SQLAlchemy (every backend);
:mod:`kb.db.fastread` runs the very same text through the stdlib ``sqlite3`` module, so
``kbq show``, ``kbq list`` and ``kbq stats`` on a SQLite file never import SQLAlchemy.
One text per question means one meaning: the same rows, in the same order, either way.
Parameters use the ``:name`` style, which both SQLAlchemy's ``text()`` and ``sqlite3`` take.
Nothing here may import SQLAlchemy.
"""

from __future__ import annotations

# The columns of a stored case, in the order the statements below return them.
STORED_COLUMNS = ("id", "status", "document", "created_at", "updated_at")
_SELECT_STORED = f"SELECT {', '.join(STORED_COLUMNS)} FROM cases"

CASE_BY_ID = f"{_SELECT_STORED} WHERE id = :id"
ALL_CASES = f"{_SELECT_STORED} ORDER BY id"
CASES_WITH_STATUS = f"{_SELECT_STORED} WHERE status = :status ORDER BY id"
# What an index build reads: the reviewed cases with their documents as the JSON text stored.
REVIEWED_JSON = ("SELECT id, status, CAST(document AS TEXT) AS document, created_at, updated_at FROM cases "
                 "WHERE status = 'reviewed' ORDER BY id")
COUNT_BY_STATUS = "SELECT status, count(*) AS n FROM cases GROUP BY status ORDER BY status"
META = "SELECT key, value FROM kbq_meta"
SCHEMA_VERSION = "SELECT version_num FROM alembic_version"


def cases_query(status: str | None) -> tuple[str, dict[str, str]]:
    """The statement and parameters listing the stored cases by id, of one status or all."""
    return (ALL_CASES, {}) if status is None else (CASES_WITH_STATUS, {"status": status})
