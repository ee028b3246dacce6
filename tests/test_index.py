"""The persisted index: BM25 arithmetic, layout on disk, lazy reads, the vector cache and the IVF."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from kb.ann import IVF, build_ivf
from kb.casefiles import load_cases
from kb.index import LoadedIndex, build_aside, build_index, case_fields, index_key, load_index, remove_stale, semantic_texts
from kb.lexical import LexicalIndex, build_postings, count_tokens
from kb.paths import bundled_cases_dir
from kb.semantic import DIM, VectorCache


class HashEncoder:
    """A stand-in encoder: deterministic unit vectors from a text hash, and a count of calls."""

    name = "hash-test"

    def __init__(self, fail_after: int | None = None) -> None:
        self.texts = 0
        self.fail_after = fail_after  # raise once this many texts were encoded (a killed build)

    def load(self) -> None:
        pass

    def encode(self, texts):
        if self.fail_after is not None and self.texts + len(texts) > self.fail_after:
            raise KeyboardInterrupt("killed")
        self.texts += len(texts)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little")
            vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out[i] = vector / np.linalg.norm(vector)
        return out


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return [loaded.case.to_document() for loaded in load_cases([bundled_cases_dir()])]


@pytest.fixture(scope="module")
def index(documents, tmp_path_factory) -> LoadedIndex:
    directory = tmp_path_factory.mktemp("index") / "built"
    build_index(documents, index_key("test"), directory, encoder=HashEncoder())
    return LoadedIndex(directory)


def test_bm25_matches_the_textbook_formula():
    docs = [["loss", "nan", "fp16", "loss"], ["loss", "plateau"], ["oom", "zero3", "offload", "oom", "oom"]]
    k1, b = 1.2, 0.75
    arrays = build_postings([count_tokens(docs[:1], 0), count_tokens(docs[1:], 1)], [len(d) for d in docs], b, k1)  # two parts, as from two workers
    lexical = LexicalIndex(arrays, len(docs), k1)
    average = sum(map(len, docs)) / len(docs)
    query = {"loss": 1.0, "oom": 2.0, "absent": 1.0}
    got = lexical.scores(lexical.lookup(query), query)
    for row, doc in enumerate(docs):
        expected = 0.0
        for term, weight in query.items():
            df = sum(term in d for d in docs)
            tf = Counter(doc)[term]
            if tf:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                expected += weight * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / average))
        assert got[row] == pytest.approx(expected, rel=1e-5)
    problem_only = lexical.match_rows(np.arange(len(docs)), lexical.lookup(query), query, {"oom"})
    assert problem_only.problem[2] == pytest.approx(got[2], rel=1e-5) and problem_only.problem[0] == 0.0
    assert np.allclose(problem_only.scores, got)


def test_postings_are_arrays_on_disk_and_memory_mapped(index):
    files = {p.name for p in index.directory.iterdir()}
    weighted = {name for name, spec in index.weights["lexical"]["fields"].items() if spec["weight"] > 0}
    assert set(index.fields) == weighted and weighted <= set(case_fields(index.document(0)))
    for field in index.fields:
        assert {f"lex_{field}_docs.npy", f"lex_{field}_weights.npy", f"lex_{field}_terms.npy"} <= files
    unweighted = set(case_fields(index.document(0))) - weighted
    assert unweighted and not any(f"lex_{field}_" in name for field in unweighted for name in files)
    assert isinstance(index.fields["title"].docs.base, np.memmap)  # a plain view of the map
    assert isinstance(index.vectors.codes.base, np.memmap) and index.vectors.shape == (len(index), DIM)
    meta = json.loads((index.directory / "meta.json").read_text())
    assert meta["cases"] == len(index)  # a count: documents live in docs.jsonl, read one by one


def test_documents_are_read_one_by_one(index, documents):
    index = LoadedIndex(index.directory)  # fresh: nothing read yet
    reviewed = sorted((d for d in documents if d.get("status", "reviewed") == "reviewed"), key=lambda d: d["id"])
    assert index.ids == [d["id"] for d in reviewed]
    row = index.row("llamafactory-7416")
    assert index.document(row)["id"] == "llamafactory-7416"
    assert len(index._doc_cache) == 1  # only what was asked for was parsed
    assert index.document_by_id("no-such-case") is None


def test_drafts_are_not_indexed(documents, tmp_path):
    draft = dict(documents[0], id="a-draft-case", status="draft")
    build_index([*documents, draft], index_key("x"), tmp_path / "i")
    assert "a-draft-case" not in LoadedIndex(tmp_path / "i").ids


def test_build_aside_leaves_one_complete_directory(tmp_path, documents):
    final = tmp_path / "idx" / "key1"
    build_aside(documents[:5], index_key("x"), final)
    assert load_index(final) is not None and len(load_index(final)) == 5
    stale = tmp_path / "idx" / "key0"
    build_aside(documents[:3], index_key("y"), stale)
    killed = tmp_path / "idx" / ".build-dead"  # what a build killed midway leaves
    killed.mkdir()
    remove_stale(tmp_path / "idx", final, build_grace_seconds=0)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["key1"]


@pytest.mark.skipif(sys.platform == "win32", reason="build locks need fcntl")
def test_running_build_is_kept_and_killed_one_removed_at_once(tmp_path, documents):
    """A build directory is removed as soon as no process holds its lock (its builder died),
    however young; one whose lock is held (a build running elsewhere) stays, however old."""
    import fcntl

    from kb.index import BUILD_PREFIX

    final = tmp_path / "idx" / "key1"
    build_aside(documents[:5], index_key("x"), final)
    running, killed = tmp_path / "idx" / f"{BUILD_PREFIX}running", tmp_path / "idx" / f"{BUILD_PREFIX}killed"
    for entry in (running, killed):
        entry.mkdir()
        (entry / "building.lock").touch()
    with open(running / "building.lock", "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        remove_stale(tmp_path / "idx", final, build_grace_seconds=0)
        assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [running.name, "key1"]
    remove_stale(tmp_path / "idx", final)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["key1"]


def test_other_variant_of_the_same_key_is_kept(tmp_path, documents):
    """Switching KBQ_SEMANTIC on and off must not make each mode delete the other's index."""
    final = tmp_path / "idx" / "key1"
    build_aside(documents[:5], index_key("x"), final)
    build_aside(documents[:5], index_key("x"), tmp_path / "idx" / "key1-lexical")
    build_aside(documents[:3], index_key("y"), tmp_path / "idx" / "key0-lexical")
    remove_stale(tmp_path / "idx", final)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["key1", "key1-lexical"]


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "other-format"])
def test_unusable_index_is_ignored(tmp_path, documents, damage):
    directory = tmp_path / "i"
    build_index(documents[:3], index_key("x"), directory)
    meta = directory / "meta.json"
    if damage == "missing":
        meta.unlink()
    elif damage == "empty":
        meta.write_text("")
    elif damage == "garbage":
        meta.write_text("not json")
    else:
        data = json.loads(meta.read_text())
        data["key"]["format"] = -1
        meta.write_text(json.dumps(data))
    assert load_index(directory) is None


