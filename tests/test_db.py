"""The database layer against real databases: a SQLite file and PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from kb.db import fastmeta, migrate
from kb.db import store as store_mod
from kb.db.engine import make_engine, normalize_url, sqlite_path, translate_errors
from kb.db.fastmeta import DbState
from kb.db.schema import metadata
from kb.db.store import CaseStore
from kb.errors import DatabaseError

from conftest import case_data
from dbtables import table_names as _tables

REPO = Path(__file__).resolve().parents[1]
KBQ_TABLES = {"cases", "case_threads", "kbq_meta", "feedback", "chat_sessions", "github_answers", "github_deliveries"}


def _pg_schema(url: str) -> str | None:
    options = make_url(url).query.get("options")
    return options.split("search_path=", 1)[1] if isinstance(options, str) else None


@pytest.fixture
def store(db_url: str):
    migrate.upgrade(db_url)
    with CaseStore(db_url) as case_store:
        yield case_store


# -- migrations --------------------------------------------------------------


def test_head_matches_alembic_scripts() -> None:
    assert migrate.HEAD == migrate.script_head()
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate._config("sqlite://"))
    assert migrate.REVISIONS == tuple(reversed([script.revision for script in scripts.walk_revisions()]))


def test_database_from_a_newer_kbq_says_to_upgrade_kbq(db_url: str, tmp_path: Path) -> None:
    """`kbq db upgrade` cannot help a schema this kbq does not know; every door says so in one line."""
    from kb.service import KnowledgeBase

    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "one.yaml").write_text(yaml.safe_dump(case_data("newer-kbq-case")), encoding="utf-8")
    kb = KnowledgeBase(db=db_url, home=tmp_path / "home")
    for attempt in (lambda: kb.search("loss nan"), kb.upgrade, lambda: kb.ingest([folder]), kb.stats):
        with pytest.raises(DatabaseError, match=r"revision 0099, newer than this kbq .* upgrade kbq, not the database"):
            attempt()
    assert migrate.current(db_url) == "0099"


def test_default_database_from_a_newer_kbq_is_left_alone(tmp_path: Path) -> None:
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(home=tmp_path / "home")
    kb.ensure_ready()
    with sqlite3.connect(tmp_path / "home" / "kbq.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this kbq"):
        KnowledgeBase(home=tmp_path / "home").search("loss nan")
    with pytest.raises(DatabaseError, match="newer than this kbq"):
        KnowledgeBase(home=tmp_path / "home").ingest()
    assert migrate.current(f"sqlite:///{tmp_path / 'home' / 'kbq.db'}") == "0099"


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert migrate.current(db_url) is None
    assert migrate.upgrade(db_url) == migrate.HEAD
    assert KBQ_TABLES <= _tables(db_url)
    assert migrate.current(db_url) == migrate.HEAD

    assert migrate.downgrade(db_url, "base") is None
    assert not KBQ_TABLES & _tables(db_url)
    assert migrate.current(db_url) is None

    assert migrate.upgrade(db_url) == migrate.HEAD
    assert KBQ_TABLES <= _tables(db_url)
    with CaseStore(db_url) as store:
        assert store.is_initialized()
        assert store.revision() == "0"


def test_migration_matches_orm_schema(db_url: str) -> None:
    """0001 creates exactly what kb.db.schema declares (no autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_postgres_schema_isolation(db_url: str) -> None:
    """The search_path option puts every kbq table, alembic_version included, in the test schema."""
    schema = _pg_schema(db_url)
    if schema is None:
        pytest.skip("PostgreSQL only")
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT table_schema, table_name FROM information_schema.tables WHERE table_name IN "
                     "('alembic_version', 'cases', 'kbq_meta') AND table_schema = :s"),
                {"s": schema},
            ).all()
    finally:
        engine.dispose()
    assert {name for _, name in rows} == {"alembic_version", "cases", "kbq_meta"}


def test_store_on_unmigrated_database_says_upgrade(db_url: str, make_case) -> None:
    with CaseStore(db_url) as store:
        assert not store.is_initialized()
        with pytest.raises(DatabaseError, match="has no kbq schema: run `kbq db upgrade`"):
            store.upsert([make_case("case-a")])
        with pytest.raises(DatabaseError, match="has no kbq schema"):
            store.all()


