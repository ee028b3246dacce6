"""Feedback and chat sessions: what users do with the case base, kept beside it.

These writes never touch the case tables nor the ``revision`` meta, so
recording a vote or a chat turn does not invalidate the persisted index.
On SQLite they still take the database's write lock (``BEGIN IMMEDIATE``),
so they wait at most ``lock_timeout`` behind an ingest; on PostgreSQL they
do not lock the ``revision`` row and so never wait for one.

Times are stored in UTC; a naive ``now`` given by a caller is taken as UTC.
A session whose ``expires_at`` is not after ``now`` counts as gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, Select, case, delete, func, insert, literal, select, update

from kb.db._base import CONFLICT_INSERTS, SideStore, utc
from kb.db.schema import ChatSessionRow, FeedbackRow
from kb.querytext import control_character

CASE_ID_MAX = 120
SESSION_ID_MAX = 64
LANGUAGE_MAX = 8
_UPSERT_INSERTS = CONFLICT_INSERTS


@dataclass(frozen=True)
class Feedback:
    """One stored vote on how helpful a case was for a query."""

    id: int
    query: str
    case_id: str
    helpful: bool
    comment: str | None
    created_at: datetime


@dataclass(frozen=True)
class ChatState:
    """One stored chat session: its state document and lifetime."""

    id: str
    state: dict[str, Any]
    language: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime


class InteractionStore(SideStore):
    """Feedback and chat sessions in a kbq database (SQLite file or PostgreSQL URL)."""

    # -- feedback ----------------------------------------------------------

    def add_feedback(self, query: str, case_id: str, helpful: bool, comment: str | None = None) -> Feedback:
        """Record a vote; the case need not exist (feedback outlives its case)."""
        _check_text("case_id", case_id, CASE_ID_MAX)
        if not isinstance(query, str) or not (comment is None or isinstance(comment, str)):
            raise TypeError("query must be a string and comment a string or None")
        if not isinstance(helpful, bool):
            raise TypeError("helpful must be True or False")
        _check_plain("query", query)
        _check_plain("comment", comment)
        now = datetime.now(timezone.utc)
        values = {"query": query, "case_id": case_id, "helpful": helpful, "comment": comment, "created_at": now}
        with self._write() as conn:
            new_id = conn.execute(insert(FeedbackRow).values(**values)).inserted_primary_key[0]
        return Feedback(id=int(new_id), **values)

    def list_feedback(self, limit: int = 100, case_id: str | None = None) -> list[Feedback]:
        """The newest ``limit`` votes, newest first, optionally for one case."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        _check_plain("case_id", case_id)
        query = _feedback_select().order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc()).limit(limit)
        if case_id is not None:
            query = query.where(FeedbackRow.case_id == case_id)
        with self._read() as conn:
            return [_feedback(row) for row in conn.execute(query)]

    def feedback_summary(self) -> dict[str, tuple[int, int]]:
        """case_id -> (helpful votes, not helpful votes), by case_id."""
        helpful = func.sum(case((FeedbackRow.helpful, 1), else_=0))
        query = (
            select(FeedbackRow.case_id, helpful, func.count())
            .group_by(FeedbackRow.case_id)
            .order_by(FeedbackRow.case_id)
        )
        with self._read() as conn:
            return {case_id: (int(yes), int(total) - int(yes)) for case_id, yes, total in conn.execute(query)}

    # -- chat sessions -----------------------------------------------------

    def load_session(self, session_id: str, now: datetime | None = None) -> ChatState | None:
        """The session, or None when it is missing or has expired at ``now``."""
        now = _now(now)
        with self._read() as conn:
            row = conn.execute(_session_select().where(ChatSessionRow.id == session_id)).one_or_none()
        stored = _session(row) if row else None
        return stored if stored is not None and stored.expires_at > now else None

    def save_session(
        self,
        session_id: str,
        state: dict[str, Any],
        language: str,
        ttl_seconds: int,
        now: datetime | None = None,
    ) -> ChatState:
        """Insert or replace a session, to expire ``ttl_seconds`` after ``now``.

        An update keeps ``created_at`` unless the stored session had already
        expired: that one is gone for readers, so saving starts a new one.
        """
        _check_text("session_id", session_id, SESSION_ID_MAX)
        _check_text("language", language, LANGUAGE_MAX)
        if not isinstance(state, dict):
            raise TypeError("state must be a dict")
        try:
            # PostgreSQL's json type rejects NaN that SQLite would store: fail the same everywhere.
            json.dumps(state, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"session state is not JSON: {err}") from None
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        now = _now(now)
        values = {
            "id": session_id,
            "state": state,
            "language": language,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + timedelta(seconds=ttl_seconds),
        }
        with self._write() as conn:
            _upsert_session(conn, values, now)
            row = conn.execute(_session_select().where(ChatSessionRow.id == session_id)).one()
        return _session(row)

    def delete_session(self, session_id: str) -> bool:
        """Remove a session; True if one was stored (expired or not)."""
        with self._write() as conn:
            return conn.execute(delete(ChatSessionRow).where(ChatSessionRow.id == session_id)).rowcount > 0

    def purge_expired(self, now: datetime | None = None) -> int:
        """Remove every session expired at ``now``; returns how many."""
        now = _now(now)
        with self._write() as conn:
            return conn.execute(delete(ChatSessionRow).where(ChatSessionRow.expires_at <= now)).rowcount

