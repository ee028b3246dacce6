"""Checks on the raw request, made before FastAPI routes or parses it.

Both are pure ASGI middleware: the body cap has to count bytes as they are read
(a chunked body has no Content-Length to check up front), and the query string
has to be seen as bytes, before Starlette decodes it with replacement characters.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kb.querytext import control_character

# Sent with a 413: the rest of the body is left unread, so the connection is not at a
# request boundary and cannot carry another request.
_CLOSE = {"Connection": "close"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The shape of every error the API gives: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    """Raised into the app by ``receive`` once the body passes the cap."""


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413, however it is framed.

    A Content-Length over the cap is refused before the app runs. Otherwise the bytes are
    counted as the app reads them: past the cap the read fails, whatever the app makes of
    that failure is dropped, and the 413 goes out in its place with the rest unread.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send, f"request body is {length} bytes; the limit is {self.limit}")
            return
        read = 0
        over = started = False

        async def counted_receive() -> Message:
            nonlocal read, over
            if over:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a body cut short: the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, f"request body is over the limit of {self.limit} bytes")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        await error_response(413, "payload_too_large", message, _CLOSE)(scope, receive, send)


class PlainQueryString:
    """Refuse query parameters that are not UTF-8 (400) or hold binary control characters (422).

    Starlette would decode bad bytes to U+FFFD, so a GET search ran on replacement characters
    where a POST of the same bytes is refused; and a NUL would reach the database, which
    PostgreSQL refuses and SQLite does not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = query_string_problem(scope["query_string"]) if scope["type"] == "http" and scope.get("query_string") else None
        if refusal is not None:
            await error_response(*refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def query_string_problem(raw: bytes) -> tuple[int, str, str] | None:
    """(status, code, message) for the first bad parameter of a raw query string, or None.

    Split and unquoted the way Starlette does (``&`` between pairs, ``+`` for a space), but to bytes.
    """
    for pair in raw.split(b"&"):
        name, _, value = pair.partition(b"=")
        for part in (name, value):
            try:
                text = _unquote(part).decode("utf-8")
            except UnicodeDecodeError as err:
                return 400, "bad_request", (f"query parameter {_label(name)} is not valid UTF-8 "
                                            f"(undecodable byte 0x{err.object[err.start]:02x} at byte {err.start})")
            problem = control_character(text)
            if problem is not None:
                return 422, "invalid_request", f"query parameter {_label(name)} {problem}"
    return None


def _unquote(part: bytes) -> bytes:
    return unquote_to_bytes(part.replace(b"+", b" "))


def _label(name: bytes) -> str:
    """How a message names a parameter: quoted, or escaped when the name itself is the bad part."""
    try:
        decoded = _unquote(name).decode("utf-8")
    except UnicodeDecodeError:
        return f"name {name.decode('latin-1')!r}"
    return f"'{decoded}'" if control_character(decoded) is None else f"name {decoded!r}"
