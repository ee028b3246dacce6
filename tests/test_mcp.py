"""`kbq mcp` end to end: the real command spoken to by the official MCP SDK client.

Each test spawns ``python -m cli.main mcp`` (stdio, or streamable HTTP on a loopback port)
over a private KBQ_HOME and compares what the tools answer with what the CLI prints for the
same request (`kbq --json`, `kbq show --json`, `kbq list --json`). One test drives the stdio
protocol by hand to see every byte the server writes to stdout.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from kb.paths import bundled_cases_dir
from kb.querytext import MAX_QUERY_CHARS
from serving import REPO, base_env, free_port, kbq, kbq_argv, stop

GEMMA_QUERY = "gemma3 loss 70 zero3"
GEMMA_CASE = "llamafactory-7416"
CHINESE_QUERY = "预训练 loss 停在 2.8 不降，从头训练的 1.1B 模型，8卡跑了10天"
CHINESE_CASE = "medicalgpt-426"
OFF_TOPIC_QUERY = "How do I center a div with CSS grid?"
TOOLS = {"search_cases", "get_case", "list_cases"}
N_BUNDLED = len(list(bundled_cases_dir().glob("*.yaml")))
SESSION_TIMEOUT = 300  # a hang fails the test; no answer is expected to take long
STARTUP_TIMEOUT = 60

T = TypeVar("T")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A kbq home of this module's own: the server and the CLI runs share its default database."""
    return tmp_path_factory.mktemp("kbq-mcp-home")


@pytest.fixture(scope="module")
def env(home: Path) -> dict[str, str]:
    return base_env(home)


def cli_json(env: dict[str, str], *args: str | Path) -> Any:
    """What `kbq ARGS` prints as JSON (the reference the tools must match)."""
    done = kbq(env, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def cli_error(env: dict[str, str], *args: str | Path) -> str:
    """The one error line `kbq ARGS` prints on stderr."""
    done = kbq(env, *args)
    assert done.returncode != 0 and done.stdout == "", (done.returncode, done.stdout)
    [line] = done.stderr.splitlines()
    return line


def mcp_session(env: dict[str, str], work: Callable[[ClientSession], Awaitable[T]], *args: str | Path,
                errlog: Path) -> T:
    """Run ``work`` in an initialized session with a `kbq mcp ARGS` child over stdio.

    Any line on the child's stdout that is not a JSON-RPC message reaches the client as a
    transport fault; the session fails the test if there was one.
    """
    faults: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            faults.append(message)

    async def main() -> T:
        argv = kbq_argv("mcp", *args)
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(REPO))
        with anyio.fail_after(SESSION_TIMEOUT), open(errlog, "w", encoding="utf-8") as stderr:
            async with stdio_client(params, errlog=stderr) as (read, write):
                async with ClientSession(read, write, message_handler=on_message) as session:
                    await session.initialize()
                    return await work(session)

    result = anyio.run(main)
    assert faults == [], faults
    assert "Traceback" not in errlog.read_text(encoding="utf-8")
    return result


def answer(result: CallToolResult) -> Any:
    """The structured content of a successful call, checked against its text twin."""
    assert not result.is_error, result.content
    [text] = result.content
    assert json.loads(text.text) == result.structured_content
    return result.structured_content


def error_line(result: CallToolResult) -> str:
    """The message of a call that failed as a tool error: one line, no traceback."""
    assert result.is_error, result.structured_content
    [text] = result.content
    assert "\n" not in text.text and "Traceback" not in text.text, text.text
    assert text.text.startswith("kbq: error: "), text.text
    return text.text


# -- discovery ---------------------------------------------------------------------


