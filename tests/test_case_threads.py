"""The ``case_threads`` table: every case's sources by thread key, kept with the cases in
each write, filled for stored cases by migration 0004, and what a write's duplicate-thread
check reads instead of every stored case (on SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from kb import casefiles
from kb.db import migrate
from kb.db import store as store_mod
from kb.db.engine import make_engine
from kb.db.store import CaseStore
from kb.errors import ConflictError, DuplicateThreadError
from kb.models import Case
from kb.paths import bundled_cases_dir
from kb.service import KnowledgeBase

from conftest import PG_ENV, _pg_schema_url, case_data
from dbtables import table_names

CURRENT_NAME = "https://github.com/hiyouga/LlamaFactory/issues/7416"
OLD_NAME = "https://github.com/hiyouga/LLaMA-Factory/issues/7416#issuecomment-2741234567"


def thread_rows(url: str) -> list[tuple[str, int, str, str]]:
    """Every (case_id, position, source, key_digest) row, in order."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(
                "SELECT case_id, position, source, key_digest FROM case_threads ORDER BY case_id, position"))]
    finally:
        engine.dispose()


def expected_rows(cases: dict[str, list[str]]) -> list[tuple[str, int, str, str]]:
    """The rows ``cases`` (id -> sources) should have, in the order :func:`thread_rows` gives."""
    from kb.threads import key_digest, thread_key

    return sorted((case_id, position, source, key_digest(thread_key(source)))
                  for case_id, sources in cases.items() for position, source in enumerate(sources))


def stored_sources(url: str) -> dict[str, list[str]]:
    with CaseStore(url) as store:
        return {case_id: sources for case_id, _, sources in store.sources()}


# -- kept in step with the cases ---------------------------------------------------------------


def test_rows_follow_every_kind_of_write(db_url: str, make_case) -> None:
    migrate.upgrade(db_url)
    with CaseStore(db_url) as store:
        store.upsert([make_case("case-a", sources=[CURRENT_NAME, "https://github.com/o/r/pull/5"]),
                      make_case("case-b", sources=["排查笔记-显存不足.md"]), make_case("case-c")])
        assert thread_rows(db_url) == expected_rows(stored_sources(db_url))
        assert len(thread_rows(db_url)) == 4

        store.upsert([make_case("case-a", sources=["https://github.com/o/r/issues/9"]),  # fewer sources
                      make_case("case-d", sources=["https://example.org/x", "https://example.org/y"])],
                     remove_ids=["case-c"])
        assert thread_rows(db_url) == expected_rows(stored_sources(db_url))
        assert {row[0] for row in thread_rows(db_url)} == {"case-a", "case-b", "case-d"}

        store.delete(["case-a", "case-b", "case-d"])
    assert thread_rows(db_url) == []


def test_a_failed_write_leaves_the_rows_as_they_were(db_url: str, make_case) -> None:
    migrate.upgrade(db_url)
    with CaseStore(db_url) as store:
        store.upsert([make_case("stored", sources=[CURRENT_NAME])])
        before = thread_rows(db_url)
        with pytest.raises(DuplicateThreadError):
            store.upsert([make_case("unrelated"), make_case("stored", sources=["https://example.org/new"]),
                          make_case("second", sources=["https://example.org/new"])], distinct_threads=True)
    assert thread_rows(db_url) == before


# -- the check, on what the write touches ------------------------------------------------------


