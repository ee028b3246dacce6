"""kbq as an MCP server, so coding agents (Claude Code, Cursor, Codex...) can consult the case base.

Three read-only tools answer with the documents the CLI prints with ``--json`` (built by the
same code: ``SearchOutcome.to_json``, ``KnowledgeBase.get``, ``kb.listing.case_rows``), as
structured content and as JSON text for clients that only read text. An expected failure
(unknown case id, unusable query, bad ``k``, a wrong argument) is a tool error (``isError``)
carrying the CLI's one-line ``kbq: error: ...`` message, so the agent can correct its call;
nothing reaches the client as a traceback.

One :class:`KnowledgeBase` serves the whole process: its index is loaded (or built) once at
start, before a client connects, and each call reuses it (``KnowledgeBase.index`` only
reloads after the case base changes). Over stdio the protocol owns standard output: the
start-up work runs with Python's stdout sent to stderr, and while serving the SDK points
file descriptor 1 at stderr too; kbq's notices and all logs go to stderr.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import sys
import threading
import traceback
from contextlib import redirect_stdout
from typing import Annotated, Any, Callable, Literal, Optional

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from api.schemas import SearchResponse
from kb import __version__
from kb.errors import KbqError
from kb.listing import ROW_FIELDS, case_rows
from kb.querytext import MAX_QUERY_CHARS, shown
from kb.retriever import Filters
from kb.service import KnowledgeBase

LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_PORT = 8765
HTTP_PATH = "/mcp"
MAX_K = 100  # kb.search refuses more (and fewer than 1) with its own message; the schema says so up front
BRIEF_VALUE = 60  # characters of a rejected argument value quoted in an error

INSTRUCTIONS = """\
kbq is a case base of documented incidents from LLM training and fine-tuning (loss NaN, zero, \
stuck or far too high; out-of-memory; trainer crashes; degraded models), each with its cause, \
the fixes that worked and links to the original issue threads. When a user's training run shows \
a symptom, call search_cases with what you know (error text, loss values, model, framework and \
versions, hardware, precision, ZeRO/FSDP, LoRA or full fine-tuning), English or Chinese. Offer \
the fixes of a confident result and cite its sources; when the search abstains, say that no \
documented case fits rather than forcing one. get_case reads one case in full; list_cases \
shows what the case base covers."""

READ_ONLY = {"read_only_hint": True, "destructive_hint": False, "idempotent_hint": True, "open_world_hint": False}

SEARCH_DESCRIPTION = f"""\
Find the documented past incidents closest to a problem in an LLM training or fine-tuning run, \
with why each matched and the fixes that worked.

Call this when a user's training run shows a symptom: loss that is NaN, 0, stuck, spiking or \
unexpectedly high; gradient or memory errors (CUDA OOM, NCCL timeouts); a crash or error in a \
trainer such as LLaMA-Factory, DeepSpeed, TRL, PEFT, Accelerate or transformers; a model that \
got worse after training. Put everything you know into `query`: the error message or log line, \
loss values and the step they appear at, model and size, framework and versions, GPUs and \
precision (bf16/fp16), ZeRO stage or FSDP, LoRA or full fine-tuning, dataset size. Terse keywords \
work ("gemma3 loss 70 zero3"), so does a pasted issue; English or Chinese.

Returns the JSON document `kbq --json QUERY` prints (schema "kbq.search/1"):
- `results`: up to `k` cases, best first. Each has `id`, `title`, `score`, `confident`, \
`sources` (links to the original threads), `breakdown` (why it matched: the matched terms, the \
feature matches such as model, framework or loss value, the semantic similarity) and `case`, the \
full case (symptom, environment, causes, fixes with `confirmed` flags).
- `recommended_fixes`: the fixes of the results, merged and ranked by support; `confirmed` means \
a fix was reported to work.
- `abstained`: true means no documented case fits this problem confidently (`abstain_reason` \
says why, `confidence` vs `threshold`). Then tell the user that kbq knows no matching incident \
and do not force one of the results onto their problem; ask for the missing details (error text, \
model, framework) or search again with them.
- `parsed`: what kbq understood from the query (model, framework, loss values...).

A query that is empty or over {MAX_QUERY_CHARS} characters, or `k` outside 1..{MAX_K}, is a tool \
error naming the problem."""

