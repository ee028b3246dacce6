"""Retrieval evaluation: MRR, recall@k, abstention, and the misses, for kbq and its baselines.

A query file holds one JSON object per line: ``{"query": ..., "expected": [...],
"kind"?: ..., "lang"?: ...}``. ``expected`` names case ids or source strings (a
seed file name, a URL); an empty list means no case should be offered, and a
correct answer is to abstain.

Queries are split deterministically into *dev* (70 %) and *heldout* (30 %) by a
hash of their text, so weights and lexicon are tuned on dev and the held-out
figure stays honest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import KbqError

SPLITS = ("all", "dev", "heldout")
RankFunction = Callable[[str], tuple[list[str], bool]]


@dataclass(frozen=True)
class EvalQuery:
    query: str
    expected: tuple[str, ...]
    kind: str = ""
    lang: str = ""

    @property
    def split(self) -> str:
        bucket = int(hashlib.sha1(self.query.encode("utf-8")).hexdigest(), 16) % 10
        return "heldout" if bucket < 3 else "dev"


@dataclass
class QueryOutcome:
    query: str
    kind: str
    lang: str
    expected: list[str]      # case ids the references resolved to
    references: list[str]    # as written in the query file
    ranked: list[str]
    rank: int | None
    abstained: bool


@dataclass
class EvalReport:
    name: str
    queries: int
    answerable: int
    mrr: float
    recall: dict[int, float]
    false_abstentions: int
    none_queries: int
    abstention_accuracy: float | None
    unknown_expected: list[str] = field(default_factory=list)
    outcomes: list[QueryOutcome] = field(default_factory=list)

    @property
    def misses(self) -> list[QueryOutcome]:
        return [o for o in self.outcomes if (o.references and o.rank != 1) or (not o.references and not o.abstained)]

    def to_json(self, with_outcomes: bool = False) -> dict:
        data = asdict(self)
        data["recall"] = {f"@{k}": v for k, v in self.recall.items()}
        data["misses"] = [asdict(o) for o in self.misses]
        if not with_outcomes:
            data.pop("outcomes")
        return data


def load_queries(path: Path) -> list[EvalQuery]:
    """Parse a JSONL query file; a bad line fails with its file and line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise KbqError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise KbqError(f"{path}: not valid UTF-8") from None
    queries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise KbqError(f"{path}:{number}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("expected", []), list):
            raise KbqError(f"{path}:{number}: expected an object with 'query' (text) and 'expected' (list)")
        queries.append(EvalQuery(row["query"], tuple(str(e) for e in row.get("expected", [])), str(row.get("kind", "")), str(row.get("lang", ""))))
    if not queries:
        raise KbqError(f"{path}: no queries")
    return queries


def select(queries: Iterable[EvalQuery], split: str) -> list[EvalQuery]:
    if split not in SPLITS:
        raise KbqError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    return [q for q in queries if split == "all" or q.split == split]


def reference_map(cases: Iterable[dict]) -> dict[str, str]:
    """Case id and every source string -> case id, for reading ``expected``."""
    mapping: dict[str, str] = {}
    for case in cases:
        mapping[case["id"]] = case["id"]
        for source in case["sources"]:
            mapping.setdefault(source, case["id"])
    return mapping


def evaluate(name: str, rank: RankFunction, queries: list[EvalQuery], references: dict[str, str], ks=(1, 3, 5)) -> EvalReport:
    """Run ``rank`` on every query. A query whose expected cases are all unknown to the
    case base still counts, as a miss: the gap is in the case base, not in the query."""
    outcomes: list[QueryOutcome] = []
    unknown: set[str] = set()
    for item in queries:
        expected = sorted({references[e] for e in item.expected if e in references})
        unknown.update(e for e in item.expected if e not in references)
        ranked, abstained = rank(item.query)
        position = next((i for i, case_id in enumerate(ranked, start=1) if case_id in expected), None)
        outcomes.append(QueryOutcome(item.query, item.kind, item.lang, expected, list(item.expected), ranked, position, abstained))
    scored = [o for item, o in zip(queries, outcomes) if item.expected]
    none = [o for item, o in zip(queries, outcomes) if not item.expected]
    count = len(scored) or 1
    return EvalReport(
        name=name,
        queries=len(outcomes),
        answerable=len(scored),
        mrr=sum(1.0 / o.rank for o in scored if o.rank) / count,
        recall={k: sum(1 for o in scored if o.rank and o.rank <= k) / count for k in ks},
        false_abstentions=sum(1 for o in scored if o.abstained),
        none_queries=len(none),
        abstention_accuracy=(sum(1 for o in none if o.abstained) / len(none)) if none else None,
        unknown_expected=sorted(unknown),
        outcomes=outcomes,
    )
