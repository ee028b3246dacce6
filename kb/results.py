"""What a search returns, and its one JSON form (shared by ``kbq --json`` and the HTTP API).

The JSON schema is versioned by ``SCHEMA``; fields are only ever added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .similarity import FeatureScore

SCHEMA = "kbq.search/1"


def value_text(value: Any) -> str:
    """A feature value as people read it (terminal or page): lists joined, floats without trailing zeros."""
    if isinstance(value, list):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class TextBreakdown:
    score: float          # cosine of query and case text, 0..1
    weight: float         # the text share of the mix
    contribution: float   # weight * score: its part of the final score
    terms: list[tuple[str, float]] = field(default_factory=list)
    problem: float = 0.0  # the part of ``score`` not owed to model/framework/GPU names


@dataclass
class Hit:
    rank: int
    case: dict[str, Any]
    score: float
    confident: bool
    text: TextBreakdown
    features: list[FeatureScore]
    semantic: float | None = None      # cosine of query and case embeddings (None: stage off)
    semantic_weight: float = 0.0
    semantic_best: float = 0.0         # cosine of the query and the case's closest single text
    semantic_best_weight: float = 0.0
    feature_weight: float = 0.0

    @property
    def semantic_contribution(self) -> float:
        if self.semantic is None:
            return 0.0
        return self.semantic * self.semantic_weight + self.semantic_best * self.semantic_best_weight

    @property
    def case_id(self) -> str:
        return self.case["id"]

    @property
    def matched_features(self) -> list[FeatureScore]:
        return [f for f in self.features if f.similarity > 0]


@dataclass
class RecommendedFix:
    action: str
    confirmed: bool
    support: float
    cases: list[str]
    key: str | None = None


@dataclass
class SearchOutcome:
    query: str
    features: dict[str, list]
    unknown: list[str]
    hits: list[Hit]
    fixes: list[RecommendedFix]
    abstained: bool
    threshold: float
    filters: dict[str, str | None]
    case_count: int
    confidence: float = 0.0            # probability that the top result is the user's problem
    abstain_reason: str | None = None  # why the top result is not confident

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "query": self.query,
            "parsed": {"features": self.features, "unknown_terms": self.unknown},
            "filters": {k: v for k, v in self.filters.items() if v},
            "abstained": self.abstained,
            "abstain_reason": self.abstain_reason,
            "confidence": self.confidence,
            "threshold": self.threshold,
            "case_count": self.case_count,
            "results": [_hit_json(hit) for hit in self.hits],
            "recommended_fixes": [
                {"action": f.action, "confirmed": f.confirmed, "support": round(f.support, 4), "cases": f.cases, "key": f.key}
                for f in self.fixes
            ],
        }


def _hit_json(hit: Hit) -> dict[str, Any]:
    case = hit.case
    return {
        "rank": hit.rank,
        "id": hit.case_id,
        "title": case["title"],
        "score": round(hit.score, 4),
        "confident": hit.confident,
        "sources": case["sources"],
        "breakdown": {
            "text": {
                "score": round(hit.text.score, 4),
                "problem_score": hit.text.problem,
                "weight": hit.text.weight,
                "contribution": round(hit.text.contribution, 4),
                "matched_terms": [{"term": t, "contribution": c} for t, c in hit.text.terms],
            },
            "semantic": None
            if hit.semantic is None
            else {"cosine": hit.semantic, "weight": hit.semantic_weight, "best_text_cosine": hit.semantic_best,
                  "best_text_weight": hit.semantic_best_weight, "contribution": round(hit.semantic_contribution, 4)},
            "features": [
                {
                    "name": f.name,
                    "query": f.query,
                    "case": f.case,
                    "similarity": f.similarity,
                    "weight": f.weight,
                    "contribution": f.contribution,
                }
                for f in hit.features
            ],
        },
        "case": case,
    }
