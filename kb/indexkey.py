"""Which index answers for a database, and what it holds, without loading it.

An index directory is named by its key: the index format, the database revision it was
built from and a hash of the data files it was built with (kb.index writes it). This
module computes keys and reads an index's summary from its ``meta.json`` with the stdlib
only, so ``kbq stats`` can report a built index without importing numpy or mapping its
arrays; :mod:`kb.index` builds and loads the index itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lexicon import LEXICON_FILE
from .paths import data_file

# Bump when the files change, or when a case would be analysed differently (tokens, features):
# an index of the same key is used as it is, and a rebuild copies the rows of unchanged cases
# from an index of the same format and data files (kb/reuse.py).
INDEX_FORMAT = 5
WEIGHTS_FILE = "weights.yaml"
STOPWORDS_FILE = "stopwords.yaml"
DATA_FILES = (LEXICON_FILE, WEIGHTS_FILE, STOPWORDS_FILE)


def data_fingerprint() -> str:
    """Hash of the lexicon, weights and stop words: a change to any of them invalidates the index."""
    digest = hashlib.sha256()
    for name in DATA_FILES:
        digest.update(name.encode())
        digest.update(data_file(name).read_bytes())
    return digest.hexdigest()[:16]


def index_key(revision: str | None) -> dict[str, Any]:
    return {"format": INDEX_FORMAT, "revision": revision, "data": data_fingerprint()}


def key_name(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IndexSummary:
    """What ``kbq stats`` tells of an index: its size and its cases counted by facet."""

    cases: int
    terms: int
    counts: dict[str, dict[str, int]]  # by_model_family, by_framework, by_phase, by_language

    @classmethod
    def of(cls, meta: dict[str, Any]) -> IndexSummary:
        """From an index's meta (``meta.json``, or :attr:`kb.index.LoadedIndex.meta`)."""
        return cls(cases=int(meta["cases"]), terms=int(meta["terms"]), counts=meta["counts"])


def read_summary(directory: Path, key: dict[str, Any]) -> IndexSummary | None:
    """The summary of the complete index of ``key`` in ``directory``; None when there is none
    (``meta.json`` is written last, so an index being built has none yet)."""
    try:
        with open(directory / "meta.json", encoding="utf-8") as handle:
            meta = json.load(handle)
        return IndexSummary.of(meta) if meta["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
