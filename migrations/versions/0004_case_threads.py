"""The thread keys of every case in a table of their own, filled for the cases already stored.

Revision ID: 0004
Revises: 0003
Create Date: 2025-04-01 00:00:00

``case_threads`` has one row per source of a case, filed under the digest of the
source's thread key (kb/threads.py), with an index on the digest: a write checks
whether another case documents one of its threads by looking up its own keys,
not by reading every stored case. The upgrade computes the rows of the stored
cases in Python, a batch of cases at a time, in the upgrade's transaction. A
downgrade drops the table; upgrading again fills it again from the cases.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

from kb.threads import key_digest, thread_key

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BATCH = 1000  # cases read and rows written per round: memory holds a batch, not the base


def upgrade() -> None:
    threads = op.create_table(
        "case_threads",
        sa.Column("case_id", sa.String(length=120), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("key_digest", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("case_id", "position", name="pk_case_threads"),
    )
    op.create_index("ix_case_threads_key_digest", "case_threads", ["key_digest"])
    _backfill(threads)


def downgrade() -> None:
    op.drop_index("ix_case_threads_key_digest", table_name="case_threads")
    op.drop_table("case_threads")


def _backfill(threads: sa.Table) -> None:
    """Rows for every stored case, read in id order a batch at a time (keyset paging)."""
    if context.is_offline_mode():
        raise RuntimeError("migration 0004 computes thread keys in Python: it cannot be written out as SQL (--sql); "
                           "run it against the database")
    conn = op.get_bind()
    cases = sa.table("cases", sa.column("id", sa.String), sa.column("document", sa.JSON))
    last = None
    while True:
        query = sa.select(cases.c.id, cases.c.document["sources"]).order_by(cases.c.id).limit(BATCH)
        if last is not None:
            query = query.where(cases.c.id > last)
        batch = conn.execute(query).all()
        if not batch:
            return
        rows = [{"case_id": case_id, "position": position, "source": source, "key_digest": key_digest(thread_key(source))}
                for case_id, sources in batch for position, source in enumerate(sources or [])]
        if rows:
            conn.execute(threads.insert(), rows)
        last = batch[-1][0]
