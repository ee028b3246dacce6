"""kbq against named peers and against itself minus each component, in one run, on real reports.

Rankers, all over the same bundled cases and the same case text (every field kbq
indexes, the bilingual user phrasing included):

* ``kbq``: the shipped weights. They were fitted on these very reports, so the
  honest figure is the *cross-validated* row (weights and confidence refitted
  on 4/5 of the reports, scored on the 5th; see benches/fit_weights.py);
* ``tfidf``: scikit-learn TF-IDF over English words and Chinese character bigrams;
* ``bm25s+jieba``: bm25s over English words and jieba's Chinese words;
* ``fts5`` / ``fts5 trigram``: SQLite FTS5 ``bm25()`` with its unicode61 or trigram tokenizer;
* ``rrf hybrid``: reciprocal-rank fusion (k=60, untuned) of tfidf, bm25s+jieba and
  the USE-multilingual sentence embeddings (the anchor of issue 7);
* ``kbq -X``: kbq with one component removed (its weight set to 0, the others kept).

Peers never abstain; the abstention columns are for kbq only.

    python benches/compare_baselines.py [REPORTS.jsonl] [--home DIR]
"""

from __future__ import annotations

import argparse
import logging
import re
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benches"))

from fit_weights import (  # noqa: E402
    DEFAULT_REPORTS, MAX_FALSE_ABSTAIN, PRECISION, Report, collect, cross_validate, mix_shares, prepare, print_summary, ranking, reciprocal_rank,
)
from kb.index import case_fields  # noqa: E402
from kb.lexicon import normalize  # noqa: E402
from kb.retriever import confidence_inputs, probability  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402
from kb.tokenize import cjk_tokens, word_tokens  # noqa: E402

Ranker = Callable[[str], list[str]]


def case_text(doc: dict) -> str:
    return "\n".join(case_fields(doc).values())


def tfidf_ranker(docs: list[dict], ids: list[str], stopwords) -> Ranker:
    from sklearn.feature_extraction.text import TfidfVectorizer

    def analyze(text: str) -> list[str]:
        norm = normalize(text)
        return word_tokens(norm, stopwords) + cjk_tokens(norm, stopwords)

    vectorizer = TfidfVectorizer(analyzer=analyze, sublinear_tf=True)
    matrix = vectorizer.fit_transform([case_text(d) for d in docs])

    def rank(query: str) -> list[str]:
        scores = (matrix @ vectorizer.transform([query]).T).toarray()[:, 0]
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:10] if scores[i] > 0]

    return rank


def jieba_tokens(text: str, stopwords) -> list[str]:
    import jieba

    norm = normalize(text)
    tokens = word_tokens(norm, stopwords)
    for run in re.findall(r"[\u3400-\u9fff]+", norm):
        tokens.extend(w for w in jieba.lcut(run) if w.strip() and not stopwords.chinese_splitter.fullmatch(w))
    return tokens


def bm25s_ranker(docs: list[dict], ids: list[str], stopwords) -> Ranker:
    import bm25s
    import jieba

    jieba.setLogLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index([jieba_tokens(case_text(d), stopwords) for d in docs], show_progress=False)
    vocab = retriever.vocab_dict

    def rank(query: str) -> list[str]:
        tokens = [t for t in jieba_tokens(query, stopwords) if t in vocab]
        if not tokens:
            return []
        found, scores = retriever.retrieve([tokens], k=min(10, len(ids)), show_progress=False)
        return [ids[int(d)] for d, s in zip(found[0], scores[0]) if s > 0]

    return rank


def fts5_ranker(docs: list[dict], ids: list[str], tokenizer: str) -> Ranker:
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, body, tokenize='{tokenizer}')")
    db.executemany("INSERT INTO docs VALUES (?, ?)", [(i, case_text(d)) for i, d in zip(ids, docs)])

    def rank(query: str) -> list[str]:
        terms = re.findall(r"\w+", query.lower())
        if tokenizer == "trigram":
            terms = [t for t in terms if len(t) >= 3]
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
        return [r[0] for r in db.execute("SELECT id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT 10", (match,))]

    return rank


def rrf_ranker(rankers: list[Ranker], semantic: Ranker, k: int = 60) -> Ranker:
    def rank(query: str) -> list[str]:
        fused: dict[str, float] = {}
        for ranker in [*rankers, semantic]:
            for position, case_id in enumerate(ranker(query), start=1):
                fused[case_id] = fused.get(case_id, 0.0) + 1.0 / (k + position)
        return sorted(fused, key=lambda c: -fused[c])[:10]

    return rank


def semantic_ranker(kb: KnowledgeBase, index, ids: list[str]) -> Ranker:
    def rank(query: str) -> list[str]:
        scores = index.vectors.dot(kb.embed(query))
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]

    return rank


