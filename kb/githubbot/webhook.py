"""A GitHub webhook delivery: is it GitHub's, and what does it ask for?

GitHub signs each delivery with the webhook's secret: the ``X-Hub-Signature-256``
header is ``sha256=`` and the hex HMAC-SHA256 of the raw body. The body is
checked before it is parsed, so nothing unsigned is even read as JSON.
``X-GitHub-Event`` names the event (``ping`` when the webhook is created,
``issues`` for issue activity); ``X-GitHub-Delivery`` identifies the delivery,
and a redelivery carries the same id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from ..errors import KbqError
from .issue import Issue, MAX_ISSUE_NUMBER, make_ref, valid_number

SIGNATURE_PREFIX = "sha256="
MAX_DELIVERY_ID = 100  # GitHub's ids are 36-character GUIDs; the column holds 100


class PayloadError(KbqError):
    """A signed delivery that is not what GitHub sends: ``status`` 400 (not JSON) or 422 (fields)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (compared in constant time)."""
    if not secret or not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode("ascii"), header.strip().encode("utf-8", "replace"))


@dataclass(frozen=True)
class Ping:
    """GitHub checking the webhook; ``events`` are those it is subscribed to."""

    events: list[str]

    @property
    def sends_issues(self) -> bool:
        return not self.events or "issues" in self.events or "*" in self.events


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class IssueOpened:
    issue: Issue
    delivery_id: str


def read_delivery(event: str | None, delivery_id: str | None, body: bytes) -> Ping | Ignored | IssueOpened:
    """What a signed delivery asks the bot to do, or PayloadError naming what is wrong."""
    if not event or not event.strip():
        raise PayloadError("missing X-GitHub-Event header: this endpoint takes GitHub webhook deliveries", 400)
    event = event.strip()
    payload = _json_object(body)
    if event == "ping":
        hook = payload.get("hook")
        events = hook.get("events") if isinstance(hook, dict) else None
        return Ping([e for e in events if isinstance(e, str)] if isinstance(events, list) else [])
    if event != "issues":
        return Ignored(f"event '{event[:60]}' is not handled; only issues/opened is")
    action = payload.get("action")
    if not isinstance(action, str):
        raise PayloadError("payload: field 'action': missing; an issues event always has one")
    if action != "opened":
        return Ignored(f"issues action '{action[:60]}' is not handled; only 'opened' is")
    delivery = (delivery_id or "").strip()
    if not delivery:
        raise PayloadError("missing X-GitHub-Delivery header: it identifies the delivery so a redelivery is not answered twice", 400)
    if len(delivery) > MAX_DELIVERY_ID or not delivery.isprintable():
        raise PayloadError(f"X-GitHub-Delivery header: expected a delivery id of at most {MAX_DELIVERY_ID} printable characters", 400)
    return IssueOpened(_issue(payload), delivery)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise PayloadError(f"body is not UTF-8 (undecodable byte at {err.start})", 400) from None
    except json.JSONDecodeError as err:
        raise PayloadError(f"body is not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                           "set the webhook's content type to application/json", 400) from None
    except RecursionError:
        raise PayloadError("body is not a GitHub payload: JSON nested too deeply", 400) from None
    if not isinstance(payload, dict):
        raise PayloadError(f"body: expected a JSON object, got {type(payload).__name__}", 400)
    return payload


def _issue(payload: dict[str, Any]) -> Issue:
    issue = _field(payload, "issue", dict)
    repository = _field(payload, "repository", dict)
    number = issue.get("number")
    if not valid_number(number):
        raise PayloadError(f"payload: field 'issue.number': expected an integer from 1 to {MAX_ISSUE_NUMBER}")
    title = _field(issue, "title", str, "issue.")
    if not title.strip():
        raise PayloadError("payload: field 'issue.title': empty")
    body = issue.get("body")
    if body is not None and not isinstance(body, str):
        raise PayloadError("payload: field 'issue.body': expected a string or null")
    full_name = _field(repository, "full_name", str, "repository.")
    owner, _, name = full_name.partition("/")
    ref = make_ref(owner, name, number)
    if ref is None:
        raise PayloadError(f"payload: field 'repository.full_name': expected 'owner/name', got {full_name[:150]!r}")
    url = issue.get("html_url")
    return Issue(ref, title, body or "", url if isinstance(url, str) else None)


def _field(data: dict[str, Any], name: str, kind: type, prefix: str = "") -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "a string"
        state = "missing" if value is None else f"expected {expected}"
        raise PayloadError(f"payload: field '{prefix}{name}': {state}")
    return value
