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
A field whose fitted weight is zero is not indexed at all.

Each field also keeps the same pairs row by row (``fwd_indptr``, ``fwd_terms``,
``fwd_weights``), a forward index as search engines keep for re-ranking: the
exact evidence of a few hundred candidates is read from their own rows, a cost
that follows the candidates' length, instead of a binary search of every query
term's postings (a common term's postings are most of the base). Token counts
(``fwd_counts``) and row lengths are kept for the next build (:mod:`kb.reuse`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .quantized import concat_ranges, sorted_unique

ENTITY_GROUPS = ("model", "family", "framework", "accelerator")


def concept_group(term: str) -> str | None:
    """'symptom:loss-nan' -> 'symptom'; a plain word or bigram -> None."""
    head, sep, _ = term.partition(":")
    return head if sep and head.isalpha() else None


@dataclass
class FieldCounts:
    """Token counts of one field over consecutive case rows, as (term, row, count) triples.

    Index builds tokenize in worker processes; each returns these small arrays
    instead of token lists, and :func:`build_postings` merges them."""

    terms: Sequence[str] | np.ndarray  # this part's own vocabulary; term_ids index into it
    term_ids: np.ndarray  # int32
    rows: np.ndarray  # int32, global case rows
    counts: np.ndarray  # float32
    lengths: np.ndarray  # int32, tokens per row, for every row of the part in order


def count_tokens(token_lists: Sequence[list[str]], first_row: int = 0) -> FieldCounts:
    vocabulary: dict[str, int] = {}
    term_ids: list[int] = []
    per_row: list[int] = []
    counts: list[int] = []
    for tokens in token_lists:
        counted = Counter(tokens)
        for term in counted:
            if term not in vocabulary:
                vocabulary[term] = len(vocabulary)
        term_ids.extend(map(vocabulary.__getitem__, counted))
        counts.extend(counted.values())
        per_row.append(len(counted))
    rows = np.repeat(np.arange(first_row, first_row + len(token_lists), dtype=np.int32), per_row)
    return FieldCounts(
        list(vocabulary),
        np.array(term_ids, dtype=np.int32),
        rows,
        np.array(counts, dtype=np.float32),
        np.array([len(t) for t in token_lists], dtype=np.int32),
    )


def build_postings(parts: Sequence[FieldCounts], lengths: np.ndarray, b: float, k1: float) -> dict[str, np.ndarray]:
    """Arrays of one field's BM25 index from the counts of runs of rows (``lengths``: tokens
    per row, every row of the index).

    Vectorised over all (term, case) pairs: a term's weight in a case is
    idf * tf' (k1 + 1) / (tf' + k1), where tf' is the count divided by the
    case's length normalisation 1 - b + b * length / average length. The pairs are
    also laid out row by row (``fwd_*``), with their counts, and each row's length is
    kept: the next build reuses those for the cases that did not change."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n_docs = len(lengths)
    local_terms = [np.asarray(p.terms, dtype=str) for p in parts if len(p.terms)]
    if not local_terms:
        empty = np.zeros(0)
        return {"terms": np.array([], dtype="<U1"), "indptr": np.zeros(1, dtype=np.int64),
                "docs": empty.astype(np.int32), "weights": empty.astype(np.float32), "idf": empty.astype(np.float32),
                "fwd_indptr": np.zeros(n_docs + 1, dtype=np.int64), "fwd_terms": empty.astype(np.int32),
                "fwd_weights": empty.astype(np.float32), "fwd_counts": empty.astype(np.uint16), "lengths": lengths}
    terms, inverse = np.unique(np.concatenate(local_terms), return_inverse=True)
    # The narrowest string width that holds them: the same bytes whichever parts they came from.
    terms = terms.astype(f"<U{max(1, int(np.char.str_len(terms).max()))}")
    global_ids, start = [], 0
    for part in parts:
        remap = inverse[start : start + len(part.terms)]
        start += len(part.terms)
        global_ids.append(remap[part.term_ids] if len(part.term_ids) else np.zeros(0, dtype=np.int64))
    term_of = np.concatenate(global_ids)
    rows = np.concatenate([p.rows for p in parts])
    counts = np.concatenate([p.counts for p in parts]).astype(np.float64)
    average = float(lengths.mean()) or 1.0
    tf = counts / (1.0 - b + b * lengths[rows] / average)
    df = np.bincount(term_of, minlength=len(terms))
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    order = np.lexsort((rows, term_of))
    weights = (idf[term_of] * tf * (k1 + 1.0) / (tf + k1)).astype(np.float32)
    by_row = np.lexsort((term_of, rows))
    peak = int(counts.max()) if len(counts) else 0
    return {
        "terms": terms,
        "indptr": np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
        "docs": rows[order].astype(np.int32),
        "weights": weights[order],
        "idf": idf.astype(np.float32),
        "fwd_indptr": np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_docs))]).astype(np.int64),
        "fwd_terms": term_of[by_row].astype(np.int32),
        "fwd_weights": weights[by_row],
        "fwd_counts": counts[by_row].astype(np.uint16 if peak < 1 << 16 else np.int32),
        "lengths": lengths,
    }


@dataclass
class FieldMatch:
    scores: np.ndarray  # per row asked for
    problem: np.ndarray  # per row, from problem terms only
    covered: np.ndarray  # per row, idf mass of the problem terms it contains
    total: float  # idf mass of all problem terms of the query found in this field


class LexicalIndex:
    """Read side of :func:`build_postings`; arrays may be memory-mapped."""

    NAMES = ("terms", "indptr", "docs", "weights", "idf", "fwd_indptr", "fwd_terms", "fwd_weights")
    BUILD_NAMES = ("fwd_counts", "lengths")  # saved for the next build (kb.reuse), not read by queries

    def __init__(self, arrays: dict[str, np.ndarray], n_docs: int, k1: float):
        # Plain ndarray views of the maps: same memory, without np.memmap's per-slice overhead.
        self.terms = np.asarray(arrays["terms"])
        self.indptr = np.asarray(arrays["indptr"])
        self.docs = np.asarray(arrays["docs"])
        self.weights = np.asarray(arrays["weights"])
        self.idf = np.asarray(arrays["idf"])
        self.fwd_indptr = np.asarray(arrays["fwd_indptr"])
        self.fwd_terms = np.asarray(arrays["fwd_terms"])
        self.fwd_weights = np.asarray(arrays["fwd_weights"])
        self.n_docs = n_docs
        self.k1 = k1

    @classmethod
    def load(cls, directory: Path, prefix: str, n_docs: int, k1: float) -> "LexicalIndex":
        arrays = {name: np.load(directory / f"{prefix}{name}.npy", mmap_mode="r") for name in cls.NAMES}
        return cls(arrays, n_docs, k1)

    @staticmethod
    def save(arrays: dict[str, np.ndarray], directory: Path, prefix: str) -> None:
        for name in (*LexicalIndex.NAMES, *LexicalIndex.BUILD_NAMES):
            np.save(directory / f"{prefix}{name}.npy", arrays[name], allow_pickle=False)

    def __len__(self) -> int:
        return len(self.terms)

    def lookup(self, terms: Iterable[str]) -> dict[str, int]:
        """Term ids of the terms this field has: one vectorised binary search for all of them."""
        wanted = list(terms)
        if not wanted or not len(self.terms):
            return {}
        at = np.searchsorted(self.terms, np.array(wanted, dtype=str))
        inside = at < len(self.terms)
        found = {}
        for term, i, ok in zip(wanted, at.tolist(), inside.tolist()):
            if ok and self.terms[i] == term:
                found[term] = i
        return found

    def postings(self, term_id: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.indptr[term_id]), int(self.indptr[term_id + 1])
        return self.docs[start:end], self.weights[start:end]

    def scores(self, term_ids: dict[str, int], query_weights: dict[str, float]) -> np.ndarray:
        """The query-weighted BM25 score of every case from these terms' postings: what chooses
        candidates. (Their problem-term share and coverage are computed for the candidates
        alone, by :meth:`match_rows`.)"""
        if not term_ids:
            return np.zeros(self.n_docs)
        terms = list(term_ids.items())
        starts = self.indptr[[i for _, i in terms]]
        lengths = self.indptr[[i + 1 for _, i in terms]] - starts
        positions = concat_ranges(starts, lengths)
        qw = np.repeat(np.array([query_weights[t] for t, _ in terms]), lengths)
        return np.bincount(self.docs[positions], weights=self.weights[positions] * qw, minlength=self.n_docs)

    def within_budget(self, term_ids: dict[str, int], budget: int | None) -> tuple[dict[str, int], dict[str, int]]:
        """Split the query's terms into those read in full to find candidates (the rarest, up to
        ``budget`` postings, and always the rarest one) and the rest, which are only looked up
        for the candidates (:meth:`match_rows`). ``budget`` None reads every term in full."""
        if budget is None:
            return term_ids, {}
        first: dict[str, int] = {}
        rest: dict[str, int] = {}
        spent = 0
        for term, i in sorted(term_ids.items(), key=lambda item: int(self.indptr[item[1] + 1] - self.indptr[item[1]])):
            df = int(self.indptr[i + 1] - self.indptr[i])
            if not first or spent + df <= budget:
                first[term] = i
                spent += df
            else:
                rest[term] = i
        return first, rest

    def row_terms(self, rows: np.ndarray, term_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs of ``rows`` whose term is one of ``term_ids``, read from the rows' forward
        entries: (position of the row in ``rows``, term id, BM25 weight) per pair."""
        wanted = sorted_unique(np.fromiter(term_ids, dtype=np.int64))
        starts = np.asarray(self.fwd_indptr[rows], dtype=np.int64)
        lengths = np.asarray(self.fwd_indptr[rows + 1], dtype=np.int64) - starts
        positions = concat_ranges(starts, lengths)
        terms = self.fwd_terms[positions]
        at = np.minimum(np.searchsorted(wanted, terms), max(len(wanted) - 1, 0))
        hit = wanted[at] == terms if len(wanted) else np.zeros(len(terms), dtype=bool)
        owner = np.repeat(np.arange(len(rows)), lengths)[hit]
        return owner, terms[hit].astype(np.int64), self.fwd_weights[positions[hit]].astype(np.float64)

    def match_rows(self, rows: np.ndarray, term_ids: dict[str, int], query_weights: dict[str, float],
                   problem_terms: set[str]) -> "FieldMatch":
        """The lexical evidence of the given rows (the candidates): their score, its part from
        problem terms, and the idf mass of the problem terms each contains (of ``total``): how
        much of what the query says (and this field knows of) a case shares, whatever its
        length. Read from the rows' forward entries (:meth:`row_terms`), so a common term
        costs nothing more than a rare one; the sums are one vectorised step."""
        size = len(rows)
        if not term_ids or not size:
            zeros = np.zeros(size)
            return FieldMatch(zeros, zeros.copy(), zeros.copy(), 0.0)
        terms = sorted(term_ids.items(), key=lambda item: item[1])
        ids = np.array([i for _, i in terms], dtype=np.int64)
        qw = np.array([query_weights[t] for t, _ in terms])
        is_problem = np.array([t in problem_terms for t, _ in terms])
        mass = qw * self.idf[ids]
        owner, found, weights = self.row_terms(rows, ids)
        k = np.searchsorted(ids, found)
        weighted = weights * qw[k]
        problem_pair = is_problem[k]
        scores = np.bincount(owner, weights=weighted, minlength=size)
        problem = np.bincount(owner[problem_pair], weights=weighted[problem_pair], minlength=size)
        covered = np.bincount(owner[problem_pair], weights=mass[k[problem_pair]], minlength=size)
        return FieldMatch(scores, problem, covered, float(mass[is_problem].sum()))
