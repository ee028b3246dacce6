"""Progress of long work: shown on a terminal's stderr, never in a pipe, never on a warm query.

The real ``kbq`` runs with its stderr on a pseudo-terminal (``pty.openpty``) and its stdout
in a pipe, as in a shell where the answer is piped on; the same commands run with stderr
piped too must print nothing extra. The core's side (kb.progress) is checked in process:
an index build cut into forked workers reports from the parent only, and builds the same
index with or without anyone listening.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import tempfile
import termios
import time
from pathlib import Path

import pytest
import yaml

from conftest import case_data
from kb.paths import bundled_cases_dir
from serving import REPO, base_env, kbq, kbq_argv

N = len(list(bundled_cases_dir().glob("*.yaml")))
GEMMA_QUERY = "gemma3 loss 70 zero3"
GEMMA_CASE = "llamafactory-7416"
CLEAR = "\r\x1b[K"


def on_terminal(env: dict[str, str], *args: str | os.PathLike[str], columns: int = 120,
                timeout: float = 300) -> tuple[int, str, str]:
    """Run ``kbq ARGS`` with stderr on a pseudo-terminal ``columns`` wide and stdout piped;
    returns the exit code, what reached the terminal, and stdout."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    out = io.BytesIO()
    with open(os.devnull, "rb") as nothing, tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(kbq_argv(*args), env=env, cwd=REPO, stdin=nothing, stdout=stdout, stderr=slave)
        os.close(slave)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.5)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                out.write(data)
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        stdout.seek(0)
        return code, out.getvalue().decode("utf-8", "replace"), stdout.read().decode("utf-8")


def terminal_env(home: Path, **extra: str) -> dict[str, str]:
    return base_env(home, TERM="xterm-256color", **extra)


def generated_cases(directory: Path, count: int) -> Path:
    directory.mkdir()
    for i in range(count):
        case_id = f"generated-{i:04d}"
        (directory / f"{case_id}.yaml").write_text(yaml.safe_dump(case_data(case_id), allow_unicode=True), encoding="utf-8")
    return directory


def imported_modules(text: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in text.splitlines() if line.startswith("import time:") and "|" in line}


# -- the first query on a fresh home --------------------------------------------------


def test_first_query_shows_progress_on_a_terminal_then_clears_it(tmp_path: Path) -> None:
    home = tmp_path / "kbq-home"
    code, tty, stdout = on_terminal(terminal_env(home, HOME=str(tmp_path)), GEMMA_QUERY)
    assert code == 0, tty
    assert GEMMA_CASE in stdout and "kbq:" not in stdout
    assert "\rkbq: loading the bundled cases into ~/kbq-home/kbq.db (first run)..." in tty
    assert f"\rkbq: loading the bundled cases into ~/kbq-home/kbq.db (first run): {N}/{N} cases" in tty
    assert f"\rkbq: building the search index: 0/{N} cases" in tty
    assert f"\rkbq: building the search index: {N}/{N} cases" in tty
    assert tty.endswith(CLEAR), tty[-200:]  # nothing of it stays on the screen
    assert "\n" not in tty  # redrawn in place, never scrolled


def test_first_query_in_a_pipe_prints_nothing_extra(tmp_path: Path) -> None:
    result = kbq(terminal_env(tmp_path / "kbq-home"), GEMMA_QUERY)
    assert result.returncode == 0 and GEMMA_CASE in result.stdout
    assert result.stderr == ""
    assert "building the search index" not in result.stdout


@pytest.fixture(scope="module")
def warm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("progress-warm")
    assert kbq(base_env(home), GEMMA_QUERY).returncode == 0
    return home


@pytest.mark.parametrize("args", [[GEMMA_QUERY], ["list"], ["show", GEMMA_CASE], ["stats"]])
def test_warm_commands_at_a_terminal_load_no_progress_code(warm_home: Path, args: list[str]) -> None:
    code, tty, stdout = on_terminal(terminal_env(warm_home, PYTHONPROFILEIMPORTTIME="1"), *args)
    assert code == 0 and stdout
    modules = imported_modules(tty)
    assert "typer" in modules, tty[:300]  # the import trace did reach the terminal
    assert not {"kb.progress", "cli.progress"} & modules
    assert "kbq:" not in tty


