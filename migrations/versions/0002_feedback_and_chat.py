"""Feedback on answers and chat session state.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00

Both tables are independent of ``cases``: ``feedback.case_id`` has no
foreign key so a vote survives the removal of its case, and neither table
is part of the case base's ``revision``.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("case_id", sa.String(length=120), nullable=False),
        sa.Column("helpful", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_case_id", "feedback", ["case_id"])
    op.create_table(
        "chat_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("language", sa.String(length=8), server_default="en", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chat_sessions"),
    )
    op.create_index("ix_chat_sessions_expires_at", "chat_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_chat_sessions_expires_at", table_name="chat_sessions")
    op.drop_table("chat_sessions")
    op.drop_index("ix_feedback_case_id", table_name="feedback")
    op.drop_table("feedback")