def test_clash_across_batches_of_one_ingest_names_the_later_file(tmp_path: Path, db_url: str, kbq_home: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases of one streamed ingest are checked against each other whatever batch they arrive in."""
    monkeypatch.setattr(store_mod, "BATCH", 3)
    directory = tmp_path / "cases"
    directory.mkdir()
    for number in range(10):
        sources = ["https://github.com/o/r/issues/31"] if number == 1 else \
            ["https://github.com/o/r/issues/2", "https://github.com/O/R/pull/31/files"] if number == 8 else \
            [f"https://example.org/issues/{number}"]
        (directory / f"case-{number:02d}.yaml").write_text(
            yaml.safe_dump(case_data(f"case-{number:02d}", sources=sources), allow_unicode=True), encoding="utf-8")
    with pytest.raises(DuplicateThreadError) as refused:
        KnowledgeBase(db=db_url, home=kbq_home).ingest([directory])
    message = str(refused.value)
    assert message.startswith(f"{directory / 'case-08.yaml'}: field 'sources': 'https://github.com/O/R/pull/31/files'")
    assert f"case 'case-01' (https://github.com/o/r/issues/31, {directory / 'case-01.yaml'})" in message
    assert not table_names(db_url) & {"cases", "case_threads"}


def test_a_case_removed_in_the_same_write_clashes_with_nothing(db_url: str, make_case) -> None:
    migrate.upgrade(db_url)
    with CaseStore(db_url) as store:
        store.upsert([make_case("old-home", sources=[CURRENT_NAME])])
        report = store.upsert([make_case("new-home", sources=[OLD_NAME])], remove_ids=["old-home"],
                              distinct_threads=True)
    assert (report.added, report.removed) == (["new-home"], ["old-home"])
    assert thread_rows(db_url) == expected_rows({"new-home": [OLD_NAME]})


def test_a_row_filed_before_kbq_knew_of_a_rename_still_clashes(db_url: str, kbq_home: Path) -> None:
    """A row keyed under a repository's old name (written when repo_renames.yaml did not list
    the move yet) is found by a write under the new name, and the other way round."""
    from kb.threads import key_digest

    kb = KnowledgeBase(db=db_url, home=kbq_home)
    migrate.upgrade(db_url)
    with CaseStore(db_url) as store:
        store.upsert([Case.model_validate(case_data("filed-early", sources=[OLD_NAME]))])
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE case_threads SET key_digest = :digest"),
                         {"digest": key_digest("github:hiyouga/llama-factory#7416")})
    finally:
        engine.dispose()
    for source in (CURRENT_NAME, "https://github.com/hiyouga/LLaMA-Efficient-Tuning/issues/7416"):
        with pytest.raises(ConflictError, match="case 'filed-early'"):
            kb.put_case(case_data("filed-late", sources=[source]), create=True)


# Statements touching the case tables must pick their rows by an indexed column, by value.
_TABLE = re.compile(r"\b(?:FROM|UPDATE|JOIN)\s+(cases|case_threads)\b", re.IGNORECASE)
_BY_KEY = re.compile(r"^WHERE (?:(?:cases\.)?id|case_threads\.case_id|case_threads\.key_digest) (?:=|IN \()", re.IGNORECASE)


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL every SQLAlchemy engine sends while the block runs, whitespace collapsed."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def unkeyed_reads(sent: list[str]) -> list[str]:
    """The statements of ``sent`` that read, change or remove case rows other than by id or key."""
    wrong = []
    for statement in sent:
        if not _TABLE.search(statement):
            continue
        where = statement[statement.upper().find(" WHERE ") + 1:] if " WHERE " in statement.upper() else ""
        if not _BY_KEY.match(where) or re.search(r"\b(?:OR|NOT|LIKE)\b", where, re.IGNORECASE):
            wrong.append(statement)
    return wrong


def _base(url: str, count: int, kbq_home: Path) -> KnowledgeBase:
    migrate.upgrade(url)
    with CaseStore(url) as store:
        store.upsert(Case.model_validate(case_data(f"stored-{number:04d}", sources=[
            f"https://github.com/o/r/issues/{number}", f"https://example.org/post/{number}"])) for number in range(count))
    return KnowledgeBase(db=url, home=kbq_home)


def test_an_api_write_reads_only_the_cases_it_touches(db_url: str, kbq_home: Path) -> None:
    """A POST or PUT checks its threads by the indexed keys of the case it writes: no statement
    reads the case tables other than by id or key, so the work does not grow with the base."""
    kb = _base(db_url, 1500, kbq_home)
    with statements() as created:
        kb.put_case(case_data("posted", sources=["https://github.com/o/r/issues/99999"]), create=True)
    with statements() as revised:
        kb.put_case(case_data("posted", sources=["https://github.com/o/r/issues/99999"], title="Revised"),
                    case_id="posted")
    with statements() as refused, pytest.raises(ConflictError, match="case 'stored-0700'"):
        kb.put_case(case_data("second", sources=["https://github.com/O/R/pull/700/files"]), create=True)
    for sent in (created, revised, refused):
        assert unkeyed_reads(sent) == []
        assert any("case_threads.key_digest IN" in statement for statement in sent), sent
    assert kb.get("posted")["title"] == "Revised"


def test_the_statements_of_a_write_do_not_depend_on_the_size_of_the_base(tmp_path: Path, db_url: str) -> None:
    """The same writes (one refused, one made) send the same statements to a base of 3 cases
    as to one of 600 on the same backend."""
    def sent_for(url: str, count: int, home: Path) -> list[str]:
        kb = _base(url, count, home)
        with statements() as sent:
            with pytest.raises(ConflictError):
                kb.put_case(case_data("posted", sources=["https://github.com/o/r/issues/2"]), create=True)
            kb.put_case(case_data("posted", sources=["https://example.org/new"]), create=True)
        return sent

    with ExitStack() as stack:
        small_url = f"sqlite:///{tmp_path / 'small.db'}" if db_url.startswith("sqlite") else \
            stack.enter_context(contextmanager(_pg_schema_url)(os.environ[PG_ENV]))
        small = sent_for(small_url, 3, tmp_path / "home-small")
    large = sent_for(db_url, 600, tmp_path / "home-large")
    assert large == small and unkeyed_reads(large) == []


# -- migration 0004 ------------------------------------------------------------------------------


def test_downgrade_drops_the_table_and_upgrade_fills_it_again(db_url: str, kbq_home: Path, run_kbq) -> None:
    """More cases than the migration reads per batch, with several sources each; `kbq db
    downgrade 0003` drops the table, `kbq db upgrade` brings it back with every row, and the
    check then finds a stored case's thread by those rows."""
    kb = _base(db_url, 1005, kbq_home)
    kb.put_case(case_data("renamed", sources=[OLD_NAME, "排查笔记-显存不足.md"]), create=True)
    before = thread_rows(db_url)
    assert before == expected_rows(stored_sources(db_url)) and len(before) == 2 * 1005 + 2

    downgraded = run_kbq("db", "downgrade", "0003", "--yes", "--db", db_url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "case_threads" not in table_names(db_url) and "cases" in table_names(db_url)
    assert migrate.current(db_url) == "0003"
    upgraded = run_kbq("db", "upgrade", "--db", db_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip().endswith(f"schema at revision {migrate.HEAD}")

    assert thread_rows(db_url) == before
    with pytest.raises(ConflictError, match="case 'renamed'"):
        kb.put_case(case_data("again", sources=[CURRENT_NAME]), create=True)
    with pytest.raises(ConflictError, match="case 'stored-1004'"):
        kb.put_case(case_data("again", sources=["https://github.com/o/r/issues/1004"]), create=True)


def test_the_default_database_gets_the_rows(kbq_home: Path) -> None:
    """The per-user database: the bundled refresh writes the rows of the bundled cases, and a
    database at 0003 gets them from the upgrade kbq runs on it by itself."""
    kb = KnowledgeBase(home=kbq_home)
    kb.ensure_ready()
    url = kb.url
    bundled = stored_sources(url)
    assert set(bundled) == {loaded.case.id for loaded in casefiles.iter_cases(casefiles.discover([bundled_cases_dir()]))
                            if loaded.case.status == "reviewed"} != set()
    rows = thread_rows(url)
    assert rows == expected_rows(bundled)

    assert migrate.downgrade(url, "0003") == "0003"
    KnowledgeBase(home=kbq_home).ensure_ready()
    assert migrate.current(url) == migrate.HEAD
    assert thread_rows(url) == rows
