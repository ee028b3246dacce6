"""Every text view of ``kbq`` at 60 and 80 columns: nothing is cut, ids and URLs stay whole.

Ids, URLs and paths are what people copy, so each must appear unbroken on one line (a
URL longer than the terminal keeps a line of its own and the terminal wraps it); titles
and other text wrap at spaces, so every word of a title is there; and no '…' marks a cut.
The expected ids, URLs and titles come from the same command's ``--json`` output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kb.service import KnowledgeBase
from serving import REPO, base_env, kbq

WIDTHS = ["60", "80"]
LONG_URL_CASE = "bitsandbytes-663"  # its source is the longest URL of the bundled cases
LONG_ID_CASE = "chatglm-efficient-tuning-207"  # among the longest ids
LONG_WORD_CASE = "trl-1268"  # its title holds a 42-character word
QUERIES = [
    "gemma3 loss 70 zero3",
    "How do I center a div with CSS grid?",
    "chatglm2 lora 微调后模型一直重复输出同一句话",
    "bitsandbytes 8bit adam loss nan",
    "mixtral zero3 hangs set_z3_leaf_modules",
]


class Setup:
    def __init__(self, home: Path, db: Path, drafts: Path, queries: Path) -> None:
        self.home, self.db, self.drafts, self.queries = home, db, drafts, queries

    def run(self, width: str, *args: str) -> str:
        proc = kbq(base_env(self.home, COLUMNS=width), *args, "--db", str(self.db))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def data(self, *args: str) -> Any:
        return json.loads(self.run("200", *args, "--json"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("widths-with-a-long-directory-name-to-make-paths-long")
    home, db, drafts = root / "home", root / "kb.db", root / "drafts"
    home.mkdir()
    env = base_env(home)
    for args in (("ingest", "--db", str(db)),
                 ("import", "article", *sorted(map(str, (REPO / "examples" / "articles").glob("*.md"))), "--out", str(drafts)),
                 ("import", "github", str(REPO / "examples" / "github-issue.json"), "--out", str(drafts))):
        done = kbq(env, *args)
        assert done.returncode == 0, done.stderr
    KnowledgeBase(str(db)).add_feedback(
        "bitsandbytes 8bit adam loss nan after a few steps", LONG_ID_CASE, True,
        "same as https://github.com/bitsandbytes-foundation/bitsandbytes/issues/663 for me")
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps(line) + "\n" for line in (
        {"query": "gemma3 loss 70 zero3", "expected": [LONG_ID_CASE]},
        {"query": "chatglm repetition", "expected": ["https://github.com/bitsandbytes-foundation/bitsandbytes/issues/663"]},
    )), encoding="utf-8")
    return Setup(home, db, drafts, queries)


def assert_whole(output: str, tokens: list[str], titles: list[str]) -> None:
    assert "…" not in output, output
    for token in tokens:
        assert token in output, f"{token!r} is cut or split in:\n{output}"
    words = set(output.split())
    for title in titles:
        for word in title.split():
            assert word in words, f"word {word!r} of title {title!r} is cut or split in:\n{output}"


def _case_tokens(case: dict[str, Any]) -> list[str]:
    return [case["id"], *case["sources"], *case.get("related", [])]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("query", QUERIES)
def test_query_results(setup: Setup, width: str, query: str) -> None:
    data = setup.data(query, "-k", "5")
    results = data["results"]
    assert results
    in_full = [r for r in results if r["confident"]] or ([] if data["abstained"] else results[:1])
    tokens = [r["id"] for r in results] + [t for r in in_full for t in _case_tokens(r["case"])]
    tokens += [case_id for fix in data["recommended_fixes"] for case_id in fix["cases"]]
    assert_whole(setup.run(width, query, "-k", "5"), tokens, [r["title"] for r in results])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case_id", [LONG_URL_CASE, LONG_ID_CASE, LONG_WORD_CASE, "llamafactory-7416"])
def test_show(setup: Setup, width: str, case_id: str) -> None:
    case = setup.data("show", case_id)
    assert_whole(setup.run(width, "show", case_id), _case_tokens(case), [case["title"]])


@pytest.mark.parametrize("width", WIDTHS)
def test_list(setup: Setup, width: str) -> None:
    cases = setup.data("list")
    assert LONG_ID_CASE in {c["id"] for c in cases}
    assert_whole(setup.run(width, "list"), [c["id"] for c in cases], [c["title"] for c in cases])


@pytest.mark.parametrize("width", WIDTHS)
def test_stats(setup: Setup, width: str) -> None:
    stats = setup.data("stats")
    assert len(stats["url"]) > 80
    names = [str(name) for key in ("by_model_family", "by_framework", "by_phase", "by_language") for name in stats[key]]
    assert_whole(setup.run(width, "stats"), [stats["url"], *names], [])


@pytest.mark.parametrize("width", WIDTHS)
def test_review(setup: Setup, width: str) -> None:
    reports = setup.data("review", str(setup.drafts))
    assert len(reports) == 3
    tokens = [r["id"] for r in reports] + [r["location"] for r in reports]
    assert_whole(setup.run(width, "review", str(setup.drafts)), tokens, [r["title"] for r in reports])


@pytest.mark.parametrize("width", WIDTHS)
def test_eval(setup: Setup, width: str) -> None:
    report = setup.data("eval", str(setup.queries))
    misses = report["misses"]
    assert len(misses) == 2
    tokens = [case_id for miss in misses for case_id in (*miss["expected"], *miss["ranked"][:3])]
    output = setup.run(width, "eval", str(setup.queries))
    assert_whole(output, tokens, [])
    assert f"{report['mrr']:.3f}" in output


@pytest.mark.parametrize("width", WIDTHS)
def test_feedback(setup: Setup, width: str) -> None:
    (item,) = setup.data("feedback")
    assert_whole(setup.run(width, "feedback"), [item["case_id"], item["comment"].split()[2]], [item["query"]])


def test_wide_terminals_keep_the_tables(setup: Setup) -> None:
    """The plain-lines layout is for narrow terminals only: at 160 columns lists are tables."""
    assert "─" in setup.run("160", "list")
    assert "╭" in setup.run("160", "show", "llamafactory-7416")
    assert "╭" in setup.run("100", "gemma3 loss 70 zero3")
