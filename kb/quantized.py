"""Unit vectors stored as int8 codes with one float scale per vector.

Why: the index keeps three sets of sentence vectors (one per case, one per case
text, and the IVF lists) and every query takes cosines against a few thousand
of them. Half precision halved the files but numpy widens float16 in software:
a gather of 2,000 text vectors cost ~6 ms to widen against ~0.8 ms for int8
codes (``float16 -> float32`` has no fast path here, ``int8 -> float32`` does).
int8 also quarters the float32 size, which is what a memory-mapped index costs
a server in resident pages. With a scale per vector (its largest component
maps to 127) the cosine error is about 1e-3, far below the gaps that rank cases.

Files: ``<name>_codes.npy`` (n x dim, int8) and ``<name>_scales.npy`` (n, float32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_BLOCK = 8192  # rows widened at a time when scanning everything


class RangeReader:
    """Reads byte ranges of a file with ``os.pread``, for data read at a few random places per query.

    Why not the memory map: on a page fault Linux maps the neighbouring pages that are in
    the page cache too (fault-around, 64 KB), whatever madvise says, so gathering a few
    hundred scattered vectors per query made a 100k-case server's resident size grow with
    the whole file (342 of the text vectors' 358 MB resident after 400 queries, measured
    from /proc/self/smaps). A read copies only what was asked for. The open file keeps the
    data readable even if a newer build deletes it."""

    def __init__(self, path: Path, offset: int = 0):
        self._file = open(path, "rb", buffering=0)
        self.offset = offset

    def read(self, start: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``start`` (pread may return fewer: Linux caps one call
        near 2 GB); an error if the file ends first."""
        data = os.pread(self._file.fileno(), length, self.offset + start)
        if len(data) == length:
            return data
        parts = [data]
        done = len(data)
        while done < length:
            more = os.pread(self._file.fileno(), length - done, self.offset + start + done)
            if not more:
                raise OSError(f"{self._file.name}: ends before byte {self.offset + start + length}")
            parts.append(more)
            done += len(more)
        return b"".join(parts)

    def close(self) -> None:
        self._file.close()


def npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Where a C-ordered ``.npy`` file's data begins, with its shape and dtype."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered array")
        return handle.tell(), shape, dtype


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i] .. starts[i] + lengths[i] - 1`` of every range, in order:
    gathers the vectors of several cases or lists in one read."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    firsts = np.cumsum(lengths) - lengths
    return np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted: ``np.unique`` without its first-call import of
    ``numpy.ma`` (~7 ms of every cold query)."""
    values = np.sort(np.asarray(values).ravel())
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sorted_unique(np.concatenate([np.asarray(a).ravel(), np.asarray(b).ravel()]))


def sorted_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The values in both ``a`` and ``b``, sorted and distinct."""
    a, b = sorted_unique(a), sorted_unique(b)
    if not len(a) or not len(b):
        return a[:0]
    at = np.minimum(np.searchsorted(b, a), len(b) - 1)
    return a[b[at] == a]


class Int8Vectors:
    def __init__(self, codes: np.ndarray, scales: np.ndarray, reader: RangeReader | None = None):
        self.codes = np.asarray(codes)
        self.scales = np.asarray(scales)
        self._reader = reader  # reads runs of rows by pread (dot_ranges) when set

    @staticmethod
    def encode(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes and per-vector scales of float vectors (rows)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        peak = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(vectors), dtype=np.float32)
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes = np.rint(vectors / scales[:, None]).astype(np.int8)
        return codes, scales

    @classmethod
    def save(cls, vectors: np.ndarray, directory: Path, name: str) -> None:
        cls.save_codes(*cls.encode(vectors), directory, name)

    @staticmethod
    def save_codes(codes: np.ndarray, scales: np.ndarray, directory: Path, name: str) -> None:
        np.save(directory / f"{name}_codes.npy", np.asarray(codes, dtype=np.int8), allow_pickle=False)
        np.save(directory / f"{name}_scales.npy", np.asarray(scales, dtype=np.float32), allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, name: str, random_reads: bool = False) -> "Int8Vectors":
        """Memory-mapped codes; with ``random_reads`` :meth:`dot_ranges` reads them by pread
        (:class:`RangeReader`): for a large set read a few runs at a time."""
        path = directory / f"{name}_codes.npy"
        codes = np.load(path, mmap_mode="r")
        reader = RangeReader(path, npy_data_offset(path)[0]) if random_reads else None
        return cls(codes, np.load(directory / f"{name}_scales.npy", mmap_mode="r"), reader)

    @staticmethod
    def exists(directory: Path, name: str) -> bool:
        return (directory / f"{name}_codes.npy").exists()

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def __getitem__(self, rows) -> np.ndarray:
        """The decoded float32 vectors of ``rows`` (an index, slice or array)."""
        return self.codes[rows].astype(np.float32) * self.scales[rows][..., None]

    def dot(self, query: np.ndarray, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``vectors[rows] @ query`` (float64), reading only those rows' codes."""
        query = np.asarray(query, dtype=np.float32)
        if rows is None:
            out = np.empty(len(self.codes))
            for start in range(0, len(self.codes), _BLOCK):
                out[start : start + _BLOCK] = self.dot(query, slice(start, start + _BLOCK))
            return out
        return ((self.codes[rows].astype(np.float32) @ query) * self.scales[rows]).astype(np.float64)

    def dot_ranges(self, query: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """:meth:`dot` for the runs of consecutive rows ``starts[i] .. starts[i] + lengths[i] - 1``,
        in order (a case's texts are one run)."""
        positions = concat_ranges(starts, lengths)
        if self._reader is None or not len(positions):
            return self.dot(query, positions)
        width = self.codes.shape[1]
        data = b"".join(self._reader.read(int(s) * width, int(n) * width) for s, n in zip(starts, lengths))
        codes = np.frombuffer(data, dtype=np.int8).reshape(-1, width)
        query = np.asarray(query, dtype=np.float32)
        return ((codes.astype(np.float32) @ query) * self.scales[positions]).astype(np.float64)
