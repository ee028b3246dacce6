"""Crash safety: a real ``kbq`` process killed with SIGKILL at random moments.

Whatever the moment, the database must hold either the state before the command or
the state after it (never a mix), and the next command must work with no manual
step. The kill moments are drawn at random over the length of an uninterrupted run
of the same command (measured first); what the test asserts never depends on time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kb.db.store import CaseStore

from conftest import case_data
from serving import base_env, kbq, kbq_argv

CASES = 2000  # each kill interrupts an ingest that changes this many cases
KILLS = 20
PREFIX = "crash-"


def _write_variant(directory: Path, variant: str, count: int = CASES) -> Path:
    """``count`` case files whose symptom names ``variant``: two variants differ in every case."""
    directory.mkdir(parents=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    for i in range(count):
        case_id = f"{PREFIX}{i:05d}"
        # ~4 KB a case, so a transaction's pages outgrow SQLite's page cache and reach the
        # journal before the commit, as a real ingest's do (tiny cases would reach it only
        # while committing, and few kills would land inside an unfinished write).
        causes = [f"cause {k} of case {i}: " + "gradient overflow in a bf16 layer norm " * 8 for k in range(8)]
        data = case_data(case_id, symptom=f"loss jumps to NaN after {100 + i} steps (variant {variant})", causes=causes)
        (directory / f"{case_id}.yaml").write_text(yaml.dump(data, Dumper=dumper, allow_unicode=True), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash-cases")
    return {name: _write_variant(root / name, name) for name in ("a", "b")}


def _env(home: Path) -> dict[str, str]:
    # The lexical stage alone: the index a query rebuilds after each committed ingest
    # would otherwise embed 2,000 cases, and embedding is not what this test is about.
    return base_env(home, KBQ_SEMANTIC="0")


def _killed_run(env: dict[str, str], after: float, *args: str | os.PathLike[str]) -> None:
    """Start ``kbq ARGS`` and SIGKILL its whole process group ``after`` seconds later
    (or let it finish first)."""
    proc = subprocess.Popen(kbq_argv(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _variant_in_db(url: str) -> str:
    """'a' or 'b' when every crash case is of that variant; fails on any mix or gap."""
    with CaseStore(url) as store:
        found: dict[str, Any] = {c.id: c.document["symptom"] for c in store.all() if c.id.startswith(PREFIX)}
    assert len(found) == CASES, f"{len(found)} of {CASES} cases present"
    kinds = {symptom.rsplit("variant ", 1)[1].rstrip(")") for symptom in found.values()}
    assert len(kinds) == 1, f"partial ingest: variants {sorted(kinds)} side by side"
    return kinds.pop()


def test_killed_ingest_leaves_old_or_new_state(db_url: str, variants: dict[str, Path], tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    first = kbq(env, "ingest", variants["a"], "--db", db_url)
    assert first.returncode == 0, first.stderr
    start = time.monotonic()
    full = kbq(env, "ingest", variants["b"], "--db", db_url)
    duration = time.monotonic() - start
    assert full.returncode == 0, full.stderr
    current = "b"
    rng = random.Random(20261202)
    outcomes = {"old": 0, "new": 0}
    for _ in range(KILLS):
        target = "a" if current == "b" else "b"
        _killed_run(env, rng.uniform(0.05, duration), "ingest", variants[target], "--db", db_url)
        # The next command, first: a query reads the state through the stdlib sqlite3
        # reader, which must roll back whatever the killed writer left.
        query = kbq(env, "--json", "loss jumps to NaN", "--db", db_url)
        assert query.returncode == 0, query.stderr
        now = _variant_in_db(db_url)
        assert now in (current, target)
        outcomes["new" if now == target else "old"] += 1
        current = now
    retry = kbq(env, "ingest", variants["a" if current == "b" else "b"], "--db", db_url)
    assert retry.returncode == 0, retry.stderr
    assert outcomes["old"] > 0, outcomes  # at least some kills landed inside the transaction
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        assert not path.with_name(path.name + "-journal").exists()


def test_killed_index_build_leaves_a_working_index(db_url: str, tmp_path: Path) -> None:
    """A query that rebuilds the index, killed at random moments: the next query answers, and
    once a build completes no half-written build directory is left behind. (A smaller base
    than the ingest test's: what matters is where the kills land, not the size.)"""
    variants = {name: _write_variant(tmp_path / name, name, count=600) for name in ("a", "b")}
    env = _env(tmp_path / "home")
    db = db_url
    assert kbq(env, "ingest", variants["a"], "--db", db).returncode == 0
    index_root = tmp_path / "home" / "index"
    start = time.monotonic()
    assert kbq(env, "--json", "loss jumps to NaN", "--db", db).returncode == 0
    duration = time.monotonic() - start
    rng = random.Random(7)
    current = "a"
    interrupted = 0
    for _ in range(KILLS):
        current = "a" if current == "b" else "b"
        assert kbq(env, "ingest", variants[current], "--db", db).returncode == 0
        _killed_run(env, rng.uniform(0.05, duration), "--json", "loss jumps to NaN", "--db", db)
        interrupted += any(index_root.rglob(".build-*"))
        query = kbq(env, "--json", f"loss jumps to NaN variant {current}", "--db", db)
        assert query.returncode == 0, query.stderr
        leftovers = [p.name for p in index_root.rglob(".build-*")]
        assert leftovers == [], leftovers
    assert interrupted > 0, "no kill landed inside a build"


def test_killed_server_keeps_every_acknowledged_write(db_url: str, tmp_path: Path) -> None:
    """`kbq serve` killed at random moments while a client revises cases through the API:
    after a restart every write the client saw acknowledged is there (the one in flight may
    or may not be), no case is damaged, and the server answers at once."""
    import httpx
    import threading

    from serving import start as _start
    from serving import stop as _stop

    token = "crash-test-token"
    env = base_env(tmp_path / "home", KBQ_API_TOKEN=token, KBQ_SEMANTIC="0")
    assert kbq(env, "ingest", "--db", db_url).returncode == 0
    auth = {"Authorization": f"Bearer {token}"}
    ids = [f"{PREFIX}api-{k}" for k in range(4)]
    acknowledged: dict[str, int] = {}  # case id -> highest version answered 200/201
    version = 0
    rng = random.Random(11)
    proc, port = _start(env, db_url, tmp_path / "serve.log")
    try:
        for _ in range(KILLS):
            url = f"http://127.0.0.1:{port}"
            stop = threading.Event()
            failures: list[str] = []

            def write() -> None:
                nonlocal version
                with httpx.Client(base_url=url, timeout=30) as client:
                    while not stop.is_set():
                        version += 1
                        case_id = ids[version % len(ids)]
                        body = case_data(case_id, title=f"Loss spikes, revision {version}")
                        try:
                            response = client.put(f"/v1/cases/{case_id}", json=body, headers=auth)
                        except httpx.HTTPError:
                            return  # the server died under the request: not acknowledged
                        if response.status_code in (200, 201):
                            acknowledged[case_id] = version
                        else:
                            failures.append(f"{response.status_code}: {response.text[:200]}")

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            time.sleep(rng.uniform(0.1, 1.5))
            proc.kill()
            proc.wait()
            stop.set()
            writer.join(timeout=60)
            assert not failures, failures[:3]

            # The restarted server answers at once and holds every acknowledged write; it is
            # also the one the next round writes to and kills.
            proc, port = _start(env, db_url, tmp_path / "serve.log")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                assert client.get("/readyz").status_code == 200
                assert client.post("/v1/query", json={"query": "loss spikes revision"}).status_code == 200
                for case_id, acked in acknowledged.items():
                    stored = client.get(f"/v1/cases/{case_id}")
                    assert stored.status_code == 200, stored.text
                    found = int(stored.json()["title"].rsplit(" ", 1)[1])
                    # The newest acknowledged revision, or a later one that was in flight.
                    assert found >= acked, (case_id, found, acked)
    finally:
        _stop(proc)
    assert len(acknowledged) == len(ids)
