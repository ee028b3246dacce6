"""The HTTP API: a thin FastAPI shell over :class:`kb.service.KnowledgeBase`.

Every error is JSON ``{"error": {"code", "message"}}``; ``kb`` errors map to
4xx codes, and anything unexpected to a 500 with no internals in the body.
Writes need ``Authorization: Bearer <KBQ_API_TOKEN>``; with no token set on
the server, writes are refused (403), never open.
"""

from __future__ import annotations

import hmac
import json
import os
import time
import uuid
from typing import Any, Iterator, Optional

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb import __version__
from kb.errors import CaseFileError, ConflictError, DatabaseError, KbqError, NotFoundError, QueryError
from kb.retriever import Filters as CoreFilters
from kb.service import KnowledgeBase

from . import schemas

MODEL_NAME = "kbq"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: more than any case or conversation needs
ERRORS = {400: {"model": schemas.ErrorResponse}, 401: {"model": schemas.ErrorResponse}, 403: {"model": schemas.ErrorResponse},
          404: {"model": schemas.ErrorResponse}, 409: {"model": schemas.ErrorResponse}, 413: {"model": schemas.ErrorResponse},
          422: {"model": schemas.ErrorResponse}, 503: {"model": schemas.ErrorResponse}}


# One server-sent event of a streamed completion (before OpenAPI 3.2, an event stream's
# `schema` describes each event): `data` is a JSON chunk, or `[DONE]` at the end.
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


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
    token = os.environ.get("KBQ_API_TOKEN") or None
    app = FastAPI(
        title="kbq",
        version=__version__,
        description="Case-based troubleshooting for LLM training runs: the closest documented incidents, "
        "why they matched, and the fixes that worked.",
    )
    origins = [o.strip() for o in os.environ.get("KBQ_CORS_ORIGINS", "").split(",") if o.strip()]
    if origins:  # off unless configured
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, "payload_too_large", f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return _error(err.status, err.code, err.message, err.headers)

    @app.exception_handler(KbqError)
    async def kbq_error(_: Request, err: KbqError):
        status, code = _kbq_status(err)
        return _error(status, code, str(err))

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

    def require_writer(authorization: Optional[str] = Header(None, description="Bearer <KBQ_API_TOKEN>")) -> None:
        if token is None:
            raise ApiError(403, "writes_disabled", "writes are disabled on this server: set KBQ_API_TOKEN to enable them")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                           {"WWW-Authenticate": "Bearer"})

    # -- health ------------------------------------------------------------------------
    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Ready, responses=ERRORS, tags=["health"])
    def readyz() -> dict[str, Any]:
        """Readiness: the database answers and the index is loaded."""
        return {"status": "ready", **knowledge.readiness()}

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

    @app.get("/v1/cases/{case_id}", response_model=dict[str, Any], responses=ERRORS, tags=["cases"])
    def get_case(case_id: str = CaseId) -> dict[str, Any]:
        return knowledge.get(case_id)

    @app.post("/v1/cases", response_model=schemas.CaseWritten, status_code=201, responses=ERRORS, tags=["cases"],
              dependencies=[Depends(require_writer)])
    def create_case(case: dict[str, Any] = Body(..., description="a case, as in cases/*.yaml")) -> dict[str, Any]:
        """Add a case (the CBR *retain* step). Validated like `kbq ingest`; answers include it at once."""
        stored, created = knowledge.put_case(case, create=True)
        return {"created": created, "case": stored}

    @app.put("/v1/cases/{case_id}", response_model=schemas.CaseWritten, tags=["cases"],
             responses={**ERRORS, 201: {"model": schemas.CaseWritten, "description": "the id was new: the case was added"}},
             dependencies=[Depends(require_writer)])
    def revise_case(response: Response, case_id: str = CaseId, case: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Revise a case under its id (200), or add it if the id is new (201)."""
        stored, created = knowledge.put_case(case, case_id=case_id)
        if created:
            response.status_code = 201
        return {"created": created, "case": stored}

    # -- feedback ----------------------------------------------------------------------
    @app.post("/v1/feedback", response_model=schemas.FeedbackOut, status_code=201, responses=ERRORS, tags=["feedback"])
    def add_feedback(request: schemas.FeedbackRequest) -> dict[str, Any]:
        """Record whether a case helped. Stored and listed (`kbq feedback`); not used in ranking."""
        return _feedback_json(knowledge.add_feedback(request.query, request.case_id, request.helpful, request.comment))

    @app.get("/v1/feedback", response_model=list[schemas.FeedbackOut], responses=ERRORS, tags=["feedback"])
    def list_feedback(limit: int = Query(50, ge=1, le=500),
                      case_id: Optional[str] = Query(None, max_length=120)) -> list[dict[str, Any]]:
        return [_feedback_json(f) for f in knowledge.feedback(limit=limit, case_id=case_id)]

    # -- chat --------------------------------------------------------------------------
    @app.post("/v1/chat", response_model=schemas.ChatResponse, responses=ERRORS, tags=["chat"])
    def chat(request: schemas.ChatRequest) -> dict[str, Any]:
        """One turn of a conversation; send back `session_id` to continue it."""
        return knowledge.chat().handle(request.message, request.session_id).to_json()

    @app.get("/v1/models", response_model=schemas.ModelList, tags=["openai"])
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "kbq"}]}

    @app.post("/v1/chat/completions", response_model=schemas.ChatCompletion, tags=["openai"], responses={
        **ERRORS, 200: {"description": "the completion; with `stream: true`, server-sent chunks ending in `data: [DONE]`",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}}}})
    def chat_completions(request: schemas.ChatCompletionRequest):
        """OpenAI-compatible chat: the conversation's user messages go to the chat backend."""
        if request.model != MODEL_NAME:
            raise ApiError(404, "model_not_found", f"model '{request.model}' does not exist; use '{MODEL_NAME}'")
        user_messages = [_text(m.content) for m in request.messages if m.role == "user"]
        user_messages = [m for m in user_messages if m.strip()]
        if not user_messages:
            raise ApiError(422, "invalid_request", "messages: no user message with text")
        turn = knowledge.chat().complete(user_messages)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            return StreamingResponse(_stream(completion_id, created, turn.reply), media_type="text/event-stream")
        prompt_tokens = sum(len(m.split()) for m in user_messages)
        completion_tokens = len(turn.reply.split())
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": MODEL_NAME,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


def _text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
                         and isinstance(part.get("text"), str))
    return ""


def _stream(completion_id: str, created: int, reply: str) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, one paragraph per chunk, then [DONE]."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_NAME,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    parts = reply.split("\n\n")
    for i, part in enumerate(parts):
        yield chunk({"content": part + ("\n\n" if i < len(parts) - 1 else "")})
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"


def _feedback_json(feedback) -> dict[str, Any]:
    return {"id": feedback.id, "query": feedback.query, "case_id": feedback.case_id, "helpful": feedback.helpful,
            "comment": feedback.comment, "created_at": feedback.created_at.isoformat()}
