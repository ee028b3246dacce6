"""Request and response models of the HTTP API (they make the OpenAPI schema at /docs).

Requests reject unknown fields, except the OpenAI-compatible endpoint, which
must accept the extra parameters existing chat clients send.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from kb.chat import SESSION_ID
from kb.querytext import control_character

# 8 KiB of text: a pasted issue with its environment block; the CLI allows more for local use.
MAX_API_QUERY = 8192
SESSION_PATTERN = SESSION_ID.pattern


def _plain(text: str) -> str:
    problem = control_character(text)
    if problem is not None:
        raise PydanticCustomError("control_character", problem)
    return text


# Free text the API stores or looks up: SQLite would keep a NUL that PostgreSQL refuses, so it is refused here.
PlainText = Annotated[str, AfterValidator(_plain)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Filters(Strict):
    model: Optional[PlainText] = Field(None, max_length=100, description="model version (gemma-3) or family (qwen)")
    framework: Optional[PlainText] = Field(None, max_length=100)
    tag: Optional[PlainText] = Field(None, max_length=100)


class QueryRequest(Strict):
    query: str = Field(..., min_length=1, max_length=MAX_API_QUERY, description="the symptom, any language")
    top_k: int = Field(5, ge=1, le=50)
    filters: Filters = Field(default_factory=Filters)


class MatchedTerm(BaseModel):
    term: str
    contribution: float


class TextScore(BaseModel):
    score: float
    problem_score: float
    weight: float
    contribution: float
    matched_terms: list[MatchedTerm]


class FeatureScore(BaseModel):
    name: str
    query: Any
    case: Any
    similarity: float
    weight: float
    contribution: float


class SemanticScore(BaseModel):
    cosine: float = Field(description="cosine of the query and the case embedding (mean of the case's texts)")
    weight: float
    best_text_cosine: float = Field(description="cosine of the query and the case's closest single text")
    best_text_weight: float
    contribution: float = Field(description="weight * cosine + best_text_weight * best_text_cosine")


class Breakdown(BaseModel):
    text: TextScore
    semantic: Optional[SemanticScore] = Field(None, description="null when the semantic stage is off")
    features: list[FeatureScore]


class Result(BaseModel):
    rank: int
    id: str
    title: str
    score: float
    confident: bool
    sources: list[str]
    breakdown: Breakdown
    case: dict[str, Any] = Field(description="the full case, as `kbq show --json` prints it")


class RecommendedFix(BaseModel):
    action: str
    confirmed: bool
    support: float
    cases: list[str]
    key: Optional[str] = None


class Parsed(BaseModel):
    features: dict[str, list[Any]]
    unknown_terms: list[str]


class SearchResponse(BaseModel):
    """The same document `kbq --json` prints (schema kbq.search/1)."""

    model_config = ConfigDict(populate_by_name=True)
    schema_: str = Field(..., alias="schema")
    query: str
    parsed: Parsed
    filters: dict[str, str]
    abstained: bool
    abstain_reason: Optional[str] = Field(None, description="why the best result is not confident")
    confidence: float = Field(description="probability that the top result is the user's problem")
    threshold: float
    case_count: int
    results: list[Result]
    recommended_fixes: list[RecommendedFix]


class CasePage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[dict[str, Any]]


class CaseWritten(BaseModel):
    created: bool
    case: dict[str, Any]
    searchable: bool = Field(..., description="whether searches already find this version "
                             "(always true with refresh=wait_for; otherwise once the index refresh ends)")


class FeedbackRequest(Strict):
    query: str = Field(..., min_length=1, max_length=MAX_API_QUERY)
    case_id: PlainText = Field(..., min_length=1, max_length=120)
    helpful: bool
    comment: Optional[PlainText] = Field(None, max_length=4000, description="plain text: tabs and line breaks, no other control characters")


class FeedbackOut(BaseModel):
    id: int
    query: str
    case_id: str
    helpful: bool
    comment: Optional[str]
    created_at: str


class ChatRequest(Strict):
    session_id: Optional[str] = Field(
        None, pattern=SESSION_PATTERN,
        description="omit to start a conversation; to continue it, the session_id the server issued in its answer "
        "(an id it did not issue, or an expired one, gets 404)")
    message: str = Field(..., min_length=1, max_length=MAX_API_QUERY)


class Question(BaseModel):
    feature: str
    text: str
    options: list[str]


class ChatResponse(BaseModel):
    session_id: str = Field(description="issued by the server, unguessable: send it back to continue, share it with no one")
    language: str
    reply: str = Field(description="Markdown, in the language of the message")
    cases: list[Result]
    recommended_fixes: list[RecommendedFix]
    abstained: bool
    features: dict[str, list[Any]]
    question: Optional[Question]
    reset: bool


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    cases: int = Field(description="cases the index holds (searchable now)")
    index_version: str
    revision: Optional[str] = Field(description="the database's revision; it changes with every write")
    index_current: bool = Field(description="false while the index refresh after a write is still running")
    database: str = Field(description="the kind of database (sqlite, postgresql), never where it is")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Any] = None


class StreamOptions(Strict):
    """OpenAI's `stream_options`: its two keys, and like OpenAI's API, no others."""

    include_usage: Optional[StrictBool] = Field(
        None, description="true: a last chunk, with no choices, carries the usage before `[DONE]`")
    include_obfuscation: Optional[StrictBool] = Field(
        None, description="accepted for compatibility; kbq adds no obfuscation padding")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request; parameters kbq has no use for are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., max_length=100)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=200)
    stream: bool = False
    stream_options: Optional[StreamOptions] = Field(None, description="only with `stream: true`, as in OpenAI's API")

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: Optional[StreamOptions], info: ValidationInfo) -> Optional[StreamOptions]:
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError("stream_options_without_stream", "only allowed when stream is true")
        return value


class CompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class CompletionChoice(BaseModel):
    index: int
    message: CompletionMessage
    finish_reason: Literal["stop"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]
