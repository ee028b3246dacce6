"""The bot: answer an opened issue with one comment, at most once, whatever GitHub redelivers.

Order of work for a delivery, cheapest refusal first:

1. a delivery id already handled does nothing (a redelivery);
2. an issue already answered does nothing (another delivery, or ``kbq github answer --post``);
3. the issue is searched; not confident, nothing is posted;
4. the issue is claimed in the database (one claim wins, see kb/db/github_answers.py);
5. the issue's comments are read for the bot's marker: a comment posted by a process
   that died before recording it is recorded now instead of being posted twice;
6. the comment is posted; on any failure the claim is released (GitHub's redelivery,
   or the next run, can post later) and the error goes up; on success the answer and
   the delivery are recorded in one transaction.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import DatabaseError
from .comment import Suggestion, bot_settings, is_bot_answer, suggestion
from .issue import Issue, IssueRef, search_text
from .rest import Comment, GitHubClient

if TYPE_CHECKING:
    from ..db.github_answers import GitHubAnswerStore
    from ..service import KnowledgeBase

log = logging.getLogger("kbq.github")

POSTED = "posted"
NOT_CONFIDENT = "not_confident"
ALREADY_ANSWERED = "already_answered"
DUPLICATE_DELIVERY = "duplicate_delivery"
IN_PROGRESS = "in_progress"
SEARCH_DEPTH = 10  # results searched per issue; the comment lists the confident ones among them


@dataclass(frozen=True)
class Result:
    status: str
    message: str
    issue: IssueRef
    comment_url: str | None = None
    suggestion: Suggestion | None = None

    @property
    def case_ids(self) -> list[str]:
        return self.suggestion.case_ids if self.suggestion and self.status == POSTED else []


class IssueBot:
    """Answers issues of any repository the client's token may comment on, from ``kb``."""

    def __init__(self, kb: KnowledgeBase, client: GitHubClient):
        self.kb = kb
        self.client = client
        self._answers: GitHubAnswerStore | None = None
        self._opening = threading.Lock()

    def store(self) -> GitHubAnswerStore:
        """The record of answers (one engine for the bot's lifetime), in the case base's database."""
        with self._opening:
            if self._answers is None:
                from ..db.github_answers import GitHubAnswerStore

                self.kb.ensure_ready()  # the default database is migrated here, as for every first use
                self._answers = GitHubAnswerStore(self.kb.url)
            return self._answers

    def suggest(self, issue: Issue) -> Suggestion:
        """Search the issue and decide; no side effect."""
        return suggestion(issue, self.kb.search(search_text(issue), k=SEARCH_DEPTH))

    def answer(self, issue: Issue, delivery_id: str | None = None) -> Result:
        """Comment on ``issue`` if kbq is confident and nobody has; see the module docstring."""
        ref, store = issue.ref, self.store()
        if delivery_id is not None:
            seen = store.delivery(delivery_id)
            if seen is not None:
                return Result(DUPLICATE_DELIVERY, f"delivery {delivery_id} was handled already ({seen.outcome})", ref)
        earlier = store.answer(ref.full_name, ref.number)
        if earlier is not None and earlier.posted:
            return self._already(ref, earlier.comment_url, delivery_id)
        found = self.suggest(issue)
        if not found.confident:
            self._record(delivery_id, ref, NOT_CONFIDENT)
            return Result(NOT_CONFIDENT, f"no comment on {ref}: not confident: {found.reason}", ref, suggestion=found)
        return self._post(found, delivery_id)

    def _post(self, found: Suggestion, delivery_id: str | None) -> Result:
        ref, store = found.issue.ref, self.store()
        claim = store.claim(ref.full_name, ref.number, delivery_id, float(bot_settings()["claim_lease_seconds"]))
        if claim is None:
            current = store.answer(ref.full_name, ref.number)
            if current is not None and current.posted:
                return self._already(ref, current.comment_url, delivery_id)
            return Result(IN_PROGRESS, f"{ref} is being answered by another delivery right now; nothing posted", ref)
        try:
            comment = self._earlier_comment(ref)
            status = ALREADY_ANSWERED if comment is not None else POSTED
            if comment is None:
                comment = self.client.comment(ref, found.body or "")
                log.info("commented on %s: %s (cases %s)", ref, comment.url, ", ".join(found.case_ids))
        except BaseException:
            self._release(ref, claim)
            raise
        store.complete(ref.full_name, ref.number, claim, comment_id=comment.id, comment_url=comment.url,
                       case_ids=found.case_ids, delivery_id=delivery_id, outcome=status)
        if status == ALREADY_ANSWERED:
            return Result(status, f"{ref} already has kbq's answer: {comment.url}; nothing posted", ref, comment.url)
        return Result(POSTED, f"commented on {ref}: {comment.url}", ref, comment.url, found)

    def _earlier_comment(self, ref: IssueRef) -> Comment | None:
        """The bot's own earlier comment on the issue, if one was posted but never recorded."""
        for comment in self.client.comments(ref, int(bot_settings()["comment_pages"])):
            if is_bot_answer(comment.body):
                return comment
        return None

    def _already(self, ref: IssueRef, url: str | None, delivery_id: str | None) -> Result:
        self._record(delivery_id, ref, ALREADY_ANSWERED)
        return Result(ALREADY_ANSWERED, f"{ref} already has kbq's answer: {url}; nothing posted", ref, url)

    def _record(self, delivery_id: str | None, ref: IssueRef, outcome: str) -> None:
        if delivery_id is not None:
            self.store().record_delivery(delivery_id, ref.full_name, ref.number, outcome)

    def _release(self, ref: IssueRef, claim: str) -> None:
        """Give the claim back after a failed post; if even that fails, the lease frees it later."""
        try:
            self.store().release(ref.full_name, ref.number, claim)
        except DatabaseError as err:
            log.warning("could not release the claim on %s (it expires with its lease): %s", ref, err)


def client_from_env(environ: dict[str, str] | None = None) -> GitHubClient:
    """A client for ``KBQ_GITHUB_API_URL`` as ``KBQ_GITHUB_TOKEN`` (anonymous without one)."""
    from .rest import api_url_from_env, token_from_env

    return GitHubClient(api_url_from_env(environ), token_from_env(environ), float(bot_settings()["api_timeout_seconds"]))
