"""Schema migrations through Alembic, configured in code.

The configuration is built here rather than read from ``alembic.ini`` so it
works from an installed wheel, where the migrations live in
``kb/_bundled/migrations``. Alembic and SQLAlchemy are imported inside the
functions: the query path imports :data:`HEAD` only, to compare versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kb import paths

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

# The newest migration; a test checks it against Alembic's script directory.
HEAD = "0002"


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate ``url`` up to ``revision`` in one transaction; returns the new version."""
    from alembic import command

    return _run(url, lambda config: command.upgrade(config, revision))


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
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError

    from kb.db.engine import make_engine, normalize_url, translate_errors
    from kb.errors import DatabaseError

    url = normalize_url(url)
    engine = make_engine(url)
    try:
        with translate_errors(url):
            with engine.begin() as conn:
                action(_config(url, conn))
                return MigrationContext.configure(conn).get_current_revision()
    except CommandError as err:
        raise DatabaseError(f"migration failed: {err}") from None
    finally:
        engine.dispose()
