"""Recommended fixes: the fixes of the top cases, merged and ranked by support.

Two fixes are the same fix when they share a ``key`` slug or their wording
overlaps enough (word-set Jaccard). A fix's support is the sum of the scores of
the cases that carry it, counted higher when it was confirmed to work, so a fix
that several close cases agree on outranks a lone suggestion.
"""

from __future__ import annotations

from typing import Any, Callable

from .results import Hit, RecommendedFix
from .tokenize import Stopwords, word_tokens
from .lexicon import normalize


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


CaseLookup = Callable[[str], "dict[str, Any] | None"]


def _sources(hits: list[Hit], settings: dict[str, Any], lookup: CaseLookup) -> list[tuple[dict, float]]:
    """(case, weight) pairs: the top hits, then the cases they name as ``related`` (same
    underlying problem), at a discount, so that the fix siblings share is surfaced too."""
    top = hits[: int(settings["max_cases"])]
    seen = {hit.case_id for hit in top}
    pairs = [(hit.case, hit.score) for hit in top]
    for hit in top:
        for related_id in hit.case.get("related", []):
            if related_id in seen:
                continue
            related = lookup(related_id)
            if related is not None:
                seen.add(related_id)
                pairs.append((related, hit.score * float(settings["related_weight"])))
    return pairs


def recommend_fixes(
    hits: list[Hit], settings: dict[str, Any], stopwords: Stopwords, lookup: CaseLookup | None = None
) -> list[RecommendedFix]:
    merged: list[tuple[RecommendedFix, set[str]]] = []
    for case, score in _sources(hits, settings, lookup or (lambda _id: None)):
        case_id = case["id"]
        for fix in case["fixes"]:
            words = set(word_tokens(normalize(fix["action"]), stopwords))
            weight = score * (float(settings["confirmed_bonus"]) if fix.get("confirmed") else 1.0)
            same = next(
                (
                    entry
                    for entry in merged
                    if (fix.get("key") and entry[0].key == fix.get("key"))
                    or _jaccard(words, entry[1]) >= float(settings["merge_similarity"])
                ),
                None,
            )
            if same is None:
                merged.append(
                    (RecommendedFix(fix["action"], bool(fix.get("confirmed")), weight, [case_id], fix.get("key")), words)
                )
                continue
            entry = same[0]
            entry.support += weight
            entry.confirmed = entry.confirmed or bool(fix.get("confirmed"))
            if case_id not in entry.cases:
                entry.cases.append(case_id)
    ranked = sorted((entry for entry, _ in merged), key=lambda f: (-f.support, f.action))
    return ranked[: int(settings["max_fixes"])]