def test_tools_are_listed_with_descriptions_schemas_and_read_only_hints(env: dict[str, str], tmp_path: Path) -> None:
    async def work(session: ClientSession):
        return session.initialize_result, (await session.list_tools()).tools

    initialized, tools = mcp_session(env, work, errlog=tmp_path / "stderr.txt")
    assert initialized.server_info.name == "kbq"
    assert "search_cases" in (initialized.instructions or "")
    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == TOOLS
    for tool in tools:
        assert len(tool.description or "") > 200, tool.name  # says when to call it and what comes back
        hints = tool.annotations
        assert hints is not None and hints.read_only_hint is True and hints.destructive_hint is False
        assert hints.idempotent_hint is True and hints.open_world_hint is False
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), (tool.name, name)

    search = by_name["search_cases"]
    assert "abstain" in search.description and "sources" in search.description
    schema = search.input_schema
    assert schema["required"] == ["query"]
    assert schema["properties"]["query"]["type"] == "string"
    assert schema["properties"]["query"]["maxLength"] == MAX_QUERY_CHARS
    k = schema["properties"]["k"]
    assert (k["type"], k["minimum"], k["maximum"], k["default"]) == ("integer", 1, 100, 5)
    assert {"model", "framework", "tag"} <= set(schema["properties"])
    assert {"results", "abstained", "recommended_fixes"} <= set(search.output_schema["properties"])

    assert by_name["get_case"].input_schema["required"] == ["case_id"]
    listing = by_name["list_cases"].input_schema
    assert "required" not in listing
    assert {"model", "framework", "tag", "status"} == set(listing["properties"])
    assert ["reviewed", "draft"] in [alt.get("enum") for alt in listing["properties"]["status"]["anyOf"]]


# -- answers -----------------------------------------------------------------------


def test_search_answers_exactly_what_kbq_json_prints(env: dict[str, str], tmp_path: Path) -> None:
    requests = [
        {"query": GEMMA_QUERY},
        {"query": CHINESE_QUERY, "k": 3},
        {"query": OFF_TOPIC_QUERY, "k": 2},
        {"query": GEMMA_QUERY, "k": 10, "model": "qwen"},
        {"query": "loss nan", "framework": "llama-factory", "tag": "nan"},
    ]

    def cli_args(request: dict[str, Any]) -> list[str]:
        args = ["--json", "-k", str(request.get("k", 5))]
        for name in ("model", "framework", "tag"):
            if name in request:
                args += [f"--{name}", request[name]]
        return [*args, "--", request["query"]]

    expected = [cli_json(env, *cli_args(request)) for request in requests]

    async def work(session: ClientSession):
        return [await session.call_tool("search_cases", request) for request in requests]

    answers = [answer(result) for result in mcp_session(env, work, errlog=tmp_path / "stderr.txt")]
    assert answers == expected
    gemma, chinese, off_topic, filtered, narrowed = answers
    assert gemma["results"][0]["id"] == GEMMA_CASE and not gemma["abstained"] and len(gemma["results"]) == 5
    assert gemma["results"][0]["case"]["fixes"] and gemma["recommended_fixes"]
    assert chinese["results"][0]["id"] == CHINESE_CASE and not chinese["abstained"]
    assert off_topic["abstained"] is True and off_topic["recommended_fixes"] == []
    assert filtered["filters"] == {"model": "qwen"} and GEMMA_CASE not in [r["id"] for r in filtered["results"]]
    assert narrowed["filters"] == {"framework": "llama-factory", "tag": "nan"}


def test_get_case_and_list_cases_answer_what_show_and_list_print(env: dict[str, str], tmp_path: Path) -> None:
    shown = cli_json(env, "show", GEMMA_CASE, "--json")
    gemma_rows = cli_json(env, "list", "--json", "--model", "gemma-3")
    reviewed_deepspeed = cli_json(env, "list", "--json", "--framework", "deepspeed", "--status", "reviewed")
    every_row = cli_json(env, "list", "--json")

    async def work(session: ClientSession):
        return (await session.call_tool("get_case", {"case_id": GEMMA_CASE}),
                await session.call_tool("list_cases", {"model": "gemma-3"}),
                await session.call_tool("list_cases", {"framework": "deepspeed", "status": "reviewed"}),
                await session.call_tool("list_cases", {}))

    case, gemma, deepspeed, everything = (answer(r) for r in mcp_session(env, work, errlog=tmp_path / "stderr.txt"))
    assert case == shown and case["id"] == GEMMA_CASE and case["fixes"]
    assert gemma == {"cases": gemma_rows} and GEMMA_CASE in [row["id"] for row in gemma_rows]
    assert all(row["model"]["version"] == "gemma-3" for row in gemma_rows)
    assert deepspeed == {"cases": reviewed_deepspeed} and 0 < len(reviewed_deepspeed) < N_BUNDLED
    assert everything == {"cases": every_row} and len(every_row) == N_BUNDLED


# -- errors ------------------------------------------------------------------------


