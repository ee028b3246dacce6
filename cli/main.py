"""The ``kbq`` command: a thin Typer shell over :mod:`kb.service`.

``kbq "QUERY"`` runs the ``query`` command: the group below inserts the
command name when the first positional word is not a command, so options may
stand before or after the query. The query may also be unquoted words (joined
with spaces), standard input (``kbq -``, or a pipe with no query at all) or a
file (``--file``), because a pasted issue is the usual way people ask. Every
expected failure prints one line ``kbq: error: ...`` on stderr and exits
non-zero; no traceback reaches the user unless ``KBQ_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from kb.runtime import prefer_one_blas_thread

prefer_one_blas_thread()  # before anything imports numpy

import typer  # noqa: E402

from cli.conventions import KbqTyper, RootGroup
from kb import __version__
from kb.errors import KbqError, QueryError, UsageError
from kb.querytext import MAX_QUERY_CHARS, shown


# Click's base error, from the click Typer runs on: Typer 0.28 carries its own copy of
# click (typer._click), whose classes are not the installed click package's.
_CLICK_ERRORS = tuple(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


class QueryByDefault(RootGroup):
    """Treat ``kbq [OPTIONS] TEXT [OPTIONS]`` as ``kbq query ...``."""

    default_command = "query"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        # `cat issue.md | kbq` asks the query on standard input; a bare `kbq` at a terminal shows help.
        # A completion request (resilient parsing) is never a query read from standard input.
        piped = not args and not ctx.resilient_parsing and _stdin_is_piped()
        if (args and self._needs_default(ctx, args)) or piped:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def _needs_default(self, ctx, args: list[str]) -> bool:
        own_options = {name for param in self.get_params(ctx) for name in (*param.opts, *param.secondary_opts)}
        if args[0] in own_options:  # --help, -V, --install-completion...: the group's own
            return False
        command = self.get_command(ctx, self.default_command)
        takes_value = {
            name
            for param in (command.params if command else [])
            if param.param_type_name == "option" and not param.is_flag
            for name in param.opts
        }
        skip_next = False
        for token in args:
            if skip_next:
                skip_next = False
                continue
            if token == "--":
                return True
            if token.startswith("-") and token != "-":
                skip_next = token in takes_value
                continue
            return token not in self.commands
        return True  # only options, e.g. `kbq --json`: let `query` report the missing text


def _stdin_is_piped() -> bool:
    """Whether standard input carries a query: a pipe, a redirected file or a socket.

    A terminal does not (that is a person who forgot the query), nor does /dev/null
    (a job started with no input). An in-memory stream, as in tests, counts when it
    is not a terminal.
    """
    stream = sys.stdin
    if stream is None:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return not stream.isatty()
    if os.isatty(fd):
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


app = KbqTyper(
    cls=QueryByDefault,
    help="Troubleshoot LLM training runs from documented past incidents.\n\n"
    'Ask:  kbq "gemma3 loss 70 zero3"   (same as: kbq query "...")',
    pretty_exceptions_enable=False,
)
db_app = KbqTyper(help="Database schema (Alembic migrations).")
app.add_typer(db_app, name="db")
import_app = KbqTyper(help="Draft cases from write-ups and GitHub issue threads.")
app.add_typer(import_app, name="import")

DbOption = typer.Option(None, "--db", metavar="PATH_OR_URL",
                        help="SQLite file or SQLAlchemy URL [env KBQ_DB; default: per-user database]")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON (schema in README).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kbq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "-V", "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Troubleshoot LLM training runs from documented past incidents."""


def say(line: str, *, err: bool = False) -> None:
    """Print one line that may quote input or stored data: control characters are shown as
    escapes (kb.querytext.shown), never sent to the terminal, and the line stays one line."""
    typer.echo(shown(line, one_line=True), err=err)


