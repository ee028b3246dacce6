"""Initial schema: the cases table and the kbq_meta key/value table.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

The ``revision`` meta row is created here so writers on PostgreSQL always
have a row to lock (``SELECT ... FOR UPDATE``); '0' means "never written".
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=True),
        sa.Column("model_family", sa.String(length=80), nullable=True),
        sa.Column("model_version", sa.String(length=80), nullable=True),
        sa.Column("framework", sa.String(length=80), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
    )
    op.create_index("ix_cases_status", "cases", ["status"])
    op.create_index("ix_cases_model_family", "cases", ["model_family"])
    op.create_index("ix_cases_framework", "cases", ["framework"])
    meta = op.create_table(
        "kbq_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_kbq_meta"),
    )
    op.bulk_insert(meta, [{"key": "revision", "value": "0"}])


def downgrade() -> None:
    op.drop_table("kbq_meta")
    op.drop_index("ix_cases_framework", table_name="cases")
    op.drop_index("ix_cases_model_family", table_name="cases")
    op.drop_index("ix_cases_status", table_name="cases")
    op.drop_table("cases")
