"""Ranking: candidates from the lexical and semantic stages, then re-ranking with features.

1. **Candidates.** BM25F over the query's terms (postings only) and the cosine
   of the query's sentence embedding with each case vector are fused into one
   score: ``lexical.weight * bm25 / best_bm25 + semantic.weight * cosine``.
   The best ``candidates`` rows (argpartition) go on; nothing else is looked at.
2. **Re-ranking.** For those rows only, the structured features (model,
   framework, ZeRO stage, loss values, symptoms...) are compared and added
   with ``features.weight``. Problem evidence (symptoms, losses) weighs more
   than entity matches (model, framework, GPU), which say where, not what.
3. **Confidence.** A logistic model over the top result's evidence, fitted on
   real reports with k-fold cross-validation (``benches/fit_confidence.py``),
   gives the probability that the top result is the user's problem. Below
   ``confidence.threshold`` the answer abstains and says why.

Every hit carries its breakdown: the terms that matched and their share, the
semantic similarity, and each feature's similarity and contribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .filters import Filters
from .fixes import recommend_fixes
from .index import LoadedIndex
from .lexical import concept_group
from .lexicon import normalize
from .parser import ParsedQuery
from .quantized import sorted_intersection, sorted_union
from .results import Hit, SearchOutcome, TextBreakdown
from .similarity import FeatureScorer, combine

Embed = Callable[[str], "np.ndarray | None"]


def allowed_rows(index: LoadedIndex, filters: Filters) -> np.ndarray | None:
    """Rows passing the filters (from the facet postings), or None when there is no filter.

    A model filter may be a version ('gemma-3') or a family ('qwen'); a framework filter
    also keeps cases that use it as a library (deepspeed under llama-factory)."""
    if not filters:
        return None
    sets: list[np.ndarray] = []
    if filters.model:
        wanted = index.lexicon.resolve("model", filters.model) or normalize(filters.model).strip()
        sets.append(sorted_union(index.facet_rows(f"model:{wanted}"), index.facet_rows(f"family:{wanted}")))
    if filters.framework:
        wanted = index.lexicon.resolve("framework", filters.framework) or normalize(filters.framework).strip()
        sets.append(index.facet_rows(f"framework:{wanted}"))
    if filters.tag:
        sets.append(index.facet_rows(f"tag:{normalize(filters.tag).strip()}"))
    rows = sets[0]
    for other in sets[1:]:
        rows = sorted_intersection(rows, other)
    return rows


def matching_ids(index: LoadedIndex, filters: Filters) -> set[str]:
    rows = allowed_rows(index, filters)
    if rows is None:
        return set(index.ids)
    return {index.ids[int(r)] for r in rows}


def query_term_weights(tokens: list[str], weights: dict[str, Any], entity_words: frozenset[str] = frozenset()) -> dict[str, float]:
    """Each distinct query term once, weighted by its kind: concept groups as weights.yaml says
    (problem concepts up, entity names down), words of names as ``name_word``, others 1."""
    groups = weights["lexical"].get("query_groups", {})
    name_word = float(groups.get("name_word", 1.0))
    out: dict[str, float] = {}
    for token in tokens:
        if token in out:
            continue
        group = concept_group(token)
        out[token] = float(groups.get(group, 1.0)) if group else (name_word if token in entity_words else 1.0)
    return out


@dataclass
class Candidates:
    """Per-candidate evidence, for ranking and for fitting weights and confidence."""

    rows: np.ndarray
    lexical: np.ndarray          # field-weighted BM25, each field scaled by its best case (0..1)
    lexical_problem: np.ndarray  # the same, counting only terms that are not entity names
    semantic: np.ndarray         # cosine of query and case embeddings (0 without the stage)
    features: np.ndarray         # weighted feature similarity (0..1)
    semantic_best: np.ndarray    # best cosine of the query with one of the case's own texts (0 without the stage)
    coverage: np.ndarray = field(default_factory=lambda: np.zeros(0))  # share of the query's problem-term idf mass matched
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # per field, scaled by its best
    problem_fields: dict[str, np.ndarray] = field(default_factory=dict)   # the same, problem terms only
    coverage_fields: dict[str, np.ndarray] = field(default_factory=dict)  # per field coverage
    term_ids: dict[str, dict[str, int]] = field(default_factory=dict)
    query_weights: dict[str, float] = field(default_factory=dict)
    field_scale: dict[str, float] = field(default_factory=dict)  # field weight share / best score


def field_shares(weights: dict[str, Any]) -> dict[str, float]:
    specs = weights["lexical"]["fields"]
    total = sum(float(spec["weight"]) for spec in specs.values()) or 1.0
    return {name: float(spec["weight"]) / total for name, spec in specs.items()}


def postings_budget(weights: dict[str, Any], n: int) -> int | None:
    """Postings a field reads in full to find candidates; None (all of them) for a base
    smaller than ``lexical.prune_min_cases``, where reading everything is cheap."""
    lexical = weights["lexical"]
    if n < int(lexical.get("prune_min_cases", 1 << 62)):
        return None
    return int(lexical["candidate_postings"])


def candidates(
    index: LoadedIndex,
    parsed: ParsedQuery,
    weights: dict[str, Any],
    *,
    query_vector: np.ndarray | None = None,
    filters: Filters = Filters(),
    limit: int | None = None,
) -> Candidates:
    """The rows worth re-ranking, with all their evidence.

    Each field scores every case from the postings of the query's terms. In a large
    base only the rarest terms, up to a postings budget, are read in full to choose
    the candidates; the common ones (which say little: low idf) are then looked up
    for the candidates alone, so their scores are exact and a query's cost follows
    the postings it reads rather than the number of cases."""
    semantic_w = float(weights["semantic"]["weight"]) if query_vector is not None and index.vectors is not None else 0.0
    qw = query_term_weights(parsed.tokens, weights, index.entity_words)
    n = len(index)
    shares = field_shares(weights)
    budget = postings_budget(weights, n)
    term_ids: dict[str, dict[str, int]] = {}
    matches: dict[str, tuple[np.ndarray, dict[str, int], set[str]]] = {}
    lex = np.zeros(n)  # what chooses candidates: exact for a small base, the rare terms' share in a large one
    for name, lexical in index.fields.items():
        if not shares.get(name):
            term_ids[name] = {}
            continue
        ids = term_ids[name] = lexical.lookup(qw)
        entity = index.entity[name]
        problem_terms = {t for t, i in ids.items() if not entity[i]}
        first, _ = lexical.within_budget(ids, budget)
        scores = lexical.scores(first, qw)
        matches[name] = (scores, ids, problem_terms)
        lex += shares[name] * _scaled(scores, float(scores.max()) if n else 0.0)
    lexical_w = float(weights["lexical"]["weight"])
    limit = min(limit or int(weights["candidates"]), n)
    wanted = limit
    if budget is not None:  # chosen on partial scores: take more, keep the best once exact
        limit = min(limit * int(weights["lexical"].get("prune_pool", 3)), n)
    allowed = allowed_rows(index, filters)
    ivf = index.ivf if semantic_w else None
    if ivf is not None:
        # Large case base: the lexical stage's best rows plus the IVF's nearest vectors,
        # then exact cosines for that pool only (see kb/ann.py).
        lex_pool = lex if allowed is None else _masked(lex, allowed)
        lex_rows = _top(lex_pool, limit)
        lex_rows = lex_rows[lex_pool[lex_rows] > 0]
        sem_rows, _ = ivf.search(query_vector, int(weights["semantic"]["nprobe"]), limit)
        if allowed is not None:
            sem_rows = sorted_intersection(sem_rows, allowed)
        pool = sorted_union(lex_rows, sem_rows).astype(np.int64)
        sem_pool = index.vectors.dot(query_vector, pool)
        fused = lexical_w * lex[pool] + semantic_w * sem_pool
        keep = _top(fused, limit)
        rows, sem_rows_final = pool[keep], sem_pool[keep]
    else:
        fused = lexical_w * lex
        sem_all = None
        if semantic_w:
            sem_all = index.vectors.dot(query_vector)
            fused = fused + semantic_w * sem_all
        if allowed is not None:
            fused = _masked(fused, allowed)
        rows = _top(fused, limit)
        rows = rows[np.isfinite(fused[rows])]
        sem_rows_final = sem_all[rows] if sem_all is not None else np.zeros(len(rows))
    # Exact lexical evidence of the candidates, from all the query's terms.
    per_field: dict[str, np.ndarray] = {}
    problem_fields: dict[str, np.ndarray] = {}
    coverage_fields: dict[str, np.ndarray] = {}
    field_scale: dict[str, float] = {}
    for name, (chosen_by, ids, problem_terms) in matches.items():
        found = index.fields[name].match_rows(rows, ids, qw, problem_terms)  # every term, these rows only
        scores, problem, covered, total = found.scores, found.problem, found.covered, found.total
        best = max(float(chosen_by.max()) if n else 0.0, float(scores.max()) if len(scores) else 0.0)
        field_scale[name] = shares[name] / best if best > 0 else 0.0
        per_field[name] = _scaled(scores, best)
        if best and total:
            problem_fields[name] = problem / best
        if total:
            coverage_fields[name] = covered / total
    if len(rows) > wanted:
        exact = lexical_w * _mix(per_field, shares, len(rows)) + semantic_w * sem_rows_final
        keep = _top(exact, wanted)
        rows, sem_rows_final = rows[keep], sem_rows_final[keep]
        for table in (per_field, problem_fields, coverage_fields):
            for name in table:
                table[name] = table[name][keep]
    semantic_best = best_text_cosine(index, rows, query_vector) if semantic_w else np.zeros(len(rows))
    feature_totals = np.zeros(len(rows))
    if parsed.features:
        scorer = FeatureScorer(parsed.features, weights, index.lexicon)
        for j, row in enumerate(rows.tolist()):
            feature_totals[j] = scorer.total(index.features(row))
    return Candidates(
        rows=rows,
        lexical=_mix(per_field, shares, len(rows)),
        lexical_problem=_mix(problem_fields, shares, len(rows)),
        semantic=sem_rows_final,
        semantic_best=semantic_best,
        features=feature_totals,
        coverage=_mix(coverage_fields, shares, len(rows)),
        problem_fields=problem_fields,
        coverage_fields=coverage_fields,
        fields={name: per_field.get(name, np.zeros(len(rows))) for name in index.fields},
        term_ids=term_ids,
        query_weights=qw,
        field_scale=field_scale,
    )


def best_text_cosine(index: LoadedIndex, rows: np.ndarray, query_vector: np.ndarray) -> np.ndarray:
    """Per candidate, the cosine of the query with the closest of the case's texts (title,
    symptom, user phrasing, each short query). The mean vector finds candidates; this
    rewards a case that says the report's problem in one of its texts, as the report says it."""
    best = np.zeros(len(rows))
    if index.text_vectors is None or not len(rows):
        return best
    starts = np.asarray(index.text_indptr[rows], dtype=np.int64)
    lengths = np.asarray(index.text_indptr[rows + 1], dtype=np.int64) - starts
    has = lengths > 0
    if not has.any():
        return best
    starts, lengths = starts[has], lengths[has]
    cosines = index.text_vectors.dot_ranges(query_vector, starts, lengths)
    firsts = np.cumsum(lengths) - lengths  # where each case's texts begin in the gathered block
    best[has] = np.maximum.reduceat(cosines, firsts)
    return best


