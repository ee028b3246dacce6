"""The README's examples work as written, from the repository's root.

Every command line of the README's shell blocks (```sh, ```bash, ```console) that calls
``kbq`` runs, in order, in a copy of the repository's layout with a private KBQ_HOME, and
exits 0; a server (``kbq serve``) is only parsed. The files they read must exist by the time
they run, and every repository path the README names in code exists.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cli.main import app
from serving import REPO, base_env

README = (REPO / "README.md").read_text(encoding="utf-8")
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
LONG_RUNNING = {"serve"}  # parsed, not started
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {"<", ">", ">>"}
OUTPUT_OPTIONS = {"--out", "--db"}  # their values are written, not read
CASE_IDS = {path.stem for path in (REPO / "cases").glob("*.yaml")}


def shell_lines() -> list[tuple[str, str]]:
    """(language, command line) for each command of the README's shell blocks, in order."""
    lines = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M):
        if language not in SHELL_LANGUAGES:
            continue
        for line in body.splitlines():
            if language == "console":
                if line.startswith("$ "):
                    lines.append((language, line[2:]))
            elif line.strip() and not line.lstrip().startswith("#"):
                lines.append((language, line))
    return lines


def segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, | and &), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def is_kbq(words: list[str]) -> bool:
    return bool(words) and (words[0] == "kbq" or words[0].endswith("/kbq"))


def kbq_args(words: list[str]) -> list[str]:
    """The arguments of a `kbq ...` command, without its redirections."""
    args, skip = [], False
    for word in words[1:]:
        if skip:
            skip = False
        elif word in REDIRECTS:
            skip = True
        else:
            args.append(word)
    return args


def read_paths(words: list[str]) -> list[str]:
    """The files a command reads, by the look of its words: a redirected input, and any
    argument with a '/' that is neither a URL, an option, nor the value of an output option."""
    paths, previous = [], ""
    for word in words[1:]:
        if previous == "<":
            paths.append(word)
        elif ("/" in word and not word.startswith("-") and "://" not in word and " " not in word
              and previous not in OUTPUT_OPTIONS | {">", ">>"}):
            paths.append(word)
        previous = word
    return paths


def parse(args: list[str]) -> None:
    """Parse ``kbq ARGS`` down to its command as kbq would, without running it (raises
    click's UsageError on a bad option, argument or value)."""
    command = typer.main.get_command(app)
    ctx = command.make_context("kbq", list(args))
    while hasattr(command, "resolve_command"):
        _, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(ctx.command_path, rest, parent=ctx)


COMMANDS = [(language, line) for language, line in shell_lines() if any(is_kbq(s) for s in segments(line))]


def test_the_readme_has_kbq_examples() -> None:
    lines = [line for _, line in COMMANDS]
    assert 'kbq "gemma3 loss 70 zero3"' in lines
    assert any(".venv/bin/kbq" in line for line in lines), "the install-and-run command"
    assert len(lines) >= 8, lines


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A directory laid out like the repository (its entries linked), a `kbq` on the PATH
    that runs this checkout, and a private KBQ_HOME."""
    root = tmp_path_factory.mktemp("readme")
    work, bin_dir = root / "clone", root / "bin"
    work.mkdir()
    bin_dir.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv"):
            (work / entry.name).symlink_to(entry)
    shim = bin_dir / "kbq"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env = base_env(root / "home", COLUMNS="80")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return work, env


def test_every_kbq_example_runs_as_written(workspace: tuple[Path, dict[str, str]]) -> None:
    work, env = workspace
    for language, line in COMMANDS:
        parts = segments(line)
        for words in parts:
            for path in read_paths(words):
                assert glob.glob(path, root_dir=work), f"README example {line!r} reads {path!r}, which does not exist"
            if is_kbq(words):
                args = [match for arg in kbq_args(words)
                        for match in (sorted(glob.glob(arg, root_dir=work)) if "*" in arg else [arg])]
                parse(args)  # a usage error raises here, naming the option
        kbq_parts = [words for words in parts if is_kbq(words)]
        if any(kbq_args(words)[:1] and kbq_args(words)[0] in LONG_RUNNING for words in kbq_parts):
            continue
        if all(is_kbq(words) or words[0] == "cat" for words in parts):
            script = line  # pipes and redirections as written
        else:  # e.g. the install line: only its kbq part runs here
            script = " && ".join(shlex.join(["kbq", *words[1:]]) for words in kbq_parts)
        proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (line, proc.stderr)
        if language == "console":  # a transcript: the cases it shows are the ones kbq shows
            block = README[README.index(f"$ {line}\n"):]
            shown = set(re.findall(r"[\w.-]+", block[:block.index("```")])) & CASE_IDS
            assert shown and shown <= set(re.findall(r"[\w.-]+", proc.stdout)), (line, shown, proc.stdout)


def test_paths_named_in_the_readme_exist() -> None:
    """Links, and the commands the README shows in code (`kbq ...`, `python ...`, `bash ...`),
    name only what a clone has."""
    spans = [target for target in re.findall(r"\]\(([^)#\s]+)\)", README) if "://" not in target]
    spans += re.findall(r"`((?:kbq|cat|python|bash) [^`\n]*)`", README)
    spans += [line for _, line in shell_lines()]
    named = {path for span in spans
             for path in re.findall(r"(?<![\w./-])((?:examples|tests|cases|kb|cli|api|benches|migrations|\.ci)/[\w./*<>-]*)", span)}
    assert {"examples/issue.md", "tests/eval_queries.jsonl", "kb/report.py"} <= named, named
    for path in sorted(named):
        if "<" in path:  # a pattern such as cases/<id>.yaml
            continue
        assert glob.glob(path.rstrip("/"), root_dir=REPO), f"README names {path}, which is not in the repository"


def test_no_example_reaches_outside_the_repository() -> None:
    for _, line in shell_lines():
        assert "../" not in line, line
    for span in re.findall(r"`(kbq [^`\n]*)`", README):
        assert "../" not in span, span