GET_DESCRIPTION = """\
Fetch one documented case in full by its id, e.g. an `id` from search_cases or list_cases \
("llamafactory-7416").

Call this before recommending a case's fix when you need its whole record: the symptom as \
reported, environment (model, framework, versions, hardware), causes, every fix with whether it \
was confirmed, and the source links. Returns the case document as JSON, the same one \
`kbq show ID --json` prints (with created_at/updated_at). An id that is not in the case base is a \
tool error saying so."""

LIST_DESCRIPTION = f"""\
List the cases in the case base, optionally only those of a model, a framework, a tag or a \
review status.

Call this to see what kbq covers (e.g. every Qwen or every DeepSpeed case) or to find a case id; \
to diagnose a symptom, call search_cases instead, which ranks cases by fit. Returns \
{{"cases": [...]}}, one row per case with {", ".join(ROW_FIELDS)} (the rows `kbq list --json` \
prints); get_case gives a case in full. No match is an empty list, not an error."""

Query = Annotated[str, Field(
    description="The symptom, as text in English or Chinese: error message or log lines, loss values and at which "
    "step, model, framework and versions, hardware, precision, ZeRO/FSDP, LoRA or full fine-tuning.",
    json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS},
)]
TopK = Annotated[int, Field(
    description=f"How many cases to return, 1 to {MAX_K}; 5 is usually enough.",
    json_schema_extra={"minimum": 1, "maximum": MAX_K},
)]
ModelFilter = Annotated[Optional[str], Field(
    description="Only cases of this model: a version (gemma-3, qwen2.5) or a family (qwen, llama). Omit unless the "
    "user's model is certain.")]
FrameworkFilter = Annotated[Optional[str], Field(
    description="Only cases of this framework (llama-factory, deepspeed, trl, peft...); a library used under "
    "another framework counts (deepspeed under llama-factory).")]
TagFilter = Annotated[Optional[str], Field(description="Only cases carrying this tag (e.g. nan, oom).")]
StatusFilter = Annotated[Optional[Literal["reviewed", "draft"]], Field(
    description="Only reviewed cases or only drafts; omit for both.")]
CaseId = Annotated[str, Field(description="The case id, e.g. 'llamafactory-7416'.", json_schema_extra={"minLength": 1})]


class CaseList(BaseModel):
    """The list_cases answer: the rows of `kbq list --json`."""

    cases: list[dict[str, Any]] = Field(description="one row per case: " + ", ".join(ROW_FIELDS))


class Notices:
    """kbq's notices (e.g. a database older than the bundled cases) go to stderr, each once:
    ``KnowledgeBase`` repeats one at every call that notices it again."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def report(self) -> None:
        with self._lock:
            while self.kb.notices:  # pop, not copy-and-clear: a call on another thread may be adding one
                notice = self.kb.notices.pop(0)
                if notice not in self._said:
                    self._said.add(notice)
                    _stderr(f"kbq: note: {notice}")


class KbqMCPServer(MCPServer):
    """MCPServer whose argument errors read like the CLI's: one ``kbq: error:`` line naming the
    argument, where the SDK would return pydantic's multi-line report; an argument the tool does
    not take is refused by name instead of being ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arguments: dict[str, frozenset[str]] = {}

    def add_tool(self, fn: Callable[..., Any], name: str | None = None, **kwargs: Any) -> None:
        super().add_tool(fn, name=name, **kwargs)
        self.arguments[name or fn.__name__] = frozenset(inspect.signature(fn).parameters)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        takes = self.arguments.get(name)
        unknown = sorted(set(arguments) - takes) if takes is not None else []
        if unknown:
            raise ToolError(shown(f"kbq: error: {name} takes no argument '{unknown[0]}' "
                                  f"(its arguments: {', '.join(sorted(takes))})", one_line=True))
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as err:
            if isinstance(err.__cause__, ValidationError) and not isinstance(err, UnexpectedToolError):
                raise ToolError(argument_problem(err.__cause__)) from err.__cause__
            raise


