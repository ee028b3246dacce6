"""Local similarity per feature, and their weighted combination.

Which similarity each feature uses, and every weight, comes from
``kb/data/weights.yaml``; this module only knows the kinds of similarity:

* ``concept``: the same concept is 1; a parent (chinese-llama-2 -> llama-2),
  a model the case compares with, a library of the case's stack, or the same
  family earn the partial credit the weights give;
* ``exact``: equal values or nothing;
* ``overlap``: the share of the query's values the case also has (symptoms);
* ``table``: equal values, else the credit listed for the pair;
* ``log_ratio``: numbers close on a log scale: 1 when equal, 0 once they are
  ``span`` times apart, so loss 70 is near 70 and far from 1.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .lexicon import Lexicon

_FLOOR = 1e-3  # a loss of 0 is a real symptom; keep it on the log scale


@dataclass(frozen=True)
class FeatureScore:
    name: str
    query: Any
    case: Any
    similarity: float
    weight: float
    contribution: float = 0.0


def value_text(value: Any) -> str:
    """A feature value as people write it: list items joined, numbers without trailing zeros."""
    if isinstance(value, list):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def log_ratio(a: float, b: float, span: float) -> float:
    a, b = max(float(a), _FLOOR), max(float(b), _FLOOR)
    return max(0.0, 1.0 - abs(math.log(a / b)) / math.log(span))


_TABLES: dict[int, tuple[dict[str, Any], dict[frozenset, float]]] = {}


def _pair_table(spec: dict[str, Any]) -> dict[frozenset, float]:
    """The pair table of a feature spec, built once per spec object (not once per case)."""
    cached = _TABLES.get(id(spec))
    if cached is None or cached[0] is not spec:
        table = {frozenset(pair.split("|")): float(value) for pair, value in (spec.get("table") or {}).items()}
        cached = _TABLES[id(spec)] = (spec, table)
    return cached[1]


def _concept_similarity(group: str, q: str, case: dict[str, Any], spec: dict[str, Any], lexicon: Lexicon) -> tuple[float, Any]:
    best, best_value = 0.0, None
    q_info = lexicon.info(group, q)
    for value in case.get(group, []):
        info = lexicon.info(group, value)
        if q == value:
            sim = 1.0
        elif q_info.get("parent") == value or info.get("parent") == q:
            sim = spec.get("parent", 0.0)
        elif q_info.get("family") and q_info.get("family") == info.get("family"):
            sim = spec.get("family", 0.0)
        elif group == "model" and q_info.get("family") and q_info.get("family") == case.get("model_family"):
            sim = spec.get("family", 0.0)
        else:
            sim = 0.0
        if sim > best:
            best, best_value = sim, value
    if group == "model" and q in case.get("model_also", []) and spec.get("also", 0.0) > best:
        best, best_value = spec["also"], q
    if group == "framework" and q in case.get("framework_libraries", []) and spec.get("library", 0.0) > best:
        best, best_value = spec["library"], q
    return best, best_value


def local_similarity(name: str, spec: dict[str, Any], query_values: list, case: dict[str, Any], lexicon: Lexicon,
                     explain: bool = True) -> tuple[float, Any, Any]:
    """Similarity in [0, 1] of one feature, with the query and case values that produced it
    (with ``explain=False``, the values may be left out where finding them costs extra)."""
    kind = spec["sim"]
    case_values = case.get(name, [])
    if kind == "concept":
        best = (0.0, query_values[0], None)
        for q in query_values:
            sim, value = _concept_similarity(name, q, case, spec, lexicon)
            if sim > best[0]:
                best = (sim, q, value)
        return best
    if not case_values:
        return 0.0, query_values, None
    if kind == "overlap":
        # Problem concepts (symptoms): the share of the query's that the case also shows.
        common = [q for q in query_values if q in case_values]
        return len(common) / len(query_values), query_values, common or case_values
    if kind == "exact":
        common = [q for q in query_values if q in case_values]
        return (1.0, common[0], common[0]) if common else (0.0, query_values, case_values)
    if kind == "table":
        table = _pair_table(spec)
        best = (0.0, query_values[0], case_values[0])
        for q in query_values:
            for c in case_values:
                sim = 1.0 if q == c else table.get(frozenset((q, c)), 0.0)
                if sim > best[0]:
                    best = (sim, q, c)
        return best
    if kind == "log_ratio":
        span = float(spec.get("span", 3.0))
        per_query = [max(log_ratio(q, c, span) for c in case_values) for q in query_values]
        if not explain:
            return sum(per_query) / len(per_query), query_values, None
        nearest = [min(case_values, key=lambda c: abs(math.log(max(c, _FLOOR) / max(q, _FLOOR)))) for q in query_values]
        return sum(per_query) / len(per_query), query_values, nearest
    raise ValueError(f"weights.yaml: feature {name!r} has unknown sim kind {kind!r}")


def _present(query: dict[str, list], weights: dict[str, Any]) -> tuple[list[str], float]:
    """The features the query states, and the denominator their weights share."""
    settings = weights["features"]
    specs: dict[str, dict[str, Any]] = settings["specs"]
    present = [name for name in specs if query.get(name)]
    return present, sum(specs[name]["weight"] for name in present) + float(settings.get("prior", 0.0))


def combine(query: dict[str, list], case: dict[str, Any], weights: dict[str, Any], lexicon: Lexicon,
            explain: bool = True) -> tuple[float, list[FeatureScore]]:
    """Weighted feature similarity in [0, 1] and the per-feature breakdown.

    Each breakdown entry's ``contribution`` is its share of the final score
    (already multiplied by the features' weight in the mix), so contributions add up.
    ``explain=False`` skips the breakdown: re-ranking needs only the totals, and only
    the few cases shown are explained (:class:`FeatureScorer` does the re-ranking).
    """
    specs: dict[str, dict[str, Any]] = weights["features"]["specs"]
    present, denominator = _present(query, weights)
    if not present:
        return 0.0, []
    mix = float(weights["features"]["weight"])
    scores: list[FeatureScore] = []
    total = 0.0
    for name in present:
        spec = specs[name]
        sim, q, c = local_similarity(name, spec, query[name], case, lexicon, explain)
        part = spec["weight"] * sim / denominator
        total += part
        if explain:
            scores.append(FeatureScore(name, q, c, round(sim, 4), spec["weight"], round(mix * part, 4)))
    return total, scores


# What a feature's similarity reads of a case besides the feature itself (see _concept_similarity).
_ALSO_READ = {"model": ("model_also", "model_family"), "framework": ("framework_libraries",)}


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class FeatureScorer:
    """:func:`combine`'s total for many cases and one query. The candidates of a query share
    most feature values (the same model, framework, GPU), so each feature's similarity is
    computed once per distinct value the cases hold, not once per case."""

    def __init__(self, query: dict[str, list], weights: dict[str, Any], lexicon: Lexicon):
        specs: dict[str, dict[str, Any]] = weights["features"]["specs"]
        present, denominator = _present(query, weights)
        self._features = [(name, specs[name], query[name], _ALSO_READ.get(name, ()) if specs[name]["sim"] == "concept" else ())
                          for name in present]
        self._denominator = denominator
        self._lexicon = lexicon
        self._known: dict[tuple, float] = {}

    def total(self, case: dict[str, Any]) -> float:
        total = 0.0
        for name, spec, values, also in self._features:
            key = (name, _frozen(case.get(name)), *(_frozen(case.get(other)) for other in also))
            sim = self._known.get(key)
            if sim is None:
                sim = self._known[key] = local_similarity(name, spec, values, case, self._lexicon, explain=False)[0]
            total += spec["weight"] * sim / self._denominator
        return total
