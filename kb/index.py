"""The persisted retrieval index: fitted once with scikit-learn, read with plain Python.

Building imports scikit-learn (~0.7 s); answering must not. So the fitted
TF-IDF model is stored as an inverted index (term -> idf and the documents'
normalized weights) in one JSON file, together with everything else a query
needs: the compiled lexicon, the stop words, the weights, each case's document
and features. A query then costs one ``json.load`` and a few dictionary look-ups.

``query_vector`` reproduces ``TfidfVectorizer(sublinear_tf=True, norm="l2")
.transform`` exactly; a test checks that against scikit-learn itself.

The file carries a *key* (database revision, lexicon/weights/stop-word hashes,
format version); the service rebuilds when any part of the key changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .features import case_features
from .lexicon import LEXICON_FILE, Lexicon, compile_lexicon, load_lexicon_source
from .paths import data_file
from .tokenize import Stopwords, tokenize

INDEX_FORMAT = 1
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


def _load_yaml(name: str) -> Any:
    import yaml

    with open(data_file(name), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def case_text(doc: dict[str, Any], fields: dict[str, int]) -> str:
    """The text of a case that TF-IDF sees, each field repeated by its weight."""
    model, framework = doc["model"], doc["framework"]
    parts = {
        "title": doc["title"],
        "symptom": doc["symptom"],
        "model": " ".join([model["name"], model.get("version", ""), model.get("size", ""), *model.get("also", [])]),
        "framework": " ".join([framework["name"], framework.get("version", ""), *framework.get("libraries", {})]),
        "config": " ".join(f"{k} {v}" for k, v in doc.get("config", {}).items()),
        "causes": "\n".join(doc["causes"]),
        "fixes": "\n".join(f["action"] for f in doc["fixes"]),
        "tags": " ".join(doc.get("tags", [])),
        "observations": "\n".join(
            f"{o['metric']} {o['value']:g} {o.get('note', '')}" for o in doc.get("observations", [])
        ),
    }
    return "\n".join("\n".join([parts[name]] * int(times)) for name, times in fields.items() if times)


ENTITY_GROUPS = ("model", "framework", "accelerator")
_SIZE_TERM = re.compile(r"^\d+(?:\.\d+)?b$|^\d+x\d+(?:\.\d+)?b$")


def is_entity_term(term: str, lexicon: Lexicon) -> bool:
    """A term that names *what* was trained or *with what* (a model, a framework, a GPU, a size),
    as opposed to what went wrong. Sharing only such terms is no evidence of the same problem."""
    group = term.split(":", 1)[0] if ":" in term else None
    if group is not None:
        return group in ENTITY_GROUPS or group == "family"
    if _SIZE_TERM.match(term):
        return True
    matches = lexicon.find(term)
    return any(m.group in ENTITY_GROUPS and m.start == 0 and m.end == len(term) for m in matches)


@dataclass
class TextHit:
    score: float
    terms: list[tuple[str, float]]
    entity: float = 0.0  # the part of ``score`` owed to entity terms (see is_entity_term)

    @property
    def problem(self) -> float:
        """Text similarity from the description of the problem itself."""
        return self.score - self.entity


class LoadedIndex:
    """A read-only index in memory; see the module docstring."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        self.key: dict[str, Any] = payload["key"]
        self.lexicon = Lexicon(payload["lexicon"])
        self.stopwords = Stopwords.from_lists(payload["stopwords"]["en"], payload["stopwords"]["zh"])
        self.weights: dict[str, Any] = payload["weights"]
        self.cases: list[dict[str, Any]] = payload["cases"]
        self.features: list[dict[str, Any]] = payload["features"]
        self.terms: dict[str, list] = payload["terms"]
        self.entity_terms: frozenset[str] = frozenset(payload.get("entity_terms", []))
        self.cases_by_id: dict[str, dict[str, Any]] = {case["id"]: case for case in self.cases}

    def __len__(self) -> int:
        return len(self.cases)

    def query_vector(self, tokens: list[str]) -> dict[str, float]:
        counts = Counter(t for t in tokens if t in self.terms)
        weights = {t: (1.0 + math.log(n)) * self.terms[t][0] for t, n in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {t: w / norm for t, w in weights.items()} if norm else {}

    def text_scores(self, tokens: list[str], top_terms: int = 6) -> list[TextHit]:
        """Cosine of the query with every case, and the terms that contributed most."""
        scores = [0.0] * len(self.cases)
        entity = [0.0] * len(self.cases)
        contributions: list[list[tuple[str, float]]] = [[] for _ in self.cases]
        for term, q_weight in self.query_vector(tokens).items():
            _, docs, doc_weights = self.terms[term]
            is_entity = term in self.entity_terms
            for doc, d_weight in zip(docs, doc_weights):
                part = q_weight * d_weight
                scores[doc] += part
                if is_entity:
                    entity[doc] += part
                contributions[doc].append((term, part))
        hits = []
        for score, entity_part, parts in zip(scores, entity, contributions):
            parts.sort(key=lambda p: -p[1])
            hits.append(TextHit(score, [(t, round(p, 4)) for t, p in parts[:top_terms]], entity_part))
        return hits


def build_index(documents: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any]:
    """Fit TF-IDF with scikit-learn over the reviewed cases and return the JSON payload."""
    lexicon_compiled = compile_lexicon(load_lexicon_source())
    lexicon = Lexicon(lexicon_compiled)
    stop_lists = _load_yaml(STOPWORDS_FILE)
    stop_lists = {"en": [str(w) for w in stop_lists.get("en", [])], "zh": [str(w) for w in stop_lists.get("zh", [])]}
    stopwords = Stopwords.from_lists(stop_lists["en"], stop_lists["zh"])
    weights = _load_yaml(WEIGHTS_FILE)
    reviewed = [d for d in documents if d.get("status", "reviewed") == "reviewed"]
    reviewed.sort(key=lambda d: d["id"])
    token_lists = [tokenize(case_text(d, weights["fields"]), lexicon, stopwords) for d in reviewed]
    terms: dict[str, list] = {}
    if reviewed:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(analyzer=_identity, sublinear_tf=True, smooth_idf=True, norm="l2")
        matrix = vectorizer.fit_transform(token_lists).tocsc()
        for term, column in vectorizer.vocabulary_.items():
            start, end = matrix.indptr[column], matrix.indptr[column + 1]
            terms[term] = [
                float(vectorizer.idf_[column]),
                [int(i) for i in matrix.indices[start:end]],
                [round(float(w), 6) for w in matrix.data[start:end]],
            ]
    return {
        "key": key,
        "lexicon": lexicon_compiled,
        "stopwords": stop_lists,
        "weights": weights,
        "cases": reviewed,
        "features": [case_features(d, lexicon) for d in reviewed],
        "terms": terms,
        "entity_terms": sorted(t for t in terms if is_entity_term(t, lexicon)),
    }


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def save_index(payload: dict[str, Any], path: Path) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_index(path: Path) -> LoadedIndex | None:
    """The index at ``path``, or None when it is missing, unreadable or of another format."""
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("key", {}).get("format") != INDEX_FORMAT:
        return None
    return LoadedIndex(payload)
