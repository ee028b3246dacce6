"""Approximate nearest neighbours for the case vectors: an inverted-file (IVF) index.

Below a few thousand cases a query simply multiplies the case-vector matrix
(exact, and faster than any index). Above ``min_cases`` a scan of every vector
would make the semantic stage cost grow with the case base (100k cases x 512
floats is 200 MB read per query), so the vectors are clustered with k-means
and stored list by list: a query scores the centroids, opens the ``nprobe``
closest lists and reads only their vectors. The lexical stage's own candidates
are always rescored exactly, so a case that BM25 finds is never lost to the
approximation; the IVF only decides which *other* cases the meaning of the
query brings in.

Files: ``ivf_centroids.npy`` (lists x dim), ``ivf_offsets.npy`` (lists + 1),
``ivf_rows.npy`` (case rows ordered list by list), ``ivf_vectors_*.npy`` (the
vectors in that order as int8 codes and scales, :mod:`kb.quantized`, so a list
is one contiguous slice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .quantized import Int8Vectors, concat_ranges


def kmeans(vectors: np.ndarray, k: int, iterations: int = 8, sample: int = 40000, seed: int = 7) -> np.ndarray:
    """Spherical k-means (cosine) on a sample; returns unit-length centroids."""
    rng = np.random.default_rng(seed)
    data = vectors if len(vectors) <= sample else vectors[rng.choice(len(vectors), sample, replace=False)]
    data = np.ascontiguousarray(data, dtype=np.float32)
    centroids = data[rng.choice(len(data), k, replace=False)].copy()
    for _ in range(iterations):
        assign = np.argmax(data @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, data)
        counts = np.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():  # reseed empty clusters with random points
            sums[empty] = data[rng.choice(len(data), int(empty.sum()), replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = sums / np.where(norms == 0, 1.0, norms)
    return centroids.astype(np.float32)


def lists_for(cases: int) -> int:
    return max(1, int(4 * np.sqrt(cases)))


def nearest_lists(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The list (closest centroid) of each vector; in blocks to bound memory."""
    assign = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), 8192):
        block = np.asarray(vectors[start : start + 8192], dtype=np.float32)
        assign[start : start + len(block)] = np.argmax(block @ centroids.T, axis=1)
    return assign


def build_ivf(vectors: np.ndarray, directory: Path, lists: int | None = None) -> None:
    centroids = kmeans(vectors, lists or lists_for(len(vectors)))
    save_ivf(directory, centroids, nearest_lists(vectors, centroids), *Int8Vectors.encode(vectors))


def save_ivf(directory: Path, centroids: np.ndarray, assign: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> None:
    """Write the lists: case rows grouped by ``assign``, with their int8 ``codes`` and ``scales``."""
    k = len(centroids)
    order = np.argsort(assign, kind="stable")
    offsets = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(assign, minlength=k), out=offsets[1:])
    np.save(directory / "ivf_centroids.npy", np.asarray(centroids, dtype=np.float32))
    np.save(directory / "ivf_offsets.npy", offsets)
    np.save(directory / "ivf_rows.npy", order.astype(np.int32))
    Int8Vectors.save_codes(np.asarray(codes)[order], np.asarray(scales)[order], directory, "ivf_vectors")


class IVF:
    def __init__(self, directory: Path):
        self.centroids = np.load(directory / "ivf_centroids.npy")
        self.offsets = np.load(directory / "ivf_offsets.npy")
        self.rows = np.load(directory / "ivf_rows.npy", mmap_mode="r")
        self.vectors = Int8Vectors.load(directory, "ivf_vectors")

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / "ivf_centroids.npy").exists()

    def search(self, query: np.ndarray, nprobe: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosines of the (approximately) ``limit`` nearest case vectors."""
        nearest = np.argsort(-(self.centroids @ query))[:nprobe]
        starts = self.offsets[nearest]
        positions = concat_ranges(starts, self.offsets[nearest + 1] - starts)
        if not len(positions):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        rows_all = np.asarray(self.rows[positions], dtype=np.int64)
        sims_all = self.vectors.dot(query, positions)
        if len(rows_all) > limit:
            keep = np.argpartition(-sims_all, limit - 1)[:limit]
            rows_all, sims_all = rows_all[keep], sims_all[keep]
        return rows_all, sims_all
