"""Streaming ingest: batches change nothing about the result, a bad file in a later batch
still changes nothing at all, files are read as they are written, and two first ingests
into an empty database both succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, text
from typer.testing import CliRunner

from cli.main import app
from kb import casefiles
from kb.db import migrate
from kb.db import store as store_mod
from kb.db.engine import make_engine
from kb.db.schema import cases_table
from kb.db.store import CaseStore
from kb.models import Case
from kb.service import KnowledgeBase

from conftest import KBQ_ENV_PASSED_THROUGH_NEVER, PG_ENV, _pg_schema_url, case_data
from dbtables import table_names

ROW_COLUMNS = ("id", "title", "status", "language", "phase", "model_family", "model_version", "framework",
               "document", "content_hash")


def write_case_files(directory: Path, ids: list[str], **overrides: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    for case_id in ids:
        text_ = yaml.dump(case_data(case_id, **overrides), Dumper=dumper, allow_unicode=True)
        (directory / f"{case_id}.yaml").write_text(text_, encoding="utf-8")
    return directory


def database_rows(url: str) -> tuple[list[tuple], list[tuple]]:
    """Every row of the cases and kbq_meta tables, on either backend."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            cases = [tuple(row) for row in conn.execute(text("SELECT * FROM cases ORDER BY id"))]
            meta = [tuple(row) for row in conn.execute(text("SELECT key, value FROM kbq_meta ORDER BY key"))]
    finally:
        engine.dispose()
    return cases, meta


def record_batches(monkeypatch: pytest.MonkeyPatch, on_write: Callable[[list[Case]], object]) -> None:
    """Call ``on_write(batch)`` as the store is about to write each batch."""
    real = store_mod._write_batch

    def recording(conn, batch, *rest) -> None:
        on_write(batch)
        real(conn, batch, *rest)

    monkeypatch.setattr(store_mod, "_write_batch", recording)


def ingest(directory: Path, url: str):
    return CliRunner().invoke(app, ["ingest", str(directory), "--db", url], prog_name="kbq",
                              env={name: None for name in KBQ_ENV_PASSED_THROUGH_NEVER})


# -- the store, batch by batch ----------------------------------------------------------------