# -- upsert ------------------------------------------------------------------


def test_insert_update_unchanged_remove(store: CaseStore, make_case) -> None:
    first = store.upsert([make_case("case-a"), make_case("case-b", status="draft")])
    assert (first.added, first.updated, first.unchanged, first.removed) == (["case-a", "case-b"], [], [], [])
    assert first.changed and first.revision == store.revision() != "0"

    again = store.upsert([make_case("case-a"), make_case("case-b", status="draft")])
    assert again.unchanged == ["case-a", "case-b"] and not again.changed
    assert again.revision == first.revision == store.revision()

    before = store.get("case-a")
    assert before is not None
    edited = store.upsert([make_case("case-a", title="A new title")], remove_ids=["case-b", "never-there"])
    assert edited.updated == ["case-a"] and edited.removed == ["case-b"]
    assert edited.revision not in (None, first.revision) and edited.revision == store.revision()

    after = store.get("case-a")
    assert after is not None
    assert after.document["title"] == "A new title"
    assert after.created_at == before.created_at and after.updated_at > before.updated_at
    assert store.get("case-b") is None
    assert store.counts() == {"reviewed": 1}


def test_columns_and_ordering(store: CaseStore, make_case) -> None:
    store.upsert([make_case("zeta-case"), make_case("alpha-case", status="draft", phase=None)])
    assert [c.id for c in store.all()] == ["alpha-case", "zeta-case"]
    assert [c.id for c in store.all(status="draft")] == ["alpha-case"]
    assert store.counts() == {"draft": 1, "reviewed": 1}
    engine = make_engine(store.url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM cases WHERE id = 'alpha-case'")).mappings().one()
    engine.dispose()
    assert (row["status"], row["phase"], row["model_family"], row["model_version"], row["framework"]) == (
        "draft", None, "llama", "llama-3", "deepspeed")
    assert row["language"] == "en" and row["title"] == "Loss spikes in alpha-case"


def test_reviewed_json_is_what_all_decodes(store: CaseStore, make_case) -> None:
    """Index builds read documents as stored JSON text and decode them in workers: the same
    documents, ids, order and timestamps as :meth:`CaseStore.all` gives, drafts left out."""
    store.upsert([make_case("zeta-case", title="中文标题 loss 不降"), make_case("alpha-case"),
                  make_case("draft-case", status="draft")])
    raw = store.reviewed_json()
    assert [r.id for r in raw] == ["alpha-case", "zeta-case"] and {r.status for r in raw} == {"reviewed"}
    for stored, item in zip(store.all(status="reviewed"), raw):
        assert item.document() == {**stored.document, "created_at": stored.created_at.isoformat(),
                                   "updated_at": stored.updated_at.isoformat()}


def test_given_timestamps_round_trip(store: CaseStore, make_case) -> None:
    created = datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=8)))
    updated = datetime(2024, 4, 1, 9, 30, 15, 123456, tzinfo=timezone.utc)
    store.upsert([make_case("case-a", created_at=created, updated_at=updated)])
    stored = store.get("case-a")
    assert stored is not None
    assert stored.created_at == created and stored.updated_at == updated
    assert stored.created_at.tzinfo == timezone.utc

    # export -> ingest reproduces the database: nothing changes
    exported = [c.to_case() for c in store.all()]
    assert not store.upsert(exported).changed

    # same content, other timestamps: only the timestamps move
    later = updated + timedelta(days=1)
    report = store.upsert([make_case("case-a", updated_at=later)])
    assert report.updated == ["case-a"]
    stored = store.get("case-a")
    assert stored is not None and stored.updated_at == later and stored.created_at == created


def test_meta_changes_revision_only_when_different(store: CaseStore) -> None:
    first = store.upsert([], meta={"source": "cases/"})
    assert first.meta_updated == ["source"] and first.changed
    assert store.read_meta() == {"revision": first.revision, "source": "cases/"}
    same = store.upsert([], meta={"source": "cases/"})
    assert not same.changed and same.revision == first.revision
    with pytest.raises(ValueError):
        store.upsert([], meta={"revision": "mine"})


