"""The ``kbq`` shell follows the usual command-line conventions (clig.dev).

Help shows every help text as written (no markup eats ``[...]``) with readable
placeholders; a usage error is one line on stderr and exit 2; ``-V`` is the version;
shell completion installs and completes; and a reader that goes away (``kbq ... | head``)
ends kbq quietly instead of with an error. Every command of the tree is checked, so a
command added later is held to the same rules.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.main import app
from kb import __version__
from serving import REPO, base_env, kbq, kbq_argv

GEMMA_QUERY = "gemma3 loss 70 zero3"
GEMMA_CASE = "llamafactory-7416"


def invoke(*args: str, env: dict[str, str | None] | None = None):
    result = CliRunner().invoke(app, list(args), prog_name="kbq",
                                env={"KBQ_DB": None, "KBQ_DEBUG": None, "COLUMNS": "80", **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def command_tree() -> list[tuple[list[str], object]]:
    """Every command and group under ``kbq``, as (path of names, click command)."""
    found: list[tuple[list[str], object]] = []

    def walk(path: list[str], command) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not sub.hidden:
                walk([*path, name], sub)

    walk([], typer.main.get_command(app))
    return found


COMMANDS = command_tree()
COMMAND_IDS = [" ".join(path) or "kbq" for path, _ in COMMANDS]


def flat(text: str) -> str:
    """Help text with its line wrapping undone: white space runs become one space, and a
    word broken after a hyphen is joined again."""
    return re.sub(r"-\s+(?=\w)", "-", " ".join(text.split()))


# -- help ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_help_shows_every_help_text_as_written(path: list[str], command) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not set(text) & set("╭╮╰╯│─"), f"help drawn in boxes:\n{text}"
    shown = flat(text)
    assert flat(command.help or "")[:40] in shown
    ctx = command.make_context(" ".join(["kbq", *path]), [], resilient_parsing=True)
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        synopsis, help_text = record
        assert flat(synopsis) in shown, (synopsis, text)
        if param.help:
            # brackets included: '[env KBQ_DB; default: per-user database]', '[default: the bundled cases]'
            assert flat(param.help) in shown, (param.help, text)
        if "[default:" in help_text:
            default = help_text[help_text.index("[default:"):].split("]")[0] + "]"
            assert flat(default) in shown, (default, text)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_placeholders_are_plain_words(path: list[str], command) -> None:
    """A flag shows no placeholder; an option's value and an argument show an upper-case
    word (PATH, N, ID...), never a Python type such as <bool>, <str> or <list[Path]>."""
    ctx = command.make_context(" ".join(["kbq", *path]), [], resilient_parsing=True)
    text = invoke(*path, "--help").stdout
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        synopsis = record[0]
        if getattr(param, "is_flag", False):
            assert synopsis == ", ".join(sorted(param.opts, key=len)), synopsis
            continue
        placeholder = synopsis.rsplit(" ", 1)[-1] if param.param_type_name == "option" else synopsis
        assert re.fullmatch(r"[A-Z][A-Z0-9_.]*(\.\.\.)?|[A-Z][A-Z0-9_]*\.jsonl|FILE\.json\.\.\.|OWNER/REPO#N|\[[a-z|]+\]", placeholder), synopsis
    usage = next(line for line in text.splitlines() if line.startswith("Usage:"))
    assert not re.search(r"[<>{}]", usage), usage
    assert not re.search(r"<(bool|str|int|float|path|list|int range|text)\b", text, re.IGNORECASE), text


def test_command_list_is_never_cut() -> None:
    """`kbq --help` lists each command with its whole first sentence, wrapped, not cut with '...'."""
    for path, command in COMMANDS:
        if not getattr(command, "commands", None):
            continue
        text = invoke(*path, "--help", env={"COLUMNS": "60"}).stdout
        listing = flat(text[text.index("\nCommands:"):])
        for name, sub in command.commands.items():
            first = flat(sub.help or "").split(". ")[0].rstrip(".")
            assert f"{name} {first}" in listing, (name, first, listing)
        assert "..." not in listing, listing


# -- usage errors ----------------------------------------------------------------

USAGE_ERRORS = [
    (["--bogus", "loss"], ["--bogus"]),
    (["loss", "--bogus"], ["--bogus"]),
    (["list", "--bogus"], ["--bogus"]),
    (["show"], ["ID"]),
    (["show", "a", "b"], ["extra argument", "(b)"]),
    (["-k", "0", "loss"], ["--top", "0", "1<=x<=100"]),
    (["-k", "abc", "loss"], ["--top", "'abc'"]),
    (["--top"], ["--top", "requires"]),
    (["export"], ["DIR"]),
    (["eval"], ["QUERIES.jsonl"]),
    (["serve", "--port", "0"], ["--port", "0"]),
    (["feedback", "--limit", "many"], ["--limit", "'many'"]),
    (["db", "frob"], ["frob", "db"]),
    (["import", "frob"], ["frob", "import"]),
    (["import", "article"], ["FILE..."]),
    (["db", "downgrade"], ["REV"]),
]


def _one_usage_line(stderr: str, exit_code: int, stdout: str, needles: list[str]) -> str:
    assert exit_code == 2, (exit_code, stderr)
    assert stdout == "", stdout
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    line = lines[0]
    assert line.startswith("kbq: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    assert "--help" in line, line
    return line


@pytest.mark.parametrize(("args", "needles"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line(args: list[str], needles: list[str]) -> None:
    result = invoke(*args)
    _one_usage_line(result.stderr, result.exit_code, result.stdout, needles)


def test_usage_error_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    env = base_env(tmp_path, COLUMNS="100")
    for args, needles in USAGE_ERRORS[:6]:
        proc = kbq(env, *args)
        _one_usage_line(proc.stderr, proc.returncode, proc.stdout, needles)


# -- version ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"kbq {__version__}\n"


# -- shell completion ------------------------------------------------------------


def _completion_env(home: Path, **extra: str) -> dict[str, str]:
    env = base_env(home / "kbq", HOME=str(home), **extra)
    env.pop("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", None)
    return env


def test_show_completion_prints_the_bash_script(tmp_path: Path) -> None:
    env = _completion_env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    proc = kbq(env, "--show-completion", "bash")
    assert proc.returncode == 0, proc.stderr
    assert "_KBQ_COMPLETE=complete_bash" in proc.stdout and "complete -o default -F _kbq_completion kbq" in proc.stdout
    assert proc.stderr == ""


def test_install_completion_writes_the_script_for_bash(tmp_path: Path) -> None:
    env = _completion_env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    proc = kbq(env, "--install-completion", "bash")
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / ".bash_completions" / "kbq.sh"
    assert "_KBQ_COMPLETE=complete_bash" in script.read_text(encoding="utf-8")
    assert str(script) in (tmp_path / ".bashrc").read_text(encoding="utf-8")
    assert not (tmp_path / "kbq").exists(), "installing completion must not create a database"


def test_completion_flags_are_not_a_query_and_bash_completes(tmp_path: Path) -> None:
    """The default-command group must leave the completion options and the completion
    requests to Typer: command names, options of a command, not a search."""
    env = _completion_env(tmp_path)
    shown = kbq({**env, "SHELL": "/bin/bash"}, "--help")
    assert "--install-completion" in shown.stdout and "--show-completion" in shown.stdout

    def complete(words: str) -> list[str]:
        proc = subprocess.run(kbq_argv(), env={**env, "_KBQ_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))},
                              cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert {"show", "stats"} <= set(complete("kbq s"))
    assert "--json" in complete("kbq show --j")
    assert {"upgrade", "downgrade", "current"} <= set(complete("kbq db "))
    assert "--top" in complete("kbq gemma3 --to")
    assert not (tmp_path / "kbq").exists(), "completion must not create a database"


# -- a reader that goes away -------------------------------------------------------

PRINTING = [
    [GEMMA_QUERY],
    ["--json", "-k", "10", GEMMA_QUERY],
    ["show", GEMMA_CASE],
    ["show", GEMMA_CASE, "--json"],
    ["list"],
    ["list", "--json"],
    ["stats"],
    ["stats", "--json"],
    ["review", "--json"],
    ["import", "article", "examples/articles/gemma3-zero3-loss.md"],
    ["--help"],
    ["show", "--help"],
    ["--version"],
]


@pytest.fixture(scope="module")
def pipe_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("pipe-home")
    ready = kbq(base_env(home), "stats")
    assert ready.returncode == 0, ready.stderr
    return home


@pytest.mark.parametrize("args", PRINTING, ids=[" ".join(a) for a in PRINTING])
def test_closed_pipe_ends_quietly(pipe_home: Path, args: list[str]) -> None:
    """`kbq ... | true`: the reader is gone before kbq writes. kbq stops without a word on
    stderr and exits 141 (128 + SIGPIPE), as a shell reports a tool the signal ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(kbq_argv(*args), env=base_env(pipe_home), cwd=REPO, stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""
    assert proc.returncode == 141


@pytest.mark.parametrize("args", [["--json", GEMMA_QUERY], [GEMMA_QUERY]], ids=["json", "text"])
def test_kbq_piped_into_true_ends_quietly(pipe_home: Path, args: list[str]) -> None:
    """`kbq --json QUERY | true`, as the shell runs it: `true` never reads."""
    command = " ".join(f"'{a}'" for a in kbq_argv(*args))
    proc = subprocess.run(["bash", "-c", f'{command} | true; echo "${{PIPESTATUS[0]}}"'], env=base_env(pipe_home),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stderr == ""
    assert proc.stdout == "141\n"
