"""The bundled case base: size, coverage of the incident corpus, and faithful confirmation flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb.casefiles import load_cases
from kb.paths import bundled_cases_dir

INCIDENTS = Path(__file__).resolve().parents[2] / "shared" / "incidents" / "github_incidents.jsonl"


@pytest.fixture(scope="module")
def cases() -> dict:
    return {loaded.case.id: loaded.case for loaded in load_cases([bundled_cases_dir()])}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    if not INCIDENTS.exists():
        pytest.skip(f"{INCIDENTS} not present")
    return [json.loads(line) for line in INCIDENTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_size_and_sources(cases):
    assert len(cases) >= 150
    assert all(case.status == "reviewed" and case.sources for case in cases.values())
    assert {c.language for c in cases.values()} >= {"en", "zh"}


def test_every_record_is_a_case(cases, records):
    by_source = {source: case for case in cases.values() for source in case.sources}
    for record in records:
        case = by_source.get(record["url"])
        assert case is not None, record["url"]
        if record.get("seed"):
            assert record["seed"] in case.sources  # the thread merged into its seed's case
        assert record["cluster"] in case.tags


def test_confirmation_follows_the_record(cases, records):
    by_source = {source: case for case in cases.values() for source in case.sources}
    for record in records:
        confirmed = [fix for fix in by_source[record["url"]].fixes if fix.confirmed]
        assert bool(confirmed) == bool(record["fix_confirmed"]), record["url"]


def test_related_links_point_at_cases_and_are_mutual_for_records(cases, records):
    ids = set(cases)
    for case in cases.values():
        assert set(case.related) <= ids, case.id
    clusters: dict[str, set[str]] = {}
    by_source = {source: case for case in cases.values() for source in case.sources}
    for record in records:
        clusters.setdefault(record["cluster"], set()).add(by_source[record["url"]].id)
    for members in clusters.values():
        for member in members:
            assert members - {member} <= set(cases[member].related), member


def test_unique_sources(cases):
    seen: dict[str, str] = {}
    for case in cases.values():
        for source in case.sources:
            assert source not in seen, f"{source} in {case.id} and {seen.get(source)}"
            seen[source] = case.id


def test_no_two_cases_document_one_thread(cases):
    """As ingest checks it (kb.threads): however a thread is spelled, and under a renamed
    repository's old or new name, no case's first source is among another case's sources."""
    from kb.threads import ThreadIndex, thread_key

    index = ThreadIndex()
    for case in cases.values():
        index.add(case.id, case.sources)
    assert index.clash_among(sorted(cases)) is None
    keys = [thread_key(source) for case in cases.values() for source in case.sources]
    assert len(keys) == len(set(keys))  # not even a later source is shared today