def test_bad_calls_are_one_line_tool_errors_and_the_server_keeps_serving(env: dict[str, str], tmp_path: Path) -> None:
    too_long = "loss nan " * (MAX_QUERY_CHARS // 9 + 1)
    # The messages the CLI gives for the same mistakes.
    unknown_id = cli_error(env, "show", "no-such-case")
    empty = cli_error(env, "--json", "   ")
    over_long = cli_error(env, "--json", too_long)
    assert "no-such-case" in unknown_id and "empty query" in empty and "too long" in over_long

    calls: list[tuple[str, dict[str, Any]]] = [
        ("get_case", {"case_id": "no-such-case"}),
        ("search_cases", {"query": "   "}),
        ("search_cases", {"query": too_long}),
        ("search_cases", {"query": GEMMA_QUERY, "k": 0}),
        ("search_cases", {"query": GEMMA_QUERY, "k": 101}),
        ("search_cases", {"k": 3}),
        ("search_cases", {"query": GEMMA_QUERY, "k": "five"}),
        ("search_cases", {"query": GEMMA_QUERY, "top_k": 3}),
        ("search_cases", {"query": "loss\x00nan"}),
        ("list_cases", {"status": "approved"}),
    ]

    async def work(session: ClientSession):
        failed = [await session.call_tool(name, arguments) for name, arguments in calls]
        return failed, await session.call_tool("search_cases", {"query": GEMMA_QUERY, "k": 100})

    failed, after = mcp_session(env, work, errlog=tmp_path / "stderr.txt")
    lines = [error_line(result) for result in failed]
    assert lines[:3] == [unknown_id, empty, over_long]
    assert lines[3] == "kbq: error: top-k must be between 1 and 100, got 0"
    assert lines[4] == "kbq: error: top-k must be between 1 and 100, got 101"
    assert lines[5] == "kbq: error: argument 'query' is required"
    assert lines[6].startswith("kbq: error: argument 'k': ") and '"five"' in lines[6]
    assert lines[7] == "kbq: error: search_cases takes no argument 'top_k' (its arguments: framework, k, model, query, tag)"
    assert "binary control character (0x00 at character 4)" in lines[8]
    assert lines[9].startswith("kbq: error: argument 'status': ") and "'reviewed' or 'draft'" in lines[9]
    assert answer(after)["results"][0]["id"] == GEMMA_CASE  # k at the schema's maximum is accepted


def test_start_up_failures_are_one_line_and_leave_stdout_empty(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args, code, message in (
        (["--db", missing], 1, "no such database"),
        (["--port", "8765"], 2, "--port applies to --http only"),
    ):
        done = kbq(env, "mcp", *args, timeout=STARTUP_TIMEOUT)
        assert done.returncode == code and done.stdout == "", (done.returncode, done.stdout, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith("kbq: error: ") and message in line
    assert not missing.exists()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = kbq(env, "mcp", "--http", "--port", str(port), timeout=STARTUP_TIMEOUT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"kbq: error: cannot listen on 127.0.0.1:{port}: address already in use"]


# -- one process, one index ----------------------------------------------------------


def test_the_server_keeps_one_index_for_all_its_calls(tmp_path: Path, shared_cache: Path) -> None:
    """A server that opened the case base per call would rebuild the index removed under it."""
    home = tmp_path / "home"
    index_root = home / "index"

    async def work(session: ClientSession):
        first = answer(await session.call_tool("search_cases", {"query": GEMMA_QUERY}))
        assert index_root.is_dir()
        shutil.rmtree(index_root)
        later = [answer(await session.call_tool("search_cases", {"query": CHINESE_QUERY})),
                 answer(await session.call_tool("list_cases", {"model": "gemma-3"})),
                 answer(await session.call_tool("get_case", {"case_id": CHINESE_CASE}))]
        return first, later

    first, (chinese, gemma, case) = mcp_session(base_env(home), work, errlog=tmp_path / "stderr.txt")
    assert first["results"][0]["id"] == GEMMA_CASE and chinese["results"][0]["id"] == CHINESE_CASE
    assert GEMMA_CASE in [row["id"] for row in gemma["cases"]] and case["id"] == CHINESE_CASE
    assert not index_root.exists()


# -- stdout belongs to the protocol ---------------------------------------------------


def test_stdout_carries_only_protocol_messages_and_notices_go_to_stderr(env: dict[str, str], tmp_path: Path) -> None:
    """Every byte on stdout, read raw: a database older than the bundled cases makes kbq print a
    notice (at start and at every call), which must reach stderr, once, and never the wire."""
    db = tmp_path / "older.db"
    assert kbq(env, "ingest", "--db", db).returncode == 0
    with closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("UPDATE kbq_meta SET value = 'older' WHERE key = 'bundled_fingerprint'").rowcount == 1
    stderr_path = tmp_path / "stderr.txt"
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "search_cases", "arguments": {"query": GEMMA_QUERY, "k": 1}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_case", "arguments": {"case_id": "nope"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "list_cases", "arguments": {"model": "qwen"}}},
    ]
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(kbq_argv("mcp", "--db", db), env=env, cwd=REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr)
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")  # end of stdout

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        proc.stdin.flush()
        seen: list[bytes] = []
        answered: dict[int, dict[str, Any]] = {}
        while set(answered) != {1, 2, 3, 4}:
            line = lines.get(timeout=SESSION_TIMEOUT)
            assert line, f"stdout ended early: {seen!r}\n{stderr_path.read_text()}"
            seen.append(line)
            message = json.loads(line)  # every line is a JSON-RPC message, nothing else
            assert message["jsonrpc"] == "2.0"
            if "id" in message:
                answered[message["id"]] = message
        proc.stdin.close()
        assert proc.wait(timeout=STARTUP_TIMEOUT) == 0
        reader.join(timeout=STARTUP_TIMEOUT)
        while (line := lines.get_nowait()) != b"":
            seen.append(line)
            assert json.loads(line)["jsonrpc"] == "2.0"
    finally:
        stop(proc)
    assert answered[2]["result"]["structuredContent"]["results"][0]["id"] == GEMMA_CASE
    assert answered[3]["result"]["isError"] is True
    assert answered[4]["result"]["structuredContent"]["cases"]
    stderr_lines = stderr_path.read_text(encoding="utf-8").splitlines()
    notices = [line for line in stderr_lines if line.startswith("kbq: note: the bundled cases changed")]
    assert len(notices) == 1, stderr_lines
    assert not any("Traceback" in line for line in stderr_lines)


# -- streamable HTTP --------------------------------------------------------------


def start_http(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    """`kbq mcp --http` on a free loopback port, once it answers HTTP (retried if the port was taken meanwhile)."""
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as sink:
            proc = subprocess.Popen(kbq_argv("mcp", "--http", "--port", str(port)), env=env, cwd=REPO,
                                    stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)  # any HTTP answer: it listens
                return proc, port
            except httpx.HTTPError:
                time.sleep(0.1)
        stop(proc)
    raise RuntimeError(f"kbq mcp --http did not come up; its log:\n{log.read_text(errors='replace')}")


def test_streamable_http_serves_the_same_tools(env: dict[str, str], tmp_path: Path) -> None:
    expected = cli_json(env, "--json", "-k", "3", CHINESE_QUERY)
    unknown_id = cli_error(env, "show", "no-such-case")
    log = tmp_path / "server.log"
    proc, port = start_http(env, log)
    try:
        async def main():
            with anyio.fail_after(SESSION_TIMEOUT):
                async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        return ((await session.list_tools()).tools,
                                await session.call_tool("search_cases", {"query": CHINESE_QUERY, "k": 3}),
                                await session.call_tool("get_case", {"case_id": "no-such-case"}))

        tools, found, missing = anyio.run(main)
    finally:
        stop(proc)
    assert {tool.name for tool in tools} == TOOLS
    assert answer(found) == expected and expected["results"][0]["id"] == CHINESE_CASE
    assert error_line(missing) == unknown_id
    output = log.read_text(encoding="utf-8")
    assert f"http://127.0.0.1:{port}/mcp" in output and "Traceback" not in output


# -- the other commands stay light ----------------------------------------------------


def test_other_commands_start_without_importing_the_sdk(env: dict[str, str]) -> None:
    """`kbq mcp` imports the SDK itself; a query (cold start matters) and --help never do."""
    for args in ([GEMMA_QUERY], ["--help"]):
        done = subprocess.run([kbq_argv()[0], "-X", "importtime", *kbq_argv(*args)[1:]], env=env, cwd=REPO,
                              capture_output=True, text=True, encoding="utf-8", timeout=SESSION_TIMEOUT)
        assert done.returncode == 0, done.stderr
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
        assert "cli" in imported and "typer" in imported
        assert [name for name in imported if name.split(".")[0] == "mcp" or name == "api.mcp_server"] == [], args
    assert "mcp" in done.stdout  # the command is listed
