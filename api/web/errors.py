"""API errors shown as pages when the request was for a page.

The API words every refusal once, as ``{"error": {"code", "message"}}``, whether it comes
from a check on the raw request (a query string with a control character, a body over the
cap), from request validation or from ``kb``. For a page, that JSON answer is replaced on
its way out by the search page showing the same status and message, with the person's
query back in the form when the page had read it.
"""

from __future__ import annotations

import json
from typing import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .pages import CHOICES_K, DEFAULT_K, QUERY_STATE
from .render import page

# Headers of the JSON answer that the page keeps (Connection: close after a 413, WWW-Authenticate...).
_REPLACED = {b"content-type", b"content-length"}


class HtmlErrors:
    """Pure ASGI middleware: JSON error answers to requests for pages become pages."""

    def __init__(self, app: ASGIApp, is_page: Callable[[str], bool]) -> None:
        self.app = app
        self.is_page = is_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_page(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body: list[bytes] = []

        async def to_page(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400 and _is_json(message):
                held = message
            elif held is None:
                await send(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _error_page(scope, held, b"".join(body))(scope, receive, send)

        await self.app(scope, receive, to_page)


def _is_json(start: Message) -> bool:
    return any(name == b"content-type" and value.startswith(b"application/json") for name, value in start["headers"])


def _error_page(scope: Scope, start: Message, body: bytes):
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = "the request failed"
    status = start["status"]
    kept = {name.decode("latin-1"): value.decode("latin-1") for name, value in start["headers"] if name not in _REPLACED}
    query = (scope.get("state") or {}).get(QUERY_STATE, "")
    return page(Request(scope), "search.html", status=status, headers=kept, title=f"Error {status} · kbq", query=query,
                k=DEFAULT_K, choices=CHOICES_K, result=None, error={"status": status, "message": message})