def argument_problem(error: ValidationError) -> str:
    """One line for arguments that fail the input schema: the first problem, by argument name."""
    problems = error.errors(include_url=False)
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    if first["type"] == "missing":
        text = f"argument '{where}' is required"
    else:
        value = json.dumps(first.get("input"), ensure_ascii=False, default=str)
        if len(value) > BRIEF_VALUE:
            value = value[:BRIEF_VALUE] + "..."
        text = f"argument '{where}': {first['msg']}, got {value}"
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return shown(f"kbq: error: {text}{more}", one_line=True)


def _stderr(line: str) -> None:
    print(shown(line, one_line=True), file=sys.stderr, flush=True)


def _json_text(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def _answer(notices: Notices, produce: Callable[[], Any], wrap: Callable[[Any], dict[str, Any]] | None = None) -> CallToolResult:
    """Run one tool's work: its JSON as structured content and as text, or a tool error in one line."""
    try:
        data = produce()
    except KbqError as err:
        return _tool_error(f"kbq: error: {err}")
    except Exception as err:  # noqa: BLE001 - the server answers every call; the client never sees a traceback
        if os.environ.get("KBQ_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        message = " ".join(str(err).split()) or type(err).__name__
        return _tool_error(f"kbq: internal error: {type(err).__name__}: {message} "
                           "(set KBQ_DEBUG=1 for the traceback on the server's stderr)")
    finally:
        notices.report()
    structured = wrap(data) if wrap else data
    return CallToolResult(content=[TextContent(type="text", text=_json_text(structured))], structured_content=structured)


def _tool_error(line: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=shown(line, one_line=True))], is_error=True)


def build_server(kb: KnowledgeBase, notices: Notices | None = None) -> KbqMCPServer:
    """The MCP server over ``kb``: the three tools, their schemas and descriptions."""
    notices = notices or Notices(kb)
    server = KbqMCPServer("kbq", title="kbq: LLM training troubleshooting cases", version=__version__,
                          instructions=INSTRUCTIONS, log_level="WARNING")

    def search_cases(query: Query, k: TopK = 5, model: ModelFilter = None, framework: FrameworkFilter = None,
                     tag: TagFilter = None) -> Annotated[CallToolResult, SearchResponse]:
        return _answer(notices, lambda: kb.search(query, k=k, filters=Filters(model, framework, tag)).to_json())

    def get_case(case_id: CaseId) -> CallToolResult:
        return _answer(notices, lambda: kb.get(case_id))

    def list_cases(model: ModelFilter = None, framework: FrameworkFilter = None, tag: TagFilter = None,
                   status: StatusFilter = None) -> Annotated[CallToolResult, CaseList]:
        return _answer(notices, lambda: case_rows(kb.cases(Filters(model, framework, tag), status=status)),
                       wrap=lambda rows: {"cases": rows})

    for fn, title, description in (
        (search_cases, "Search training incidents", SEARCH_DESCRIPTION),
        (get_case, "Read a case", GET_DESCRIPTION),
        (list_cases, "List cases", LIST_DESCRIPTION),
    ):
        server.add_tool(fn, title=title, description=description,
                        annotations=ToolAnnotations(title=title, **READ_ONLY))
    return server


def serve(kb: KnowledgeBase, *, http: bool = False, port: int = DEFAULT_HTTP_PORT) -> None:
    """Load the index once, then serve MCP over stdio (default) or streamable HTTP on loopback."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="kbq mcp: %(levelname)s %(name)s: %(message)s")
    with redirect_stdout(sys.stderr):  # stdout carries the protocol: nothing else may be written there
        kb.index()  # a bad database fails here, in one line, before any client connects
    notices = Notices(kb)
    notices.report()
    server = build_server(kb, notices)
    if not http:
        _stderr(f"kbq MCP server on stdio over {kb.describe()}")
        server.run("stdio")
        return
    import uvicorn

    listener = _listen(port)
    app = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=LOOPBACK)
    _stderr(f"kbq MCP server on http://{LOOPBACK}:{port}{HTTP_PATH} (streamable HTTP) over {kb.describe()}")
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[listener])


def _listen(port: int) -> socket.socket:
    """The loopback socket, bound here so a taken port is one clear line, not uvicorn's log."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((LOOPBACK, port))
    except OSError as err:
        listener.close()
        raise KbqError(f"cannot listen on {LOOPBACK}:{port}: {(err.strerror or str(err)).lower()}") from None
    return listener
