"""The read-only commands answer from a SQLite file without SQLAlchemy, and answer the same.

``kbq show``, ``list``, ``stats`` and ``db current`` read SQLite with the stdlib
(kb.db.fastread, kb.db.fastmeta); PostgreSQL keeps the SQLAlchemy store. The two readers run
the same SQL text (kb.db.queries): the parity tests below compare them row for row, and the
listing and stats built on each, on the bundled base and on a base with drafts. Whether
SQLAlchemy is imported is read from ``python -X importtime`` of the real command.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import case_data
from kb.db.migrate import HEAD
from kb.db.store import CaseStore
from kb.errors import DatabaseError
from kb.models import Case
from kb.paths import bundled_cases_dir
from kb.service import KnowledgeBase
from serving import base_env, kbq

BUNDLED_IDS = sorted(p.stem for p in bundled_cases_dir().glob("*.yaml"))
HEAVY = ("sqlalchemy", "alembic")
FILTERS = [{}, {"model": "qwen"}, {"model": "llama"}, {"framework": "llama-factory"}, {"tag": "loss-zero"},
           {"model": "qwen", "framework": "llama-factory"}, {"model": "no-such-model"}]
STATUSES = [None, "reviewed", "draft"]


# -- helpers -------------------------------------------------------------------


def imported(result_stderr: str) -> set[str]:
    """Module names from the ``-X importtime`` lines of a run's stderr."""
    names = set()
    for line in result_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def without_importtime(stderr: str) -> str:
    return "".join(line + "\n" for line in stderr.splitlines() if not line.startswith("import time:"))


def run_traced(env: dict[str, str], *args: str):
    """``kbq ARGS`` with import tracing; returns (result, modules imported, stderr without the trace)."""
    result = kbq({**env, "PYTHONPROFILEIMPORTTIME": "1"}, *args)
    return result, imported(result.stderr), without_importtime(result.stderr)


def assert_light(modules: set[str], what: str) -> None:
    assert modules, f"{what}: no import trace read (is -X importtime working?)"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"{what} imported {heavy[:5]}"


def draft_and_extra_cases() -> list[Case]:
    """Cases to add beside the bundled ones: drafts that match the filters, reviewed ones too."""
    qwen = {"name": "Qwen2.5-7B", "family": "qwen", "version": "qwen2.5", "size": "7b"}
    return [Case.model_validate(d) for d in (
        case_data("zz-draft-qwen", status="draft", model=qwen, framework={"name": "llama-factory"}, tags=["loss-zero"]),
        case_data("zz-draft-llama", status="draft", tags=["loss-nan"]),
        case_data("aa-reviewed-qwen", model=qwen, framework={"name": "llama-factory"}, tags=["loss-zero"],
                  created_at="2024-05-01T08:30:00Z", updated_at="2024-06-02T09:15:30.123456Z"),
        case_data("zz-draft-zh", status="draft", language="zh", title="Qwen 训练损失为零", symptom="训练损失一直是 0"),
    )]


def bad_databases(directory: Path) -> tuple[Path, Path]:
    """A SQLite file with no kbq schema, and one at a schema revision from a newer kbq."""
    empty = directory / "empty.db"
    sqlite3.connect(empty).close()
    newer = directory / "newer.db"
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999')")
        conn.commit()
    return empty, newer


@pytest.fixture(scope="module")
def bundled_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose default database holds the bundled cases, with its index built."""
    home = tmp_path_factory.mktemp("fast-read-home")
    KnowledgeBase(home=home).index()
    return home


@pytest.fixture(scope="module")
def drafts_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file (named with --db) holding the bundled cases plus drafts and extra cases."""
    path = tmp_path_factory.mktemp("fast-read-db") / "cases.db"
    kb = KnowledgeBase(str(path), home=path.parent / "home")
    kb.ingest()
    with CaseStore(kb.url) as store:
        store.upsert(draft_and_extra_cases())
    return path


# -- the same answers either way ----------------------------------------------------


def both_readers(url: str):
    from kb.db.fastread import SqliteCaseReader, case_reader

    fast = case_reader(url)
    assert isinstance(fast, SqliteCaseReader)
    return fast, CaseStore(url)