def test_vector_cache_embeds_only_new_text(tmp_path, documents):
    encoder = HashEncoder()
    cache = VectorCache(tmp_path / "vectors")
    first = build_index(documents[:20], index_key("a"), tmp_path / "a", encoder=encoder, vector_cache=cache)
    assert first.embedded == encoder.texts > 0
    again = build_index(documents[:20], index_key("b"), tmp_path / "b", encoder=encoder, vector_cache=cache)
    assert again.embedded == 0
    grown = build_index(documents[:21], index_key("c"), tmp_path / "c", encoder=encoder, vector_cache=cache)
    added = next(d for d in documents[:21] if d["id"] not in {x["id"] for x in documents[:20]})
    assert 0 < grown.embedded <= len(semantic_texts(added)) < first.embedded  # one new case: its texts only
    a, c = LoadedIndex(tmp_path / "a"), LoadedIndex(tmp_path / "c")
    for case_id in a.ids:
        assert np.allclose(a.vectors[a.row(case_id)], c.vectors[c.row(case_id)])


def test_interrupted_embedding_resumes_from_its_checkpoints(tmp_path, documents, monkeypatch):
    import kb.semantic as semantic

    monkeypatch.setattr(semantic, "CHECKPOINT_TEXTS", 100)
    texts = [t for d in documents[:30] for t in semantic_texts(d)]
    distinct = len(set(texts))
    assert distinct > 250
    cache = VectorCache(tmp_path / "vectors")
    with pytest.raises(KeyboardInterrupt):
        cache.embed(texts, HashEncoder(fail_after=250))
    assert len(cache._segments()) == 2  # two checkpoints of 100 texts survived the kill
    resumed = HashEncoder()
    vectors, embedded = cache.embed(texts, resumed)
    assert embedded == resumed.texts == distinct - 200
    assert np.allclose(vectors, HashEncoder().encode(texts))
    assert cache.embed(texts, HashEncoder())[1] == 0


