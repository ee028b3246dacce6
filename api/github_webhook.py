"""``POST /v1/github/webhook``: the GitHub issue bot's door (a thin shell over kb.githubbot).

Off (403) unless ``KBQ_GITHUB_WEBHOOK_SECRET`` is set, as writes are without a
token. Every delivery must carry GitHub's signature of its raw body under that
secret (else 401, and nothing is read or done). A signed delivery answers 2xx
when handled (``ping``; an event it does not handle, ignored; an opened issue,
commented on or not), 4xx when it is not a GitHub payload, 502 when GitHub's API
failed the comment (nothing posted, so a redelivery can post it), and 409 while
another delivery for the same issue is being answered.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from kb.githubbot.answer import IN_PROGRESS, IssueBot, client_from_env
from kb.githubbot.rest import TOKEN_ENV, ConfigError, GitHubError
from kb.githubbot.webhook import Ignored, PayloadError, Ping, read_delivery, verify
from kb.service import KnowledgeBase

from . import schemas
from .limits import error_response

SECRET_ENV = "KBQ_GITHUB_WEBHOOK_SECRET"
PATH = "/v1/github/webhook"

# What the bot reads of a delivery; GitHub sends much more, all of it allowed.
PAYLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A GitHub webhook payload (`ping`, or `issues` with action `opened`), signed in X-Hub-Signature-256.",
    "properties": {
        "action": {"type": "string"},
        "issue": {"type": "object", "properties": {
            "number": {"type": "integer"}, "title": {"type": "string"},
            "body": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "html_url": {"type": "string"}}},
        "repository": {"type": "object", "properties": {"full_name": {"type": "string"}}},
        "hook": {"type": "object", "properties": {"events": {"type": "array", "items": {"type": "string"}}}},
    },
}


class WebhookAnswer(BaseModel):
    status: str = Field(..., description="pong, ignored, posted, not_confident, already_answered or duplicate_delivery")
    message: str
    issue: Optional[str] = Field(None, description="owner/repo#number, for an issues delivery")
    comment_url: Optional[str] = None
    cases: list[str] = Field(default_factory=list, description="the cases the comment lists, when one was posted")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": schemas.ErrorResponse} for status in statuses}


def github_router(knowledge: KnowledgeBase) -> APIRouter:
    """The webhook route over ``knowledge``; the secret is read once, like the API token."""
    secret = (os.environ.get(SECRET_ENV) or "").strip() or None
    router = APIRouter(tags=["github"])
    made: list[IssueBot] = []
    making = threading.Lock()

    def bot() -> IssueBot:
        with making:
            if not made:
                made.append(IssueBot(knowledge, client_from_env()))
        if made[0].client.token is None:
            raise ConfigError(f"the GitHub bot cannot comment: set {TOKEN_ENV} to a token allowed to write issues")
        return made[0]

    @router.post(PATH, response_model=WebhookAnswer, responses=_errors(400, 401, 403, 409, 413, 422, 502, 503),
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PAYLOAD_SCHEMA}}}})
    async def github_webhook(
        request: Request,
        signature: Optional[str] = Header(None, alias="X-Hub-Signature-256", description="sha256=HMAC of the body"),
        event: Optional[str] = Header(None, alias="X-GitHub-Event"),
        delivery: Optional[str] = Header(None, alias="X-GitHub-Delivery"),
    ):
        """GitHub webhook deliveries for the issue bot: when an issue is opened and kbq is confident
        that documented cases match it, the bot comments them once, with why they matched and the
        fixes that worked. Set up the webhook with content type application/json, the secret in
        KBQ_GITHUB_WEBHOOK_SECRET, and the Issues events."""
        if secret is None:
            return error_response(403, "github_bot_disabled",
                                  f"the GitHub bot is off on this server: set {SECRET_ENV} to the webhook's secret to enable it")
        body = await request.body()
        if not verify(secret, body, signature):
            return error_response(401, "invalid_signature", "missing or wrong X-Hub-Signature-256: the delivery is not "
                                  "signed with this server's webhook secret")
        try:
            wanted = read_delivery(event, delivery, body)
        except PayloadError as err:
            return error_response(err.status, "invalid_payload", str(err))
        if isinstance(wanted, Ping):
            note = "" if wanted.sends_issues else "; this webhook does not send Issues events, enable them for the bot to answer"
            return {"status": "pong", "message": f"kbq's GitHub bot is listening{note}"}
        if isinstance(wanted, Ignored):
            return {"status": "ignored", "message": wanted.reason}
        try:
            result = await run_in_threadpool(lambda: bot().answer(wanted.issue, wanted.delivery_id))
        except ConfigError as err:
            return error_response(503, "github_bot_misconfigured", str(err))
        except GitHubError as err:
            return error_response(502, "github_error", f"{err}; nothing was posted, redeliver to retry")
        if result.status == IN_PROGRESS:
            return error_response(409, "in_progress", result.message)
        return {"status": result.status, "message": result.message, "issue": str(result.issue),
                "comment_url": result.comment_url, "cases": result.case_ids}

    return router
