"""Ranking: TF-IDF text similarity mixed with structured feature similarity.

Every hit carries its breakdown (text cosine, its top terms, and each
feature's similarity and contribution), and the outcome abstains ("no close
case") when even the best case is not a confident match.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fixes import recommend_fixes
from .index import LoadedIndex
from .lexicon import normalize
from .parser import ParsedQuery
from .results import Hit, SearchOutcome, TextBreakdown
from .similarity import combine


@dataclass(frozen=True)
class Filters:
    model: str | None = None
    framework: str | None = None
    tag: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"model": self.model, "framework": self.framework, "tag": self.tag}


def _passes(index: LoadedIndex, i: int, filters: Filters) -> bool:
    case, feats = index.cases[i], index.features[i]
    if filters.model:
        # A version ('gemma-3') keeps that version; a family ('qwen') keeps the whole family.
        wanted = index.lexicon.resolve("model", filters.model) or normalize(filters.model).strip()
        if wanted not in feats.get("model", []) and wanted != feats.get("model_family"):
            return False
    if filters.framework:
        wanted = index.lexicon.resolve("framework", filters.framework) or normalize(filters.framework).strip()
        if wanted not in feats.get("framework", []) and wanted not in feats.get("framework_libraries", []):
            return False
    if filters.tag:
        if normalize(filters.tag).strip() not in {normalize(t) for t in case.get("tags", [])}:
            return False
    return True


def matching_ids(index: LoadedIndex, filters: Filters) -> set[str]:
    """Ids of the indexed cases that pass the filters."""
    return {case["id"] for i, case in enumerate(index.cases) if _passes(index, i, filters)}


def search(
    index: LoadedIndex, parsed: ParsedQuery, k: int = 5, filters: Filters = Filters(), weights: dict | None = None
) -> SearchOutcome:
    """Rank the indexed cases; ``weights`` overrides the index's own (for ablations and tuning)."""
    weights = weights or index.weights
    text_weight = float(weights["mix"]["text"])
    threshold = float(weights["abstain"]["threshold"])
    min_problem_text = float(weights["abstain"]["min_problem_text"])
    text_hits = index.text_scores(parsed.tokens)
    scored: list[Hit] = []
    for i, text_hit in enumerate(text_hits):
        if not _passes(index, i, filters):
            continue
        feature_total, feature_scores = combine(parsed.features, index.features[i], weights, index.lexicon)
        text_part = text_weight * text_hit.score
        score = text_part + float(weights["mix"]["features"]) * feature_total
        confident = score >= threshold and text_hit.problem >= min_problem_text
        breakdown = TextBreakdown(
            round(text_hit.score, 4), text_weight, round(text_part, 4), text_hit.terms, round(text_hit.problem, 4)
        )
        scored.append(Hit(0, index.cases[i], score, confident, breakdown, feature_scores))
    scored = [hit for hit in scored if hit.score > 0]  # sharing nothing with the query is not a candidate
    scored.sort(key=lambda h: (-h.score, h.case_id))
    top = scored[:k]
    for rank, hit in enumerate(top, start=1):
        hit.rank = rank
    abstained = not top or not top[0].confident
    confident_hits = [h for h in top if h.confident]
    fixes = recommend_fixes(confident_hits, weights["fixes"], index.stopwords, index.cases_by_id) if not abstained else []
    return SearchOutcome(
        query=parsed.text,
        features=parsed.feature_summary(),
        unknown=parsed.unknown,
        hits=top,
        fixes=fixes,
        abstained=abstained,
        threshold=threshold,
        filters=filters.as_dict(),
        case_count=len(index),
    )
