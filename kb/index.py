"""The persisted retrieval index: a directory of memory-mapped arrays.

Layout (one directory per index key, written aside and renamed into place, so
readers see a whole old index or a whole new one):

* ``meta.json``: the key, the compiled lexicon, stop words, weights, counts;
* ``ids.json``: case ids by row;
* ``lex_<field>_*.npy``: BM25 postings of each case field, and the same pairs row by
  row for re-ranking candidates (:mod:`kb.lexical`);
* ``hashes.npy``, ``summaries.json``: what the next build needs to reuse the rows of
  unchanged cases (:mod:`kb.reuse`);
* ``facet_*.npy``: postings of exact facets (model, family, framework,
  library, tag) used by filters, so a filter never scans every case;
* ``vectors_*.npy``: one sentence embedding per case (:mod:`kb.semantic`), the
  normalised mean of its texts' embeddings; ``text_vectors_*.npy`` and
  ``text_indptr.npy``: each text's own embedding, by case, for re-ranking; both
  as int8 codes with a scale per vector (:mod:`kb.quantized`);
* ``docs.jsonl`` / ``features.jsonl`` with ``*_offsets.npy``: each case's
  document and structured features, one JSON line per row. A query reads the
  lines of the few cases it shows or re-ranks, never the whole file.

Loading maps the arrays and reads ``meta.json`` and ``ids.json``: milliseconds
at 100k cases. Nothing here imports scikit-learn, SQLAlchemy or YAML on the
query path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import forkmap
from .features import case_features, prose_text
from .lexical import ENTITY_GROUPS, FieldCounts, LexicalIndex, build_postings, concept_group, count_tokens
from .indexkey import DATA_FILES, INDEX_FORMAT, STOPWORDS_FILE, WEIGHTS_FILE, data_fingerprint, index_key, key_name  # noqa: F401 - the index's key, re-exported
from .lexicon import Lexicon, Match, compile_lexicon, load_lexicon_source, normalize
from .stored import StoredJson
from .paths import data_file
from .quantized import Int8Vectors, RangeReader, concat_ranges
from .reuse import SUMMARIES_FILE, Previous, content_digest, save_digests
from .tokenize import Stopwords, tokenize_normalized

if TYPE_CHECKING:
    from .progress import Progress

_SIZE_TERM = re.compile(r"^\d+(?:\.\d+)?b$|^\d+x\d+(?:\.\d+)?b$")


def load_yaml_data(name: str) -> Any:
    import yaml

    with open(data_file(name), encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# -- what the index sees of a case ------------------------------------------------------


def case_fields(doc: dict[str, Any]) -> dict[str, str]:
    """The case's text, by field. Field weights (weights.yaml ``lexical.fields``) say how much
    each counts; the problem description (title, symptom, user phrasing) counts most."""
    model, framework = doc["model"], doc["framework"]
    phrasing = doc.get("user_phrasing") or {}
    return {
        "title": doc["title"],
        "symptom": doc["symptom"],
        "phrasing": "\n".join(phrasing.get(lang, "") for lang in ("en", "zh")),
        "queries": "\n".join(phrasing.get("queries", [])),
        "tags": " ".join(doc.get("tags", [])),
        "setup": " ".join(
            [
                model["name"], model.get("version", ""), model.get("size", ""), *model.get("also", []),
                framework["name"], framework.get("version", ""), *framework.get("libraries", {}),
                *(f"{k} {v}" for k, v in doc.get("config", {}).items()),
                str((doc.get("hardware") or {}).get("accelerator") or ""),
            ]
        ),
        "causes": "\n".join(doc["causes"]),
        "fixes": "\n".join(f["action"] for f in doc["fixes"]),
    }


def semantic_texts(doc: dict[str, Any]) -> list[str]:
    """The texts whose embeddings are averaged into the case vector: the problem as the case
    states it and as a user would put it, in both languages. Each short user query is
    embedded on its own: averaged that way, the case vector met real reports better
    (semantic-only MRR 0.680 against 0.642 with the queries embedded as one text)."""
    phrasing = doc.get("user_phrasing") or {}
    texts = [doc["title"], doc["symptom"], phrasing.get("en", ""), phrasing.get("zh", ""), *phrasing.get("queries", [])]
    return [t for t in texts if t.strip()]


def facet_terms(doc: dict[str, Any], features: dict[str, Any]) -> set[str]:
    terms = {f"model:{m}" for m in features.get("model", [])}
    if features.get("model_family"):
        terms.add(f"family:{normalize(str(features['model_family'])).strip()}")
    terms.update(f"framework:{f}" for f in features.get("framework", []))
    terms.update(f"framework:{f}" for f in features.get("framework_libraries", []))
    terms.update(f"tag:{normalize(t).strip()}" for t in doc.get("tags", []))
    terms.add(f"status:{doc.get('status', 'reviewed')}")
    return terms


def entity_words(lexicon: Lexicon) -> frozenset[str]:
    """Words that occur in names of models, frameworks or GPUs ('factory' of 'llama factory')
    and in no alias of a problem or a technical term ('attention' stays a problem word)."""
    named: set[str] = set()
    other: set[str] = set()
    for key, targets in lexicon.compiled["ascii"].items():
        words = key.split(" ")
        for group, _ in targets:
            (named if group in ENTITY_GROUPS else other).update(words)
    return frozenset(w for w in named - other if not w.isdigit())


def is_entity_term(term: str, lexicon: Lexicon, words: frozenset[str] = frozenset()) -> bool:
    """A term that names *what* was trained or *with what* (a model, a framework, a GPU, a size),
    as opposed to what went wrong. Sharing only such terms is no evidence of the same problem."""
    group = concept_group(term)
    if group is not None:
        return group in ENTITY_GROUPS
    if _SIZE_TERM.match(term) or term in words:
        return True
    matches = lexicon.find(term)
    return any(m.group in ENTITY_GROUPS and m.start == 0 and m.end == len(term) for m in matches)


# -- building ---------------------------------------------------------------------------


@dataclass
class BuildReport:
    cases: int
    terms: int  # distinct terms over all fields
    embedded: int  # case texts embedded in this build (the rest came from the vector cache)
    reused: int = 0  # cases whose rows were copied from the previous index (kb.reuse)


def _status(document: dict[str, Any] | StoredJson) -> str:
    return document.status if isinstance(document, StoredJson) else document.get("status", "reviewed")


def _doc_id(document: dict[str, Any] | StoredJson) -> str:
    return document.id if isinstance(document, StoredJson) else document["id"]


# Symptom concepts of a case are read from these fields (what the reporter would say).
TOLD_FIELDS = ("title", "symptom", "tags", "phrasing", "queries")
PARALLEL_MIN_CASES = 3000  # below this, starting worker processes costs more than it saves


@dataclass
class _Analysis:
    """What a worker makes of a run of cases: per indexed field the token counts, and per case
    what the build writes or aggregates (its JSON lines, facets, texts to embed, counts)."""

    fields: dict[str, FieldCounts]
    ids: list[str]
    doc_lines: list[bytes]
    feature_lines: list[bytes]
    facets: list[list[str]]
    texts: list[list[str]] | None  # semantic_texts per case, when the build embeds
    summaries: list[tuple[str, str, str, str]]  # model family, framework, phase, language


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _analyse(documents: Sequence[dict[str, Any] | StoredJson], first_row: int, fields: Sequence[str],
             lexicon: Lexicon, stopwords: Stopwords, want_texts: bool = False,
             tick: Callable[[int], None] | None = None) -> _Analysis:
    tokens: dict[str, list[list[str]]] = {name: [] for name in fields}
    out = _Analysis({}, [], [], [], [], [] if want_texts else None, [])
    for done, item in enumerate(documents, first_row + 1):
        doc = item.document() if isinstance(item, StoredJson) else item
        symptoms: list[str] = []
        found: dict[str, tuple[str, list[Match]]] = {}
        for name, text in case_fields(doc).items():
            if name not in tokens and name not in TOLD_FIELDS:
                continue
            norm = normalize(text)
            matches = lexicon.find(norm)
            found[name] = (norm, matches)
            if name in TOLD_FIELDS:
                symptoms.extend(m.concept for m in matches if m.group == "symptom")
            if name in tokens:
                tokens[name].append(tokenize_normalized(norm, lexicon, stopwords, matches))
        features = case_features(doc, lexicon, symptoms, _prose(doc, found, lexicon))
        out.ids.append(doc["id"])
        out.doc_lines.append(_line(doc))
        out.feature_lines.append(_line(features))
        out.facets.append(sorted(facet_terms(doc, features)))
        if out.texts is not None:
            out.texts.append(semantic_texts(doc))
        out.summaries.append((features.get("model_family") or "unknown", doc["framework"]["name"],
                              doc.get("phase") or "unknown", doc["language"]))
        if tick is not None:
            tick(done)
    out.fields = {name: count_tokens(lists, first_row) for name, lists in tokens.items()}
    return out


def _prose(doc: dict[str, Any], found: dict[str, tuple[str, list[Match]]], lexicon: Lexicon) -> tuple[str, list[Match]] | None:
    """The case's prose (:func:`kb.features.prose_text`) with its matches, put together from
    the title's and the symptom's, which tokenizing already found. None (search the joined
    text) when the parts do not join exactly or an alias could span the line between them."""
    title, symptom = found.get("title"), found.get("symptom")
    text = prose_text(doc)
    if title is None or symptom is None or text != f"{title[0]}\n{symptom[0]}":
        return None
    head, tail = title[0][-80:], symptom[0][:80]
    if any(m.start < len(head) < m.end for m in lexicon.find(f"{head}\n{tail}")):
        return None
    shift = len(title[0]) + 1
    return text, [*title[1], *(Match(m.group, m.concept, m.start + shift, m.end + shift) for m in symptom[1])]


def _analyse_range(state: tuple[Sequence[dict[str, Any] | StoredJson], Sequence[str], Lexicon, Stopwords, bool,
                                Callable[[int], None] | None], start: int, end: int) -> _Analysis:
    documents, fields, lexicon, stopwords, want_texts, tick = state
    return _analyse(documents[start:end], start, fields, lexicon, stopwords, want_texts, tick)


def analyse_all(documents: Sequence[dict[str, Any] | StoredJson], fields: Sequence[str], lexicon: Lexicon,
                stopwords: Stopwords, want_texts: bool = False,
                tick: Callable[[int], None] | None = None) -> list[_Analysis]:
    """Decode, tokenize and extract features of every case, on every core for a large base
    (:mod:`kb.forkmap`: the workers share the documents and the lexicon, nothing is copied).
    ``tick(n)``: n cases analysed so far (a :class:`kb.progress.Ticker`, which ignores the
    workers' calls; their chunks are reported as they complete)."""
    return forkmap.chunked(_analyse_range, (documents, fields, lexicon, stopwords, want_texts, tick), len(documents),
                           parallel=len(documents) >= PARALLEL_MIN_CASES, progress=tick)


@dataclass
class _Rows:
    """Which rows of the new index come from the previous one (:mod:`kb.reuse`)."""

    count: int
    old: np.ndarray  # per new row, its row in the previous index, or -1
    prior: Previous | None

    @property
    def fresh(self) -> np.ndarray:
        """Rows analysed in this build, ascending."""
        return np.flatnonzero(self.old < 0)

    @property
    def kept(self) -> np.ndarray:
        """Rows copied from the previous index, ascending."""
        return np.flatnonzero(self.old >= 0)

    def new_row_of_old(self) -> np.ndarray:
        out = np.full(self.prior.cases if self.prior else 0, -1, dtype=np.int64)
        kept = self.kept
        out[self.old[kept]] = kept
        return out


def _field_postings(state: tuple[list[_Analysis], list[str], dict[str, float], float, Lexicon, frozenset[str], Path, _Rows],
                    start: int, end: int) -> list[np.ndarray]:
    """Build and save the postings of fields ``start..end`` (of ``state``'s list); their terms."""
    parts, names, field_b, k1, lexicon, entity_names, directory, rows = state
    fresh, kept = rows.fresh, rows.kept
    vocabularies = []
    for name in names[start:end]:
        counts = [part.fields[name] for part in parts]
        lengths = np.zeros(rows.count, dtype=np.int32)
        lengths[fresh] = np.concatenate([c.lengths for c in counts]) if counts else []
        if rows.prior is not None and len(kept):
            reused, old_lengths = rows.prior.field_counts(name, kept, rows.old[kept])
            counts = [reused, *counts]
            lengths[kept] = old_lengths[rows.old[kept]]
        arrays = build_postings(counts, lengths, field_b[name], k1)
        LexicalIndex.save(arrays, directory, f"lex_{name}_")
        terms = arrays["terms"]
        if rows.prior is not None:
            entity, known = rows.prior.entity_flags(name, terms)
        else:
            entity, known = np.zeros(len(terms), dtype=bool), np.zeros(len(terms), dtype=bool)
        for i in np.flatnonzero(~known).tolist():
            entity[i] = is_entity_term(str(terms[i]), lexicon, entity_names)
        np.save(directory / f"lex_{name}_entity.npy", entity.astype(bool))
        vocabularies.append(terms)
    return vocabularies


def _write_rows(path: Path, rows: _Rows, kind: str, fresh_lines: list[bytes]) -> np.ndarray:
    """Write the JSONL file of every row (kept rows copied from the previous index); its
    offsets (one more than rows)."""
    sizes = np.zeros(rows.count, dtype=np.int64)
    sizes[rows.fresh] = [len(line) for line in fresh_lines]
    with open(path, "wb") as handle:
        if rows.prior is None:
            handle.writelines(fresh_lines)
        else:
            kept = rows.kept
            sizes[kept] = np.diff(rows.prior.line_offsets(kind))[rows.old[kept]]
            handle.writelines(rows.prior.lines(kind, rows.old, iter(fresh_lines)))
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _save_facets(parts: list[_Analysis], rows: _Rows, directory: Path) -> None:
    """Postings of the exact facets: term -> rows ascending."""
    fresh = rows.fresh
    terms = [term for part in parts for facets in part.facets for term in facets]
    where = np.repeat(fresh, [len(facets) for part in parts for facets in part.facets]) if len(fresh) else np.zeros(0, dtype=np.int64)
    all_terms = np.array(terms, dtype=str) if terms else np.array([], dtype="<U1")
    if rows.prior is not None and len(rows.kept):
        kept_terms, kept_rows = rows.prior.facet_pairs(rows.new_row_of_old())
        all_terms = np.concatenate([all_terms, kept_terms])
        where = np.concatenate([where, kept_rows])
    names, inverse = np.unique(all_terms, return_inverse=True)
    order = np.lexsort((where, inverse))
    np.save(directory / "facet_terms.npy", np.array(names.tolist(), dtype=str) if len(names) else np.array([], dtype="<U1"))
    np.save(directory / "facet_indptr.npy", np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(names)))]).astype(np.int64))
    np.save(directory / "facet_docs.npy", where[order].astype(np.int32))


