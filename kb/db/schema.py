"""The kbq tables, as SQLAlchemy ORM classes.

The whole case lives in ``cases.document`` (JSON) so the pydantic model stays
the single definition of a case; the other columns are copies of the fields
we filter on. ``sqlalchemy.JSON`` keeps SQLite and PostgreSQL identical.
Migration ``0001`` must create exactly this (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, String, Text
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


class MetaRow(Base):
    """Key/value facts about the case base; ``revision`` changes on every write."""

    __tablename__ = "kbq_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


metadata = Base.metadata
cases_table = CaseRow.__table__
meta_table = MetaRow.__table__
