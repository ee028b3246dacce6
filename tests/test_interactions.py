"""Feedback and chat sessions (migration 0002) against a SQLite file and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Connection, text

from kb.db import fastmeta, migrate
from kb.db import interactions as interactions_mod
from kb.db.engine import make_engine, sqlite_path
from kb.db.interactions import ChatState, Feedback, InteractionStore
from kb.db.store import CaseStore
from kb.errors import DatabaseError

from dbtables import table_names as _tables

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
NEW_TABLES = {"feedback", "chat_sessions"}


@pytest.fixture
def store(db_url: str):
    migrate.upgrade(db_url)
    with InteractionStore(db_url) as interaction_store:
        yield interaction_store


# -- migration 0002 ----------------------------------------------------------


def test_upgrade_from_0001_keeps_cases(db_url: str) -> None:
    """A database written at 0001 (raw rows, as the previous release left it) upgrades in place."""
    assert migrate.upgrade(db_url, "0001") == "0001"
    assert not NEW_TABLES & _tables(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO cases (id, title, status, language, document, content_hash, created_at, updated_at) "
                     "VALUES ('old-case', 'Old', 'reviewed', 'en', '{\"id\": \"old-case\"}', 'h', :t, :t)"),
                {"t": T0},
            )
            conn.execute(text("UPDATE kbq_meta SET value = 'rev-1' WHERE key = 'revision'"))
    finally:
        engine.dispose()
    with InteractionStore(db_url) as store, pytest.raises(DatabaseError, match=f"is at schema 0001, kbq needs {migrate.HEAD}"):
        store.list_feedback()

    assert migrate.upgrade(db_url) == migrate.HEAD
    assert NEW_TABLES <= _tables(db_url)
    with CaseStore(db_url) as cases:
        old = cases.get("old-case")
        assert old is not None and old.document == {"id": "old-case"} and old.created_at == T0
        assert cases.revision() == "rev-1" and cases.is_initialized()
    with InteractionStore(db_url) as store:
        assert store.list_feedback() == [] and store.feedback_summary() == {}


def test_downgrade_to_0001_drops_only_the_new_tables(db_url: str, make_case) -> None:
    migrate.upgrade(db_url)
    with CaseStore(db_url) as cases:
        revision = cases.upsert([make_case("case-a"), make_case("case-b")]).revision
    with InteractionStore(db_url) as store:
        store.add_feedback("loss is nan", "case-a", True)
        store.save_session("s1", {"turns": 1}, "en", 60, now=T0)

    assert migrate.downgrade(db_url, "0001") == "0001"
    assert migrate.current(db_url) == "0001"
    tables = _tables(db_url)
    assert not NEW_TABLES & tables and {"cases", "kbq_meta"} <= tables
    with CaseStore(db_url) as cases:
        assert [c.id for c in cases.all()] == ["case-a", "case-b"] and cases.revision() == revision
        with pytest.raises(DatabaseError, match=rf"is at schema 0001, kbq needs {migrate.HEAD}: run `kbq db upgrade`$"):
            cases.upsert([make_case("case-c")])
    with InteractionStore(db_url) as store, pytest.raises(DatabaseError, match=f"is at schema 0001, kbq needs {migrate.HEAD}"):
        store.add_feedback("q", "case-a", True)

    assert migrate.upgrade(db_url) == migrate.HEAD
    with CaseStore(db_url) as cases:
        assert [c.id for c in cases.all()] == ["case-a", "case-b"] and cases.revision() == revision
    with InteractionStore(db_url) as store:
        assert store.list_feedback() == [] and store.load_session("s1", now=T0) is None


# -- feedback ----------------------------------------------------------------


def test_feedback_add_list_summary(store: InteractionStore) -> None:
    first = store.add_feedback("loss spikes to nan", "case-a", True)
    assert isinstance(first, Feedback) and first.comment is None and first.created_at.tzinfo == timezone.utc
    second = store.add_feedback("loss spikes to nan", "case-b", False, comment="wrong framework")
    third = store.add_feedback("oom in deepspeed", "case-a", False)
    store.add_feedback("oom in deepspeed", "case-a", True)
    store.add_feedback("removed later", "gone-case", True)  # no such case: kept anyway

    listed = store.list_feedback()
    assert [f.id for f in listed] == sorted((f.id for f in listed), reverse=True)  # newest first
    assert listed[-3:] == [third, second, first]
    assert listed[-2].comment == "wrong framework" and listed[-2].helpful is False
    assert [f.case_id for f in store.list_feedback(limit=2)] == ["gone-case", "case-a"]
    assert [f.query for f in store.list_feedback(case_id="case-a")] == [
        "oom in deepspeed", "oom in deepspeed", "loss spikes to nan"]
    assert store.list_feedback(limit=0) == [] and store.list_feedback(case_id="nobody") == []

    assert store.feedback_summary() == {"case-a": (2, 1), "case-b": (0, 1), "gone-case": (1, 0)}


def test_feedback_and_sessions_leave_the_case_revision_alone(db_url: str, make_case) -> None:
    migrate.upgrade(db_url)
    with CaseStore(db_url) as cases:
        cases.upsert([make_case("case-a")], meta={"source": "bundled"})
        before = (cases.read_meta(), cases.all())
    state_before = fastmeta.read_state(db_url)
    with InteractionStore(db_url) as store:
        store.add_feedback("q", "case-a", True)
        store.save_session("s1", {"a": 1}, "en", 60, now=T0)
        store.save_session("s1", {"a": 2}, "en", 60, now=T0)
        store.purge_expired(now=T0 + timedelta(hours=1))
        store.delete_session("s1")
    with CaseStore(db_url) as cases:
        assert (cases.read_meta(), cases.all()) == before
    assert fastmeta.read_state(db_url) == state_before


def test_feedback_validation(store: InteractionStore) -> None:
    with pytest.raises(ValueError, match="case_id"):
        store.add_feedback("q", "", True)
    with pytest.raises(ValueError, match="case_id is longer than 120"):
        store.add_feedback("q", "x" * 121, True)
    with pytest.raises(TypeError):
        store.add_feedback("q", "case-a", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.add_feedback(None, "case-a", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.list_feedback(limit=-1)
    assert store.list_feedback() == []


def test_feedback_refuses_control_characters(store: InteractionStore) -> None:
    """SQLite would keep a NUL that PostgreSQL refuses: both refuse it here, naming the field."""
    with pytest.raises(ValueError, match=r"comment contains a binary control character \(0x00 at character 1\)"):
        store.add_feedback("q", "case-a", True, "a\x00b")
    with pytest.raises(ValueError, match="query contains a binary control character"):
        store.add_feedback("q\x00", "case-a", True)
    with pytest.raises(ValueError, match="case_id contains a binary control character"):
        store.add_feedback("q", "case\x01a", True)
    with pytest.raises(ValueError, match="case_id contains a binary control character"):
        store.list_feedback(case_id="case-a\x00")
    assert store.list_feedback() == []
    store.add_feedback("q", "case-a", True, "line\r\n\tnext")  # tab and line breaks are text
    assert [f.comment for f in store.list_feedback()] == ["line\r\n\tnext"]


# -- chat sessions -----------------------------------------------------------


def test_session_save_load_update_expire(store: InteractionStore) -> None:
    assert store.load_session("s1", now=T0) is None
    saved = store.save_session("s1", {"history": ["hi"]}, "en", 60, now=T0)
    assert saved == ChatState("s1", {"history": ["hi"]}, "en", T0, T0, T0 + timedelta(seconds=60))
    assert store.load_session("s1", now=T0 + timedelta(seconds=59)) == saved
    assert store.load_session("s1", now=T0 + timedelta(seconds=60)) is None  # expires_at is the first dead instant

    later = T0 + timedelta(seconds=30)
    updated = store.save_session("s1", {"history": ["hi", "again"]}, "zh", 60, now=later)
    assert (updated.created_at, updated.updated_at, updated.expires_at) == (T0, later, later + timedelta(seconds=60))
    assert updated.state == {"history": ["hi", "again"]} and updated.language == "zh"
    assert store.load_session("s1", now=T0 + timedelta(seconds=80)) == updated

    # saving over an expired session starts a new one
    revived_at = T0 + timedelta(hours=1)
    revived = store.save_session("s1", {"history": []}, "en", 10, now=revived_at)
    assert revived.created_at == revived_at == revived.updated_at


def test_session_times_are_utc(store: InteractionStore) -> None:
    shanghai = timezone(timedelta(hours=8))
    local = datetime(2025, 1, 1, 20, 0, tzinfo=shanghai)  # == T0
    saved = store.save_session("s1", {}, "zh", 60, now=local)
    assert saved.created_at == T0 and saved.created_at.tzinfo == timezone.utc
    assert store.load_session("s1", now=T0.replace(tzinfo=None) + timedelta(seconds=59)) == saved  # naive = UTC
    assert store.load_session("s1", now=datetime(2025, 1, 1, 20, 1, tzinfo=shanghai)) is None


def test_session_purge_and_delete(store: InteractionStore) -> None:
    store.save_session("short", {}, "en", 10, now=T0)
    store.save_session("medium", {}, "en", 100, now=T0)
    store.save_session("long", {}, "en", 1000, now=T0)
    assert store.purge_expired(now=T0 + timedelta(seconds=5)) == 0
    assert store.purge_expired(now=T0 + timedelta(seconds=100)) == 2  # expires_at == now counts as expired
    assert store.purge_expired(now=T0 + timedelta(seconds=100)) == 0
    assert store.load_session("medium", now=T0) is None and store.load_session("short", now=T0) is None
    assert store.load_session("long", now=T0) is not None

    assert store.delete_session("long") is True
    assert store.delete_session("long") is False
    assert store.delete_session("never") is False
    assert store.load_session("long", now=T0) is None


def test_session_validation(store: InteractionStore) -> None:
    with pytest.raises(ValueError, match="session_id is longer than 64"):
        store.save_session("s" * 65, {}, "en", 60, now=T0)
    with pytest.raises(ValueError, match="language"):
        store.save_session("s1", {}, "english!!", 60, now=T0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        store.save_session("s1", {}, "en", 0, now=T0)
    with pytest.raises(ValueError, match="not JSON"):
        store.save_session("s1", {"x": float("nan")}, "en", 60, now=T0)
    with pytest.raises(ValueError, match="not JSON"):
        store.save_session("s1", {"x": object()}, "en", 60, now=T0)
    with pytest.raises(TypeError):
        store.save_session("s1", ["not", "a", "dict"], "en", 60, now=T0)  # type: ignore[arg-type]
    assert store.load_session("s1", now=T0) is None


def test_session_upsert_without_on_conflict(store: InteractionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The select-then-write path for dialects without ON CONFLICT behaves the same."""
    monkeypatch.setattr(interactions_mod, "_UPSERT_INSERTS", {})
    store.save_session("s1", {"n": 1}, "en", 60, now=T0)
    updated = store.save_session("s1", {"n": 2}, "en", 60, now=T0 + timedelta(seconds=30))
    assert (updated.created_at, updated.state) == (T0, {"n": 2})
    revived = store.save_session("s1", {"n": 3}, "en", 60, now=T0 + timedelta(hours=1))
    assert revived.created_at == T0 + timedelta(hours=1)