def _save_vectors(parts: list[_Analysis], rows: _Rows, directory: Path, encoder,
                  vector_cache, weights: dict[str, Any], progress: Progress | None = None) -> int:
    """Case and text vectors (int8), and the IVF for a large base; how many texts were embedded.
    Rows kept from a previous index of the same encoder keep their vectors and IVF list."""
    prior = rows.prior
    reuse = prior is not None and prior.semantic == encoder.name
    kept = rows.kept if reuse else np.zeros(0, dtype=np.int64)
    embed_rows = rows.fresh if reuse else np.arange(rows.count)
    fresh_texts = [texts for part in parts for texts in part.texts or []]
    if reuse or prior is None or not len(rows.kept):
        per_row = fresh_texts
    else:  # texts of kept rows from their documents: the previous index had other vectors
        by_row = dict(zip(rows.fresh.tolist(), fresh_texts))
        per_row = [by_row[r] if r in by_row else semantic_texts(prior.document(int(rows.old[r]))) for r in range(rows.count)]
    flat = [t for texts in per_row for t in texts]
    if vector_cache is not None:
        vectors, embedded = vector_cache.embed(flat, encoder, progress=progress)
    else:
        from .progress import tracked
        from .semantic import EMBED_TASK, encode_all

        with tracked(progress, EMBED_TASK, len(flat), "texts") as ticker:
            vectors, embedded = encode_all(encoder, flat, tick=ticker), len(flat)
    dim = int(prior.vectors.shape[1]) if len(kept) else int(vectors.shape[1])
    per_case = np.zeros(rows.count, dtype=np.int64)
    per_case[embed_rows] = [len(t) for t in per_row]
    if len(kept):
        per_case[kept] = np.diff(prior.text_indptr)[rows.old[kept]]
    indptr = np.concatenate([[0], np.cumsum(per_case)]).astype(np.int64)
    text_codes = np.empty((int(indptr[-1]), dim), dtype=np.int8)
    text_scales = np.empty(int(indptr[-1]), dtype=np.float32)
    case_codes = np.empty((rows.count, dim), dtype=np.int8)
    case_scales = np.empty(rows.count, dtype=np.float32)
    means = np.empty((len(embed_rows), dim), dtype=np.float32)
    position = 0
    for i, texts in enumerate(per_row):
        mean = vectors[position : position + len(texts)].mean(axis=0)
        position += len(texts)
        norm = float(np.linalg.norm(mean)) or 1.0
        means[i] = mean / norm
    at = concat_ranges(indptr[embed_rows], per_case[embed_rows])
    text_codes[at], text_scales[at] = Int8Vectors.encode(vectors)
    case_codes[embed_rows], case_scales[embed_rows] = Int8Vectors.encode(means)
    if len(kept):
        old = rows.old[kept]
        source = concat_ranges(prior.text_indptr[old], per_case[kept])
        at = concat_ranges(indptr[kept], per_case[kept])
        text_codes[at] = prior.text_vectors.codes[source]
        text_scales[at] = prior.text_vectors.scales[source]
        case_codes[kept] = prior.vectors.codes[old]
        case_scales[kept] = prior.vectors.scales[old]
    Int8Vectors.save_codes(case_codes, case_scales, directory, "vectors")
    # Each text's own vector too, for the re-ranking's best-text cosine.
    Int8Vectors.save_codes(text_codes, text_scales, directory, "text_vectors")
    np.save(directory / "text_indptr.npy", indptr)
    if rows.count >= int(weights["semantic"]["ann_min_cases"]):
        from .ann import kmeans, lists_for, nearest_lists, save_ivf

        ivf = prior.ivf if reuse else None
        if ivf is not None and 2 * len(ivf["centroids"]) >= lists_for(rows.count):
            # The lists stay; new rows join their nearest (re-clustered once the base has grown 4x).
            centroids = ivf["centroids"]
            assign = np.empty(rows.count, dtype=np.int64)
            assign[kept] = ivf["assign"][rows.old[kept]]
            assign[embed_rows] = nearest_lists(means, centroids)
        else:
            floats = means if not len(kept) else Int8Vectors(case_codes, case_scales)[:]
            centroids = kmeans(floats, lists_for(rows.count))
            assign = nearest_lists(floats, centroids)
        save_ivf(directory, centroids, assign, case_codes, case_scales)
    return embedded


