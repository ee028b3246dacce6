"""kbq against its own parts and against BM25, on the same queries, in one run.

Rankers, all over the same bundled case base:

* ``kbq``: the shipped mix of TF-IDF and feature similarity (with abstention);
* ``tfidf only``: the same index with the feature weight set to 0;
* ``features only``: the text weight set to 0;
* ``bm25 fts5``: SQLite FTS5 ``bm25()`` with its default unicode61 tokenizer;
* ``bm25 fts5 trigram``: FTS5 with the trigram tokenizer (substring matches help Chinese);
* ``bm25s``: bm25s (``pip install bm25s``) over English words and Chinese character
  bigrams, without kbq's lexicon: a strong, conventional BM25.

Baselines never abstain, so abstention accuracy is reported for kbq only.

    python benches/compare_baselines.py [QUERIES.jsonl ...] [--split all|dev|heldout]
"""

from __future__ import annotations

import argparse
import copy
import re
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kb.evaluate import EvalReport, evaluate, load_queries, reference_map, select  # noqa: E402
from kb.index import case_text  # noqa: E402
from kb.lexicon import normalize  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402
from kb.tokenize import cjk_tokens, word_tokens  # noqa: E402

DEFAULT_QUERIES = [ROOT.parent / "shared" / "eval" / "dev_queries.jsonl", ROOT / "tests" / "eval_queries.jsonl"]


def plain_tokens(text: str, stopwords) -> list[str]:
    norm = normalize(text)
    return word_tokens(norm, stopwords) + cjk_tokens(norm, stopwords)


def fts5_ranker(cases: list[dict], fields: dict, tokenizer: str):
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, body, tokenize='{tokenizer}')")
    db.executemany("INSERT INTO docs VALUES (?, ?)", [(c["id"], case_text(c, fields)) for c in cases])

    def rank(query: str) -> tuple[list[str], bool]:
        terms = re.findall(r"\w+", query.lower())
        if tokenizer == "trigram":
            terms = [t for t in terms if len(t) >= 3]
        if not terms:
            return [], False
        match = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
        rows = db.execute("SELECT id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT 10", (match,)).fetchall()
        return [r[0] for r in rows], False

    return rank


def bm25s_ranker(cases: list[dict], fields: dict, stopwords):
    import bm25s

    retriever = bm25s.BM25()
    retriever.index([plain_tokens(case_text(c, fields), stopwords) for c in cases], show_progress=False)
    ids = [c["id"] for c in cases]

    def rank(query: str) -> tuple[list[str], bool]:
        tokens = [t for t in plain_tokens(query, stopwords) if t in retriever.vocab_dict] if hasattr(retriever, "vocab_dict") else plain_tokens(query, stopwords)
        if not tokens:
            return [], False
        docs, scores = retriever.retrieve([tokens], k=min(10, len(ids)), show_progress=False)
        return [ids[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0], False

    return rank


def row(report: EvalReport, with_abstention: bool) -> str:
    abstain = f"{report.abstention_accuracy:.3f}" if with_abstention and report.abstention_accuracy is not None else "-"
    return (f"{report.name:<20} {report.mrr:>6.3f} {report.recall[1]:>6.3f} {report.recall[3]:>6.3f} "
            f"{report.recall[5]:>6.3f} {abstain:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", type=Path)
    parser.add_argument("--split", default="all")
    args = parser.parse_args()
    paths = args.queries or [p for p in DEFAULT_QUERIES if p.exists()]

    kb = KnowledgeBase(home=Path(tempfile.mkdtemp(prefix="kbq-compare-")))
    index = kb.index()
    cases, fields = index.cases, index.weights["fields"]
    text_only = copy.deepcopy(index.weights)
    text_only["mix"] = {"text": 1.0, "features": 0.0}
    features_only = copy.deepcopy(index.weights)
    features_only["mix"] = {"text": 0.0, "features": 1.0}
    rankers = [
        ("kbq", kb.ranker(10), True),
        ("tfidf only", kb.ranker(10, weights=text_only), False),
        ("features only", kb.ranker(10, weights=features_only), False),
        ("bm25 fts5", fts5_ranker(cases, fields, "unicode61"), False),
        ("bm25 fts5 trigram", fts5_ranker(cases, fields, "trigram"), False),
    ]
    try:
        rankers.append(("bm25s", bm25s_ranker(cases, fields, index.stopwords), False))
    except ImportError:
        print("bm25s not installed: that baseline is skipped (pip install bm25s)")

    references = reference_map(cases)
    for path in paths:
        queries = select(load_queries(path), args.split)
        print(f"\n{path.name} ({args.split}: {len(queries)} queries, {len(cases)} cases)")
        print(f"{'ranker':<20} {'MRR':>6} {'R@1':>6} {'R@3':>6} {'R@5':>6} {'abstain':>8}")
        reports = [(evaluate(name, rank, queries, references), abstains) for name, rank, abstains in rankers]
        for report, abstains in reports:
            print(row(report, abstains))
        best_bm25 = max((r for r, _ in reports if r.name.startswith("bm25")), key=lambda r: r.mrr)
        print(f"kbq - best BM25 ({best_bm25.name}) = {reports[0][0].mrr - best_bm25.mrr:+.3f} MRR")


if __name__ == "__main__":
    main()