def test_unicode_round_trips(store: InteractionStore) -> None:
    state = {"历史": ["训练时损失变成 NaN", "显存不足怎么办？"], "emoji": "🔥", "nested": {"模型": "通义千问"}}
    saved = store.save_session("会话-1", state, "zh", 60, now=T0)
    loaded = store.load_session("会话-1", now=T0)
    assert loaded == saved and loaded.state == state

    store.add_feedback("微调 Qwen 时 loss 变成 NaN", "case-a", False, comment="没有用：框架不同")
    (feedback,) = store.list_feedback()
    assert feedback.query == "微调 Qwen 时 loss 变成 NaN" and feedback.comment == "没有用：框架不同"


@contextmanager
def _another_thread_writing(url: str, write: Callable[[Connection], None]) -> Iterator[threading.Event]:
    """``write`` in a write transaction of another thread's store, left open until the yielded
    event is set (at most 5 s); the thread has ended when the block is left."""
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        with InteractionStore(url) as other, other._write() as conn:
            write(conn)
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        yield release
    finally:
        release.set()
        holder.join()


def test_concurrent_saves_of_a_new_session(store: InteractionStore) -> None:
    """A writer that waits on another creating the same session updates it instead of failing."""
    def create(conn: Connection) -> None:
        interactions_mod._upsert_session(conn, {
            "id": "s1", "state": {"by": "first"}, "language": "en",
            "created_at": T0, "updated_at": T0, "expires_at": T0 + timedelta(seconds=60),
        }, T0)

    with _another_thread_writing(store.url, create) as release:
        threading.Timer(0.3, release.set).start()
        started = time.monotonic()
        second = store.save_session("s1", {"by": "second"}, "en", 60, now=T0 + timedelta(seconds=1))
        assert time.monotonic() - started >= 0.25
    assert second.state == {"by": "second"} and second.created_at == T0


