"""Fit kbq's mix weights and its confidence model on real reports, with k-fold cross-validation.

What is fitted (and nothing else):

* the mix: the weight of each lexical field, ``semantic.weight``,
  ``semantic.best_weight`` and ``features.weight``, by coordinate ascent on MRR (a few sweeps over a grid,
  one weight at a time), starting from equal weights;
* two logistic models over the top result's evidence (score, margin to the
  second, problem-text share, cosine, feature similarity):
  *confident* (is the top result the user's problem?) with the lowest threshold
  whose precision on the training folds is >= ``--precision``, and *answerable*
  (does any case fit?) with the highest threshold that abstains on at most
  ``--max-false-abstain`` of the answerable training reports.

Every figure printed for the fitted method is cross-validated: each fold is
scored with parameters fitted on the other folds only (folds are fixed by a
hash of the query text). The last block is the fit on all reports, to copy
into ``kb/data/weights.yaml``.

    python benches/fit_weights.py [../shared/eval/real_reports.jsonl] [--folds 5]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kb.parser import parse  # noqa: E402
from kb.retriever import Candidates, candidates, confidence_inputs, semantic_query_text  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402

DEFAULT_REPORTS = ROOT.parent / "shared" / "eval" / "real_reports.jsonl"
# Written query sets, used as extra *training* examples for the confidence models only (their
# 'none' questions teach abstention); they are never part of a cross-validation test fold.
EXTRA_TRAINING = [ROOT.parent / "shared" / "eval" / "dev_queries.jsonl", ROOT / "tests" / "eval_queries.jsonl"]
PRECISION = 0.95  # confident precision asked of the training folds
MAX_FALSE_ABSTAIN = 0.02  # share of answerable training reports allowed to abstain
GRID = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5]
SWEEPS = 3
INPUTS = ("score", "margin", "lexical_problem", "semantic", "semantic_best", "features", "coverage")


@dataclass
class Report:
    query: str
    expected: set[str]
    lang: str
    evidence: Candidates
    kind: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.expected)


def fold_of(query: str, folds: int) -> int:
    return int(hashlib.sha1(query.encode("utf-8")).hexdigest(), 16) % folds


def collect(kb: KnowledgeBase, path: Path, semantic: bool = True) -> tuple[list[Report], list[str]]:
    index = kb.index()
    references = {source: case["id"] for case in index.all_documents() for source in [case["id"], *case["sources"]]}
    # Every field scored (each is scaled by its own best case, so this does not depend on the
    # shipped field weights, some of which may be 0).
    weights = copy.deepcopy(index.weights)
    for spec in weights["lexical"]["fields"].values():
        spec["weight"] = 1.0
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    reports = []
    for row in rows:
        parsed = parse(row["query"], index.lexicon, index.stopwords)
        vector = kb.embed(semantic_query_text(parsed)) if index.semantic_model and semantic else None
        evidence = candidates(index, parsed, weights, query_vector=vector, limit=len(index))
        expected = {references.get(e, e) for e in row.get("expected", [])}
        reports.append(Report(row["query"], expected, row.get("lang", ""), evidence, row.get("kind", "")))
    return reports, list(index.ids)


Mix = dict  # {"field:<name>": w, "semantic": w, "semantic_best": w, "features": w}


def mix_names(fields: list[str]) -> list[str]:
    return [f"field:{name}" for name in fields] + ["semantic", "semantic_best", "features"]


def scores(report: Report, mix: Mix) -> np.ndarray:
    c = report.evidence
    total = mix["semantic"] * c.semantic + mix["semantic_best"] * c.semantic_best + mix["features"] * c.features
    for name, values in c.fields.items():
        total = total + mix[f"field:{name}"] * values
    return total


def ranking(report: Report, ids: list[str], mix: Mix) -> tuple[list[str], np.ndarray, np.ndarray]:
    s = scores(report, mix)
    order = np.lexsort((report.evidence.rows, -s))
    return [ids[int(report.evidence.rows[j])] for j in order[:10]], s, order


def reciprocal_rank(report: Report, ranked: list[str]) -> float:
    for position, case_id in enumerate(ranked, start=1):
        if case_id in report.expected:
            return 1.0 / position
    return 0.0


def mean_rr(reports: list[Report], ids: list[str], mix: Mix) -> float:
    return float(np.mean([reciprocal_rank(r, ranking(r, ids, mix)[0]) for r in reports if r.answerable]))


MIN_FEATURES = 0.0  # set by --min-features
GUARD: list[Report] = []  # written queries a mix must keep right (set by main)


def keeps_guard(mix: Mix, ids: list[str]) -> bool:
    """Regression guard: every seed query still ranks its case first, and the written
    queries keep an MRR of at least 0.99 (they were answered perfectly before this work)."""
    answerable = [r for r in GUARD if r.answerable]
    if not answerable:
        return True
    ranks = [(r, reciprocal_rank(r, ranking(r, ids, mix)[0])) for r in answerable]
    return all(rr == 1.0 for r, rr in ranks if r.kind == "seed") and float(np.mean([rr for _, rr in ranks])) >= 0.99


RESTARTS = 0  # set by --restarts: extra random starting mixes for the coordinate ascent


def best_mix(reports: list[Report], ids: list[str]) -> Mix:
    """Coordinate ascent from equal weights and from ``RESTARTS`` random mixes (fixed seed);
    the mix with the best training MRR wins."""
    names = mix_names(list(reports[0].evidence.fields))
    rng = np.random.default_rng(0)
    starts = [{name: 1.0 / len(names) for name in names}]
    starts += [{name: float(rng.choice(GRID)) for name in names} for _ in range(RESTARTS)]
    found = [_ascend(reports, ids, names, start) for start in starts]
    return max(found, key=lambda pair: pair[0])[1]


def _ascend(reports: list[Report], ids: list[str], names: list[str], mix: Mix) -> tuple[float, Mix]:
    mix = dict(mix)
    mix["features"] = max(mix["features"], MIN_FEATURES)
    best = mean_rr(reports, ids, mix) if keeps_guard(mix, ids) else -1.0
    for _ in range(SWEEPS):
        for name in names:
            for value in GRID:
                if name == "features" and value < MIN_FEATURES:
                    continue
                trial = dict(mix, **{name: value})
                score = mean_rr(reports, ids, trial)
                if score > best + 1e-9 and not keeps_guard(trial, ids):
                    continue
                if score > best + 1e-9:
                    best, mix = score, trial
    return best, mix


def mix_shares(mix: Mix) -> dict[str, float]:
    """Field weights of a mix as shares of the lexical part (how the retriever reads them)."""
    fields = {k[6:]: v for k, v in mix.items() if k.startswith("field:")}
    total = sum(fields.values()) or 1.0
    return {k: v / total for k, v in fields.items()}


def evidence_rows(reports: list[Report], ids: list[str], mix: Mix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence inputs per report, whether its top result is right, and whether it is answerable."""
    x, top_right, answerable = [], [], []
    for r in reports:
        ranked, s, order = ranking(r, ids, mix)
        inputs = confidence_inputs(r.evidence, s, order, mix_shares(mix))
        x.append([inputs[name] for name in INPUTS])
        top_right.append(bool(ranked) and ranked[0] in r.expected)
        answerable.append(r.answerable)
    return np.array(x), np.array(top_right), np.array(answerable)


