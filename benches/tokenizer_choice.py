"""Which Chinese tokenization serves retrieval best? Measured, not assumed.

Rebuilds the index over the bundled cases once per Chinese tokenizer (shipped
weights, semantic stage on, case vectors from the cache) and scores the real
reports (``../shared/eval/real_reports.jsonl``) whose expected case is in the case base:

* ``bigram``: character bigrams (kbq's choice), runs cut at stop words;
* ``uni+bigram``: bigrams plus every single character;
* ``jieba``: jieba word segmentation (``pip install jieba``; skipped when absent).

Prints MRR and recall@1 over Chinese-containing queries and over all queries,
plus the cost of importing the tokenizer (and loading its dictionary) in a new process.

    python benches/tokenizer_choice.py [--queries ../shared/eval/real_reports.jsonl] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kb import tokenize as tok  # noqa: E402
from kb.casefiles import load_cases  # noqa: E402
import tempfile  # noqa: E402

from kb.index import LoadedIndex, build_index, index_key  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402
from kb.semantic import VectorCache  # noqa: E402
from kb.lexicon import has_cjk  # noqa: E402
from kb.parser import parse  # noqa: E402
from kb.paths import bundled_cases_dir  # noqa: E402
from kb.retriever import search  # noqa: E402

BIGRAM = tok.cjk_tokens


def uni_and_bigram(norm: str, stopwords: tok.Stopwords) -> list[str]:
    singles = [ch for run in tok._CJK_RUN.findall(norm) for ch in run]
    return BIGRAM(norm, stopwords) + singles


def jieba_words(norm: str, stopwords: tok.Stopwords) -> list[str]:
    import jieba

    words = []
    for run in tok._CJK_RUN.findall(norm):
        words.extend(w for w in jieba.lcut(run) if not stopwords.chinese_splitter.fullmatch(w))
    return words


def evaluate(rows: list[dict], documents: list[dict], kb: KnowledgeBase) -> tuple[dict[str, float], dict[str, float]]:
    directory = Path(tempfile.mkdtemp(prefix="kbq-tok-")) / "index"
    encoder = kb.encoder()
    build_index(documents, index_key("bench"), directory, encoder=encoder,
                vector_cache=VectorCache(kb.cache / "vectors" / encoder.name))
    index = LoadedIndex(directory)
    cases = index.all_documents()
    by_source = {s: c["id"] for c in cases for s in c["sources"]} | {c["id"]: c["id"] for c in cases}
    results: dict[str, list[float]] = {"all": [], "zh": []}
    for row in rows:
        expected = {by_source[e] for e in row["expected"] if e in by_source}
        if not expected:
            continue
        outcome = search(index, parse(row["query"], index.lexicon, index.stopwords), k=10, embed=kb.embed)
        ranks = [h.rank for h in outcome.hits if h.case_id in expected]
        rr = 1.0 / ranks[0] if ranks else 0.0
        results["all"].append(rr)
        if has_cjk(row["query"]):
            results["zh"].append(rr)
    mrr = {k: sum(v) / len(v) for k, v in results.items() if v}
    r1 = {k: sum(1 for x in v if x == 1.0) / len(v) for k, v in results.items() if v}
    return mrr, r1 | {f"n_{k}": len(v) for k, v in results.items()}


def import_cost(module: str) -> float:
    code = f"import {module}" + ("; jieba.lcut('预训练损失')" if module == "jieba" else "")
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        if subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0:
            return float("nan")
        samples.append(time.perf_counter() - start)
    return sorted(samples)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=Path, default=ROOT.parent / "shared" / "eval" / "real_reports.jsonl")
    parser.add_argument("--home", type=Path, help="kbq data directory to reuse (model and vector caches)")
    args = parser.parse_args()
    kb = KnowledgeBase(home=args.home or Path(tempfile.mkdtemp(prefix="kbq-tok-home-")))
    rows = [json.loads(line) for line in args.queries.read_text(encoding="utf-8").splitlines() if line.strip()]
    documents = [loaded.case.to_document() for loaded in load_cases([bundled_cases_dir()])]

    variants = {"bigram": BIGRAM, "uni+bigram": uni_and_bigram}
    try:
        import jieba

        jieba.setLogLevel(60)
        variants["jieba"] = jieba_words
    except ImportError:
        print("jieba not installed: skipped")
    print(f"{len(documents)} cases; queries with an expected case in the case base only")
    print(f"{'tokenizer':<12} {'MRR all':>8} {'R@1 all':>8} {'MRR zh':>8} {'R@1 zh':>8} {'n all':>6} {'n zh':>5}")
    for name, function in variants.items():
        tok.cjk_tokens = function
        mrr, r1 = evaluate(rows, documents, kb)
        print(f"{name:<12} {mrr['all']:>8.3f} {r1['all']:>8.3f} {mrr.get('zh', 0):>8.3f} {r1.get('zh', 0):>8.3f} "
              f"{r1['n_all']:>6} {r1['n_zh']:>5}")
    tok.cjk_tokens = BIGRAM
    print(f"cold import of jieba incl. dictionary load: {import_cost('jieba') * 1000:.0f}ms (median of 3)")


if __name__ == "__main__":
    main()