def test_feedback_does_not_wait_for_an_ingest_on_postgresql(store: InteractionStore) -> None:
    """On SQLite a held write lock bounds the wait; on PostgreSQL the revision row lock is not taken."""
    path = sqlite_path(store.url)
    with InteractionStore(store.url, lock_timeout=0.3) as waiting:
        if path is not None:
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                with pytest.raises(DatabaseError, match=r"^database is locked by another writer \(waited 0\.3 s\)"):
                    waiting.add_feedback("q", "case-a", True)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert store.list_feedback() == []
            return
        engine = make_engine(store.url)
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT value FROM kbq_meta WHERE key = 'revision' FOR UPDATE"))
                assert waiting.add_feedback("q", "case-a", True).case_id == "case-a"
        finally:
            engine.dispose()


def test_writers_of_one_process_take_turns_within_the_lock_timeout(store: InteractionStore) -> None:
    """On SQLite a thread waits for another thread's write in the process's own queue, as
    long as it would have waited for SQLite's lock, and fails the same way after it."""
    if sqlite_path(store.url) is None:
        pytest.skip("SQLite's writers queue in the process; PostgreSQL's lock rows")
    with InteractionStore(store.url, lock_timeout=0.3) as waiting:
        with _another_thread_writing(store.url, lambda conn: None):
            started = time.monotonic()
            with pytest.raises(DatabaseError, match=r"^database is locked by another writer \(waited 0\.3 s\)"):
                waiting.add_feedback("q", "case-a", True)
            assert time.monotonic() - started >= 0.25
        assert waiting.add_feedback("q", "case-a", True).case_id == "case-a"


