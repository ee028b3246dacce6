"""Shared fixtures: real databases (a SQLite file, PostgreSQL when configured) and cases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kb.models import Case

PG_ENV = "KBQ_TEST_DB_URL"


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One kbq cache (sentence-model copy, case embeddings) for the whole run, never the user's:
    the bundled cases are embedded once, not once per test home. Child processes inherit it."""
    yield from _set_for_session("KBQ_CACHE_DIR", tmp_path_factory.mktemp("kbq-cache"))


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A per-user kbq home (KBQ_HOME) for the whole run, so no test writes a database or an
    index into the real user's data directory; tests that need their own use ``kbq_home``."""
    yield from _set_for_session("KBQ_HOME", tmp_path_factory.mktemp("kbq-home-default"))


def _set_for_session(name: str, path: Path) -> Iterator[Path]:
    """Point environment variable ``name`` at ``path`` (child processes inherit it), then
    restore it."""
    previous = os.environ.get(name)
    os.environ[name] = str(path)
    yield path
    if previous is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = previous


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file that does not exist yet (kbq creates it)."""
    return f"sqlite:///{tmp_path / 'kbq.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind; PostgreSQL gets a private schema per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kbq.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} not set: PostgreSQL tests skipped")
    yield from _pg_schema_url(base)


def _pg_schema_url(base: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from kb.db.engine import normalize_url

    schema = f"kbq_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(base), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(normalize_url(base)).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield url.render_as_string(hide_password=False)
        finally:  # also when a test drives this as a context manager and fails inside it
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def case_data(case_id: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": case_id,
        "title": f"Loss spikes in {case_id}",
        "language": "en",
        "phase": "sft",
        "symptom": "loss jumps to NaN after a few hundred steps",
        "model": {"name": "Llama-3-8B", "family": "llama", "version": "llama-3", "size": "8b"},
        "framework": {"name": "deepspeed", "version": "0.14.0"},
        "causes": ["learning rate too high for bf16"],
        "fixes": [{"action": "lower the learning rate to 1e-5", "confirmed": True}],
        "sources": [f"https://example.org/issues/{case_id}"],
    }
    data.update(overrides)
    return data


@pytest.fixture
def make_case() -> Callable[..., Case]:
    """Factory: ``make_case("some-id", title="...")`` gives a valid Case."""

    def build(case_id: str, **overrides: Any) -> Case:
        return Case.model_validate(case_data(case_id, **overrides))

    return build


# -- the kbq command -----------------------------------------------------------

KBQ_ENV_PASSED_THROUGH_NEVER = ("KBQ_DB", "KBQ_DEBUG", "KBQ_LOCK_TIMEOUT")


@pytest.fixture
def kbq_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user kbq home (KBQ_HOME), with KBQ_DB and KBQ_DEBUG unset."""
    home = tmp_path / "kbq-home"
    home.mkdir()
    monkeypatch.setenv("KBQ_HOME", str(home))
    for name in KBQ_ENV_PASSED_THROUGH_NEVER:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def run_kbq(kbq_home: Path, tmp_path: Path) -> Callable[..., "subprocess.CompletedProcess[str]"]:
    """Run the real ``kbq`` (``python -m cli.main``) in a subprocess, in ``tmp_path``.

    ``run_kbq("--json", "gemma3 loss 70", env={"KBQ_LOCK_TIMEOUT": "0.3"})``.
    Arguments may be str, bytes or paths; if any is bytes the argv is passed
    as raw bytes (for undecodable argv). stdout/stderr always come back as
    str, decoded as UTF-8 with surrogateescape.
    """
    import subprocess
    import sys

    def run(*args: str | bytes | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k not in KBQ_ENV_PASSED_THROUGH_NEVER}
        full_env.update({"KBQ_HOME": str(kbq_home), "COLUMNS": "120"})
        full_env.update(env or {})
        if any(isinstance(a, bytes) for a in args):
            argv: list[Any] = [os.fsencode(sys.executable), b"-m", b"cli.main",
                               *(a if isinstance(a, bytes) else os.fsencode(a) for a in args)]
        else:
            argv = [sys.executable, "-m", "cli.main", *(os.fspath(a) for a in args)]
        proc = subprocess.run(argv, env=full_env, capture_output=True, timeout=timeout, cwd=tmp_path)
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode("utf-8", "surrogateescape"),
            proc.stderr.decode("utf-8", "surrogateescape"),
        )

    return run