def build_index(
    documents: Sequence[dict[str, Any] | StoredJson],
    key: dict[str, Any],
    directory: Path,
    *,
    encoder=None,
    vector_cache=None,
    every_field: bool = False,
    previous: Sequence[Path] = (),
    progress: Progress | None = None,
) -> BuildReport:
    """Build the index of the reviewed ``documents`` into ``directory`` (created; must not exist).

    ``encoder`` (a :class:`kb.semantic.Encoder`) adds the semantic stage; without it the
    index is lexical only. ``vector_cache`` reuses embeddings of unchanged texts. Fields
    whose weight is zero are left out unless ``every_field`` (weight fitting needs them).
    ``previous``: earlier index directories, the first compatible one lends the rows of
    unchanged cases (:mod:`kb.reuse`); the result is the same as without it. ``progress``
    receives how far the build got (:mod:`kb.progress`).
    """
    from .progress import tracked

    lexicon_compiled = compile_lexicon(load_lexicon_source())
    lexicon = Lexicon(lexicon_compiled)
    stop_raw = load_yaml_data(STOPWORDS_FILE) or {}
    stop_lists = {"en": [str(w) for w in stop_raw.get("en", [])], "zh": [str(w) for w in stop_raw.get("zh", [])]}
    stopwords = Stopwords.from_lists(stop_lists["en"], stop_lists["zh"])
    weights = load_yaml_data(WEIGHTS_FILE)
    lexical = weights["lexical"]
    field_b = {
        name: float(spec["b"]) for name, spec in lexical["fields"].items() if every_field or float(spec["weight"]) > 0
    }
    fields = list(field_b)

    reviewed = sorted((d for d in documents if _status(d) == "reviewed"), key=_doc_id)
    digests = [content_digest(d) for d in reviewed]
    prior = Previous.open(previous, key, fields) if previous else None
    rows = _Rows(len(reviewed), prior.match(digests) if prior else np.full(len(reviewed), -1, dtype=np.int64), prior)
    fresh = rows.fresh
    with tracked(progress, "building the search index", len(reviewed), "cases", start=len(reviewed) - len(fresh)) as ticker:
        parts = analyse_all([reviewed[i] for i in fresh.tolist()], fields, lexicon, stopwords, want_texts=encoder is not None,
                            tick=ticker.offset(len(reviewed) - len(fresh)))
        for part in parts:  # rows counted within the analysed cases -> rows of the index
            for counts in part.fields.values():
                counts.rows = fresh[counts.rows].astype(np.int32)

        directory.mkdir(parents=True)
        names = entity_words(lexicon)
        # One field per worker job (a large base only): numpy work over all of a field's pairs.
        vocabularies = forkmap.chunked(_field_postings, (parts, fields, field_b, float(lexical["k1"]), lexicon, names, directory, rows),
                                       len(fields), parallel=len(reviewed) >= PARALLEL_MIN_CASES, chunks_per_worker=len(fields))
        n_terms = len({str(t) for found in vocabularies for terms in found for t in terms})
        _save_facets(parts, rows, directory)
        np.save(directory / "docs_offsets.npy", _write_rows(directory / "docs.jsonl", rows, "docs", [x for p in parts for x in p.doc_lines]))
        np.save(directory / "features_offsets.npy",
                _write_rows(directory / "features.jsonl", rows, "features", [x for p in parts for x in p.feature_lines]))
        summaries: list[Any] = [None] * len(reviewed)
        for row, summary in zip(fresh.tolist(), (s for part in parts for s in part.summaries)):
            summaries[row] = list(summary)
        if prior is not None:
            for row in rows.kept.tolist():
                summaries[row] = prior.summaries[int(rows.old[row])]
        embedded = 0
        semantic = None
        if encoder is not None and reviewed:
            embedded = _save_vectors(parts, rows, directory, encoder, vector_cache, weights, progress)
            semantic = encoder.name
        save_digests(digests, directory)
        with open(directory / SUMMARIES_FILE, "w", encoding="utf-8") as handle:
            json.dump(summaries, handle, ensure_ascii=False)
        with open(directory / "ids.json", "w", encoding="utf-8") as handle:
            json.dump([_doc_id(d) for d in reviewed], handle)
        meta = {
            "key": key,
            "lexicon": lexicon_compiled,
            "stopwords": stop_lists,
            "weights": weights,
            "fields": fields,
            "cases": len(reviewed),
            "terms": n_terms,
            "entity_words": sorted(names),
            "semantic": semantic,
            "counts": {
                name: dict(Counter(summary[i] for summary in summaries).most_common())
                for i, name in enumerate(("by_model_family", "by_framework", "by_phase", "by_language"))
            },
        }
        with open(directory / "meta.json", "w", encoding="utf-8") as handle:  # written last: marks the index complete
            json.dump(meta, handle, ensure_ascii=False)
        return BuildReport(len(reviewed), n_terms, embedded, len(rows.kept))


