"""int8 vector codes: cosines close to float32 ones, and the same whichever way rows are read."""

import numpy as np
import pytest

from kb.quantized import Int8Vectors, concat_ranges, sorted_intersection, sorted_union, sorted_unique


def _unit(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_cosines_stay_within_the_rounding_bound(tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 3000, 512), _unit(rng, 20, 512)
    Int8Vectors.save(vectors, tmp_path, "v")
    stored = Int8Vectors.load(tmp_path, "v")
    assert stored.codes.dtype == np.int8 and isinstance(stored.codes.base, np.memmap)
    # Each component is off by at most half a step (scale / 2): the bound of a dot with a unit query.
    bound = np.sqrt(512) * stored.scales / 2
    for q in queries:
        exact = vectors @ q
        approx = stored.dot(q)
        assert np.all(np.abs(approx - exact) <= bound + 1e-6)
        assert np.abs(approx - exact).max() < 2e-3  # in practice errors cancel: far below the bound
        assert np.argmax(approx) == np.argmax(exact) or exact[np.argmax(approx)] > exact.max() - 2e-3


def test_rows_slices_and_full_scans_agree(tmp_path):
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 20000, 64)  # more rows than one scanning block
    Int8Vectors.save(vectors, tmp_path, "v")
    stored = Int8Vectors.load(tmp_path, "v")
    q = _unit(rng, 1, 64)[0]
    full = stored.dot(q)
    rows = np.array([5, 19999, 0, 8192, 8191])
    assert np.array_equal(stored.dot(q, rows), full[rows])
    assert np.array_equal(stored.dot(q, slice(100, 200)), full[100:200])
    assert np.allclose(stored[rows] @ q, full[rows], atol=1e-6)


def test_zero_vectors_and_empty_sets():
    codes, scales = Int8Vectors.encode(np.zeros((2, 8), dtype=np.float32))
    assert not codes.any() and np.all(scales == 1.0)
    empty = Int8Vectors(*Int8Vectors.encode(np.zeros((0, 8), dtype=np.float32)))
    assert len(empty) == 0 and empty.dot(np.ones(8)).shape == (0,)


def test_concat_ranges():
    assert concat_ranges(np.array([10, 3, 7]), np.array([2, 0, 3])).tolist() == [10, 11, 7, 8, 9]
    assert concat_ranges(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == []


def test_range_reads_equal_mapped_reads(tmp_path):
    """Text vectors are read by pread, a case's run of rows at a time: the same cosines as the map."""
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 500, 32)
    Int8Vectors.save(vectors, tmp_path, "v")
    mapped, read = Int8Vectors.load(tmp_path, "v"), Int8Vectors.load(tmp_path, "v", random_reads=True)
    q = _unit(rng, 1, 32)[0]
    starts, lengths = np.array([400, 0, 17, 499]), np.array([3, 5, 0, 1])
    expected = mapped.dot(q, concat_ranges(starts, lengths))
    assert len(expected) == 9
    assert np.array_equal(read.dot_ranges(q, starts, lengths), expected)
    assert np.array_equal(mapped.dot_ranges(q, starts, lengths), expected)
    assert read.dot_ranges(q, np.array([3]), np.array([0])).shape == (0,)


def test_range_reader_reads_exactly_what_was_asked_or_fails(tmp_path, monkeypatch):
    """A short pread (Linux caps one call near 2 GB) is continued; a file that ends early is an error."""
    import os

    from kb.quantized import RangeReader

    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4)
    reader = RangeReader(path, offset=16)
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: real(fd, min(n, 100), at))  # at most 100 bytes a call
    assert reader.read(4, 500) == (bytes(range(256)) * 4)[20:520]
    with pytest.raises(OSError, match="ends before"):
        reader.read(1000, 100)
    reader.close()


def test_sorted_set_helpers_match_numpy():
    rng = np.random.default_rng(3)
    for size in (0, 1, 2, 50, 400):
        a = rng.integers(0, 60, size)
        b = rng.integers(0, 60, size // 2 + 1)
        assert sorted_unique(a).tolist() == np.unique(a).tolist()
        assert sorted_union(a, b).tolist() == np.union1d(a, b).tolist()
        assert sorted_intersection(a, b).tolist() == np.intersect1d(a, b).tolist()