@contextmanager
def failures() -> Iterator[None]:
    """Turn every failure into one line on stderr and a non-zero exit."""
    try:
        yield
    except KbqError as err:
        say(f"kbq: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except (typer.Exit, typer.Abort, BrokenPipeError, *_CLICK_ERRORS):
        raise
    except KeyboardInterrupt:
        typer.echo("kbq: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as err:  # noqa: BLE001 - the last line of defence for the user
        if os.environ.get("KBQ_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        say(f"kbq: internal error: {type(err).__name__}: {message} (set KBQ_DEBUG=1 for the traceback)", err=True)
        raise typer.Exit(70) from None


def _kb(db: Optional[str]):
    from kb.service import KnowledgeBase

    return KnowledgeBase(db, progress=_progress())


def _progress():
    """What kb reports long work to: a line on stderr when stderr is a terminal, else nothing
    (pipes, CI logs and tests stay clean). cli.progress is imported at the first report only."""
    try:
        if sys.stderr is None or not sys.stderr.isatty():
            return None
    except (AttributeError, ValueError):
        return None

    def report(step) -> None:
        from cli.progress import report as draw

        draw(step)

    return report


def _print_notices(kb) -> None:
    for notice in kb.notices:
        say(f"kbq: note: {notice}", err=True)


# json.dumps escapes C0 but not DEL and C1 (0x9b acts as CSI): escaped here, the same value in JSON.
_JSON_UNESCAPED_CONTROLS = re.compile("[\x7f-\x9f]")


def _emit_json(data) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=2)
    sys.stdout.write(_JSON_UNESCAPED_CONTROLS.sub(lambda found: f"\\u{ord(found.group()):04x}", text) + "\n")


# No text within the character limit is longer than this in UTF-8, so reading stops here.
MAX_QUERY_BYTES = 4 * MAX_QUERY_CHARS


def _decode_query(data: bytes, source: str) -> str:
    """UTF-8 text of query bytes read from a file or a pipe (a byte-order mark is dropped)."""
    if len(data) > MAX_QUERY_BYTES:
        raise QueryError(
            f"query too long: {source} holds more than {MAX_QUERY_BYTES} bytes (limit {MAX_QUERY_CHARS} characters); "
            "paste the symptom and key settings, not a whole log"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise QueryError(f"{source} is not UTF-8 text (undecodable byte 0x{data[err.start]:02x} at byte {err.start})") from None


def _read_stdin() -> str:
    stream = sys.stdin
    if stream is None:
        raise QueryError("no standard input to read the query from")
    buffer = getattr(stream, "buffer", None)
    data = buffer.read(MAX_QUERY_BYTES + 1) if buffer is not None else stream.read(MAX_QUERY_BYTES + 1).encode("utf-8", "surrogateescape")
    return _decode_query(data, "standard input")


def _read_query_file(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_QUERY_BYTES + 1)
    except FileNotFoundError:
        raise QueryError(f"query file '{path}' does not exist") from None
    except IsADirectoryError:
        raise QueryError(f"query file '{path}' is a directory, not a file") from None
    except OSError as err:
        raise QueryError(f"cannot read query file '{path}': {err.strerror or err}") from None
    return _decode_query(data, f"query file '{path}'")


def query_text(words: list[str], file: Optional[Path]) -> str:
    """The query from wherever it was given: words (joined), '-' or a pipe (stdin), or --file."""
    if file is not None:
        if words:
            raise QueryError("give the query either as words or with --file, not both")
        return _read_query_file(file)
    if words == ["-"]:
        return _read_stdin()
    if not words:
        if _stdin_is_piped():
            return _read_stdin()
        raise QueryError('no query: give it as words (kbq "gemma3 loss 70 zero3"), on standard input (kbq - < report.md) or with --file PATH')
    return " ".join(words)


@app.command("query")
def query_command(
    words: Optional[List[str]] = typer.Argument(
        None,
        metavar="QUERY...",
        help="The symptom, in English or Chinese, terse or a pasted report. Unquoted words are joined; "
        "'-' reads standard input, as does a pipe when no query is given. Put '--' before a query that starts with '-'.",
        show_default=False,
    ),
    file: Optional[Path] = typer.Option(None, "--file", metavar="PATH", help="Read the query from a UTF-8 text file."),
    top: int = typer.Option(5, "-k", "--top", min=1, max=100, metavar="N", help="How many cases to show."),
    as_json: bool = JsonOption,
    model: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="Only cases of this model or family (e.g. gemma-3, qwen)."),
    framework: Optional[str] = typer.Option(None, "--framework", metavar="NAME", help="Only cases of this framework (e.g. llama-factory)."),
    tag: Optional[str] = typer.Option(None, "--tag", metavar="TAG", help="Only cases carrying this tag."),
    db: Optional[str] = DbOption,
) -> None:
    """Find the documented incidents closest to a symptom, with the fixes that worked."""
    from kb.retriever import Filters

    with failures():
        text = query_text(list(words or []), file)
        kb = _kb(db)
        outcome = kb.search(text, k=top, filters=Filters(model=model, framework=framework, tag=tag))
        _print_notices(kb)
        if as_json:
            _emit_json(outcome.to_json())
        else:
            from cli.render import render_outcome

            render_outcome(outcome)


@app.command("show")
def show_command(case_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JsonOption, db: Optional[str] = DbOption) -> None:
    """Show one case in full."""
    with failures():
        case = _kb(db).get(case_id)
        if as_json:
            _emit_json(case)
        else:
            from cli.render import render_case

            render_case(case)


@app.command("list")
def list_command(
    model: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="Only cases of this model or family (e.g. gemma-3, qwen)."),
    framework: Optional[str] = typer.Option(None, "--framework", metavar="NAME", help="Only cases of this framework (e.g. llama-factory)."),
    tag: Optional[str] = typer.Option(None, "--tag", metavar="TAG", help="Only cases carrying this tag."),
    status: Optional[str] = typer.Option(None, "--status", metavar="STATUS", help="Only reviewed or only draft cases."),
    as_json: bool = JsonOption,
    db: Optional[str] = DbOption,
) -> None:
    """List the cases in the case base."""
    from kb.filters import Filters

    with failures():
        if status not in (None, "reviewed", "draft"):
            raise KbqError(f"--status must be 'reviewed' or 'draft', got '{status}'")
        cases = _kb(db).cases(Filters(model=model, framework=framework, tag=tag), status=status)
        if as_json:
            from kb.listing import case_rows

            _emit_json(case_rows(cases))
        else:
            from cli.render import render_case_list

            render_case_list(cases)


@app.command("stats")
def stats_command(as_json: bool = JsonOption, db: Optional[str] = DbOption) -> None:
    """Count the cases by status, model family, framework, phase and language."""
    from dataclasses import asdict

    with failures():
        stats = _kb(db).stats()
        if as_json:
            _emit_json(asdict(stats))
        else:
            from cli.render import render_stats

            render_stats(stats)


@app.command("ingest")
def ingest_command(
    paths: Optional[List[Path]] = typer.Argument(None, metavar="PATH...", show_default=False,
                                                 help="Case files or directories [default: the bundled cases]."),
    include_drafts: bool = typer.Option(False, "--include-drafts", help="Also load cases marked status: draft."),
    db: Optional[str] = DbOption,
) -> None:
    """Validate case files, then add or update them all in one transaction."""
    with failures():
        kb = _kb(db)
        report, drafts = kb.ingest(list(paths) if paths else None, include_drafts=include_drafts)
        skipped = f", {len(drafts)} draft(s) skipped (review them, or use --include-drafts)" if drafts else ""
        say(f"ingested into {kb.describe()}: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged{skipped}")


@app.command("export")
def export_command(
    directory: Path = typer.Argument(..., metavar="DIR", help="Folder to write the case files into (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace case files that already exist in DIR."),
    db: Optional[str] = DbOption,
) -> None:
    """Write every case back to YAML, one <id>.yaml per case."""
    with failures():
        written, as_stored = _kb(db).export(directory, overwrite=overwrite)
        say(f"wrote {len(written)} case file(s) to {directory}")
        if as_stored:
            shown_ids = ", ".join(as_stored[:5]) + (f" and {len(as_stored) - 5} more" if len(as_stored) > 5 else "")
            say(f"kbq: note: {len(as_stored)} case(s) fail this kbq's checks and were written as stored: "
                f"{shown_ids}; `kbq ingest` of their files names what to fix", err=True)


def _write_drafts(cases, out: Optional[Path], overwrite: bool, db: Optional[str], keep_duplicates: bool) -> None:
    from kb.casefiles import case_yaml, write_cases
    from kb.importers import screen
    from kb.threads import known_threads

    known = known_threads(_kb(db), [out] if out is not None and out.is_dir() else [])
    cases, notes = screen(cases, known, keep_duplicates=keep_duplicates)
    for note in notes:
        say(f"kbq: note: {note}", err=True)
    if out is None:
        sys.stdout.write("---\n".join(case_yaml(case) for case in cases))
        return
    written = write_cases(cases, out, overwrite=overwrite)
    for path in written:
        say(f"draft: {path}")


OutOption = typer.Option(None, "--out", metavar="DIR", help="Write one <id>.yaml per draft into this directory instead of printing YAML.")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace files that already exist in --out.")
DuplicatesOption = typer.Option(False, "--allow-duplicates",
                                help="Also write drafts of threads that a case (bundled, stored or in --out) already documents.")


@import_app.command("article")
def import_article_command(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Write-ups: plain text or Markdown, Chinese or English."),
    out: Optional[Path] = OutOption,
    overwrite: bool = OverwriteOption,
    allow_duplicates: bool = DuplicatesOption,
    db: Optional[str] = DbOption,
) -> None:
    """Draft a case from each troubleshooting article (status: draft, for review)."""
    from kb.importers import drafts_from_articles

    with failures():
        _write_drafts(drafts_from_articles(list(files), progress=_progress()), out, overwrite, db, allow_duplicates)


@import_app.command("github")
def import_github_command(
    files: List[Path] = typer.Argument(..., metavar="FILE.json...", help="`gh issue view N --json title,body,author,comments,labels,url,createdAt` output."),
    out: Optional[Path] = OutOption,
    overwrite: bool = OverwriteOption,
    allow_duplicates: bool = DuplicatesOption,
    db: Optional[str] = DbOption,
) -> None:
    """Draft a case from each GitHub issue thread (status: draft, for review)."""
    from kb.importers import drafts_from_github

    with failures():
        _write_drafts(drafts_from_github(list(files), progress=_progress()), out, overwrite, db, allow_duplicates)


@app.command("review")
def review_command(
    paths: Optional[List[Path]] = typer.Argument(None, metavar="PATH...", show_default=False,
                                                 help="Case files or directories to look for drafts in [default: the bundled cases]."),
    as_json: bool = JsonOption,
    db: Optional[str] = DbOption,
) -> None:
    """List draft cases (in files and in the database) and what each still needs."""
    from dataclasses import asdict

    from kb.paths import bundled_cases_dir
    from kb.review import review_documents, review_files
    from kb.threads import known_threads

    with failures():
        kb = _kb(db)
        folders = list(paths) if paths else [bundled_cases_dir()]
        known = known_threads(kb, folders)
        reports = review_files(folders, known)
        reports += review_documents(kb.cases(status="draft"), kb.describe(), known)
        if as_json:
            _emit_json([asdict(r) for r in reports])
        else:
            from cli.render import render_review

            render_review(reports)


@app.command("eval")
def eval_command(
    queries: Path = typer.Argument(..., metavar="QUERIES.jsonl", help="Lines of {query, expected: [case ids or sources], kind?}."),
    split: str = typer.Option("all", "--split", metavar="SPLIT", help="all, dev (70%) or heldout (30%), split by a hash of the query."),
    as_json: bool = JsonOption,
    show_misses: int = typer.Option(20, "--misses", metavar="N", help="How many misses to list."),
    db: Optional[str] = DbOption,
) -> None:
    """Measure retrieval: MRR, recall@1/3/5, abstention accuracy, and the misses."""
    with failures():
        report = _kb(db).evaluate(queries, split=split)
        if as_json:
            _emit_json(report.to_json())
        else:
            from cli.render import render_eval

            render_eval(report, split, show_misses)


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, metavar="PORT", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, metavar="N", help="Processes; each holds its own copy of the index."),
    db: Optional[str] = DbOption,
) -> None:
    """Serve the HTTP API and chat backend (FastAPI + uvicorn) on the same case base as the CLI."""
    with failures():
        kb = _kb(db)
        kb.index()  # a bad database fails here, in one line, and the index is built once before workers start
        if db:
            os.environ["KBQ_DB"] = db  # every worker builds its app from the environment
        import uvicorn

        say(f"kbq API on http://{host}:{port} (docs at /docs) over {kb.describe()}, {workers} worker(s)", err=True)
        uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


