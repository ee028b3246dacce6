"""Schema migrations through Alembic, configured in code.

The configuration is built here rather than read from ``alembic.ini`` so it
works from an installed wheel, where the migrations live in
``kb/_bundled/migrations``. Alembic and SQLAlchemy are imported inside the
functions: the query path imports :data:`HEAD` only, to compare versions.

On PostgreSQL every migration first takes a transaction-level advisory lock:
two first runs against an empty database would otherwise both try to create
the tables, and one fails on a duplicate key in ``pg_type``. With the lock the
second waits, then finds the schema at head and has nothing to do. SQLite
needs no lock: its write transactions (``BEGIN IMMEDIATE``) already exclude
each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kb import paths

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

# Every migration this kbq carries, oldest first; a test checks them against Alembic's scripts.
REVISIONS = ("0001", "0002", "0003", "0004")
HEAD = REVISIONS[-1]
# Any fixed 64-bit number works; all kbq processes must use the same one.
SCHEMA_LOCK_KEY = 0x6B62715F736368  # "kbq_sch"


def schema_problem(found: str | None, where: str, db_option: str) -> str | None:
    """What is wrong with a database at schema revision ``found`` for this kbq, in one line
    (None when it is at HEAD). A revision this kbq does not carry was written by a newer kbq:
    `kbq db upgrade` cannot help there, so the message says to upgrade kbq instead."""
    if found == HEAD:
        return None
    if found is None:
        return f"{where}: has no kbq schema; run `kbq db upgrade{db_option}` then `kbq ingest{db_option}`"
    if found not in REVISIONS:
        from kb import __version__

        return (f"{where}: schema is at revision {found}, newer than this kbq ({__version__}) knows "
                f"(up to {HEAD}); it was written by a newer kbq: upgrade kbq, not the database")
    return f"{where}: schema is at revision {found}, kbq needs {HEAD}; run `kbq db upgrade{db_option}`"


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate ``url`` up to ``revision`` in one transaction; returns the new version."""
    from alembic import command

    return _run(url, lambda config: command.upgrade(config, revision))


def upgrade_in(conn: Connection, revision: str = "head") -> str | None:
    """Migrate inside the caller's open transaction (a first ingest creates the schema
    and its cases in one commit); returns the new version."""
    from alembic import command

    return _migrate(conn, conn.engine.url.render_as_string(hide_password=False),
                    lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> str | None:
    """Migrate ``url`` down to ``revision`` ("base" removes every kbq table)."""
    from alembic import command

    return _run(url, lambda config: command.downgrade(config, revision))


def current(url: str) -> str | None:
    """The schema version of ``url``; None for an empty or missing database."""
    from alembic.runtime.migration import MigrationContext

    from kb.db.engine import make_engine, normalize_url, reader, sqlite_path, translate_errors

    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None  # do not create a file just to say it is empty
    engine = make_engine(url)
    try:
        with translate_errors(url), reader(engine).connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def script_head() -> str | None:
    """The head revision of the migration scripts (what ``HEAD`` must equal)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config("sqlite://")).get_current_head()


def _config(url: str, connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(paths.migrations_dir()))
    # ConfigParser interpolates '%', which URLs use for escapes.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(url: str, action: Callable[[Config], object]) -> str | None:
    from kb.db.engine import make_engine, normalize_url, translate_errors

    url = normalize_url(url)
    engine = make_engine(url)
    try:
        with translate_errors(url), engine.begin() as conn:
            return _migrate(conn, url, action)
    finally:
        engine.dispose()


def _migrate(conn: Connection, url: str, action: Callable[[Config], object]) -> str | None:
    """Run ``action`` under the schema lock, on ``conn`` and in its transaction."""
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError
    from sqlalchemy import text

    from kb.errors import DatabaseError

    if conn.dialect.name == "postgresql":
        # Held until the transaction ends, so a waiting migration sees the finished schema.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
    found = MigrationContext.configure(conn).get_current_revision()
    if found is not None and found not in REVISIONS:
        from kb.db.engine import describe

        raise DatabaseError(schema_problem(found, describe(url), ""))
    try:
        action(_config(url, conn))
    except CommandError as err:
        raise DatabaseError(f"migration failed: {err}") from None
    return MigrationContext.configure(conn).get_current_revision()