def test_vector_cache_merges_segments_and_drops_damaged_ones(tmp_path, documents, monkeypatch):
    import kb.semantic as semantic

    monkeypatch.setattr(semantic, "MAX_SEGMENTS", 3)
    texts = [t for d in documents[:10] for t in semantic_texts(d)]
    cache = VectorCache(tmp_path / "vectors")
    for end in range(20, 120, 20):  # five saves: the fourth merges
        cache.embed(texts[:end], HashEncoder())
    assert 1 <= len(cache._segments()) <= 3
    assert len(list((tmp_path / "vectors").glob("vectors-*.npy"))) == len(cache._segments())  # merged files deleted
    assert cache.embed(texts[:100], HashEncoder())[1] == 0
    damaged = tmp_path / "vectors" / f"vectors-{cache._segments()[-1]}.npy"
    damaged.write_bytes(b"not an array")
    vectors, embedded = cache.embed(texts[:100], HashEncoder())
    assert 0 < embedded < len(set(texts[:100]))
    assert np.allclose(vectors, HashEncoder().encode(texts[:100]))


def test_parallel_embedding_equals_serial(tmp_path, documents, monkeypatch):
    import kb.semantic as semantic

    texts = [t for d in documents[:15] for t in semantic_texts(d)]
    serial = semantic.encode_all(HashEncoder(), texts, batch=7)
    monkeypatch.setattr(semantic, "PARALLEL_MIN_TEXTS", 1)
    parallel = semantic.encode_all(HashEncoder(), texts, batch=7)
    assert np.array_equal(serial, parallel)


def test_damaged_vector_cache_is_rebuilt(tmp_path, documents):
    (tmp_path / "vectors").mkdir()
    np.save(tmp_path / "vectors" / "keys.npy", np.zeros(3, dtype="S20"))
    np.save(tmp_path / "vectors" / "vectors.npy", np.zeros((2, DIM), dtype=np.float32))
    report = build_index(documents[:3], index_key("x"), tmp_path / "i", encoder=HashEncoder(), vector_cache=VectorCache(tmp_path / "vectors"))
    assert report.embedded > 0


def test_ivf_finds_nearly_what_a_full_scan_finds(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((50, 64))
    vectors = (centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 64))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    build_ivf(vectors, tmp_path)
    ivf = IVF(tmp_path)
    found = 0
    for q in vectors[:50]:
        exact = set(np.argsort(-(vectors @ q))[:10].tolist())
        rows, sims = ivf.search(q, nprobe=16, limit=200)
        assert np.allclose(sims, vectors[rows] @ q, atol=0.01)  # int8 codes (tests/test_quantized.py)
        found += len(exact & set(rows.tolist()))
    assert found / 500 >= 0.9