@app.command("mcp")
def mcp_command(
    http: bool = typer.Option(False, "--http", help="Serve streamable HTTP on 127.0.0.1 instead of stdio."),
    port: Optional[int] = typer.Option(None, "--port", metavar="PORT", min=1, max=65535, help="Port for --http (default 8765)."),
    db: Optional[str] = DbOption,
) -> None:
    """Serve the case base to coding agents (Claude Code, Cursor, Codex and others) over MCP, on stdio by default."""
    with failures():
        if port is not None and not http:
            raise UsageError("--port applies to --http only; the default transport is stdio")
        from api.mcp_server import DEFAULT_HTTP_PORT, serve

        serve(_kb(db), http=http, port=port or DEFAULT_HTTP_PORT)


@app.command("feedback")
def feedback_command(
    limit: int = typer.Option(50, "--limit", min=1, max=10000, metavar="N", help="How many items to show."),
    case_id: Optional[str] = typer.Option(None, "--case", metavar="ID", help="Only feedback on this case."),
    as_json: bool = JsonOption,
    db: Optional[str] = DbOption,
) -> None:
    """List the feedback users gave on answers (newest first)."""
    with failures():
        items = _kb(db).feedback(limit=limit, case_id=case_id)
        rows = [{"id": f.id, "created_at": f.created_at.isoformat(), "case_id": f.case_id, "helpful": f.helpful,
                 "query": f.query, "comment": f.comment} for f in items]
        if as_json:
            _emit_json(rows)
        else:
            from cli.render import render_feedback

            render_feedback(rows)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Option("head", "--revision", metavar="REV", help="Target revision."),
               db: Optional[str] = DbOption) -> None:
    """Create or upgrade the schema."""
    with failures():
        kb = _kb(db)
        say(f"{kb.describe()}: schema at revision {kb.upgrade(revision)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., metavar="REV", help="Target revision, e.g. base"),
    yes: bool = typer.Option(False, "--yes", help="Confirm: a downgrade drops tables and the data in them."),
    db: Optional[str] = DbOption,
) -> None:
    """Downgrade the schema (``base`` drops every kbq table). Asks for --yes."""
    with failures():
        kb = _kb(db)
        if not yes:
            raise UsageError(
                f"a downgrade to {revision} drops kbq tables of {kb.describe()} with their data; "
                "export the cases first (kbq export) and add --yes to go ahead"
            )
        say(f"{kb.describe()}: schema at revision {kb.downgrade(revision) or 'base'}")


@db_app.command("current")
def db_current(db: Optional[str] = DbOption) -> None:
    """Print the schema revision of the database."""
    with failures():
        kb = _kb(db)
        say(f"{kb.describe()}: schema at revision {kb.schema_revision() or 'base (empty)'}")


from cli.github_command import github_app  # noqa: E402 - Typer only; it uses the helpers above

app.add_typer(github_app(failures, say, _kb, DbOption), name="github")


def run() -> None:
    """Console-script entry point."""
    app(prog_name="kbq")


if __name__ == "__main__":
    run()