# -- ingest and import ------------------------------------------------------------------


def test_ingest_of_many_files_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    folder = generated_cases(tmp_path / "cases", 300)
    code, tty, stdout = on_terminal(terminal_env(tmp_path / "home"), "ingest", folder, "--db", tmp_path / "t.db")
    assert code == 0, tty
    assert "300 added" in stdout and "kbq:" not in stdout
    assert "\rkbq: validating case files: 0/300 files\x1b[K" in tty
    assert "\rkbq: validating case files: 300/300 files\x1b[K" in tty
    assert tty.endswith(CLEAR) and "\n" not in tty

    piped = kbq(terminal_env(tmp_path / "home"), "ingest", folder, "--db", tmp_path / "p.db")
    assert piped.returncode == 0 and "300 added" in piped.stdout
    assert piped.stderr == ""


def test_a_dumb_terminal_gets_the_line_without_escape_sequences(tmp_path: Path) -> None:
    folder = generated_cases(tmp_path / "cases", 300)
    env = base_env(tmp_path / "home", TERM="dumb", NO_COLOR="1")
    code, tty, stdout = on_terminal(env, "ingest", folder, "--db", tmp_path / "t.db")
    assert code == 0 and "300 added" in stdout
    assert "\rkbq: validating case files: 300/300 files" in tty
    assert "\x1b" not in tty
    assert tty.endswith("\r" + " " * len("kbq: validating case files: 300/300 files") + "\r")


def test_a_failed_ingest_clears_the_line_before_its_error(tmp_path: Path) -> None:
    folder = generated_cases(tmp_path / "cases", 40)
    (folder / "generated-0039.yaml").write_text("id: generated-0039\ntitle: [unclosed\n", encoding="utf-8")
    code, tty, _ = on_terminal(terminal_env(tmp_path / "home"), "ingest", folder, "--db", tmp_path / "t.db")
    assert code != 0
    progress, _, error = tty.rpartition(CLEAR)
    assert "kbq: validating case files: 0/40 files" in progress
    assert error.startswith("kbq: error: ") and "generated-0039.yaml" in error and "YAML syntax error" in error


THREAD = {
    "title": "Qwen2.5-7B full SFT with DeepSpeed ZeRO-3: loss is 0 from step 1",
    "url": "https://github.com/example-org/example-trainer/issues/{n}",
    "createdAt": "2025-01-02T03:04:05Z",
    "labels": [{"name": "bug"}],
    "body": "Full fine-tuning of Qwen2.5-7B under zero3 with fp16: the loss is 0 and grad_norm is nan from the first step.",
    "comments": [{"author": {"login": "maintainer"}, "authorAssociation": "MEMBER", "body": "Use bf16 instead of fp16."}],
}


def test_imports_of_several_files_show_progress_on_a_terminal(tmp_path: Path) -> None:
    articles, threads = [], []
    for n in range(5):
        article = tmp_path / f"article-{n}.md"
        article.write_text(f"# Llama-2-7B QLoRA run {n}: loss becomes nan after 200 steps\n\n## Symptom\n\n"
                           "fp16, lr 2e-4, loss went from 1.9 to nan.\n\n## Fix\n\n- Switch to bf16.\n", encoding="utf-8")
        articles.append(article)
    for n in range(3):
        thread = tmp_path / f"issue-{n}.json"
        thread.write_text(json.dumps({**THREAD, "url": THREAD["url"].format(n=100 + n)}), encoding="utf-8")
        threads.append(thread)
    env = terminal_env(tmp_path / "home")
    for kind, files, task in (("article", articles, "drafting cases from articles"),
                              ("github", threads, "drafting cases from GitHub issues")):
        out = tmp_path / f"drafts-{kind}"
        code, tty, stdout = on_terminal(env, "import", kind, *files, "--out", out)
        assert code == 0, tty
        assert f"\rkbq: {task}: {len(files)}/{len(files)} files\x1b[K" in tty
        assert tty.endswith(CLEAR) and "\n" not in tty
        assert len(list(out.glob("*.yaml"))) == len(files) and "kbq:" not in stdout
        piped = kbq(env, "import", kind, *files, "--out", tmp_path / f"piped-{kind}")
        assert piped.returncode == 0 and piped.stderr == "", piped.stderr