def metrics(rows: list[tuple[Report, float]]) -> dict[str, float]:
    answerable = [(r, rr) for r, rr in rows if r.answerable]

    def mean(group):
        return float(np.mean([rr for _, rr in group])) if group else float("nan")

    return {
        "mrr": mean(answerable),
        "zh": mean([(r, rr) for r, rr in answerable if r.lang == "zh"]),
        "en": mean([(r, rr) for r, rr in answerable if r.lang == "en"]),
        "r1": float(np.mean([rr == 1.0 for _, rr in answerable])),
        "r3": float(np.mean([rr >= 1 / 3 for _, rr in answerable])),
    }


def print_row(name: str, m: dict[str, float], abstain: str = "-", precision: str = "-") -> None:
    print(f"{name:<22} {m['mrr']:>6.3f} {m['zh']:>6.3f} {m['en']:>6.3f} {m['r1']:>6.3f} {m['r3']:>6.3f} {abstain:>10} {precision:>12}")


def kbq_row(reports: list[Report], ids: list[str], mix: dict, settings: dict) -> tuple[dict, str, str]:
    rows, none_abstained, none_total, confident, right = [], 0, 0, 0, 0
    for r in reports:
        ranked, s, order = ranking(r, ids, mix)
        rows.append((r, reciprocal_rank(r, ranked)))
        inputs = confidence_inputs(r.evidence, s, order, mix_shares(mix))
        abstained = probability(inputs, settings["answerable"]) < float(settings["answerable"]["threshold"])
        is_confident = not abstained and probability(inputs, settings["confident"]) >= float(settings["confident"]["threshold"])
        if not r.answerable:
            none_total += 1
            none_abstained += abstained
        if is_confident:
            confident += 1
            right += bool(ranked) and ranked[0] in r.expected
    precision = f"{right}/{confident}" if confident else "-"
    return metrics(rows), f"{none_abstained}/{none_total}", precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="?", type=Path, default=DEFAULT_REPORTS)
    parser.add_argument("--home", type=Path, help="kbq data directory to reuse (model and vector caches)")
    args = parser.parse_args()
    # every field indexed, as in benches/fit_weights.py, so the cross-validated fit may use any
    kb = KnowledgeBase(home=args.home or Path(tempfile.mkdtemp(prefix="kbq-compare-")), every_field=True)
    index = kb.index()
    reports, ids = collect(kb, args.reports)
    docs = [index.document(i) for i in range(len(index))]
    weights = index.weights
    fields = weights["lexical"]["fields"]
    lexical_total = sum(float(f["weight"]) for f in fields.values()) or 1.0
    shipped = {f"field:{name}": float(weights["lexical"]["weight"]) * float(spec["weight"]) / lexical_total for name, spec in fields.items()}
    shipped.update(semantic=float(weights["semantic"]["weight"]), semantic_best=float(weights["semantic"].get("best_weight", 0.0)),
                   features=float(weights["features"]["weight"]))

    print(f"{args.reports.name}: {len(reports)} reports ({sum(r.answerable for r in reports)} answerable), {len(ids)} cases")
    print(f"{'ranker':<22} {'MRR':>6} {'zh':>6} {'en':>6} {'R@1':>6} {'R@3':>6} {'none abst.':>10} {'conf. right':>12}")
    m, abstain, precision = kbq_row(reports, ids, shipped, weights["confidence"])
    print_row("kbq (shipped)", m, abstain, precision)
    ablations = {
        "kbq -semantic": {"semantic": 0.0, "semantic_best": 0.0},
        "kbq -best-text cosine": {"semantic_best": 0.0},
        "kbq -lexical": {k: 0.0 for k in shipped if k.startswith("field:")},
        "kbq -features": {"features": 0.0},
        "kbq -phrasing field": {"field:phrasing": 0.0},
        "kbq -tags field": {"field:tags": 0.0},
        "kbq -causes/fixes": {"field:causes": 0.0, "field:fixes": 0.0},
    }
    for name, change in ablations.items():
        m, _, _ = kbq_row(reports, ids, dict(shipped, **change), weights["confidence"])
        print_row(name, m)
    stopwords = index.stopwords
    peers: dict[str, Ranker] = {
        "tfidf": tfidf_ranker(docs, ids, stopwords),
        "bm25s+jieba": bm25s_ranker(docs, ids, stopwords),
        "fts5": fts5_ranker(docs, ids, "unicode61"),
        "fts5 trigram": fts5_ranker(docs, ids, "trigram"),
    }
    if index.vectors is not None:
        peers["use-m3 embeddings"] = semantic_ranker(kb, index, ids)
        peers["rrf hybrid (anchor)"] = rrf_ranker([peers["tfidf"], peers["bm25s+jieba"]], peers["use-m3 embeddings"])
    best_peer = 0.0
    for name, rank in peers.items():
        m = metrics([(r, reciprocal_rank(r, rank(r.query))) for r in reports])
        best_peer = max(best_peer, m["mrr"])
        print_row(name, m)
    print()
    cv = cross_validate(reports, ids, 5, PRECISION, MAX_FALSE_ABSTAIN, prepare(kb))
    print_summary("kbq, 5-fold cross-validated (benches/fit_weights.py)", cv)
    print(f"cross-validated kbq MRR - best peer MRR = {cv['mrr'] - best_peer:+.3f}")


if __name__ == "__main__":
    main()