def test_upsert_is_all_or_nothing(store: CaseStore, make_case, monkeypatch: pytest.MonkeyPatch) -> None:
    store.upsert([make_case("case-a")], meta={"k": "v"})
    before = (store.all(), store.read_meta())

    real_columns = store_mod._columns
    calls = []

    def failing_second(case):
        calls.append(case.id)
        values = real_columns(case)
        if len(calls) == 2:
            values["title"] = None  # NOT NULL: the database itself rejects this row
        return values

    monkeypatch.setattr(store_mod, "_columns", failing_second)
    with pytest.raises(DatabaseError) as info:
        store.upsert([make_case("case-a", title="changed"), make_case("case-new")], meta={"k": "other"})
    assert "\n" not in str(info.value)
    assert calls == ["case-a", "case-new"]  # the first row was written before the failure
    assert (store.all(), store.read_meta()) == before

    def boom(case):
        if case.id == "case-c":
            raise RuntimeError("not a database error")
        return real_columns(case)

    monkeypatch.setattr(store_mod, "_columns", boom)
    with pytest.raises(RuntimeError):
        store.upsert([make_case("case-b"), make_case("case-c")], remove_ids=["case-a"])
    assert (store.all(), store.read_meta()) == before


def test_delete(store: CaseStore, make_case) -> None:
    store.upsert([make_case("case-a"), make_case("case-b")])
    report = store.delete(["case-a", "missing"])
    assert report.removed == ["case-a"] and report.changed
    assert [c.id for c in store.all()] == ["case-b"]


def test_upsert_rejects_contradictions(store: CaseStore, make_case) -> None:
    with pytest.raises(ValueError):
        store.upsert([make_case("case-a"), make_case("case-a")])
    with pytest.raises(ValueError):
        store.upsert([make_case("case-a")], remove_ids=["case-a"])


# -- locking -----------------------------------------------------------------


