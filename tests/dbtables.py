"""A helper both DB test modules use: the tables a database has right now."""

from __future__ import annotations

from sqlalchemy import inspect

from kb.db.engine import make_engine


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