def _upsert_session(conn: Connection, values: dict[str, Any], now: datetime) -> None:
    """Insert or update one session row, atomically where the dialect allows."""
    fresh = literal(values["created_at"], ChatSessionRow.created_at.type)
    changes = {key: values[key] for key in ("state", "language", "updated_at", "expires_at")}
    changes["created_at"] = case((ChatSessionRow.expires_at > now, ChatSessionRow.created_at), else_=fresh)
    make_insert = _UPSERT_INSERTS.get(conn.dialect.name)
    if make_insert is not None:
        # ON CONFLICT: two PostgreSQL writers creating the same new session both succeed.
        statement = make_insert(ChatSessionRow).values(**values)
        conn.execute(statement.on_conflict_do_update(index_elements=[ChatSessionRow.id], set_=changes))
        return
    found = conn.scalar(select(ChatSessionRow.id).where(ChatSessionRow.id == values["id"]).with_for_update())
    if found is None:
        conn.execute(insert(ChatSessionRow).values(**values))
    else:
        conn.execute(update(ChatSessionRow).where(ChatSessionRow.id == values["id"]).values(**changes))


def _check_text(name: str, value: str, max_length: int) -> None:
    """Lengths checked here, since SQLite would store an over-long value PostgreSQL rejects."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise ValueError(f"{name} is longer than {max_length} characters: {value[:20]!r}...")
    _check_plain(name, value)


def _check_plain(name: str, value: str | None) -> None:
    """Binary control characters refused here, since SQLite would store a NUL PostgreSQL rejects."""
    problem = None if value is None else control_character(value)
    if problem is not None:
        raise ValueError(f"{name} {problem}")


def _now(now: datetime | None) -> datetime:
    return datetime.now(timezone.utc) if now is None else utc(now)


def _feedback_select() -> Select[Any]:
    return select(
        FeedbackRow.id,
        FeedbackRow.query,
        FeedbackRow.case_id,
        FeedbackRow.helpful,
        FeedbackRow.comment,
        FeedbackRow.created_at,
    )


def _feedback(row: Any) -> Feedback:
    return Feedback(
        id=row.id,
        query=row.query,
        case_id=row.case_id,
        helpful=bool(row.helpful),
        comment=row.comment,
        created_at=utc(row.created_at),
    )


def _session_select() -> Select[Any]:
    return select(
        ChatSessionRow.id,
        ChatSessionRow.state,
        ChatSessionRow.language,
        ChatSessionRow.created_at,
        ChatSessionRow.updated_at,
        ChatSessionRow.expires_at,
    )


def _session(row: Any) -> ChatState:
    return ChatState(
        id=row.id,
        state=row.state,
        language=row.language,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        expires_at=utc(row.expires_at),
    )