def test_sqlite_writer_waits_then_reports_lock(sqlite_url: str, make_case) -> None:
    migrate.upgrade(sqlite_url)
    path = sqlite_path(sqlite_url)
    assert path is not None
    with CaseStore(sqlite_url) as store:
        store.upsert([make_case("case-a")])
        before = (store.all(), store.read_meta())

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with CaseStore(sqlite_url, lock_timeout=0.3) as store:
            with pytest.raises(DatabaseError) as info:
                store.upsert([make_case("case-b")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(info.value)
    assert "locked" in message and str(path) in message and "0.3 s" in message and "\n" not in message
    with CaseStore(sqlite_url) as store:
        assert (store.all(), store.read_meta()) == before


@contextmanager
def _writer_lock(url: str) -> Iterator[None]:
    """Hold the writer lock from another connection, as a concurrent ingest would."""
    path = sqlite_path(url)
    if path is not None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT value FROM kbq_meta WHERE key = 'revision' FOR UPDATE"))
            yield
    finally:
        engine.dispose()


def test_concurrent_writer_times_out(store: CaseStore, make_case) -> None:
    store.upsert([make_case("case-a")])
    before = (store.all(), store.read_meta())
    with _writer_lock(store.url), CaseStore(store.url, lock_timeout=0.3) as waiting:
        started = time.monotonic()
        with pytest.raises(DatabaseError, match=r"^database is locked by another writer \(waited 0\.3 s\): "):
            waiting.upsert([make_case("case-b")])
        assert time.monotonic() - started >= 0.25
    assert (store.all(), store.read_meta()) == before


def test_concurrent_writer_waits_for_the_lock(store: CaseStore, make_case) -> None:
    """A second writer is serialized behind the first, not failed."""
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with _writer_lock(store.url):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        threading.Timer(0.3, release.set).start()
        started = time.monotonic()
        report = store.upsert([make_case("case-b")])
        assert time.monotonic() - started >= 0.25
    finally:
        release.set()
        holder.join()
    assert report.added == ["case-b"] and store.revision() == report.revision


def test_sqlite_transactions_begin_immediate(sqlite_url: str) -> None:
    """A transaction holds the write lock from BEGIN, before its first write."""
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            other = sqlite3.connect(sqlite_path(sqlite_url), timeout=0, isolation_level=None)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.close()
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_readers_do_not_wait_for_a_writer(sqlite_url: str, make_case) -> None:
    """A writer holding its lock (RESERVED) does not block reads of the store."""
    migrate.upgrade(sqlite_url)
    with CaseStore(sqlite_url) as store:
        store.upsert([make_case("case-a")])
    writer = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM cases")
    try:
        with CaseStore(sqlite_url, lock_timeout=0) as other:
            assert [c.id for c in other.all()] == ["case-a"]
            assert other.is_initialized() and migrate.current(sqlite_url) == migrate.HEAD
            assert fastmeta.read_state(sqlite_url) == other.state()
            with pytest.raises(DatabaseError, match="locked"):
                other.upsert([make_case("case-b")])
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# -- URLs and errors ---------------------------------------------------------


def test_normalize_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("kbq.db") == f"sqlite:///{tmp_path / 'kbq.db'}"
    assert normalize_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert normalize_url("~/k.db") == f"sqlite:///{tmp_path / 'k.db'}"
    assert normalize_url("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert normalize_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgresql://u@h:5433/db") == "postgresql+psycopg://u@h:5433/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlite_path(normalize_url("kbq.db")) == tmp_path / "kbq.db"
    assert sqlite_path("sqlite://") is None and sqlite_path("postgresql+psycopg://h/db") is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "empty database URL"),
        ("   ", "empty database URL"),
        ("foo://x", "unknown database dialect in URL foo://x"),
        ("mysql://user:secret@h/db", "driver for mysql://user:***@h/db is not installed"),
        ("postgresql://user:secret@h:notaport/db", "cannot parse database URL postgresql://user:***@h:notaport/db"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    with pytest.raises(DatabaseError) as info:
        normalize_url(url)
    message = str(info.value)
    assert expected in message and "\n" not in message and "secret" not in message


def test_connection_refused_is_one_line() -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/test"
    with pytest.raises(DatabaseError) as info:
        migrate.upgrade(url)
    assert str(info.value) == (
        "cannot connect to database postgresql+psycopg://postgres:***@127.0.0.1:1/test: connection refused"
    )
    with CaseStore("postgresql+psycopg://postgres@127.0.0.1:1/test") as store:
        with pytest.raises(DatabaseError, match=r"^cannot connect to database \S+: connection refused$"):
            store.counts()


def test_translate_errors_passes_other_exceptions(sqlite_url: str) -> None:
    with pytest.raises(KeyError):
        with translate_errors(sqlite_url):
            raise KeyError("x")


def test_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match=f"not a SQLite database: {bogus}$"):
        fastmeta.read_state(str(bogus))
    with CaseStore(str(bogus)) as store, pytest.raises(DatabaseError, match="not a SQLite database"):
        store.counts()


# -- fastmeta ----------------------------------------------------------------


def test_read_state_matches_store(db_url: str, make_case) -> None:
    empty = fastmeta.read_state(db_url)
    assert empty in (None, DbState(None, None, {}))  # no SQLite file yet / empty schema
    migrate.upgrade(db_url)
    with CaseStore(db_url) as store:
        store.upsert([make_case("case-a")], meta={"source": "bundled"})
        expected = DbState(schema_version=migrate.HEAD, revision=store.revision(), meta=store.read_meta())
        assert store.state() == expected
    assert fastmeta.read_state(db_url) == expected


def test_read_state_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "kbq.db"
    assert fastmeta.read_state(f"sqlite:///{missing}") is None
    assert fastmeta.read_state(str(missing)) is None
    assert not missing.parent.exists()


def test_query_path_imports_neither_sqlalchemy_nor_alembic(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    code = (
        "import sys\n"
        "from kb.db import fastmeta, migrate\n"
        f"state = fastmeta.read_state({sqlite_url!r})\n"
        "assert state.schema_version == migrate.HEAD, state\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic'))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO)})


def test_alembic_command_line_works(tmp_path: Path) -> None:
    """`alembic upgrade head` works for developers (run here outside the repo, so
    the relative sqlite:///kbq-dev.db of alembic.ini lands in tmp_path)."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert migrate.current(str(tmp_path / "kbq-dev.db")) == migrate.HEAD
