"""kbq eval: metrics computed by hand on a tiny query file, splits, bad input, and the quality bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from kb.evaluate import EvalQuery, evaluate, load_queries, select
from kb.errors import KbqError

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval" / "dev_queries.jsonl"
OWN_EVAL = Path(__file__).resolve().parent / "eval_queries.jsonl"


def test_metrics_by_hand():
    queries = [
        EvalQuery("a", ("case-a",)),         # found at rank 1
        EvalQuery("b", ("src-b",)),          # a source string, found at rank 2
        EvalQuery("c", ("case-c",)),         # not found
        EvalQuery("n", ()),                  # should abstain, and does
        EvalQuery("m", ()),                  # should abstain, does not
    ]
    answers = {"a": (["case-a", "x"], False), "b": (["x", "case-b"], False), "c": (["x"], True), "n": (["x"], True), "m": (["x"], False)}
    report = evaluate("t", lambda q: answers[q], queries, {"case-a": "case-a", "src-b": "case-b", "case-c": "case-c"})
    assert report.mrr == pytest.approx((1 + 0.5 + 0) / 3)
    assert report.recall == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3), 5: pytest.approx(2 / 3)}
    assert report.false_abstentions == 1 and report.none_queries == 2 and report.abstention_accuracy == 0.5
    assert [m.query for m in report.misses] == ["b", "c", "m"]


def test_unknown_reference_counts_as_a_miss():
    report = evaluate("t", lambda q: (["x"], False), [EvalQuery("q", ("https://example.org/nope",))], {})
    assert report.mrr == 0 and report.unknown_expected == ["https://example.org/nope"]
    assert report.misses[0].references == ["https://example.org/nope"]


def test_split_is_deterministic_and_partitions():
    queries = [EvalQuery(f"query {i}", ()) for i in range(200)]
    dev, held = select(queries, "dev"), select(queries, "heldout")
    assert len(dev) + len(held) == 200 and not set(dev) & set(held)
    assert 40 <= len(held) <= 80 and select(queries, "heldout") == held


@pytest.mark.parametrize(
    "content,message",
    [("{bad", ":1: not valid JSON"), ('{"expected": []}', ":1: expected an object"), ("", "no queries"),
     ('{"query": "q", "expected": "x"}', ":1: expected an object")],
)
def test_bad_query_file(tmp_path, content, message):
    path = tmp_path / "q.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KbqError, match=message):
        load_queries(path)


def test_cli_eval_json_and_bad_split(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"query": "gemma3 loss 70 zero3", "expected": ["llamafactory-7416"]},
            {"query": "How do I center a div with CSS grid?", "expected": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    runner = CliRunner()
    env = {"KBQ_HOME": str(tmp_path / "home")}
    result = runner.invoke(app, ["eval", str(path), "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["mrr"] == 1.0 and data["abstention_accuracy"] == 1.0 and data["misses"] == []
    human = runner.invoke(app, ["eval", str(path)], env=env)
    assert "MRR" in human.output and "1.000" in human.output
    bad = runner.invoke(app, ["eval", str(path), "--split", "test"], env=env)
    assert bad.exit_code == 1 and "unknown split 'test'" in bad.output


@pytest.mark.parametrize("path", [SHARED_EVAL, OWN_EVAL], ids=["shared-dev-queries", "own-queries"])
def test_quality_bar(tmp_path, path):
    """On the written query sets: MRR >= 0.95, no answerable query called 'no close case', and
    no question that no case answers gets a confident answer (kbq answers in three levels since
    issue 7: confident, possible match with the reason it is not confident, no close case)."""
    if not path.exists():
        pytest.skip(f"{path} not present")
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(home=tmp_path)
    report = kb.evaluate(path)
    assert report.mrr >= 0.95, report.misses[:5]
    assert report.false_abstentions == 0
    assert not report.unknown_expected  # every expected source names a case
    none = [o.query for o in report.outcomes if not o.references]
    confident = [q for q in none if (hits := kb.search(q).hits) and hits[0].confident]
    assert len(confident) <= 0.1 * len(none), confident  # the confident-precision bar of issue 7: 90 %
