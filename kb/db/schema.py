"""The kbq tables, as SQLAlchemy ORM classes.

The whole case lives in ``cases.document`` (JSON) so the pydantic model stays
the single definition of a case; the other columns are copies of the fields
we filter on. ``sqlalchemy.JSON`` keeps SQLite and PostgreSQL identical.
``case_threads`` holds each case's sources keyed by thread (kb.threads), written
with the case, so a write finds the cases sharing its threads by index.
``feedback`` and ``chat_sessions`` hold what users do with the case base,
not the case base itself; ``github_answers`` and ``github_deliveries`` what
the GitHub issue bot did. The migrations up to head must create exactly
this (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Fixed names, so migrations and autogenerate agree on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CaseRow(Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    language: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str | None] = mapped_column(String(32))
    model_family: Mapped[str | None] = mapped_column(String(80), index=True)
    model_version: Mapped[str | None] = mapped_column(String(80))
    framework: Mapped[str | None] = mapped_column(String(80), index=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CaseThreadRow(Base):
    """One source of a case, filed under the digest of its thread key (kb.threads.key_digest).

    Written and removed with the case's row in the same transaction (kb.db.store), so a
    write checks its threads against the indexed digests instead of reading every case.
    No foreign key: on SQLite a batch migration recreating ``cases`` would cascade into it.
    """

    __tablename__ = "case_threads"

    case_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # 0: the first source
    source: Mapped[str] = mapped_column(Text)
    key_digest: Mapped[str] = mapped_column(String(32), index=True)


class MetaRow(Base):
    """Key/value facts about the case base; ``revision`` changes on every write."""

    __tablename__ = "kbq_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class FeedbackRow(Base):
    """One "was this case helpful for this query" vote.

    ``case_id`` is deliberately no foreign key: feedback outlives the removal
    of its case, and recording it never touches the case tables.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    query: Mapped[str] = mapped_column(Text)
    case_id: Mapped[str] = mapped_column(String(120), index=True)
    helpful: Mapped[bool] = mapped_column(Boolean)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChatSessionRow(Base):
    """The state of one chat session; gone for readers once ``expires_at`` passes."""

    __tablename__ = "chat_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    language: Mapped[str] = mapped_column(String(8), server_default="en")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class GitHubAnswerRow(Base):
    """The GitHub issue bot's answer to one issue: its primary key is the claim.

    A row is inserted (``state`` 'claimed', a random ``claim`` token) before the
    comment is posted, so two deliveries cannot both post; it becomes 'posted'
    with the comment's id and URL, or is deleted when the post fails.
    ``repo`` is 'owner/name' in lower case (GitHub names ignore case).
    """

    __tablename__ = "github_answers"

    repo: Mapped[str] = mapped_column(String(140), primary_key=True)
    issue_number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16))
    claim: Mapped[str] = mapped_column(String(64))
    delivery_id: Mapped[str | None] = mapped_column(String(100))
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    comment_url: Mapped[str | None] = mapped_column(Text)
    case_ids: Mapped[list[str] | None] = mapped_column(JSON)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    posted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GitHubDeliveryRow(Base):
    """A webhook delivery (``X-GitHub-Delivery``) the bot saw through: a redelivery does nothing."""

    __tablename__ = "github_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    repo: Mapped[str] = mapped_column(String(140))
    issue_number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    handled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
cases_table = CaseRow.__table__
case_threads_table = CaseThreadRow.__table__
meta_table = MetaRow.__table__
feedback_table = FeedbackRow.__table__
chat_sessions_table = ChatSessionRow.__table__
github_answers_table = GitHubAnswerRow.__table__
github_deliveries_table = GitHubDeliveryRow.__table__