def earlier_indexes(parent: Path, exclude: Path) -> list[Path]:
    """Complete index directories beside ``exclude``, those of the same variant (with or
    without the semantic stage) first, newest first: what a rebuild may reuse."""
    if not parent.is_dir():
        return []
    variant = exclude.name.partition("-")[2]
    found = []
    for entry in parent.iterdir():
        if entry == exclude or entry.name.startswith("."):
            continue
        try:
            found.append((entry.name.partition("-")[2] != variant, -(entry / "meta.json").stat().st_mtime, entry))
        except OSError:
            continue
    return [entry for *_, entry in sorted(found)]


# -- reading ----------------------------------------------------------------------------


class _Lines:
    """Random access to the rows of a JSONL file through its offsets, one pread per row
    (:class:`kb.quantized.RangeReader`: a query reads a few hundred scattered lines)."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self.offsets = offsets
        self._reader = RangeReader(path)  # opened now: readable even if a newer build deletes the file

    def __getitem__(self, row: int) -> Any:
        if not 0 <= row < len(self.offsets) - 1:
            raise IndexError(row)
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return json.loads(self._reader.read(start, end - start))


# Parsed rows are kept between queries only when every row of the base fits: each row is
# ~12 containers the garbage collector walks in every full pass. At 100k cases, caches of
# 8,192 feature rows and 4,096 documents hit 14% of the time and made those passes ~35 ms
# (the slowest 1% of queries); a larger base parses the rows it needs each time (~10 us each).
CACHE_ROWS = 4096


def _cached(cache: dict[int, Any] | None, lines: "_Lines", row: int) -> Any:
    """A parsed JSONL row: from ``cache`` when there is one (it holds at most every row)."""
    if cache is None:
        return lines[row]
    found = cache.get(row)
    if found is None:
        found = cache[row] = lines[row]
    return found


class LoadedIndex:
    """A read-only index; see the module docstring."""

    def __init__(self, directory: Path):
        self.directory = directory
        with open(directory / "meta.json", encoding="utf-8") as handle:
            meta = json.load(handle)
        with open(directory / "ids.json", encoding="utf-8") as handle:
            self.ids: list[str] = json.load(handle)
        self.meta = meta
        self.key: dict[str, Any] = meta["key"]
        self.lexicon = Lexicon(meta["lexicon"])
        self.stopwords = Stopwords.from_lists(meta["stopwords"]["en"], meta["stopwords"]["zh"])
        self.weights: dict[str, Any] = meta["weights"]
        self.semantic_model: str | None = meta.get("semantic")
        self.counts: dict[str, dict[str, int]] = meta["counts"]
        self.n_terms: int = meta["terms"]
        self.entity_words: frozenset[str] = frozenset(meta["entity_words"])
        k1 = float(self.weights["lexical"]["k1"])
        self.fields: dict[str, LexicalIndex] = {}
        self.entity: dict[str, np.ndarray] = {}
        for name in meta["fields"]:
            self.fields[name] = LexicalIndex.load(directory, f"lex_{name}_", len(self.ids), k1)
            self.entity[name] = np.load(directory / f"lex_{name}_entity.npy", mmap_mode="r")
        self.facet_terms = np.load(directory / "facet_terms.npy", mmap_mode="r")
        self.facet_indptr = np.load(directory / "facet_indptr.npy", mmap_mode="r")
        self.facet_docs = np.load(directory / "facet_docs.npy", mmap_mode="r")
        self.vectors = Int8Vectors.load(directory, "vectors") if self.semantic_model else None
        self.text_vectors = Int8Vectors.load(directory, "text_vectors", random_reads=True) if self.semantic_model else None
        self.text_indptr = np.load(directory / "text_indptr.npy", mmap_mode="r") if self.semantic_model else None
        from .ann import IVF

        self.ivf = IVF(directory) if self.semantic_model and IVF.exists(directory) else None
        self._docs = _Lines(directory / "docs.jsonl", np.load(directory / "docs_offsets.npy", mmap_mode="r"))
        self._features = _Lines(directory / "features.jsonl", np.load(directory / "features_offsets.npy", mmap_mode="r"))
        self._rows: dict[str, int] | None = None
        small = len(self.ids) <= CACHE_ROWS
        self._doc_cache: dict[int, dict[str, Any]] | None = {} if small else None
        self._feature_cache: dict[int, dict[str, Any]] | None = {} if small else None

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, case_id: str) -> int | None:
        if self._rows is None:
            self._rows = {case_id: i for i, case_id in enumerate(self.ids)}
        return self._rows.get(case_id)

    def document(self, row: int) -> dict[str, Any]:
        return _cached(self._doc_cache, self._docs, row)

    def features(self, row: int) -> dict[str, Any]:
        return _cached(self._feature_cache, self._features, row)

    def document_by_id(self, case_id: str) -> dict[str, Any] | None:
        row = self.row(case_id)
        return None if row is None else self.document(row)

    def facet_rows(self, term: str) -> np.ndarray:
        """Rows carrying one facet (e.g. ``model:gemma-3``, ``tag:zero-3``), ascending."""
        if not len(self.facet_terms):
            return np.zeros(0, dtype=np.int32)
        i = int(np.searchsorted(self.facet_terms, term))
        if i >= len(self.facet_terms) or self.facet_terms[i] != term:
            return np.zeros(0, dtype=np.int32)
        return np.asarray(self.facet_docs[int(self.facet_indptr[i]) : int(self.facet_indptr[i + 1])])

    def all_documents(self) -> list[dict[str, Any]]:
        return [self.document(i) for i in range(len(self))]


def load_index(directory: Path) -> LoadedIndex | None:
    """The index in ``directory``, or None when it is missing, incomplete or of another format."""
    try:
        index = LoadedIndex(directory)
    except (OSError, ValueError, KeyError):
        return None
    return index if index.key.get("format") == INDEX_FORMAT else None


BUILD_PREFIX = ".build-"
_BUILD_LOCK = "building.lock"


def build_aside(documents: Sequence[dict[str, Any]], key: dict[str, Any], final: Path, **kwargs) -> BuildReport:
    """Build into a temporary sibling of ``final`` and rename it into place (atomic on POSIX).
    If another process already put a complete index there, that one is kept.

    The sibling holds a lock file, locked while the build runs: the kernel drops the lock
    when the process dies, however it dies, which is how :func:`remove_stale` tells the
    leftovers of a killed build from a build still running in another process."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=final.parent))
    try:
        with open(work / _BUILD_LOCK, "w") as lock:
            _try_lock(lock)
            tmp = work / "index"
            report = build_index(documents, key, tmp, **kwargs)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").exists():
                    raise
            return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _try_lock(handle: Any) -> bool:
    """Take an exclusive lock on an open file without waiting; False when another process
    holds it. Where there is no fcntl (Windows), always True."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _abandoned_build(entry: Path, now: float, grace_seconds: float) -> bool:
    """Whether a build directory was left by a process that is gone: its lock is free. One
    without a lock file (killed between creating the directory and the file, or written by
    an older kbq) counts once it is ``grace_seconds`` old, as does any where there is no
    fcntl."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return _older_than(entry, now, grace_seconds)
    try:
        with open(entry / _BUILD_LOCK, "r+") as lock:
            return _try_lock(lock)
    except FileNotFoundError:
        return _older_than(entry, now, grace_seconds)
    except OSError:
        return False


def _older_than(entry: Path, now: float, seconds: float) -> bool:
    try:
        return now - entry.stat().st_mtime > seconds
    except OSError:
        return False


def remove_stale(parent: Path, keep: Path, build_grace_seconds: float = 3600.0) -> None:
    """Delete the index directories of other keys, and what killed builds left behind. The
    other variant of the same key (with or without the semantic stage) stays: both describe
    the current cases. Processes that mapped a deleted index keep reading it (POSIX keeps
    unlinked files alive while mapped)."""
    import time

    if not parent.is_dir():
        return
    now = time.time()
    same_key = keep.name.split("-")[0]
    for entry in parent.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        if entry.name.startswith(BUILD_PREFIX):
            if _abandoned_build(entry, now, build_grace_seconds):
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.split("-")[0] != same_key and (entry / "meta.json").exists():
            shutil.rmtree(entry, ignore_errors=True)