@pytest.mark.parametrize("base", ["bundled", "drafts"])
def test_sqlite_reader_returns_what_the_store_returns(base: str, bundled_home: Path, drafts_db: Path) -> None:
    kb = KnowledgeBase(home=bundled_home) if base == "bundled" else KnowledgeBase(str(drafts_db))
    fast, store = both_readers(kb.url)
    with store:
        for status in STATUSES:
            assert fast.all(status) == store.all(status), status
        everything = store.all()
        assert len(everything) >= len(BUNDLED_IDS)
        for row in everything:
            assert fast.get(row.id) == store.get(row.id) == row
        assert fast.get("no-such-case") is None and store.get("no-such-case") is None
        assert fast.counts() == store.counts()
        assert fast.reviewed_json() == store.reviewed_json()
        assert [row.id for row in fast.reviewed_json()] == [row.id for row in store.all("reviewed")]
        assert fast.revision() == store.revision() is not None
    if base == "drafts":
        assert fast.counts()["draft"] == 3
        row = fast.get("aa-reviewed-qwen")
        assert row.created_at.isoformat() == "2024-05-01T08:30:00+00:00"
        assert row.updated_at.isoformat() == "2024-06-02T09:15:30.123456+00:00"
        assert fast.get("zz-draft-zh").document["symptom"] == "训练损失一直是 0"


@pytest.mark.parametrize("base", ["bundled", "drafts"])
def test_listing_and_stats_are_the_same_on_either_reader(base: str, bundled_home: Path, drafts_db: Path) -> None:
    """KnowledgeBase.cases (filters and status) and .stats, once on the stdlib reader and once
    with the SQLAlchemy store put in its place."""
    from kb.filters import Filters

    def pair() -> tuple[KnowledgeBase, KnowledgeBase]:
        make = (lambda: KnowledgeBase(home=bundled_home)) if base == "bundled" else (lambda: KnowledgeBase(str(drafts_db)))
        fast, slow = make(), make()
        slow._reader = slow._store  # the SQLAlchemy path, as before the stdlib reader
        return fast, slow

    fast, slow = pair()
    nonempty = 0
    for given in FILTERS:
        filters = Filters(**given)
        for status in STATUSES:
            listed = fast.cases(filters, status=status)
            assert listed == slow.cases(filters, status=status), (filters, status)
            nonempty += bool(listed)
    assert nonempty >= 12  # the filters above do select cases
    assert asdict(fast.stats()) == asdict(slow.stats())
    one = fast.cases()[0]["id"]
    assert fast.get(one) == slow.get(one)
    if base == "drafts":
        drafts = [c["id"] for c in fast.cases(status="draft")]
        assert drafts == ["zz-draft-llama", "zz-draft-qwen", "zz-draft-zh"]


def test_stats_summarise_the_built_index_as_the_loaded_index_holds_it(tmp_path: Path, bundled_home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """stats reads the index's meta.json when the index is built, and builds it otherwise:
    either way the figures are those of the loaded index."""
    import kb.indexkey

    summarised = KnowledgeBase(home=bundled_home).stats()
    index = KnowledgeBase(home=bundled_home).index()
    assert (summarised.index_cases, summarised.index_terms) == (len(index), index.n_terms) == (len(BUNDLED_IDS), index.meta["terms"])
    assert summarised.by_model_family == index.counts["by_model_family"] and summarised.by_language == index.counts["by_language"]
    monkeypatch.setattr(kb.indexkey, "read_summary", lambda directory, key: None)
    assert asdict(KnowledgeBase(home=bundled_home).stats()) == asdict(summarised)
    monkeypatch.undo()
    fresh = KnowledgeBase(home=tmp_path / "fresh")  # no index yet: stats builds it
    assert asdict(fresh.stats()) == {**asdict(summarised), "url": fresh.describe(), "revision": fresh.ensure_ready().revision}


def test_schema_revision_read_without_sqlalchemy_matches_alembic(tmp_path: Path, drafts_db: Path) -> None:
    from kb.db import migrate

    empty, newer = bad_databases(tmp_path)
    for path, expected in ((drafts_db, HEAD), (empty, None), (newer, "9999"), (tmp_path / "missing.db", None)):
        kb = KnowledgeBase(str(path), home=tmp_path / "home")
        assert kb.schema_revision() == migrate.current(kb.url) == expected, path
    assert not (tmp_path / "missing.db").exists()


def test_reader_errors_are_one_line(tmp_path: Path) -> None:
    from kb.db.fastread import SqliteCaseReader

    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match=f"^not a SQLite database: {bogus}$"):
        SqliteCaseReader(bogus).counts()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(DatabaseError, match=f"^database {empty} has no kbq schema: run `kbq db upgrade`$"):
        SqliteCaseReader(empty).all()


# -- the real command: no SQLAlchemy -----------------------------------------------------


def read_only_commands(case_id: str) -> list[list[str]]:
    return [["show", case_id], ["show", "--json", case_id], ["list"], ["list", "--json", "--model", "qwen", "--status", "reviewed"],
            ["list", "--status", "draft"], ["stats"], ["stats", "--json"], ["db", "current"]]


