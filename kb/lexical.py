"""BM25 with postings in flat arrays, one index per case field.

Why this shape: a query must cost what its terms' postings cost, whatever the
number of cases. At build time every (term, case) pair gets its final BM25F
weight, and the postings are stored term by term in three arrays, like a CSC
sparse matrix: ``indptr`` (where each term's postings start), ``docs`` (case
rows, ascending) and ``weights``. Terms are a sorted string array, found by
binary search. All arrays are saved as ``.npy`` and memory-mapped, so loading
an index of 100k cases reads only what a query touches.

Each case field (title, symptom, user phrasing, tags, setup, causes, fixes)
has its own index; the retriever scales each field's scores by the best case
of that field and mixes the fields with fitted weights. Measured on real
reports (benches/fit_weights.py), that beat one BM25F index over the same
fields by 0.04 MRR cross-validated: a report meets a case through whichever
field says it, and a long field (causes) no longer drowns a short one (tags).
:func:`build_postings` still accepts several fields per index (BM25F: counts
weighted per field, length-normalised per field, saturated once).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

ENTITY_GROUPS = ("model", "family", "framework", "accelerator")


@dataclass(frozen=True)
class FieldSpec:
    weight: float
    b: float


def concept_group(term: str) -> str | None:
    """'symptom:loss-nan' -> 'symptom'; a plain word or bigram -> None."""
    head, sep, _ = term.partition(":")
    return head if sep and head.isalpha() else None


def build_postings(
    fields_per_doc: Sequence[dict[str, list[str]]],
    specs: dict[str, FieldSpec],
    k1: float,
) -> dict[str, np.ndarray]:
    """Arrays of the BM25F index over documents given as {field: tokens}."""
    n_docs = len(fields_per_doc)
    averages = {
        name: (sum(len(doc.get(name, ())) for doc in fields_per_doc) / n_docs) or 1.0 for name in specs
    } if n_docs else {}
    pseudo: dict[str, list[tuple[int, float]]] = {}
    for row, doc in enumerate(fields_per_doc):
        combined: Counter[str] = Counter()
        for name, tokens in doc.items():
            spec = specs.get(name)
            if spec is None or not tokens:
                continue
            norm = 1.0 - spec.b + spec.b * len(tokens) / averages[name]
            scale = spec.weight / norm
            for term, count in Counter(tokens).items():
                combined[term] += count * scale
        for term, tf in combined.items():
            pseudo.setdefault(term, []).append((row, tf))
    terms = sorted(pseudo)
    indptr = np.zeros(len(terms) + 1, dtype=np.int64)
    total = sum(len(pseudo[t]) for t in terms)
    docs = np.empty(total, dtype=np.int32)
    weights = np.empty(total, dtype=np.float32)
    idf = np.empty(len(terms), dtype=np.float32)
    position = 0
    for i, term in enumerate(terms):
        postings = pseudo[term]
        df = len(postings)
        term_idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
        idf[i] = term_idf
        rows = np.fromiter((r for r, _ in postings), dtype=np.int32, count=df)
        tfs = np.fromiter((tf for _, tf in postings), dtype=np.float64, count=df)
        docs[position : position + df] = rows
        weights[position : position + df] = term_idf * tfs * (k1 + 1.0) / (tfs + k1)
        position += df
        indptr[i + 1] = position
    return {
        "terms": np.array(terms, dtype=str) if terms else np.array([], dtype="<U1"),
        "indptr": indptr,
        "docs": docs,
        "weights": weights,
        "idf": idf,
    }


class LexicalIndex:
    """Read side of :func:`build_postings`; arrays may be memory-mapped."""

    NAMES = ("terms", "indptr", "docs", "weights", "idf")

    def __init__(self, arrays: dict[str, np.ndarray], n_docs: int, k1: float):
        self.terms = arrays["terms"]
        self.indptr = arrays["indptr"]
        self.docs = arrays["docs"]
        self.weights = arrays["weights"]
        self.idf = arrays["idf"]
        self.n_docs = n_docs
        self.k1 = k1

    @classmethod
    def load(cls, directory: Path, prefix: str, n_docs: int, k1: float) -> "LexicalIndex":
        arrays = {name: np.load(directory / f"{prefix}{name}.npy", mmap_mode="r") for name in cls.NAMES}
        return cls(arrays, n_docs, k1)

    @staticmethod
    def save(arrays: dict[str, np.ndarray], directory: Path, prefix: str) -> None:
        for name in LexicalIndex.NAMES:
            np.save(directory / f"{prefix}{name}.npy", arrays[name], allow_pickle=False)

    def __len__(self) -> int:
        return len(self.terms)

    def term_id(self, term: str) -> int | None:
        if not len(self.terms):
            return None
        i = int(np.searchsorted(self.terms, term))
        return i if i < len(self.terms) and self.terms[i] == term else None

    def lookup(self, terms: Iterable[str]) -> dict[str, int]:
        found = {}
        for term in terms:
            i = self.term_id(term)
            if i is not None:
                found[term] = i
        return found

    def postings(self, term_id: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.indptr[term_id]), int(self.indptr[term_id + 1])
        return self.docs[start:end], self.weights[start:end]

    def max_score(self, term_ids: dict[str, int], query_weights: dict[str, float]) -> float:
        """The score a case would get by matching every query term as strongly as BM25 allows."""
        return sum(query_weights[t] * float(self.idf[i]) * (self.k1 + 1.0) for t, i in term_ids.items())

    def scores(self, term_ids: dict[str, int], query_weights: dict[str, float], mask_terms: set[str] | None = None) -> np.ndarray:
        """Dense score vector over all cases, built from the postings of the query's terms only
        (np.bincount over the concatenated postings). ``mask_terms`` restricts to a subset."""
        chosen = [(t, i) for t, i in term_ids.items() if mask_terms is None or t in mask_terms]
        if not chosen:
            return np.zeros(self.n_docs, dtype=np.float64)
        docs_parts, weight_parts = [], []
        for term, i in chosen:
            docs, weights = self.postings(i)
            docs_parts.append(docs)
            weight_parts.append(weights * query_weights[term])
        return np.bincount(np.concatenate(docs_parts), weights=np.concatenate(weight_parts), minlength=self.n_docs)

    def coverage(self, term_ids: dict[str, int], query_weights: dict[str, float], terms: set[str]) -> tuple[np.ndarray, float]:
        """Per case, the idf mass of ``terms`` it contains, and the mass of all of them: how much
        of what the query says (and this field knows of) a case shares, whatever its length."""
        chosen = [(t, i) for t, i in term_ids.items() if t in terms]
        if not chosen:
            return np.zeros(self.n_docs), 0.0
        docs_parts, mass_parts, total = [], [], 0.0
        for term, i in chosen:
            docs, _ = self.postings(i)
            mass = query_weights[term] * float(self.idf[i])
            total += mass
            docs_parts.append(docs)
            mass_parts.append(np.full(len(docs), mass))
        return np.bincount(np.concatenate(docs_parts), weights=np.concatenate(mass_parts), minlength=self.n_docs), total

    def contributions(self, row: int, term_ids: dict[str, int], query_weights: dict[str, float]) -> list[tuple[str, float]]:
        """Per-term score of one case: a binary search in each query term's postings."""
        parts = []
        for term, i in term_ids.items():
            docs, weights = self.postings(i)
            j = int(np.searchsorted(docs, row))
            if j < len(docs) and int(docs[j]) == row:
                parts.append((term, float(weights[j]) * query_weights[term]))
        parts.sort(key=lambda p: -p[1])
        return parts
