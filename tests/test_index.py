"""The persisted index answers exactly as scikit-learn would, without importing it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kb.casefiles import load_cases
from kb.index import LoadedIndex, build_index, case_text, index_key, load_index, save_index
from kb.paths import bundled_cases_dir
from kb.tokenize import tokenize

QUERIES = ["gemma3 loss 70 zero3", "预训练 loss 停在 2.8 不降", "lora tiny corpus forgot english", "zzz unknown words only"]


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return [loaded.case.to_document() for loaded in load_cases([bundled_cases_dir()])]


@pytest.fixture(scope="module")
def index(documents) -> LoadedIndex:
    return LoadedIndex(json.loads(json.dumps(build_index(documents, index_key("test")))))


def test_query_vectors_match_sklearn(index, documents):
    from sklearn.feature_extraction.text import TfidfVectorizer

    token_lists = [tokenize(case_text(d, index.weights["fields"]), index.lexicon, index.stopwords) for d in index.cases]
    vectorizer = TfidfVectorizer(analyzer=lambda t: t, sublinear_tf=True, smooth_idf=True, norm="l2")
    matrix = vectorizer.fit_transform(token_lists)
    for query in QUERIES:
        tokens = tokenize(query, index.lexicon, index.stopwords)
        expected = (vectorizer.transform([tokens]) @ matrix.T).toarray()[0]
        got = [hit.score for hit in index.text_scores(tokens)]
        assert got == pytest.approx(list(expected), abs=1e-5), query


def test_drafts_are_not_indexed(documents):
    draft = dict(documents[0], id="a-draft-case", status="draft")
    payload = build_index([*documents, draft], index_key("x"))
    assert "a-draft-case" not in {c["id"] for c in payload["cases"]}


def test_save_and_load_round_trip(tmp_path, index):
    path = tmp_path / "sub" / "index.json"
    save_index(index.payload, path)
    again = load_index(path)
    assert again is not None and again.key == index.key and len(again) == len(index)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["index.json"]  # no temp files left


@pytest.mark.parametrize("content", ["", "not json", '{"key": {"format": -1}}'])
def test_unusable_index_file_is_ignored(tmp_path, content):
    path = tmp_path / "index.json"
    path.write_text(content, encoding="utf-8")
    assert load_index(path) is None


def test_query_path_imports_nothing_heavy(tmp_path):
    """A warm query must not import SQLAlchemy, scikit-learn, numpy, pydantic models or YAML."""
    script = (
        "import sys\n"
        "from kb.service import KnowledgeBase\n"
        f"kb = KnowledgeBase(home=__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "kb.search('gemma3 loss 70 zero3')\n"  # first run builds the DB and the index
        "print('built')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    probe = (
        "import sys\n"
        "from kb.service import KnowledgeBase\n"
        f"kb = KnowledgeBase(home=__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "assert kb.search('gemma3 loss 70 zero3').hits[0].case_id == 'llamafactory-7416'\n"
        "heavy = [m for m in ('sqlalchemy', 'sklearn', 'numpy', 'scipy', 'alembic', 'yaml', 'kb.models', 'jieba') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == ""