def _scaled(scores: np.ndarray, best: float) -> np.ndarray:
    """A field's scores relative to its best case (left as they are when nothing matched)."""
    return scores / best if best > 0 else scores


def _mix(per_field: dict[str, np.ndarray], shares: dict[str, float], size: int) -> np.ndarray:
    total = np.zeros(size)
    for name, values in per_field.items():
        total += shares.get(name, 0.0) * values
    return total


def _masked(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    out = np.full(len(values), -np.inf)
    out[allowed] = values[allowed]
    return out


def _top(values: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` largest values (unordered), in linear time."""
    if limit <= 0 or not len(values):
        return np.zeros(0, dtype=np.int64)
    if limit >= len(values):
        return np.arange(len(values))
    return np.argpartition(-values, limit - 1)[:limit]


def matched_terms(index: LoadedIndex, c: Candidates, rows: list[int], limit: int) -> dict[int, list[tuple[str, float]]]:
    """For each shown case, the query terms that carried its lexical score, with their share
    of it (all fields), read from the shown rows' forward entries."""
    wanted = np.array(sorted(set(rows)), dtype=np.int64)
    totals: dict[int, dict[str, float]] = {row: {} for row in rows}
    for name, lexical in index.fields.items():
        scale = c.field_scale.get(name, 0.0)
        ids = c.term_ids[name]
        if not scale or not len(wanted) or not ids:
            continue
        term_of = {i: t for t, i in ids.items()}
        owner, found, weights = lexical.row_terms(wanted, ids.values())
        for j, term_id, weight in zip(owner.tolist(), found.tolist(), weights.tolist()):
            term = term_of[term_id]
            per_term = totals[int(wanted[j])]
            per_term[term] = per_term.get(term, 0.0) + weight * c.query_weights[term] * scale
    return {
        row: [(t, round(v, 4)) for t, v in sorted(parts.items(), key=lambda item: -item[1])[:limit]]
        for row, parts in totals.items()
    }


def final_scores(c: Candidates, weights: dict[str, Any], semantic_on: bool) -> np.ndarray:
    score = float(weights["lexical"]["weight"]) * c.lexical + float(weights["features"]["weight"]) * c.features
    if semantic_on:
        score = score + float(weights["semantic"]["weight"]) * c.semantic
        score = score + float(weights["semantic"].get("best_weight", 0.0)) * c.semantic_best
    return score


def confidence_inputs(c: Candidates, scores: np.ndarray, order: np.ndarray, shares: dict[str, float] | None = None) -> dict[str, float]:
    """What the confidence models look at, for the top result. ``shares`` (field weights) lets
    a fitting script weigh the per-field evidence as its own mix does; by default, as shipped."""
    if not len(order):
        return {}
    top = int(order[0])
    second = float(scores[order[1]]) if len(order) > 1 else 0.0
    if shares is None:
        problem, coverage = float(c.lexical_problem[top]), float(c.coverage[top])
    else:
        problem = sum(shares.get(n, 0.0) * float(v[top]) for n, v in c.problem_fields.items())
        coverage = sum(shares.get(n, 0.0) * float(v[top]) for n, v in c.coverage_fields.items())
    return {
        "score": float(scores[top]),
        "margin": float(scores[top]) - second,
        "lexical_problem": problem,
        "semantic": float(c.semantic[top]),
        "semantic_best": float(c.semantic_best[top]),
        "features": float(c.features[top]),
        "coverage": coverage,
    }


def probability(inputs: dict[str, float], model: dict[str, Any]) -> float:
    """A logistic model of weights.yaml (``confidence.answerable`` or ``confidence.confident``)."""
    if not inputs:
        return 0.0
    z = float(model["bias"]) + sum(float(w) * inputs.get(name, 0.0) for name, w in model["coef"].items())
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def why_not_confident(inputs: dict[str, float], settings: dict[str, Any], lexical_problem: float, lexical: float = 1.0) -> str:
    if lexical <= 0:
        return "no case shares the words of your report; the nearest ones are only loosely alike in meaning"
    if lexical_problem <= 0 and inputs.get("semantic", 0) < float(settings.get("semantic_floor", 0.5)):
        return "it shares only names (model, framework, GPU) with your report, not the problem"
    if inputs.get("margin", 0) < float(settings.get("close_margin", 0.02)):
        return "other cases score almost the same, so the evidence does not single it out"
    return "the match is partial: add the error message, the numbers you saw and your settings"


def search(
    index: LoadedIndex,
    parsed: ParsedQuery,
    k: int = 5,
    filters: Filters = Filters(),
    weights: dict | None = None,
    embed: Embed | None = None,
) -> SearchOutcome:
    """Rank the indexed cases; ``weights`` overrides the index's own (ablations and tuning);
    ``embed`` turns the query into its sentence vector (None: lexical and features only)."""
    weights = weights or index.weights
    query_vector = embed(semantic_query_text(parsed)) if embed is not None and index.vectors is not None else None
    c = candidates(index, parsed, weights, query_vector=query_vector, filters=filters)
    semantic_on = query_vector is not None
    scores = final_scores(c, weights, semantic_on)
    has_evidence = (c.lexical > 0) | (c.semantic > float(weights["semantic"].get("min_cosine", 0.0)))
    order = np.array([j for j in np.lexsort((c.rows, -scores)) if has_evidence[j]], dtype=np.int64)
    settings = weights["confidence"]
    # Without the semantic stage its inputs are 0; those models were fitted on exactly that.
    models = settings if semantic_on else settings.get("lexical_only", settings)
    inputs = confidence_inputs(c, scores, order)
    p_answerable = probability(inputs, models["answerable"])
    p_confident = probability(inputs, models["confident"])
    no_case = not len(order) or p_answerable < float(models["answerable"]["threshold"])
    threshold = float(models["confident"]["threshold"])
    top_confident = bool(not no_case and p_confident >= threshold and float(c.lexical_problem[order[0]]) > 0)
    hits: list[Hit] = []
    text_weight = float(weights["lexical"]["weight"])
    shown = [int(c.rows[j]) for j in order[:k]]
    explained = matched_terms(index, c, shown, int(weights["explain"]["top_terms"]))
    for rank, j in enumerate(order[:k], start=1):
        row = int(c.rows[j])
        terms = explained[row]
        breakdown = TextBreakdown(
            round(float(c.lexical[j]), 4), text_weight, round(text_weight * float(c.lexical[j]), 4), terms,
            round(float(c.lexical_problem[j]), 4),
        )
        # Only the best result is judged by the model; the next ones are confident when they
        # come close to it (same underlying problem told twice is common in the case base).
        confident = top_confident and (rank == 1 or bool(scores[j] >= float(settings["follow_ratio"]) * scores[order[0]]))
        explained_features = combine(parsed.features, index.features(row), weights, index.lexicon)[1]
        hit = Hit(rank, index.document(row), float(scores[j]), confident, breakdown, explained_features)
        hit.semantic = round(float(c.semantic[j]), 4) if semantic_on else None
        hit.semantic_weight = float(weights["semantic"]["weight"]) if semantic_on else 0.0
        hit.semantic_best = round(float(c.semantic_best[j]), 4) if semantic_on else 0.0
        hit.semantic_best_weight = float(weights["semantic"].get("best_weight", 0.0)) if semantic_on else 0.0
        hit.feature_weight = float(weights["features"]["weight"])
        hits.append(hit)
    abstained = bool(not hits or no_case)
    reason = None
    if hits and not hits[0].confident:
        reason = why_not_confident(inputs, settings, float(c.lexical_problem[order[0]]), float(c.lexical[order[0]]))
    fix_sources = [h for h in hits if h.confident] or ([] if abstained else hits[:1])
    fixes = [] if abstained else recommend_fixes(fix_sources, weights["fixes"], index.stopwords, index.document_by_id)
    return SearchOutcome(
        query=parsed.text,
        features=parsed.feature_summary(),
        unknown=parsed.unknown,
        hits=hits,
        fixes=fixes,
        abstained=abstained,
        threshold=threshold,
        filters=filters.as_dict(),
        case_count=len(index),
        confidence=round(p_confident, 4),
        abstain_reason=reason,
    )


# The sentence encoder reads at most this much of a report. Its cost grows with the text
# (about 7 ms for 100 characters, 65 ms for 2,400 here) while a sentence encoder's vector of
# a long paste says little more than its opening: the description before the logs.
SEMANTIC_QUERY_CHARS = 1000


def semantic_query_text(parsed: ParsedQuery) -> str:
    """What the sentence encoder reads: the cleaned report when the parser made one."""
    return (getattr(parsed, "clean_text", None) or parsed.text)[:SEMANTIC_QUERY_CHARS]