# -- the core's side ----------------------------------------------------------------------


def test_index_build_reports_from_the_parent_only_and_builds_the_same_index(tmp_path: Path, monkeypatch) -> None:
    """Forked workers analyse and embed; their calls of the ticker are dropped and the parent
    reports each chunk. Listening changes nothing in the index."""
    import kb.index as index_module
    import kb.semantic as semantic
    from kb.casefiles import load_cases
    from kb.index import build_index, index_key
    from kb.progress import Step
    from test_index import HashEncoder

    documents = [loaded.case.to_document() for loaded in load_cases([bundled_cases_dir()])]
    monkeypatch.setattr(index_module, "PARALLEL_MIN_CASES", 1)
    monkeypatch.setattr(semantic, "PARALLEL_MIN_TEXTS", 1)
    log = tmp_path / "steps.jsonl"

    def record(step: Step) -> None:
        with open(log, "a", encoding="utf-8") as handle:  # a worker's call would land here too
            handle.write(json.dumps({"pid": os.getpid(), **step.__dict__}) + "\n")

    build_index(documents, index_key("x"), tmp_path / "heard", encoder=HashEncoder(), progress=record)
    build_index(documents, index_key("x"), tmp_path / "silent", encoder=HashEncoder())
    steps = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert {s["pid"] for s in steps} == {os.getpid()}
    building = [s for s in steps if s["task"] == "building the search index"]
    embedding = [s for s in steps if s["task"] == semantic.EMBED_TASK]
    assert building[0]["done"] == 0 and building[-1]["finished"] and steps[-1] == building[-1]
    counts = [s["done"] for s in building if not s["finished"]]
    assert counts == sorted(counts) and counts[-1] == N and {s["total"] for s in building} == {N}
    assert embedding and embedding[-1]["finished"] and embedding[-2]["done"] == embedding[-2]["total"] > N
    names = sorted(p.name for p in (tmp_path / "silent").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "heard").iterdir())
    for name in names:
        assert (tmp_path / "heard" / name).read_bytes() == (tmp_path / "silent" / name).read_bytes(), name


def test_ticker_reports_a_bounded_number_of_steps() -> None:
    from kb.progress import REPORTS_PER_TASK, tracked

    heard = []
    with tracked(heard.append, "counting", 100_000, "cases") as ticker:
        for done in range(1, 100_001):
            ticker(done)
    assert len(heard) <= REPORTS_PER_TASK + 3
    assert [s.done for s in heard[:2]] == [0, 500] and heard[-2].done == 100_000 and heard[-1].finished
    with tracked(None, "nobody listens", 10) as ticker:  # no callback: nothing happens
        ticker(5)


def test_terminal_line_fits_the_width_and_shows_wide_text_by_cells() -> None:
    from cli.progress import TerminalLine, _cells, describe
    from kb.progress import Step

    assert describe(Step("building the search index", 1200, 5000, "cases")) == "kbq: building the search index: 1,200/5,000 cases"
    assert describe(Step("loading", total=None)) == "kbq: loading..."
    stream = io.StringIO()  # no terminal size: 80 columns
    line = TerminalLine(stream)
    line(Step("导入中文案例文件 " * 10, 1, 2, "files"))
    drawn = stream.getvalue()
    assert drawn.startswith("\r") and drawn.endswith("...\x1b[K") and _cells(drawn[1:-3]) <= 79
    line(Step("x", 2, 2, "files", finished=True))
    assert stream.getvalue().endswith(CLEAR)