# -- errors ------------------------------------------------------------------


def test_bad_urls_give_database_errors() -> None:
    with pytest.raises(DatabaseError, match="unknown database dialect"):
        InteractionStore("foo://x")
    with pytest.raises(DatabaseError, match="empty database URL"):
        InteractionStore("")
    with InteractionStore("postgresql+psycopg://postgres:secret@127.0.0.1:1/test") as store:
        with pytest.raises(DatabaseError) as info:
            store.add_feedback("q", "case-a", True)
    assert str(info.value) == (
        "cannot connect to database postgresql+psycopg://postgres:***@127.0.0.1:1/test: connection refused"
    )


def test_unmigrated_database_says_upgrade(db_url: str) -> None:
    with InteractionStore(db_url) as store:
        with pytest.raises(DatabaseError, match=r"has no kbq schema: run `kbq db upgrade`$"):
            store.add_feedback("q", "case-a", True)
        with pytest.raises(DatabaseError, match="has no kbq schema"):
            store.load_session("s1", now=T0)


def test_a_waiting_writer_queues_in_the_process_not_in_sqlite(store: InteractionStore) -> None:
    """While another thread of the process writes, a second writer does not even send its
    BEGIN: it waits in the process's queue and is woken when the first ends. (Sent at once,
    it would sit in SQLite's busy handler, whose growing sleeps let newcomers overtake it:
    32 chat clients got 503 'database is locked' that way.)"""
    from sqlalchemy import event

    if sqlite_path(store.url) is None:
        pytest.skip("SQLite's writers queue in the process; PostgreSQL's lock rows")
    began = threading.Event()

    def watch(_conn, _cursor, statement: str, *_rest) -> None:
        if statement.lstrip().upper().startswith("BEGIN"):
            began.set()

    with InteractionStore(store.url, lock_timeout=30) as waiting:
        event.listen(waiting.engine, "before_cursor_execute", watch)
        with _another_thread_writing(store.url, lambda conn: None) as release:
            writer = threading.Thread(target=lambda: waiting.add_feedback("q", "case-a", True))
            writer.start()
            writer.join(timeout=0.5)  # time to reach the database, were it not queued
            assert writer.is_alive() and not began.is_set()
            release.set()
            writer.join(timeout=30)
        assert began.is_set() and not writer.is_alive()
    assert [f.case_id for f in store.list_feedback()] == ["case-a"]
