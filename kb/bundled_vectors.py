"""Embeddings of the bundled cases, shipped in the package.

Embedding the ~800 texts of the bundled cases takes several seconds; shipped
precomputed (float16, under 1 MB), they make the first query on a fresh
machine as quick as a lexical build. They are only a seed for the vector
cache: a text missing from them (a case edited since) is embedded at build
time as usual. ``tests/test_semantic.py`` fails when they are out of date, and

    python -m kb.bundled_vectors

rewrites them.
"""

from __future__ import annotations

import numpy as np

from .paths import DATA_DIR, bundled_cases_dir

BUNDLED_VECTORS_DIR = DATA_DIR / "bundled_vectors"


def bundled_texts() -> list[str]:
    from .casefiles import load_cases
    from .index import semantic_texts

    texts: list[str] = []
    for loaded in load_cases([bundled_cases_dir()]):
        texts.extend(semantic_texts(loaded.case.to_document()))
    return sorted(set(texts))


def missing_texts() -> list[str]:
    """Bundled case texts that the shipped vectors do not cover."""
    from .semantic import _read_pair, text_key

    known, _ = _read_pair(BUNDLED_VECTORS_DIR / "keys.npy", BUNDLED_VECTORS_DIR / "vectors.npy")
    return [t for t in bundled_texts() if text_key(t) not in known]


def write(cache_dir=None) -> int:
    from .paths import user_cache_dir
    from .semantic import Encoder, text_key

    texts = bundled_texts()
    vectors = Encoder((cache_dir or user_cache_dir()) / "models").encode(texts)
    BUNDLED_VECTORS_DIR.mkdir(parents=True, exist_ok=True)
    keys = np.frombuffer(b"".join(text_key(t) for t in texts), dtype=np.uint8).reshape(-1, 20)
    np.save(BUNDLED_VECTORS_DIR / "keys.npy", keys)
    np.save(BUNDLED_VECTORS_DIR / "vectors.npy", vectors.astype(np.float16))
    (BUNDLED_VECTORS_DIR / "model.txt").write_text(Encoder(None).name + "\n", encoding="ascii")
    return len(texts)


def seed_for(model: str):
    """The shipped vectors' directory when they were made by ``model``, else None."""
    try:
        made_by = (BUNDLED_VECTORS_DIR / "model.txt").read_text(encoding="ascii").strip()
    except OSError:
        return None
    return BUNDLED_VECTORS_DIR if made_by == model else None


if __name__ == "__main__":
    print(f"wrote {write()} vectors to {BUNDLED_VECTORS_DIR}")