def fit_logistic(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        return None
    return LogisticRegression(C=10.0, max_iter=5000).fit(x, y)


def probability(model, x: np.ndarray) -> np.ndarray:
    if model is None:
        return np.zeros(len(x))
    return model.predict_proba(x)[:, 1]


def confident_threshold(p: np.ndarray, right: np.ndarray, precision: float) -> float:
    """The lowest threshold whose confident set has at least ``precision`` (1.01 if none does)."""
    for t in sorted(set(np.round(p, 4).tolist())):
        chosen = p >= t
        if chosen.sum() >= 3 and right[chosen].mean() >= precision:
            return float(t)
    return 1.01


def abstain_threshold(p: np.ndarray, answerable: np.ndarray, max_false: float) -> float:
    """The highest threshold that abstains (p < t) on at most ``max_false`` of the answerable reports."""
    best = 0.0
    for t in sorted(set(np.round(p, 4).tolist())):
        if ((p < t) & answerable).sum() <= max_false * answerable.sum():
            best = float(t)
    return best


@dataclass
class Fitted:
    mix: Mix
    confident: object
    t_confident: float
    answerable: object
    t_answerable: float


def fit(reports: list[Report], ids: list[str], precision: float, max_false: float, extra: list[Report] = ()) -> Fitted:
    """The mix from ``reports``; the confidence models from ``reports`` plus ``extra``."""
    return fit_confidence(best_mix(reports, ids), reports, ids, precision, max_false, extra)


def fit_confidence(mix: Mix, reports: list[Report], ids: list[str], precision: float, max_false: float,
                   extra: list[Report] = ()) -> Fitted:
    """The two confidence models for a given mix."""
    x, right, answerable = evidence_rows(reports, ids, mix)
    confident = fit_logistic(x, right)
    t_conf = confident_threshold(probability(confident, x), right, precision)
    # The 'none' questions of the written sets widen what abstention learns from; the threshold
    # is still set on the real reports, so easy written queries cannot loosen it.
    x_extra, _, answerable_extra = evidence_rows(list(extra), ids, mix) if extra else (np.zeros((0, x.shape[1])), None, np.zeros(0, bool))
    any_fit = fit_logistic(np.vstack([x, x_extra]), np.concatenate([answerable, answerable_extra]))
    t_abs = abstain_threshold(probability(any_fit, x), answerable, max_false)
    return Fitted(mix, confident, t_conf, any_fit, t_abs)


def cross_validate(reports: list[Report], ids: list[str], folds: int, precision: float, max_false: float, extra: list[Report] = ()) -> dict:
    outcomes = []
    for fold in range(folds):
        train = [r for r in reports if fold_of(r.query, folds) != fold]
        test = [r for r in reports if fold_of(r.query, folds) == fold]
        outcomes += score_fold(fit(train, ids, precision, max_false, extra), test, ids)
    return summarize(outcomes)


def score_fold(fitted: Fitted, test: list[Report], ids: list[str]) -> list[tuple]:
    """Each held-out report scored with what was fitted on the other folds."""
    x, right, _ = evidence_rows(test, ids, fitted.mix)
    p_conf = probability(fitted.confident, x)
    p_any = probability(fitted.answerable, x)
    outcomes = []
    for r, pc, pa, ok in zip(test, p_conf, p_any, right):
        ranked = ranking(r, ids, fitted.mix)[0]
        abstained = pa < fitted.t_answerable
        outcomes.append((r, reciprocal_rank(r, ranked), ranked, bool(pc >= fitted.t_confident and not abstained), bool(abstained), bool(ok)))
    return outcomes


def summarize(outcomes) -> dict:
    answerable = [o for o in outcomes if o[0].answerable]
    none = [o for o in outcomes if not o[0].answerable]
    confident = [o for o in outcomes if o[3]]

    def mrr(group):
        return float(np.mean([o[1] for o in group])) if group else float("nan")

    return {
        "mrr": mrr(answerable),
        "mrr_zh": mrr([o for o in answerable if o[0].lang == "zh"]),
        "mrr_en": mrr([o for o in answerable if o[0].lang == "en"]),
        "r1": float(np.mean([o[1] == 1.0 for o in answerable])),
        "r3": float(np.mean([o[1] >= 1 / 3 for o in answerable])),
        "none_abstained": sum(o[4] for o in none),
        "none": len(none),
        "answerable_abstained": sum(o[4] for o in answerable),
        "answerable": len(answerable),
        "confident": len(confident),
        "confident_right": sum(o[5] for o in confident),
    }


def print_summary(title: str, s: dict) -> None:
    precision = s["confident_right"] / s["confident"] if s["confident"] else float("nan")
    print(f"{title}")
    print(f"  MRR {s['mrr']:.3f}  zh {s['mrr_zh']:.3f}  en {s['mrr_en']:.3f}  R@1 {s['r1']:.3f}  R@3 {s['r3']:.3f}")
    print(f"  'none' reports abstained {s['none_abstained']}/{s['none']};  answerable abstained "
          f"{s['answerable_abstained']}/{s['answerable']} ({s['answerable_abstained'] / max(1, s['answerable']):.1%});  "
          f"confident top-1 right {s['confident_right']}/{s['confident']} ({precision:.1%})")


def logistic_yaml(model, threshold: float) -> str:
    if model is None:
        return "{bias: -30.0, coef: {}, threshold: 0.5}"
    coef = ", ".join(f"{name}: {value:.3f}" for name, value in zip(INPUTS, model.coef_[0]))
    return f"{{bias: {model.intercept_[0]:.3f}, coef: {{{coef}}}, threshold: {threshold:.4f}}}"


def prepare(kb: KnowledgeBase, min_features: float = 0.1) -> list[Report]:
    """Set the fitting rules (feature floor, regression guard) and return the written queries
    used as extra training for the confidence models."""
    global MIN_FEATURES
    MIN_FEATURES = min_features
    extra = [r for path in EXTRA_TRAINING if path.exists() for r in collect(kb, path)[0]]
    GUARD[:] = extra
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="?", type=Path, default=DEFAULT_REPORTS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--precision", type=float, default=PRECISION, help="confident precision asked of the training folds")
    parser.add_argument("--max-false-abstain", type=float, default=MAX_FALSE_ABSTAIN, help="share of answerable training reports allowed to abstain")
    parser.add_argument("--home", type=Path, help="kbq data directory to reuse (model and vector caches)")
    parser.add_argument("--min-features", type=float, default=0.1,
                        help="floor of features.weight: the MRR surface is flat, and without a floor the search may leave "
                             "exact model/framework matches too little say to break ties between sibling cases")
    parser.add_argument("--restarts", type=int, default=0, help="random starting mixes tried besides equal weights")
    args = parser.parse_args()
    global RESTARTS
    RESTARTS = args.restarts
    kb = KnowledgeBase(home=args.home or Path(tempfile.mkdtemp(prefix="kbq-fit-")), every_field=True)
    reports, ids = collect(kb, args.reports)
    extra = prepare(kb, args.min_features)
    print(f"{args.reports.name}: {len(reports)} reports, {len(ids)} cases, {args.folds}-fold cross-validation; "
          f"{len(extra)} written queries as extra training for the confidence models")
    print_summary("kbq, cross-validated (weights and confidence fitted on the other folds)",
                  cross_validate(reports, ids, args.folds, args.precision, args.max_false_abstain, extra))
    fitted = fit(reports, ids, args.precision, args.max_false_abstain, extra)
    x, _, answerable = evidence_rows(extra, ids, fitted.mix)
    abstained = probability(fitted.answerable, x) < fitted.t_answerable
    print(f"written queries: 'none' abstained {int((abstained & ~answerable).sum())}/{int((~answerable).sum())}, "
          f"answerable abstained {int((abstained & answerable).sum())}/{int(answerable.sum())} (training data, not a test)")
    print("\nfit on all reports (for kb/data/weights.yaml):")
    lexical = sum(v for k, v in fitted.mix.items() if k.startswith("field:"))
    print(f"  lexical.weight: {lexical:.2f}  semantic.weight: {fitted.mix['semantic']:.2f}  "
          f"semantic.best_weight: {fitted.mix['semantic_best']:.2f}  features.weight: {fitted.mix['features']:.2f}")
    print("  lexical.fields weights: " + ", ".join(f"{k[6:]}: {v:.2f}" for k, v in fitted.mix.items() if k.startswith("field:")))
    print(f"  confidence.confident: {logistic_yaml(fitted.confident, fitted.t_confident)}")
    print(f"  confidence.answerable: {logistic_yaml(fitted.answerable, fitted.t_answerable)}")

    # With the semantic stage off (KBQ_SEMANTIC=0) the cosines are 0, so the models above would
    # abstain on nearly everything: the same mix gets confidence models of its own.
    lexical_reports, _ = collect(kb, args.reports, semantic=False)
    lexical_extra = [r for path in EXTRA_TRAINING if path.exists() for r in collect(kb, path, semantic=False)[0]]
    outcomes = []
    for fold in range(args.folds):
        train = [r for r in lexical_reports if fold_of(r.query, args.folds) != fold]
        test = [r for r in lexical_reports if fold_of(r.query, args.folds) == fold]
        outcomes += score_fold(fit_confidence(fitted.mix, train, ids, args.precision, args.max_false_abstain, lexical_extra), test, ids)
    print_summary("\nsemantic stage off: confidence models cross-validated (mix as above)", summarize(outcomes))
    lexical = fit_confidence(fitted.mix, lexical_reports, ids, args.precision, args.max_false_abstain, lexical_extra)
    print(f"  confidence.lexical_only.confident: {logistic_yaml(lexical.confident, lexical.t_confident)}")
    print(f"  confidence.lexical_only.answerable: {logistic_yaml(lexical.answerable, lexical.t_answerable)}")


if __name__ == "__main__":
    main()
