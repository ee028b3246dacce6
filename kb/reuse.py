"""What an index build takes over from the previous index: the rows of unchanged cases.

A case base changes a few cases at a time (an ingest of new incidents, a write through
the API), while analysing one case (lexicon matching, tokenizing, features) costs a few
milliseconds and embedding its texts a few more: at 100k cases, a rebuild from scratch
takes minutes. So every index keeps a digest of each row's stored document
(``hashes.npy``), each field's token counts by row and row lengths beside its postings
(:mod:`kb.lexical`), and each row's summary. The next build analyses only the cases
whose digest it does not find, and copies the rest from the previous index: token
counts, JSON lines, facets, summaries and int8 vectors. The files
come out the same as a build from scratch would write them; only the IVF lists are
updated in place (new rows join their nearest list) instead of being clustered anew.

A previous index is used only when it was built from the same data files (lexicon,
weights, stop words), the same index format and the same fields; its arrays are mapped
when it is opened, so a concurrent clean-up deleting it cannot break the build.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .lexical import FieldCounts
from .quantized import Int8Vectors, RangeReader, concat_ranges
from .stored import StoredJson

HASHES_FILE = "hashes.npy"
SUMMARIES_FILE = "summaries.json"
DIGEST_BYTES = 16


def content_digest(item: dict[str, Any] | StoredJson) -> bytes:
    """A digest of everything the build reads of a case (its stored text and timestamps)."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    if isinstance(item, StoredJson):
        for part in (item.text, item.created_at, item.updated_at):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\x00")
    else:
        digest.update(json.dumps(item, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    return digest.digest()


def save_digests(digests: Sequence[bytes], directory: Path) -> None:
    # Raw digests as uint8 rows: numpy's bytes dtype would drop trailing NUL bytes.
    rows = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, DIGEST_BYTES)
    np.save(directory / HASHES_FILE, rows, allow_pickle=False)


class Previous:
    """A complete earlier index, opened for reuse. Build with :meth:`open`."""

    def __init__(self, directory: Path, meta: dict[str, Any]):
        self.directory = directory
        self.meta = meta
        digests = np.load(directory / HASHES_FILE)
        self._rows = {bytes(d): i for i, d in enumerate(digests)}
        self.cases = len(digests)
        self.summaries: list[list[str]] = json.loads((directory / SUMMARIES_FILE).read_text(encoding="utf-8"))
        self.fields: dict[str, dict[str, np.ndarray]] = {}
        for name in meta["fields"]:
            self.fields[name] = {
                part: np.load(directory / f"lex_{name}_{part}.npy", mmap_mode="r")
                for part in ("terms", "fwd_indptr", "fwd_terms", "fwd_counts", "lengths", "entity")
            }
        self.facets = {part: np.load(directory / f"facet_{part}.npy", mmap_mode="r") for part in ("terms", "indptr", "docs")}
        self._lines = {kind: _Lines(directory / f"{kind}.jsonl", np.load(directory / f"{kind}_offsets.npy"))
                       for kind in ("docs", "features")}
        self.semantic: str | None = meta.get("semantic")
        if self.semantic:
            self.vectors = Int8Vectors.load(directory, "vectors")
            self.text_vectors = Int8Vectors.load(directory, "text_vectors")
            self.text_indptr = np.load(directory / "text_indptr.npy")
            self.ivf = _read_ivf(directory)
        if len(self.summaries) != self.cases:
            raise ValueError(f"{directory}: summaries and digests disagree")

    @classmethod
    def open(cls, candidates: Sequence[Path], key: dict[str, Any], fields: Sequence[str]) -> "Previous | None":
        """The first candidate built from the same data files, format and fields, or None."""
        for directory in candidates:
            try:
                with open(directory / "meta.json", encoding="utf-8") as handle:
                    meta = json.load(handle)
                old = meta["key"]
                if old.get("format") != key.get("format") or old.get("data") != key.get("data"):
                    continue
                if list(meta["fields"]) != list(fields):
                    continue
                return cls(directory, meta)
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def match(self, digests: Sequence[bytes]) -> np.ndarray:
        """For each new row, the row of the same content in this index, or -1."""
        return np.fromiter((self._rows.get(d, -1) for d in digests), dtype=np.int64, count=len(digests))

    def field_counts(self, name: str, kept: np.ndarray, old_rows: np.ndarray) -> tuple[FieldCounts, np.ndarray]:
        """One field's token counts of the ``kept`` new rows (``old_rows``: theirs here), read
        from their forward entries; and its lengths by old row."""
        arrays = self.fields[name]
        indptr = np.asarray(arrays["fwd_indptr"])
        starts = indptr[old_rows]
        lengths = indptr[old_rows + 1] - starts
        positions = concat_ranges(starts, lengths)
        used, term_ids = np.unique(np.asarray(arrays["fwd_terms"])[positions], return_inverse=True)
        counts = FieldCounts(
            np.asarray(arrays["terms"])[used],
            term_ids.astype(np.int32),
            np.repeat(kept, lengths).astype(np.int32),
            np.asarray(arrays["fwd_counts"])[positions].astype(np.float32),
            np.zeros(0, dtype=np.int32),  # lengths come by row, from the second value
        )
        return counts, np.asarray(arrays["lengths"])

    def entity_flags(self, name: str, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entity flags this index already decided for ``terms``: (flags, known)."""
        old_terms = np.asarray(self.fields[name]["terms"])
        if not len(old_terms) or not len(terms):
            return np.zeros(len(terms), dtype=bool), np.zeros(len(terms), dtype=bool)
        at = np.minimum(np.searchsorted(old_terms, terms), len(old_terms) - 1)
        known = old_terms[at] == terms
        return np.asarray(self.fields[name]["entity"])[at] & known, known

    def facet_pairs(self, new_row_of_old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(facet term, new row) of every facet of the rows kept."""
        terms, indptr, docs = (np.asarray(self.facets[p]) for p in ("terms", "indptr", "docs"))
        term_of = np.repeat(np.arange(len(terms)), np.diff(indptr))
        target = new_row_of_old[docs]
        keep = target >= 0
        return terms[term_of[keep]], target[keep]

    def lines(self, kind: str, old_rows: np.ndarray, fresh: Iterator[bytes]) -> Iterator[bytes]:
        """The JSON lines of the new rows in order: this index's line for a kept row (runs of
        consecutive rows in one slice), the next of ``fresh`` for a new one."""
        return self._lines[kind].merged(old_rows, fresh)

    def line_offsets(self, kind: str) -> np.ndarray:
        return self._lines[kind].offsets

    def document(self, old_row: int) -> dict[str, Any]:
        return json.loads(self._lines["docs"].line(old_row))


class _Lines:
    """A JSONL file of the previous index with its row offsets, read by byte ranges."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self.offsets = offsets
        self._reader = RangeReader(path)  # opened now: readable even if a clean-up deletes the file

    def line(self, row: int) -> bytes:
        return self._range(row, row)

    def _range(self, first: int, last: int) -> bytes:
        start = int(self.offsets[first])
        return self._reader.read(start, int(self.offsets[last + 1]) - start)

    def merged(self, old_rows: np.ndarray, fresh: Iterator[bytes]) -> Iterator[bytes]:
        n = len(old_rows)
        # Runs of new rows that were consecutive old rows: one read each.
        breaks = np.flatnonzero((old_rows[1:] != old_rows[:-1] + 1) | (old_rows[1:] < 0) | (old_rows[:-1] < 0)) + 1
        starts = np.concatenate([[0], breaks]).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
        ends = np.concatenate([breaks, [n]]).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
        for start, end in zip(starts.tolist(), ends.tolist()):
            first = int(old_rows[start])
            if first < 0:
                for _ in range(end - start):
                    yield next(fresh)
            else:
                yield self._range(first, int(old_rows[end - 1]))


def _read_ivf(directory: Path) -> dict[str, np.ndarray] | None:
    if not (directory / "ivf_centroids.npy").exists():
        return None
    offsets = np.load(directory / "ivf_offsets.npy")
    rows = np.load(directory / "ivf_rows.npy")
    assign = np.empty(len(rows), dtype=np.int64)
    assign[rows] = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return {"centroids": np.load(directory / "ivf_centroids.npy"), "assign": assign}
