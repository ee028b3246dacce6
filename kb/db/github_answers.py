"""What the GitHub issue bot answered, kept beside the case base (migration 0003).

An issue is answered at most once. Before posting, a caller *claims* the issue:
it inserts the issue's row, whose primary key (repo, issue_number) lets only
one insert in, on SQLite and PostgreSQL alike (``ON CONFLICT DO NOTHING``). The
holder of the claim then posts and marks the row 'posted', or deletes the row
when the post failed so that a later delivery can try again. A claim whose
holder died (older than the lease) may be taken over; the bot looks for its own
earlier comment before posting, which covers a crash between post and record.

Handled webhook deliveries are recorded too, so a redelivery does nothing twice.
Like feedback and chat sessions, none of this touches the case base's revision.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, and_, delete, select, update

from kb.db._base import CONFLICT_INSERTS, SideStore, utc
from kb.db.schema import GitHubAnswerRow, GitHubDeliveryRow

CLAIMED = "claimed"
POSTED = "posted"
_ANSWERS = GitHubAnswerRow.__table__
_DELIVERIES = GitHubDeliveryRow.__table__


@dataclass(frozen=True)
class Answer:
    """The bot's row for one issue: claimed (a post under way) or posted."""

    repo: str
    issue_number: int
    state: str
    claim: str
    delivery_id: str | None
    comment_id: int | None
    comment_url: str | None
    case_ids: list[str]
    claimed_at: datetime
    posted_at: datetime | None

    @property
    def posted(self) -> bool:
        return self.state == POSTED


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    repo: str
    issue_number: int
    outcome: str
    handled_at: datetime


class GitHubAnswerStore(SideStore):
    """Claims, answers and handled deliveries in a kbq database (SQLite file or PostgreSQL URL)."""

    def answer(self, repo: str, issue_number: int) -> Answer | None:
        with self._read() as conn:
            row = conn.execute(select(_ANSWERS).where(_issue(repo, issue_number))).one_or_none()
        return None if row is None else _answer(row)

    def delivery(self, delivery_id: str) -> Delivery | None:
        with self._read() as conn:
            row = conn.execute(select(_DELIVERIES).where(_DELIVERIES.c.delivery_id == delivery_id)).one_or_none()
        return None if row is None else Delivery(row.delivery_id, row.repo, row.issue_number, row.outcome,
                                                 utc(row.handled_at))

    def claim(self, repo: str, issue_number: int, delivery_id: str | None, lease_seconds: float,
              now: datetime | None = None) -> str | None:
        """Claim the issue for one post; returns the claim token, or None when the issue is
        answered already or another live claim holds it. A claim older than ``lease_seconds``
        is taken over: its holder would have posted or released it long before."""
        now = _now(now)
        token = secrets.token_hex(16)
        values = {"repo": repo.lower(), "issue_number": issue_number, "state": CLAIMED, "claim": token,
                  "delivery_id": delivery_id, "comment_id": None, "comment_url": None, "case_ids": None,
                  "claimed_at": now, "posted_at": None}
        with self._write() as conn:
            if _insert_new(conn, GitHubAnswerRow, values, ["repo", "issue_number"]):
                return token
            stale = now - timedelta(seconds=lease_seconds)
            taken = conn.execute(
                update(GitHubAnswerRow)
                .where(_issue(repo, issue_number), GitHubAnswerRow.state == CLAIMED, GitHubAnswerRow.claimed_at < stale)
                .values(claim=token, delivery_id=delivery_id, claimed_at=now)
            ).rowcount
        return token if taken else None

    def release(self, repo: str, issue_number: int, token: str) -> bool:
        """Give up a claim (the post failed): the issue may be claimed again at once."""
        with self._write() as conn:
            return conn.execute(delete(GitHubAnswerRow).where(
                _issue(repo, issue_number), GitHubAnswerRow.state == CLAIMED, GitHubAnswerRow.claim == token)).rowcount > 0

    def complete(self, repo: str, issue_number: int, token: str, *, comment_id: int, comment_url: str,
                 case_ids: list[str], delivery_id: str | None, outcome: str, now: datetime | None = None) -> bool:
        """Mark the claimed issue answered by ``comment_id``, and the delivery handled, in one
        transaction. False when the claim was no longer held (taken over after its lease)."""
        now = _now(now)
        with self._write() as conn:
            done = conn.execute(
                update(GitHubAnswerRow)
                .where(_issue(repo, issue_number), GitHubAnswerRow.state == CLAIMED, GitHubAnswerRow.claim == token)
                .values(state=POSTED, comment_id=comment_id, comment_url=comment_url, case_ids=list(case_ids),
                        delivery_id=delivery_id, posted_at=now)
            ).rowcount > 0
            if delivery_id is not None:
                _record(conn, delivery_id, repo, issue_number, outcome, now)
        return done

    def record_delivery(self, delivery_id: str, repo: str, issue_number: int, outcome: str,
                        now: datetime | None = None) -> bool:
        """Remember that ``delivery_id`` was handled; False if it already was."""
        with self._write() as conn:
            return _record(conn, delivery_id, repo, issue_number, outcome, _now(now))

def _issue(repo: str, issue_number: int):
    return and_(GitHubAnswerRow.repo == repo.lower(), GitHubAnswerRow.issue_number == issue_number)


def _record(conn: Connection, delivery_id: str, repo: str, issue_number: int, outcome: str, now: datetime) -> bool:
    values = {"delivery_id": delivery_id, "repo": repo.lower(), "issue_number": issue_number, "outcome": outcome,
              "handled_at": now}
    return _insert_new(conn, GitHubDeliveryRow, values, ["delivery_id"])


def _insert_new(conn: Connection, table: type, values: dict, key: list[str]) -> bool:
    """Insert the row unless its key exists; whether it was inserted. Told by RETURNING, not by
    the row count, which the PostgreSQL driver does not report for an INSERT here."""
    statement = CONFLICT_INSERTS[conn.dialect.name](table).values(**values).on_conflict_do_nothing(index_elements=key)
    return conn.execute(statement.returning(*(getattr(table, name) for name in key))).first() is not None


def _answer(row) -> Answer:
    return Answer(row.repo, row.issue_number, row.state, row.claim, row.delivery_id, row.comment_id, row.comment_url,
                  list(row.case_ids or []), utc(row.claimed_at), utc(row.posted_at) if row.posted_at else None)


def _now(now: datetime | None) -> datetime:
    return datetime.now(timezone.utc) if now is None else utc(now)