def test_query_path_imports_nothing_heavy(tmp_path):
    """A warm query reads arrays with numpy but never imports SQLAlchemy, scikit-learn, YAML, jieba
    or numpy.ma (which np.unique and the numpy set functions import on first use: ~7 ms cold)."""
    env_home = str(tmp_path)
    script = (
        "import sys, pathlib\n"
        "from kb.service import KnowledgeBase\n"
        f"kb = KnowledgeBase(home=pathlib.Path({env_home!r}))\n"
        "kb.search('gemma3 loss 70 zero3')\n"  # first run builds the DB and the index
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    probe = (
        "import sys, pathlib\n"
        "from kb.service import KnowledgeBase\n"
        f"kb = KnowledgeBase(home=pathlib.Path({env_home!r}))\n"
        "assert kb.search('gemma3 loss 70 zero3').hits[0].case_id == 'llamafactory-7416'\n"
        "heavy = [m for m in ('sqlalchemy', 'sklearn', 'scipy', 'alembic', 'yaml', 'kb.models', 'jieba', 'numpy.ma') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == ""


def test_parallel_build_writes_the_same_index(tmp_path, documents, monkeypatch):
    """Large bases are tokenized in forked workers; the arrays must not depend on it."""
    import kb.index as index_module

    serial = tmp_path / "serial"
    build_index(documents, index_key("x"), serial)
    monkeypatch.setattr(index_module, "PARALLEL_MIN_CASES", 1)
    lexicon, stopwords = LoadedIndex(serial).lexicon, LoadedIndex(serial).stopwords
    if os.name == "posix" and (os.cpu_count() or 1) > 1 and threading.active_count() == 1:
        assert len(index_module.analyse_all(documents, ["title"], lexicon, stopwords)) > 1
    parallel = tmp_path / "parallel"
    build_index(documents, index_key("x"), parallel)
    names = sorted(p.name for p in serial.iterdir())
    assert names == sorted(p.name for p in parallel.iterdir())
    for name in names:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


def test_match_rows_agrees_with_a_full_pass(index):
    """The per-row evidence of the candidates equals sums over every posting of the terms."""
    field = index.fields["tags"]
    query = {str(t): 1.0 + i % 3 for i, t in enumerate(field.terms[:40])}
    ids = field.lookup(query)
    problem = set(list(ids)[::2])
    expected = {name: np.zeros(len(index)) for name in ("scores", "problem", "covered")}
    for term, i in ids.items():
        docs, weights = field.postings(i)
        expected["scores"][docs] += weights * query[term]
        if term in problem:
            expected["problem"][docs] += weights * query[term]
            expected["covered"][docs] += query[term] * field.idf[i]
    assert np.allclose(field.scores(ids, query), expected["scores"])
    rows = np.array([0, 3, 7, len(index) - 1, 5], dtype=np.int64)
    some = field.match_rows(rows, ids, query, problem)
    for name in ("scores", "problem", "covered"):
        assert np.allclose(getattr(some, name), expected[name][rows])
    assert some.total == pytest.approx(sum(query[t] * float(field.idf[i]) for t, i in ids.items() if t in problem))
    assert field.match_rows(rows, {}, query, problem).total == 0.0
    first, rest = field.within_budget(ids, 10)
    assert first and set(first) | set(rest) == set(ids) and not set(first) & set(rest)
    assert field.within_budget(ids, None) == (ids, {})


def test_prose_matches_are_put_together_exactly(documents):
    """Features read the title and symptom joined; the build reuses each part's matches."""
    from kb.features import prose_text
    from kb.index import _prose
    from kb.lexicon import Lexicon, normalize

    lexicon = Lexicon.from_file()

    def parts(doc):
        return {name: (normalize(doc[name]), lexicon.find(normalize(doc[name]))) for name in ("title", "symptom")}

    for doc in documents:
        text = prose_text(doc)
        assert _prose(doc, parts(doc), lexicon) == (text, lexicon.find(text))
    spanning = dict(documents[0], title="Fine-tuning gemma", symptom="3 with the loss far too high")
    assert any(m.concept == "gemma-3" for m in lexicon.find(prose_text(spanning)))
    assert _prose(spanning, parts(spanning), lexicon) is None  # an alias across the line: search the whole


def _pid(state, start, end):
    return os.getpid(), state[start:end]


def test_forkmap_runs_chunks_in_workers_in_order():
    from kb import forkmap

    items = list(range(103))
    results = forkmap.chunked(_pid, items, len(items), parallel=True)
    assert [x for _, part in results for x in part] == items
    if forkmap.workers_available() > 1:
        assert len(results) > 1 and os.getpid() not in {pid for pid, _ in results}
    assert forkmap.chunked(_pid, items, len(items), parallel=False) == [(os.getpid(), items)]


def _changed_base(documents):
    """An older state of the case base: ten cases not yet added, five since edited."""
    older = [dict(d) for d in documents[10:]]
    for doc in older[:5]:
        doc["symptom"] = doc["symptom"] + " (first draft)"
    return older


def _same_files(first, second, skip=()):
    names = sorted(p.name for p in first.iterdir() if not p.name.startswith(skip or "\0"))
    assert names == sorted(p.name for p in second.iterdir() if not p.name.startswith(skip or "\0"))
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("parallel", [False, True])
def test_rebuild_reuses_unchanged_rows_and_writes_the_same_index(tmp_path, documents, monkeypatch, parallel):
    """A rebuild analyses and embeds only new and edited cases; its files equal a build from scratch."""
    import kb.index as index_module

    if parallel:
        monkeypatch.setattr(index_module, "PARALLEL_MIN_CASES", 1)
    build_index(_changed_base(documents), index_key("x"), tmp_path / "before", encoder=HashEncoder())
    encoder = HashEncoder()
    report = build_index(documents, index_key("y"), tmp_path / "after", encoder=encoder, previous=[tmp_path / "before"])
    reviewed = [d for d in documents if d.get("status", "reviewed") == "reviewed"]
    changed = {d["id"] for d in documents[:15]}
    assert report.reused == len(reviewed) - len(changed & {d["id"] for d in reviewed})
    assert encoder.texts == sum(len(semantic_texts(d)) for d in reviewed if d["id"] in changed)
    scratch = tmp_path / "scratch"
    build_index(documents, index_key("y"), scratch, encoder=HashEncoder())
    _same_files(scratch, tmp_path / "after")


def test_rebuild_reuses_rows_across_variants_but_not_other_data(tmp_path, documents):
    """A lexical index lends its rows to a semantic build (texts are embedded anew); an index of
    other data files (lexicon, weights) lends nothing."""
    build_index(_changed_base(documents), index_key("x"), tmp_path / "lexical")
    report = build_index(documents, index_key("y"), tmp_path / "semantic", encoder=HashEncoder(), previous=[tmp_path / "lexical"])
    assert report.reused > 100
    build_index(documents, index_key("y"), tmp_path / "scratch", encoder=HashEncoder())
    _same_files(tmp_path / "scratch", tmp_path / "semantic")
    other = dict(index_key("x"), data="another lexicon")
    build_index(documents, other, tmp_path / "other")
    assert build_index(documents, index_key("z"), tmp_path / "z", previous=[tmp_path / "other"]).reused == 0
    assert build_index(documents, index_key("z"), tmp_path / "z2", previous=[tmp_path / "missing", tmp_path / "other",
                                                                               tmp_path / "lexical"]).reused > 100


def test_rebuild_keeps_the_ivf_lists(tmp_path, documents, monkeypatch):
    """Above ann_min_cases, kept rows stay in their list and new rows join the nearest one."""
    import kb.index as index_module

    original = index_module.load_yaml_data

    def small_ann(name):
        data = original(name)
        if name == index_module.WEIGHTS_FILE:
            data["semantic"]["ann_min_cases"] = 50
        return data

    monkeypatch.setattr(index_module, "load_yaml_data", small_ann)
    build_index(_changed_base(documents), index_key("x"), tmp_path / "before", encoder=HashEncoder())
    build_index(documents, index_key("y"), tmp_path / "after", encoder=HashEncoder(), previous=[tmp_path / "before"])
    before, after = IVF(tmp_path / "before"), IVF(tmp_path / "after")
    assert np.array_equal(before.centroids, after.centroids)
    index = LoadedIndex(tmp_path / "after")
    assert sorted(after.rows.tolist()) == list(range(len(index)))
    assert np.array_equal(after.vectors.codes, index.vectors.codes[after.rows])
    old_index = LoadedIndex(tmp_path / "before")

    def lists(ivf, size):
        where = np.empty(size, dtype=np.int64)
        where[ivf.rows] = np.repeat(np.arange(len(ivf.offsets) - 1), np.diff(ivf.offsets))
        return where

    old_lists, new_lists = lists(before, len(old_index)), lists(after, len(index))
    unchanged = {d["id"] for d in documents[15:]}
    for row, case_id in enumerate(index.ids):
        if case_id in unchanged:  # kept where it was
            assert new_lists[row] == old_lists[old_index.row(case_id)]
        else:  # the closest list, up to int8 rounding
            cosines = after.centroids @ index.vectors[row]
            assert cosines[new_lists[row]] >= cosines.max() - 0.01
