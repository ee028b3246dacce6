"""The HTTP API: a thin FastAPI shell over :class:`kb.service.KnowledgeBase`.

Every error is JSON ``{"error": {"code", "message"}}``; ``kb`` errors map to
4xx codes, and anything unexpected to a 500 with no internals in the body.
No answer names where the database is (path, host, user): a database failure
is a 503 whose details go to the server log.
Case writes and feedback reads need ``Authorization: Bearer <KBQ_API_TOKEN>``;
with no token set on the server, both are refused (403), never open.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Iterator, Optional

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb import __version__
from kb.db.engine import sqlite_path
from kb.errors import CaseFileError, ConflictError, DatabaseError, KbqError, NotFoundError, QueryError
from kb.retriever import Filters as CoreFilters
from kb.service import KnowledgeBase
from kb.tokenize import count_tokens

from . import schemas
from .github_webhook import github_router
from .limits import BodyLimit, PlainQueryString
from .limits import error_response as _error

MODEL_NAME = "kbq"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: more than any case or conversation needs
log = logging.getLogger("kbq.api")


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": schemas.ErrorResponse} for status in statuses}


# Any request may get these: the checks on the raw body and query string run before routing.
TRANSPORT_ERRORS = _responses(400, 413, 422)
ERRORS = _responses(400, 401, 403, 404, 409, 413, 422, 503)


# One server-sent event of a streamed completion (before OpenAPI 3.2, an event stream's
# `schema` describes each event): `data` is a JSON chunk, or `[DONE]` at the end.
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _kbq_status(err: KbqError) -> tuple[int, str]:
    if isinstance(err, NotFoundError):
        return 404, "not_found"
    if isinstance(err, ConflictError):
        return 409, "conflict"
    if isinstance(err, (QueryError, CaseFileError)):
        return 422, "invalid_input"
    if isinstance(err, DatabaseError):
        return 503, "database_unavailable"
    return 400, "bad_request"


def create_app(kb: KnowledgeBase | None = None) -> FastAPI:
    """The app over ``kb`` (default: the database named by KBQ_DB, or the per-user one)."""
    knowledge = kb or KnowledgeBase()
    # Surrounding white space is never part of a token (a secret file or `echo` adds a newline),
    # and a header cannot carry it through, so a token kept with it could never match.
    token = (os.environ.get("KBQ_API_TOKEN") or "").strip() or None
    app = FastAPI(
        title="kbq",
        version=__version__,
        description="Case-based troubleshooting for LLM training runs: the closest documented incidents, "
        "why they matched, and the fixes that worked.\n\n"
        "Chat sessions belong to whoever holds their id: the server issues an unguessable `session_id` on a "
        "conversation's first turn and refuses (404) any id it did not issue or that has expired. Case writes "
        "and feedback reads need `Authorization: Bearer <KBQ_API_TOKEN>` and are off (403) on a server without "
        "a token. Bodies over 1 MiB get 413 however they are sent; query parameters must be UTF-8 (else 400), "
        "and text must hold no binary control characters (else 422).",
        docs_url=None, redoc_url=None,  # api.web serves /docs with local assets
    )
    app.state.kb = knowledge
    app.add_middleware(PlainQueryString)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    origins = [o.strip() for o in os.environ.get("KBQ_CORS_ORIGINS", "").split(",") if o.strip()]
    if origins:  # off unless configured; added last so that it is outermost and its headers reach every answer
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT"],
                           allow_headers=["Authorization", "Content-Type"])
    dialect = knowledge.url.split(":", 1)[0].split("+", 1)[0]
    # kb's messages name the database for the CLI's own user; to a client it is "the case base".
    file = sqlite_path(knowledge.url)
    locations = sorted({knowledge.describe(), knowledge.url, *([str(file)] if file else [])}, key=len, reverse=True)

    def unplaced(message: str) -> str:
        for where in locations:
            message = message.replace(where, "the case base")
        return message

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return _error(err.status, err.code, err.message, err.headers)

    @app.exception_handler(KbqError)
    async def kbq_error(_: Request, err: KbqError):
        status, code = _kbq_status(err)
        if isinstance(err, DatabaseError):  # its message names the file or the user, host and database
            log.warning("database unavailable: %s", err)
            return _error(status, code, "the database is unavailable; the server log has the details")
        return _error(status, code, unplaced(str(err)))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
        status = 413 if first.get("type") == "string_too_long" and where in ("query", "message") else 422
        return _error(status, "payload_too_large" if status == 413 else "invalid_request", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error(err.status_code, code, str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception):
        return _error(500, "internal_error", f"internal error ({type(err).__name__}); see the server log")

    def bearer_token(disabled_code: str, disabled_message: str) -> Callable[[Optional[str]], None]:
        """A dependency that wants the token; with none configured, what it guards is off (403), not open."""
        def require(authorization: Optional[str] = Header(None, description="Bearer <KBQ_API_TOKEN>")) -> None:
            if token is None:
                raise ApiError(403, disabled_code, disabled_message)
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                               {"WWW-Authenticate": "Bearer"})
        return require

    require_writer = bearer_token("writes_disabled", "writes are disabled on this server: set KBQ_API_TOKEN to enable them")
    # Feedback holds what users asked and wrote, so reading it takes the same token as writing cases.
    require_feedback_reader = bearer_token(
        "feedback_reads_disabled", "reading feedback is disabled on this server: set KBQ_API_TOKEN to enable it")

    # -- health ------------------------------------------------------------------------
    @app.get("/healthz", response_model=schemas.Health, responses=TRANSPORT_ERRORS, tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Ready, responses=ERRORS, tags=["health"])
    def readyz() -> dict[str, Any]:
        """Readiness: the database answers and the index is loaded. Names the kind of database, not where it is."""
        return {"status": "ready", **knowledge.readiness(), "database": dialect}

    # -- search ------------------------------------------------------------------------
    def _search(query: str, top_k: int, filters: schemas.Filters) -> dict[str, Any]:
        outcome = knowledge.search(query, k=top_k, filters=CoreFilters(**filters.model_dump()))
        return outcome.to_json()

    @app.post("/v1/query", response_model=schemas.SearchResponse, response_model_by_alias=True, responses=ERRORS, tags=["search"])
    def query(request: schemas.QueryRequest) -> dict[str, Any]:
        """Rank the cases for a symptom: the same JSON as `kbq --json`."""
        return _search(request.query, request.top_k, request.filters)

    @app.get("/v1/query", response_model=schemas.SearchResponse, response_model_by_alias=True, responses=ERRORS, tags=["search"])
    def query_link(
        q: str = Query(..., min_length=1, max_length=schemas.MAX_API_QUERY, description="the symptom"),
        k: int = Query(5, ge=1, le=50),
        model: Optional[str] = Query(None, max_length=100),
        framework: Optional[str] = Query(None, max_length=100),
        tag: Optional[str] = Query(None, max_length=100),
    ) -> dict[str, Any]:
        """The same search, for links: /v1/query?q=gemma3+loss+70+zero3"""
        return _search(q, k, schemas.Filters(model=model, framework=framework, tag=tag))

    # -- cases -------------------------------------------------------------------------
    @app.get("/v1/cases", response_model=schemas.CasePage, responses=ERRORS, tags=["cases"])
    def list_cases(
        limit: int = Query(20, ge=1, le=200),
        offset: int = Query(0, ge=0, le=1_000_000),
        model: Optional[str] = Query(None, max_length=100),
        framework: Optional[str] = Query(None, max_length=100),
        tag: Optional[str] = Query(None, max_length=100),
        status: Optional[str] = Query(None, pattern="^(reviewed|draft)$"),
    ) -> dict[str, Any]:
        total, items = knowledge.page(limit=limit, offset=offset, filters=CoreFilters(model, framework, tag), status=status)
        return {"total": total, "limit": limit, "offset": offset, "items": items}

    CaseId = Path(..., min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._-]+$")
    # As in search engines: a write returns once committed; `wait_for` also waits until
    # searches see it (the index refresh of a 10k-case base takes a few seconds).
    RefreshParam = Query("false", pattern="^(false|wait_for)$",
                         description="'false': answer once committed, searchable after the index refresh; "
                                     "'wait_for': answer once searches see the write")

    @app.get("/v1/cases/{case_id}", response_model=dict[str, Any], responses=ERRORS, tags=["cases"])
    def get_case(case_id: str = CaseId) -> dict[str, Any]:
        return knowledge.get(case_id)

    @app.post("/v1/cases", response_model=schemas.CaseWritten, status_code=201, responses=ERRORS, tags=["cases"],
              dependencies=[Depends(require_writer)])
    def create_case(case: dict[str, Any] = Body(..., description="a case, as in cases/*.yaml"),
                    refresh: str = RefreshParam) -> dict[str, Any]:
        """Add a case (the CBR *retain* step). Validated like `kbq ingest`. Answers once the case
        is committed; searches find it when the index refresh this starts ends, or at once with
        `refresh=wait_for`."""
        stored, created = knowledge.put_case(case, create=True, wait=refresh == "wait_for")
        return {"created": created, "case": stored, "searchable": refresh == "wait_for"}

    @app.put("/v1/cases/{case_id}", response_model=schemas.CaseWritten, tags=["cases"],
             responses={**ERRORS, 201: {"model": schemas.CaseWritten, "description": "the id was new: the case was added"}},
             dependencies=[Depends(require_writer)])
    def revise_case(response: Response, case_id: str = CaseId, case: dict[str, Any] = Body(...),
                    refresh: str = RefreshParam) -> dict[str, Any]:
        """Revise a case under its id (200), or add it if the id is new (201). Searchable as for POST."""
        stored, created = knowledge.put_case(case, case_id=case_id, wait=refresh == "wait_for")
        if created:
            response.status_code = 201
        return {"created": created, "case": stored, "searchable": refresh == "wait_for"}

    # -- feedback ----------------------------------------------------------------------
    @app.post("/v1/feedback", response_model=schemas.FeedbackOut, status_code=201, responses=ERRORS, tags=["feedback"])
    def add_feedback(request: schemas.FeedbackRequest) -> dict[str, Any]:
        """Record whether a case helped. Stored and listed (`kbq feedback`); not used in ranking."""
        return _feedback_json(knowledge.add_feedback(request.query, request.case_id, request.helpful, request.comment))

    @app.get("/v1/feedback", response_model=list[schemas.FeedbackOut], responses=ERRORS, tags=["feedback"],
             dependencies=[Depends(require_feedback_reader)])
    def list_feedback(limit: int = Query(50, ge=1, le=500),
                      case_id: Optional[str] = Query(None, max_length=120)) -> list[dict[str, Any]]:
        """The newest feedback, newest first. It holds users' queries and comments, so it needs the
        write token (401 without it; 403 when the server has none, as for writes)."""
        return [_feedback_json(f) for f in knowledge.feedback(limit=limit, case_id=case_id)]

    # -- chat --------------------------------------------------------------------------
    @app.post("/v1/chat", response_model=schemas.ChatResponse, responses=ERRORS, tags=["chat"])
    def chat(request: schemas.ChatRequest) -> dict[str, Any]:
        """One turn of a conversation. Omit `session_id` to start one: the answer carries a new,
        unguessable `session_id` issued by the server; send it back to continue, and keep it to
        yourself, since whoever holds it holds the conversation. An id the server did not issue,
        or whose session expired (by default a day after its last turn), is refused with 404
        ("unknown or expired session") and touches no conversation: start a new one."""
        return knowledge.chat().handle(request.message, request.session_id).to_json()

    @app.get("/v1/models", response_model=schemas.ModelList, responses=TRANSPORT_ERRORS, tags=["openai"])
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "kbq"}]}

    @app.post("/v1/chat/completions", response_model=schemas.ChatCompletion, tags=["openai"], responses={
        **ERRORS, 200: {"description": "the completion; with `stream: true`, server-sent chunks ending in `data: [DONE]`",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}}}})
    def chat_completions(request: schemas.ChatCompletionRequest):
        """OpenAI-compatible chat, stateless: the client sends the whole conversation each time, and
        kbq answers its last user message as `/v1/chat` would in a session that had the same turns
        (the question each earlier reply ended with is read from the assistant messages). `usage`
        counts kbq tokens: a Chinese character, or a run of other letters or digits."""
        if request.model != MODEL_NAME:
            raise ApiError(404, "model_not_found", f"model '{request.model}' does not exist; use '{MODEL_NAME}'")
        turns = _conversation(request.messages)
        if not turns:
            raise ApiError(422, "invalid_request", "messages: no user message with text")
        turn = knowledge.chat().complete(turns)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = _usage([_text(m.content) for m in request.messages], turn.reply)
        if request.stream:
            with_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(_stream(completion_id, created, turn.reply, usage if with_usage else None),
                                     media_type="text/event-stream")
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": MODEL_NAME,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.reply}, "finish_reason": "stop"}],
            "usage": usage,
        }

    app.include_router(github_router(knowledge))  # POST /v1/github/webhook: the GitHub issue bot

    from .web import attach as attach_web  # here: it imports this module

    attach_web(app)  # the pages, the docs with local assets; last, so its error pages wrap every refusal
    return app


def _text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
                         and isinstance(part.get("text"), str))
    return ""


def _usage(prompts: list[str], reply: str) -> dict[str, int]:
    """OpenAI's usage, in kbq's tokens (kb.tokenize.count_tokens: a Chinese character or a word
    is one): the prompt is every message the client sent, the completion the reply."""
    prompt_tokens, completion_tokens = sum(count_tokens(p) for p in prompts), count_tokens(reply)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _conversation(messages: list[schemas.ChatMessage]) -> list[tuple[str, str | None]]:
    """The user's messages with text, each with the assistant's reply to it (the assistant messages
    up to the next user message), or None where the client sent none back."""
    turns: list[tuple[str, list[str]]] = []
    for message in messages:
        if message.role == "user":
            turns.append((_text(message.content), []))  # kept while its replies are collected, even with no text
        elif message.role == "assistant" and turns:
            turns[-1][1].append(_text(message.content))
    return [(text, "\n\n".join(replies) if replies else None) for text, replies in turns if text.strip()]


def _stream(completion_id: str, created: int, reply: str, usage: dict[str, int] | None = None) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, one paragraph per chunk, then [DONE]. Given
    ``usage`` (the client asked with stream_options.include_usage), every chunk has a null
    `usage` and one more chunk, with no choices, carries it before [DONE], as OpenAI sends it."""
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_NAME,
                "choices": choices, **({"usage": None} if usage is not None else {}), **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(content: dict[str, Any], finish: str | None = None) -> str:
        return chunk([{"index": 0, "delta": content, "finish_reason": finish}])

    yield delta({"role": "assistant", "content": ""})
    parts = reply.split("\n\n")
    for i, part in enumerate(parts):
        yield delta({"content": part + ("\n\n" if i < len(parts) - 1 else "")})
    yield delta({}, "stop")
    if usage is not None:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


def _feedback_json(feedback) -> dict[str, Any]:
    return {"id": feedback.id, "query": feedback.query, "case_id": feedback.case_id, "helpful": feedback.helpful,
            "comment": feedback.comment, "created_at": feedback.created_at.isoformat()}