@pytest.mark.parametrize("batch", [3, 1000], ids=["batches-of-3", "one-batch"])
def test_batched_upsert_add_update_unchanged_remove(
    db_url: str, make_case, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Every kind of change, fed as a generator, with batch boundaries falling between
    them or not at all: the same report and rows either way."""
    monkeypatch.setattr(store_mod, "BATCH", batch)
    migrate.upgrade(db_url)
    ids = [f"case-{i:02d}" for i in range(10)]
    edited, stamped, new = ["case-02", "case-05", "case-08"], "case-07", ["case-10", "case-11", "case-12"]
    unchanged = ["case-00", "case-01", "case-03", "case-04", "case-06"]
    stamp = datetime(2024, 5, 1, 8, 30, tzinfo=timezone.utc)

    def second() -> Iterator[Case]:
        for case_id in ids[:9]:
            if case_id in edited:
                yield make_case(case_id, title=f"Edited {case_id}")
            elif case_id == stamped:
                yield make_case(case_id, updated_at=stamp)  # same content, a timestamp given
            else:
                yield make_case(case_id)
        yield from (make_case(case_id) for case_id in new)

    with CaseStore(db_url) as store:
        first = store.upsert(make_case(case_id) for case_id in ids)
        assert (first.added, first.updated, first.unchanged, first.removed) == (ids, [], [], [])
        before = {case.id: case for case in store.all()}

        report = store.upsert(second(), remove_ids=["case-09", "never-there"])
        assert report.added == new
        assert report.updated == ["case-02", "case-05", "case-07", "case-08"]
        assert report.unchanged == unchanged
        assert report.removed == ["case-09"]
        assert report.revision == store.revision() not in (None, first.revision)
        after = {case.id: case for case in store.all()}

    assert sorted(after) == sorted(ids[:9] + new)
    for case_id in unchanged:
        assert after[case_id] == before[case_id]
    for case_id in edited:
        assert after[case_id].document["title"] == f"Edited {case_id}"
        assert after[case_id].created_at == before[case_id].created_at
        assert after[case_id].updated_at > before[case_id].updated_at
    assert after[stamped].document == before[stamped].document
    assert (after[stamped].created_at, after[stamped].updated_at) == (before[stamped].created_at, stamp)
    # every column of inserted and updated rows is the one the case gives
    final = {case.id: case for case in second()}
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(*(cases_table.c[name] for name in ROW_COLUMNS))).mappings().all()
    finally:
        engine.dispose()
    assert {row["id"]: dict(row) for row in stored} == {
        case_id: store_mod._columns(case) for case_id, case in final.items()
    }


def test_upsert_reads_a_generator_one_batch_at_a_time(sqlite_url: str, make_case, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "BATCH", 4)
    migrate.upgrade(sqlite_url)
    pulled: list[str] = []
    pulled_at_write: list[int] = []
    record_batches(monkeypatch, lambda _batch: pulled_at_write.append(len(pulled)))

    def cases() -> Iterator[Case]:
        for i in range(10):
            pulled.append(f"case-{i}")
            yield make_case(f"case-{i}")

    with CaseStore(sqlite_url) as store:
        assert len(store.upsert(cases()).added) == 10
    assert pulled_at_write == [4, 8, 10]


def test_repeated_id_in_a_later_batch_rolls_back(sqlite_url: str, make_case, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "BATCH", 2)
    migrate.upgrade(sqlite_url)
    with CaseStore(sqlite_url) as store:
        store.upsert([make_case("case-a")])
        before = (store.all(), store.read_meta())
        with pytest.raises(ValueError, match="same case id twice"):
            store.upsert(make_case(case_id) for case_id in ["case-b", "case-c", "case-d", "case-b"])
        with pytest.raises(ValueError, match="both write and remove"):
            store.upsert((make_case(case_id) for case_id in ["case-e", "case-f", "case-g"]), remove_ids=["case-g"])
        assert (store.all(), store.read_meta()) == before


# -- kbq ingest DIR ---------------------------------------------------------------------------

LARGE = 1500  # more than one BATCH of 1,000: the first batch is written before the bad file is read
BAD_AT = 1200


@pytest.mark.parametrize("fresh", [False, True], ids=["over-previous-state", "first-ingest"])
def test_bad_file_after_the_first_batch_changes_nothing(
    tmp_path: Path, db_url: str, kbq_home: Path, monkeypatch: pytest.MonkeyPatch, fresh: bool
) -> None:
    assert store_mod.BATCH < BAD_AT < LARGE
    ids = [f"case-{i:05d}" for i in range(LARGE)]
    if not fresh:
        assert f"{LARGE} added" in ingest(write_case_files(tmp_path / "a", ids), db_url).stdout
        before = database_rows(db_url)
    directory = write_case_files(tmp_path / "b", ids, symptom="every case edited: loss is NaN from step 1")
    bad = directory / f"{ids[BAD_AT]}.yaml"
    bad.write_text(bad.read_text(encoding="utf-8").replace("symptom:", "sympton:"), encoding="utf-8")
    batches: list[int] = []
    record_batches(monkeypatch, lambda batch: batches.append(len(batch)))

    result = ingest(directory, db_url)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "unknown field" in lines[0], result.stderr
    assert batches == [store_mod.BATCH]  # rows were written, then rolled back
    if fresh:
        assert not table_names(db_url) & {"cases", "kbq_meta", "alembic_version"}
    else:
        assert database_rows(db_url) == before


def test_ingest_reads_files_as_it_writes(tmp_path: Path, kbq_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic stand-in for "memory stays bounded": when a batch is written, only the
    files of the batches so far have been read."""
    monkeypatch.setattr(store_mod, "BATCH", 10)
    directory = write_case_files(tmp_path / "cases", [f"case-{i:02d}" for i in range(25)])
    read: list[Path] = []
    read_at_write: list[int] = []
    real_read = casefiles.read_case

    def recording_read(path: Path) -> Case:
        read.append(path)
        return real_read(path)

    monkeypatch.setattr(casefiles, "read_case", recording_read)
    record_batches(monkeypatch, lambda _batch: read_at_write.append(len(read)))
    report, drafts = KnowledgeBase(db=str(tmp_path / "kb.db"), home=kbq_home).ingest([directory])
    assert len(report.added) == 25 and drafts == []
    assert read_at_write == [10, 20, 25]


# -- two first ingests at once ----------------------------------------------------------------

ROUNDS = 5
CONCURRENT_CASES = 400  # long enough a first transaction that the other ingest meets it


@contextmanager
def empty_database(kind: str, tmp_path: Path, round_: int) -> Iterator[str]:
    """A database that does not exist yet (SQLite), or a new empty PostgreSQL schema: to kbq
    an empty database, and where table types clash just as in a new database's public schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'first-{round_}.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} not set: PostgreSQL tests skipped")
    with contextmanager(_pg_schema_url)(base) as url:
        yield url


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_first_ingests_at_once_both_succeed(tmp_path: Path, kbq_home: Path, kind: str) -> None:
    """Two real ``kbq ingest`` processes into one empty database. Without the schema lock the
    second one's CREATE TABLE meets the first's open transaction and fails on a duplicate
    pg_type key: with this many cases to write, in the first round already."""
    directory = write_case_files(tmp_path / "cases", [f"case-{i:02d}" for i in range(CONCURRENT_CASES)])
    env = {k: v for k, v in os.environ.items() if k not in KBQ_ENV_PASSED_THROUGH_NEVER}
    env.update({"KBQ_HOME": str(kbq_home), "KBQ_SEMANTIC": "0", "KBQ_LOCK_TIMEOUT": "120"})
    for round_ in range(ROUNDS):
        with empty_database(kind, tmp_path, round_) as url:
            command = [sys.executable, "-m", "cli.main", "ingest", str(directory), "--db", url]
            procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
            outputs = [proc.communicate(timeout=120) for proc in procs]
            assert [proc.returncode for proc in procs] == [0, 0], outputs
            reports = sorted(out.rsplit(": ", 1)[1].strip() for out, _ in outputs)
            # serialized: one wrote every case, the other then found them all in place
            assert reports == [f"0 added, 0 updated, {CONCURRENT_CASES} unchanged",
                               f"{CONCURRENT_CASES} added, 0 updated, 0 unchanged"], outputs
            with CaseStore(url) as store:
                assert store.counts() == {"reviewed": CONCURRENT_CASES}


# -- one thread, one case: ingest and the API's writes refuse a second case of a thread ------------

CURRENT_NAME = "https://github.com/hiyouga/LlamaFactory/issues/7416"
OLD_NAME = "https://github.com/hiyouga/LLaMA-Factory/issues/7416#issuecomment-2741234567"


def test_ingest_refuses_a_new_case_of_a_stored_thread(tmp_path: Path, db_url: str, kbq_home: Path) -> None:
    assert "1 added" in ingest(write_case_files(tmp_path / "a", ["llamafactory-7416"], sources=[CURRENT_NAME]), db_url).stdout
    before = database_rows(db_url)
    later = write_case_files(tmp_path / "b", ["an-unrelated-case"])
    write_case_files(later, ["llama-factory-7416"], sources=[OLD_NAME])

    result = ingest(later, db_url)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kbq: error: {later / 'llama-factory-7416.yaml'}: field 'sources': '{OLD_NAME}'"), line
    assert "case 'llamafactory-7416'" in line and "case 'llama-factory-7416'" in line and "stored in" in line
    assert database_rows(db_url) == before  # the unrelated case is not written either


def test_ingest_refuses_two_cases_of_one_thread_in_one_run(tmp_path: Path, db_url: str, kbq_home: Path) -> None:
    """Forty files in one run, two of them spelling one thread differently: the later one is named."""
    directory = write_case_files(tmp_path / "cases", [f"case-{i:02d}" for i in range(40)])
    write_case_files(directory, ["case-03"], sources=["https://github.com/o/r/issues/31"])
    write_case_files(directory, ["case-35"], sources=["https://github.com/O/R/pull/31/files"])
    result = ingest(directory, db_url)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kbq: error: {directory / 'case-35.yaml'}: field 'sources'"), line
    assert f"case 'case-03' (https://github.com/o/r/issues/31, {directory / 'case-03.yaml'})" in line
    assert not table_names(db_url) & {"cases", "kbq_meta"}


def test_cases_may_share_a_later_source_and_be_revised(tmp_path: Path, db_url: str, kbq_home: Path) -> None:
    """One pull request may fix two problems: a shared later source is no clash; nor is a case's own revision."""
    directory = write_case_files(tmp_path / "cases", ["first"], sources=[CURRENT_NAME, "https://github.com/o/r/pull/5"])
    write_case_files(directory, ["second"], sources=["https://github.com/o/r/issues/7", "https://github.com/o/r/pull/5/"])
    assert "2 added" in ingest(directory, db_url).stdout
    write_case_files(directory, ["first"], sources=[OLD_NAME, "https://github.com/o/r/pull/5"], title="first, revised")
    assert "1 updated, 1 unchanged" in ingest(directory, db_url).stdout


@pytest.mark.parametrize("first,second", [
    ([CURRENT_NAME], [OLD_NAME]),
    (["排查笔记-显存不足.md", CURRENT_NAME], ["排查笔记-显存不足.md"]),  # stored as \\u escapes in the JSON
    (["002_1df62d3820df2b03.txt"], ["https://github.com/o/r/issues/8", "002_1df62d3820df2b03.txt"]),
], ids=["renamed-repository", "chinese-file-name", "first-source-of-the-stored-case"])
def test_api_write_of_a_known_thread_is_a_conflict(tmp_path: Path, db_url: str, kbq_home: Path, first, second) -> None:
    from kb.errors import ConflictError

    kb = KnowledgeBase(db=db_url, home=kbq_home)
    kb.ingest([write_case_files(tmp_path / "cases", ["stored-case", "other-case"], sources=first)
               .joinpath("stored-case.yaml"), write_case_files(tmp_path / "more", ["other-case"])])
    before = database_rows(db_url)
    with pytest.raises(ConflictError) as refused:
        kb.put_case(case_data("posted-case", sources=second), create=True)
    message = str(refused.value)
    assert message.startswith("request body: field 'sources':") and "\n" not in message
    assert "case 'stored-case'" in message and "case 'posted-case'" in message
    assert database_rows(db_url) == before
    revised, created = kb.put_case(case_data("stored-case", sources=first, title="revised"), case_id="stored-case")
    assert revised["title"] == "revised" and not created


def test_a_clash_stored_before_the_check_does_not_block_unchanged_files(tmp_path: Path, db_url: str, kbq_home: Path) -> None:
    """Two cases of one thread stored by an older kbq: ingesting their unchanged files again works;
    changing one of them is refused until the clash is resolved."""
    directory = write_case_files(tmp_path / "cases", ["older-a"], sources=[CURRENT_NAME])
    write_case_files(directory, ["older-b"], sources=[OLD_NAME])
    migrate.upgrade(db_url)
    with CaseStore(db_url) as store:  # as kbq wrote them before it checked threads
        store.upsert(casefiles.read_case(path) for path in sorted(directory.iterdir()))
    assert "0 added, 0 updated, 2 unchanged" in ingest(directory, db_url).stdout
    write_case_files(directory, ["older-b"], sources=[OLD_NAME], title="edited")
    refused = ingest(directory, db_url)
    assert refused.exit_code == 1 and "case 'older-a'" in refused.stderr and "case 'older-b'" in refused.stderr
