"""What the GitHub issue bot answered: one row per answered issue, one per handled delivery.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01 00:00:00

``github_answers`` is keyed by (repo, issue_number): inserting that key is how
a delivery claims an issue before posting, so two deliveries cannot both post.
``github_deliveries`` keeps the ``X-GitHub-Delivery`` ids seen through, so a
redelivered webhook does nothing twice. Neither touches the case base's
``revision``.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "github_answers",
        sa.Column("repo", sa.String(length=140), nullable=False),
        sa.Column("issue_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claim", sa.String(length=64), nullable=False),
        sa.Column("delivery_id", sa.String(length=100), nullable=True),
        sa.Column("comment_id", sa.BigInteger(), nullable=True),
        sa.Column("comment_url", sa.Text(), nullable=True),
        sa.Column("case_ids", sa.JSON(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("repo", "issue_number", name="pk_github_answers"),
    )
    op.create_table(
        "github_deliveries",
        sa.Column("delivery_id", sa.String(length=100), nullable=False),
        sa.Column("repo", sa.String(length=140), nullable=False),
        sa.Column("issue_number", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_github_deliveries"),
    )


def downgrade() -> None:
    op.drop_table("github_deliveries")
    op.drop_table("github_answers")