def test_read_only_commands_on_the_default_database_never_import_sqlalchemy(bundled_home: Path) -> None:
    env = base_env(bundled_home)
    for args in read_only_commands(BUNDLED_IDS[0]):
        result, modules, stderr = run_traced(env, *args)
        assert result.returncode == 0 and stderr == "", (args, stderr)
        assert_light(modules, " ".join(args))
    shown = json.loads(kbq(env, "show", "--json", BUNDLED_IDS[0]).stdout)
    assert shown["id"] == BUNDLED_IDS[0] and shown["created_at"].endswith("+00:00")
    stats = json.loads(kbq(env, "stats", "--json").stdout)
    assert stats["counts"] == {"reviewed": len(BUNDLED_IDS)}
    assert kbq(env, "db", "current").stdout.rstrip().endswith(f"schema at revision {HEAD}")


def test_unfiltered_read_only_commands_load_no_numpy_either(bundled_home: Path) -> None:
    """Nothing in show, an unfiltered list, stats or db current needs the index's arrays."""
    env = base_env(bundled_home)
    for args in (["show", BUNDLED_IDS[0]], ["list"], ["stats"], ["db", "current"]):
        result, modules, stderr = run_traced(env, *args)
        assert result.returncode == 0 and stderr == "", (args, stderr)
        assert "numpy" not in modules, args


def test_read_only_commands_on_a_db_file_never_import_sqlalchemy(drafts_db: Path, tmp_path: Path) -> None:
    env = base_env(tmp_path / "home")
    for args in read_only_commands("zz-draft-qwen"):
        result, modules, stderr = run_traced(env, *args, "--db", str(drafts_db))
        assert result.returncode == 0 and stderr == "", (args, stderr)
        assert_light(modules, " ".join(args))
    listed = json.loads(kbq(env, "list", "--json", "--status", "draft", "--db", str(drafts_db)).stdout)
    assert [c["id"] for c in listed] == ["zz-draft-llama", "zz-draft-qwen", "zz-draft-zh"]
    filtered = json.loads(kbq(env, "list", "--json", "--model", "qwen", "--framework", "llama-factory", "--db", str(drafts_db)).stdout)
    assert "aa-reviewed-qwen" in [c["id"] for c in filtered] and "zz-draft-qwen" not in [c["id"] for c in filtered]


def one_error_line(result, stderr: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbq: error: "), stderr
    return lines[0]


def test_bad_databases_give_the_same_one_line_errors_without_sqlalchemy(tmp_path: Path) -> None:
    env = base_env(tmp_path / "home")
    missing = tmp_path / "missing.db"
    empty, newer = bad_databases(tmp_path)
    expected = {
        missing: f"kbq: error: sqlite:///{missing}: no such database; create it with `kbq ingest --db {missing}`",
        empty: f"kbq: error: sqlite:///{empty}: has no kbq schema; run `kbq db upgrade --db {empty}` then `kbq ingest --db {empty}`",
        newer: f"kbq: error: sqlite:///{newer}: schema is at revision 9999, newer than this kbq",
    }
    for path, message in expected.items():
        for args in (["show", "some-case"], ["list"], ["list", "--model", "qwen"], ["stats"]):
            result, modules, stderr = run_traced(env, *args, "--db", str(path))
            line = one_error_line(result, stderr)
            assert line.startswith(message), (args, line)
            assert_light(modules, f"{' '.join(args)} on {path.name}")
    assert "upgrade kbq, not the database" in one_error_line(*run_traced(env, "stats", "--db", str(newer))[::2])
    for path, revision in ((missing, "base (empty)"), (empty, "base (empty)"), (newer, "9999")):
        result, modules, stderr = run_traced(env, "db", "current", "--db", str(path))
        assert result.returncode == 0 and stderr == "", stderr
        assert result.stdout.rstrip().endswith(f"schema at revision {revision}")
        assert_light(modules, f"db current on {path.name}")
    assert not missing.exists()


def test_a_default_database_from_a_newer_kbq_is_refused_without_sqlalchemy(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _, newer = bad_databases(tmp_path)
    newer.rename(home / "kbq.db")
    env = base_env(home)
    for args in (["show", "some-case"], ["list"], ["stats"]):
        result, modules, stderr = run_traced(env, *args)
        line = one_error_line(result, stderr)
        assert line.startswith(f"kbq: error: sqlite:///{home / 'kbq.db'}: schema is at revision 9999, newer than this kbq")
        assert line.endswith("upgrade kbq, not the database")
        assert_light(modules, " ".join(args))
    result, modules, stderr = run_traced(env, "db", "current")
    assert result.returncode == 0 and result.stdout.rstrip().endswith("schema at revision 9999")
    assert_light(modules, "db current")
