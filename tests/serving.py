"""A real `kbq serve` on a loopback port, for the tests that talk to one over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import KBQ_ENV_PASSED_THROUGH_NEVER, PG_ENV, _pg_schema_url

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_database(kind: str, base: Path) -> Iterator[str]:
    """The database a served test module runs on: a SQLite file in ``base``, or a private
    PostgreSQL schema, dropped afterwards (the test is skipped when KBQ_TEST_DB_URL is not set)."""
    if kind == "sqlite":
        yield str(base / "kbq.db")
        return
    pg = os.environ.get(PG_ENV)
    if not pg:
        pytest.skip(f"{PG_ENV} not set: PostgreSQL tests skipped")
    schema_urls = _pg_schema_url(pg)
    try:
        yield next(schema_urls)
    finally:
        next(schema_urls, None)  # drops the private schema


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KBQ_ENV_PASSED_THROUGH_NEVER and k != "KBQ_API_TOKEN"}
    env.update({"KBQ_HOME": str(home), "COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def kbq_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The real ``kbq`` command with ``args``, run from this checkout."""
    return [sys.executable, "-m", "cli.main", *(os.fspath(a) for a in args)]


def kbq(env: dict[str, str], *args: str | os.PathLike[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``kbq ARGS`` to its end, output captured as text."""
    return subprocess.run(kbq_argv(*args), env=env, cwd=REPO, capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout)


def start(env: dict[str, str], db: str, log: Path, *, workers: int = 1) -> tuple[subprocess.Popen, int]:
    """Start `kbq serve` on a free port and wait for /healthz; retried if the port was taken meanwhile."""
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as sink:
            proc = subprocess.Popen(
                kbq_argv("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--db", db),
                env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return proc, port
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        stop(proc)
    raise RuntimeError(f"kbq serve did not come up; its log:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def ingested_server(base: Path, kind: str, env: dict[str, str]) -> Iterator[tuple[int, str]]:
    """`kbq serve` on a new database of ``kind`` (see served_database) holding the bundled cases: (port, db)."""
    with served_database(kind, base) as db:
        ingest = kbq(env, "ingest", "--db", db)
        assert ingest.returncode == 0, ingest.stderr
        proc, port = start(env, db, base / "serve.log")
        try:
            yield port, db
        finally:
            stop(proc)
