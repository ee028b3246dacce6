"""The ``kbq`` command end to end: real case files, real databases, the real console script.

Fast paths run in-process through ``typer.testing.CliRunner``; what only a
process shows (first run on a fresh home, argv parsing and decoding, exit
codes and stderr as the shell sees them, a writer holding the SQLite lock)
runs ``python -m cli.main`` in a subprocess via the ``run_kbq`` fixture.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from kb import __version__
from kb.db.migrate import HEAD
from kb.db.store import CaseStore
from kb.paths import bundled_cases_dir

GEMMA_QUERY = "gemma3 loss 70 zero3"
GEMMA_CASE = "llamafactory-7416"
UNRELATED_QUERY = "Windows 11 上安装 CUDA 驱动失败，nvidia driver installer exits with error 0x80070005"
BUNDLED_IDS = sorted(p.stem for p in bundled_cases_dir().glob("*.yaml"))
N = len(BUNDLED_IDS)  # the bundled case base grows; every count below follows it
MGM_QUERY = "Mini-Gemini MGM Qwen2-4B stage-1 pretraining loss 1.8"

RunKbq = Callable[..., Any]


# -- helpers -------------------------------------------------------------------


def invoke(*args: str, home: Path | None = None, env: dict[str, str | None] | None = None):
    """``kbq ARGS`` in-process; KBQ_DB/KBQ_DEBUG/KBQ_LOCK_TIMEOUT unset unless given."""
    full_env: dict[str, str | None] = {"KBQ_DB": None, "KBQ_DEBUG": None, "KBQ_LOCK_TIMEOUT": None}
    if home is not None:
        full_env["KBQ_HOME"] = str(home)
    full_env.update(env or {})
    result = CliRunner().invoke(app, list(args), env=full_env, prog_name="kbq")
    # typer.Exit/click exits are SystemExit; anything else escaped the CLI's error handling
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def one_error(result, *, code: int | None = None) -> str:
    """The single ``kbq: error: ...`` line of a failed run (CliRunner result or CompletedProcess)."""
    exit_code = getattr(result, "exit_code", getattr(result, "returncode", None))
    assert exit_code != 0, result.stdout
    if code is not None:
        assert exit_code == code, (exit_code, result.stderr)
    stderr = result.stderr
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("kbq: error: "), lines[0]
    return lines[0]


def as_json(result) -> Any:
    return json.loads(ok(result))


def copy_cases(destination: Path) -> Path:
    """A private copy of the bundled case files."""
    shutil.copytree(bundled_cases_dir(), destination)
    return destination


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dump_yaml(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def sqlite_rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    """Every row of the cases and kbq_meta tables, read with the stdlib."""
    with closing(sqlite3.connect(path)) as conn:
        cases = conn.execute("SELECT * FROM cases ORDER BY id").fetchall()
        meta = conn.execute("SELECT key, value FROM kbq_meta ORDER BY key").fetchall()
    return cases, meta


def sqlite_revision(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        (value,) = conn.execute("SELECT value FROM kbq_meta WHERE key = 'revision'").fetchone()
    return value


def stored(url: str) -> list[tuple]:
    with CaseStore(url) as store:
        return [(s.id, s.status, s.document, s.created_at, s.updated_at) for s in store.all()]


def file_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One per-user home for the read-only tests; its default database is built on first use."""
    home = tmp_path_factory.mktemp("shared-kbq-home")
    ok(invoke("stats", home=home))
    return home


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    return copy_cases(tmp_path / "cases")


@pytest.fixture
def ingested(tmp_path: Path, cases_dir: Path, kbq_home: Path) -> Path:
    """A SQLite file with the five bundled cases ingested from a copy of their files."""
    db = tmp_path / "kb.db"
    assert f"{N} added" in ok(invoke("ingest", str(cases_dir), "--db", str(db)))
    return db


# -- the default command on a fresh home (subprocess) ---------------------------


def test_first_query_builds_default_database_then_reuses_it(run_kbq: RunKbq, kbq_home: Path) -> None:
    assert not any(kbq_home.iterdir())
    first = run_kbq(GEMMA_QUERY)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert f"1. {GEMMA_CASE}" in first.stdout
    parsed_line = first.stdout.splitlines()[0]
    assert parsed_line.startswith("Parsed") and "gemma-3" in parsed_line and "zero_stage 3" in parsed_line
    for matched in ("model gemma-3", "zero_stage 3", "loss 70"):
        assert matched in first.stdout
    assert "Recommended fixes" in first.stdout

    database = kbq_home / "kbq.db"
    assert database.is_file()
    indexes = list((kbq_home / "index").glob("*/*/meta.json"))
    assert len(indexes) == 1
    index_mtime, db_mtime = indexes[0].stat().st_mtime_ns, database.stat().st_mtime_ns

    second = run_kbq(GEMMA_QUERY)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert list((kbq_home / "index").glob("*/*/meta.json")) == indexes
    assert indexes[0].stat().st_mtime_ns == index_mtime, "index rebuilt although nothing changed"
    assert database.stat().st_mtime_ns == db_mtime, "default database rewritten although nothing changed"


def test_options_before_or_after_the_query_give_the_same_json(run_kbq: RunKbq) -> None:
    before = run_kbq("--json", "-k", "5", GEMMA_QUERY)
    after = run_kbq(GEMMA_QUERY, "--json", "-k", "5")
    explicit = run_kbq("query", "-k", "5", GEMMA_QUERY, "--json")
    for proc in (before, after, explicit):
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
    assert json.loads(before.stdout)["results"][0]["id"] == GEMMA_CASE
    # timestamps included: all three read the same database
    assert before.stdout == after.stdout == explicit.stdout


def test_undecodable_argv_is_one_line_error(run_kbq: RunKbq) -> None:
    proc = run_kbq(b"\xff\xfe loss")
    line = one_error(proc, code=2)
    assert "UTF-8" in line and "0xff" in line


def test_long_query_in_argv_is_one_line_error(run_kbq: RunKbq) -> None:
    # A single argv string is capped at 128 KiB on Linux; the 1 MB case runs in-process below.
    proc = run_kbq("loss " * 20000)
    line = one_error(proc, code=2)
    assert "too long" in line and "16384" in line


def test_unknown_dialect_in_db_is_one_line_error(run_kbq: RunKbq) -> None:
    proc = run_kbq("--db", "foo://x", "loss")
    line = one_error(proc)
    assert "foo://x" in line and "dialect" in line


# -- help, version, query forms -------------------------------------------------


def test_help_and_version() -> None:
    help_text = ok(invoke("--help"))
    for command in ("query", "show", "list", "stats", "ingest", "export", "db"):
        assert command in help_text
    assert ok(invoke("--version")).strip() == f"kbq {__version__}"
    assert "--top" in ok(invoke("query", "--help"))


def test_query_json_schema_and_breakdown(shared_home: Path) -> None:
    data = as_json(invoke("--json", "-k", "5", GEMMA_QUERY, home=shared_home))
    assert data["schema"] == "kbq.search/1"
    assert data["query"] == GEMMA_QUERY
    features = data["parsed"]["features"]
    assert features["model"] == ["gemma-3"] and features["zero_stage"] == [3] and features["loss"] == [70]
    assert data["abstained"] is False
    assert isinstance(data["threshold"], float)
    results = data["results"]
    assert 1 <= len(results) <= 5
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for result in results:
        assert {"rank", "id", "title", "score", "confident", "sources", "breakdown", "case"} <= result.keys()
        assert result["case"]["id"] == result["id"] and result["case"]["title"] == result["title"]
        assert result["sources"] == result["case"]["sources"]
        breakdown = result["breakdown"]
        assert 0 <= breakdown["text"]["score"] <= 1
        semantic = breakdown["semantic"]["contribution"] if breakdown["semantic"] else 0.0
        total = breakdown["text"]["contribution"] + semantic + sum(f["contribution"] for f in breakdown["features"])
        assert total == pytest.approx(result["score"], abs=2e-3)

    top = results[0]
    assert top["id"] == GEMMA_CASE and top["confident"] is True
    assert data["confidence"] >= data["threshold"] and data["abstain_reason"] is None
    exact = {f["name"]: f for f in top["breakdown"]["features"] if f["similarity"] == 1}
    assert {"model", "zero_stage", "loss"} <= exact.keys()
    assert exact["model"]["case"] == "gemma-3"
    assert exact["zero_stage"]["case"] == 3
    loss_case = exact["loss"]["case"]
    assert 70 in (loss_case if isinstance(loss_case, list) else [loss_case])

    fixes = data["recommended_fixes"]
    assert fixes
    for fix in fixes:
        assert {"action", "confirmed", "support", "cases"} <= fix.keys()
        assert fix["action"] and isinstance(fix["confirmed"], bool) and fix["cases"]
    assert any(GEMMA_CASE in fix["cases"] and fix["confirmed"] for fix in fixes)


def test_explicit_query_command_equals_default(shared_home: Path) -> None:
    explicit = ok(invoke("query", GEMMA_QUERY, "--json", home=shared_home))
    default = ok(invoke(GEMMA_QUERY, "--json", home=shared_home))
    assert explicit == default
    assert f"1. {GEMMA_CASE}" in ok(invoke("query", GEMMA_QUERY, home=shared_home))


def test_option_value_named_like_a_command_stays_a_value(shared_home: Path) -> None:
    # `--tag stats` is a filter whose value happens to be a command's name: still a query.
    data = as_json(invoke("--tag", "stats", "--json", "gemma3 loss 70 zero3", home=shared_home))
    assert data["results"] == []


def test_top_k_limits_results(shared_home: Path) -> None:
    data = as_json(invoke("-k", "1", "--json", "loss plateau pretraining", home=shared_home))
    assert len(data["results"]) == 1
    result = invoke("-k", "0", "loss", home=shared_home)
    assert result.exit_code == 2 and "Traceback" not in result.output


# -- filters ---------------------------------------------------------------------


def _filtered(home: Path, query: str, *options: str) -> dict[str, Any]:
    return as_json(invoke("--json", "-k", "10", query, *options, home=home))


def test_model_filter_keeps_only_that_family(shared_home: Path) -> None:
    unfiltered = _filtered(shared_home, "loss stalls pretraining")
    assert {r["case"]["model"].get("family") for r in unfiltered["results"]} - {"qwen"}, "filter test needs other families"
    data = _filtered(shared_home, "loss stalls pretraining", "--model", "qwen")
    assert data["filters"] == {"model": "qwen"}
    ids = {r["id"] for r in data["results"]}
    assert {"mgm-28", "medicalgpt-426"} <= ids
    assert all(r["case"]["model"].get("family") == "qwen" for r in data["results"])


def test_framework_filter(shared_home: Path) -> None:
    data = _filtered(shared_home, "loss lora", "--framework", "llama-factory")
    assert data["results"] and all(r["case"]["framework"]["name"] == "llama-factory" for r in data["results"])
    everything = _filtered(shared_home, "loss lora")
    assert any(r["case"]["framework"]["name"] != "llama-factory" for r in everything["results"])
    assert data["filters"] == {"framework": "llama-factory"}


def test_tag_filter(shared_home: Path) -> None:
    query = "lora loss English forgetting pretraining"
    assert len(_filtered(shared_home, query)["results"]) > 1
    data = _filtered(shared_home, query, "--tag", "tiny-dataset")
    assert [r["id"] for r in data["results"]] == ["chinese-llama-alpaca-2-521"]
    assert "tiny-dataset" in data["results"][0]["case"]["tags"]
    listed = as_json(invoke("list", "--json", "--tag", "tiny-dataset", home=shared_home))
    assert [c["id"] for c in listed] == ["chinese-llama-alpaca-2-521"]


# -- abstaining -------------------------------------------------------------------


def test_unrelated_query_is_not_answered_with_confidence(shared_home: Path) -> None:
    data = as_json(invoke("--json", UNRELATED_QUERY, home=shared_home))
    assert all(not r["confident"] for r in data["results"])
    assert data["abstain_reason"]
    human = ok(invoke(UNRELATED_QUERY, home=shared_home))
    assert "No close case" in human or "not confident" in human
    assert data["abstain_reason"].split(":")[0] in " ".join(human.split())


def test_off_topic_query_has_no_close_case(shared_home: Path) -> None:
    query = "How do I center a div with CSS grid?"
    data = as_json(invoke("--json", query, home=shared_home))
    assert data["abstained"] is True and data["recommended_fixes"] == []
    human = ok(invoke(query, home=shared_home))
    assert "No close case" in human and "Recommended fixes" not in human


# -- show, list, stats -------------------------------------------------------------


def test_show_case(shared_home: Path) -> None:
    text = ok(invoke("show", GEMMA_CASE, home=shared_home))
    assert GEMMA_CASE in text and "Gemma-3" in text and "llama-factory" in text
    document = as_json(invoke("show", GEMMA_CASE, "--json", home=shared_home))
    assert document["id"] == GEMMA_CASE
    assert document["model"]["version"] == "gemma-3"
    assert document["created_at"] and document["updated_at"]
    bundled = load_yaml(bundled_cases_dir() / f"{GEMMA_CASE}.yaml")
    assert document["title"] == bundled["title"] and document["fixes"][0]["action"] == bundled["fixes"][0]["action"]


def test_show_unknown_id_is_one_line_error(shared_home: Path) -> None:
    line = one_error(invoke("show", "nope", home=shared_home))
    assert "'nope'" in line


def test_list_and_stats(shared_home: Path) -> None:
    listed = as_json(invoke("list", "--json", home=shared_home))
    assert [c["id"] for c in listed] == BUNDLED_IDS and len(listed) == N
    assert all({"id", "title", "status", "model", "framework", "tags", "sources"} <= c.keys() for c in listed)
    assert f"{N} case(s)" in ok(invoke("list", home=shared_home))
    assert f"{N} reviewed" in ok(invoke("stats", home=shared_home))
    stats = as_json(invoke("stats", "--json", home=shared_home))
    assert stats["counts"] == {"reviewed": N} and stats["index_cases"] == N
    assert one_error(invoke("list", "--status", "bogus", home=shared_home)).endswith("got 'bogus'")


# -- bad queries -------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query(shared_home: Path, query: str) -> None:
    assert "empty query" in one_error(invoke(query, home=shared_home), code=2)


def test_megabyte_query_is_too_long(shared_home: Path) -> None:
    line = one_error(invoke("loss " * 200000, home=shared_home), code=2)
    assert "too long" in line


@pytest.mark.parametrize("query", ["loss\x00 70", "loss \x01 70", "\x7fgemma3"])
def test_control_characters_in_query(shared_home: Path, query: str) -> None:
    line = one_error(invoke(query, home=shared_home), code=2)
    assert "control character" in line


# -- bad --db ----------------------------------------------------------------------


def test_unreachable_postgres_is_one_line_error(kbq_home: Path) -> None:
    line = one_error(invoke("--db", "postgresql+psycopg://postgres@127.0.0.1:1/test", "loss"))
    assert "cannot connect" in line and "127.0.0.1:1" in line


def test_missing_sqlite_database_is_not_created_by_a_query(kbq_home: Path) -> None:
    missing = Path("/nonexistent-dir-xyz/sub/x.db")
    line = one_error(invoke("--db", str(missing), GEMMA_QUERY))
    assert "no such database" in line and str(missing) in line
    assert not missing.parent.parent.exists()
    line = one_error(invoke("show", GEMMA_CASE, "--db", str(missing)))
    assert "no such database" in line


def test_not_a_sqlite_file(tmp_path: Path, kbq_home: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    line = one_error(invoke("--db", str(junk), "loss"))
    assert "not a SQLite database" in line or "not a database" in line


# -- ingest ------------------------------------------------------------------------


def test_ingest_then_reingest(tmp_path: Path, cases_dir: Path, kbq_home: Path) -> None:
    db = tmp_path / "kb.db"
    first = ok(invoke("ingest", str(cases_dir), "--db", str(db)))
    assert f"{N} added, 0 updated, 0 unchanged" in first
    revision = sqlite_revision(db)
    second = ok(invoke("ingest", str(cases_dir), "--db", str(db)))
    assert f"0 added, 0 updated, {N} unchanged" in second
    assert sqlite_revision(db) == revision
    assert [c["id"] for c in as_json(invoke("list", "--json", "--db", str(db)))] == BUNDLED_IDS
    assert as_json(invoke("--json", GEMMA_QUERY, "--db", str(db)))["results"][0]["id"] == GEMMA_CASE


def _base_case() -> dict[str, Any]:
    return load_yaml(bundled_cases_dir() / "mgm-28.yaml")


def _bad_malformed(d: Path) -> Path:
    path = d / "zz-bad.yaml"
    path.write_text("id: zz-bad\ntitle: [unclosed\n", encoding="utf-8")
    return path


def _bad_missing_symptom(d: Path) -> Path:
    data = {**_base_case(), "id": "zz-nosymptom"}
    del data["symptom"]
    return dump_yaml(data, d / "zz-nosymptom.yaml")


def _bad_non_utf8(d: Path) -> Path:
    text = yaml.safe_dump({**_base_case(), "id": "zz-bytes"}, allow_unicode=True, sort_keys=False).encode()
    path = d / "zz-bytes.yaml"
    path.write_bytes(text.replace(b"title: ", b"title: \xff\xfe ", 1))
    return path


def _bad_wrong_type(d: Path) -> Path:
    return dump_yaml({**_base_case(), "id": "zz-type", "observations": "abc"}, d / "zz-type.yaml")


def _bad_observation_item(d: Path) -> Path:
    return dump_yaml({**_base_case(), "id": "zz-obs", "observations": [{"metric": "loss", "value": "abc"}]}, d / "zz-obs.yaml")


def _bad_unknown_key(d: Path) -> Path:
    data = {**_base_case(), "id": "zz-unknown"}
    data["sympton"] = "a typo of symptom"
    return dump_yaml(data, d / "zz-unknown.yaml")


def _bad_renamed_key(d: Path) -> Path:
    data = {**_base_case(), "id": "zz-renamed"}
    data["sympton"] = data.pop("symptom")
    return dump_yaml(data, d / "zz-renamed.yaml")


def _bad_id_not_file_name(d: Path) -> Path:
    return dump_yaml({**_base_case(), "id": "zz-other"}, d / "zz-name.yaml")


def _bad_copy_under_other_name(d: Path) -> Path:
    path = d / "zz-copy.yaml"
    shutil.copyfile(d / "mgm-28.yaml", path)
    return path


def _bad_duplicate_id(d: Path) -> Path:
    path = d / "mgm-28.yml"  # same id as mgm-28.yaml, and it matches its own file name
    shutil.copyfile(d / "mgm-28.yaml", path)
    return path


def _bad_nul(d: Path) -> Path:
    path = d / "zz-nul.yaml"
    path.write_bytes(b"id: zz-nul\ntitle: a\x00b\n")
    return path


def _bad_not_mapping(d: Path) -> Path:
    path = d / "zz-list.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    return path


def _bad_bad_id(d: Path) -> Path:
    return dump_yaml({**_base_case(), "id": "Bad Id!"}, d / "Bad Id!.yaml")


BAD_FILES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    # name: (writer, substrings the one error line must contain besides the file name)
    "malformed-yaml": (_bad_malformed, ("zz-bad.yaml:3:1: YAML syntax error",)),
    "missing-symptom": (_bad_missing_symptom, ("'symptom'", "missing required field")),
    "non-utf8": (_bad_non_utf8, ("UTF-8", "0xff")),
    "wrong-type": (_bad_wrong_type, ("'observations'", "list")),
    "bad-observation-value": (_bad_observation_item, ("'observations[0].value'",)),
    "unknown-key": (_bad_unknown_key, ("'sympton'", "unknown field", "did you mean 'symptom'")),
    # a renamed key names the typo first, and what it probably should be
    "renamed-key": (_bad_renamed_key, ("'sympton'", "unknown field", "did you mean 'symptom'", "1 more")),
    "id-not-file-name": (_bad_id_not_file_name, ("'id'", "'zz-other'", "'zz-name'")),
    # a copy keeps its id: reported as the duplicate it is, naming the original
    "copy-under-other-name": (_bad_copy_under_other_name, ("'id'", "duplicate id 'mgm-28'", "mgm-28.yaml")),
    "duplicate-id": (_bad_duplicate_id, ("'id'", "duplicate id 'mgm-28'", "mgm-28.yaml")),
    "nul-bytes": (_bad_nul, ("NUL",)),
    "not-a-mapping": (_bad_not_mapping, ("mapping",)),
    "bad-id": (_bad_bad_id, ("'id'", "slug")),
}


@pytest.mark.parametrize("modify_existing", [False, True], ids=["plus-bad-file", "edit-plus-bad-file"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_ingest_with_one_bad_file_changes_nothing(
    tmp_path: Path, ingested: Path, kind: str, modify_existing: bool
) -> None:
    writer, expected = BAD_FILES[kind]
    directory = copy_cases(tmp_path / f"bad-{kind}")
    if modify_existing:
        data = load_yaml(directory / "medicalgpt-426.yaml")
        data["title"] = "An edited title that must not reach the database"
        dump_yaml(data, directory / "medicalgpt-426.yaml")
    bad = writer(directory)

    listed_before = ok(invoke("list", "--json", "--db", str(ingested)))
    rows_before, revision_before = sqlite_rows(ingested), sqlite_revision(ingested)

    line = one_error(invoke("ingest", str(directory), "--db", str(ingested)))
    assert str(bad) in line, line
    for part in expected:
        assert part in line, (part, line)

    assert ok(invoke("list", "--json", "--db", str(ingested))) == listed_before
    assert sqlite_rows(ingested) == rows_before
    assert sqlite_revision(ingested) == revision_before
    if modify_existing:
        shown = as_json(invoke("show", "medicalgpt-426", "--json", "--db", str(ingested)))
        assert shown["title"] == load_yaml(bundled_cases_dir() / "medicalgpt-426.yaml")["title"]


def test_same_case_given_twice_is_duplicate(tmp_path: Path, ingested: Path, cases_dir: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(cases_dir / "mgm-28.yaml", other / "mgm-28.yaml")
    before = sqlite_rows(ingested)
    line = one_error(invoke("ingest", str(cases_dir), str(other), "--db", str(ingested)))
    assert str(other / "mgm-28.yaml") in line and "duplicate id 'mgm-28'" in line
    assert sqlite_rows(ingested) == before


def test_ingest_missing_path(tmp_path: Path, ingested: Path) -> None:
    missing = tmp_path / "no-such-dir"
    line = one_error(invoke("ingest", str(missing), "--db", str(ingested)))
    assert str(missing) in line and "no such file or directory" in line


# -- drafts ------------------------------------------------------------------------

DRAFT_ID = "zz-draft-case"
DRAFT_WORD = "zanzibarquokka"


def _write_draft(directory: Path) -> None:
    data = {**_base_case(), "id": DRAFT_ID, "status": "draft"}
    data["title"] = f"{DRAFT_WORD} draft: Mini-Gemini Qwen2-4B stage-1 loss 1.8"
    data["symptom"] = f"{DRAFT_WORD} " + data["symptom"]
    data["sources"] = ["https://github.com/example-org/example-trainer/issues/1"]  # its own thread (one case per thread)
    dump_yaml(data, directory / f"{DRAFT_ID}.yaml")


def test_drafts_are_stored_only_on_request_and_never_retrieved(tmp_path: Path, cases_dir: Path, kbq_home: Path) -> None:
    _write_draft(cases_dir)
    db = tmp_path / "drafts.db"
    assert f"{N} added" in ok(invoke("ingest", str(cases_dir), "--db", str(db)))
    assert [c["id"] for c in as_json(invoke("list", "--json", "--db", str(db)))] == BUNDLED_IDS

    report = ok(invoke("ingest", str(cases_dir), "--include-drafts", "--db", str(db)))
    assert f"1 added, 0 updated, {N} unchanged" in report
    drafts = as_json(invoke("list", "--json", "--status", "draft", "--db", str(db)))
    assert [(c["id"], c["status"]) for c in drafts] == [(DRAFT_ID, "draft")]
    assert len(as_json(invoke("list", "--json", "--db", str(db)))) == N + 1
    assert as_json(invoke("stats", "--json", "--db", str(db)))["counts"] == {"draft": 1, "reviewed": N}
    assert as_json(invoke("stats", "--json", "--db", str(db)))["index_cases"] == N
    assert as_json(invoke("show", DRAFT_ID, "--json", "--db", str(db)))["status"] == "draft"

    for query in (f"{DRAFT_WORD} loss", MGM_QUERY):
        data = as_json(invoke("--json", "-k", "100", query, "--db", str(db)))
        assert DRAFT_ID not in {r["id"] for r in data["results"]}
        assert data["case_count"] == N


# -- stale index ---------------------------------------------------------------------


def test_changed_case_rebuilds_the_index(tmp_path: Path, cases_dir: Path, ingested: Path, kbq_home: Path) -> None:
    original = load_yaml(cases_dir / "mgm-28.yaml")["title"]
    first = as_json(invoke("--json", MGM_QUERY, "--db", str(ingested)))
    assert first["results"][0]["id"] == "mgm-28" and first["results"][0]["title"] == original
    indexes = list((kbq_home / "index").glob("*/*/meta.json"))
    assert len(indexes) == 1
    old_key = json.loads(indexes[0].read_text(encoding="utf-8"))["key"]

    data = load_yaml(cases_dir / "mgm-28.yaml")
    data["title"] = "MGM with Qwen2-4B: stage-1 loss sits at 1.8, retitled for the index test"
    dump_yaml(data, cases_dir / "mgm-28.yaml")
    assert f"0 added, 1 updated, {N - 1} unchanged" in ok(invoke("ingest", str(cases_dir), "--db", str(ingested)))

    second = as_json(invoke("--json", MGM_QUERY, "--db", str(ingested)))
    assert second["results"][0]["id"] == "mgm-28"
    assert second["results"][0]["title"] == data["title"]
    rebuilt = list((kbq_home / "index").glob("*/*/meta.json"))
    assert len(rebuilt) == 1 and rebuilt != indexes  # a new directory; the old one was removed
    new_key = json.loads(rebuilt[0].read_text(encoding="utf-8"))["key"]
    assert new_key["revision"] == sqlite_revision(ingested) != old_key["revision"]


# -- export round trip -----------------------------------------------------------------


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_export_round_trip_sqlite_files(tmp_path: Path, ingested: Path) -> None:
    out, out2, db_b = tmp_path / "out", tmp_path / "out2", tmp_path / "b.db"
    assert f"wrote {N} case file(s)" in ok(invoke("export", str(out), "--db", str(ingested)))
    assert sorted(_files(out)) == [f"{i}.yaml" for i in BUNDLED_IDS]
    assert f"{N} added" in ok(invoke("ingest", str(out), "--db", str(db_b)))
    ok(invoke("export", str(out2), "--db", str(db_b)))
    assert _files(out) == _files(out2)
    assert ok(invoke("list", "--json", "--db", str(ingested))) == ok(invoke("list", "--json", "--db", str(db_b)))
    assert stored(file_url(ingested)) == stored(file_url(db_b))
    # exporting the database and ingesting it back changes nothing
    revision = sqlite_revision(ingested)
    assert f"{N} unchanged" in ok(invoke("ingest", str(out), "--db", str(ingested)))
    assert sqlite_revision(ingested) == revision


def test_export_refuses_to_overwrite(tmp_path: Path, ingested: Path) -> None:
    out = tmp_path / "out"
    ok(invoke("export", str(out), "--db", str(ingested)))
    target = out / f"{GEMMA_CASE}.yaml"
    target.write_text("scribbled over\n", encoding="utf-8")
    line = one_error(invoke("export", str(out), "--db", str(ingested)))
    assert "already exists" in line and "--overwrite" in line
    assert target.read_text(encoding="utf-8") == "scribbled over\n"
    assert f"wrote {N} case file(s)" in ok(invoke("export", str(out), "--overwrite", "--db", str(ingested)))
    assert load_yaml(target)["id"] == GEMMA_CASE


# -- both backends: ingest, query, stale index, export round trip ------------------------


def test_ingest_query_export_on_each_backend(tmp_path: Path, db_url: str, cases_dir: Path, kbq_home: Path) -> None:
    assert f"{N} added, 0 updated, 0 unchanged" in ok(invoke("ingest", str(cases_dir), "--db", db_url))
    assert f"{N} unchanged" in ok(invoke("ingest", str(cases_dir), "--db", db_url))
    data = as_json(invoke("--json", GEMMA_QUERY, "--db", db_url))
    assert data["results"][0]["id"] == GEMMA_CASE and data["case_count"] == N
    assert ok(invoke("show", GEMMA_CASE, "--db", db_url))
    assert as_json(invoke("stats", "--json", "--db", db_url))["counts"] == {"reviewed": N}

    edited = load_yaml(cases_dir / f"{GEMMA_CASE}.yaml")
    edited["title"] = "Gemma-3 ZeRO-3 loss 70: retitled for the backend test"
    dump_yaml(edited, cases_dir / f"{GEMMA_CASE}.yaml")
    assert "1 updated" in ok(invoke("ingest", str(cases_dir), "--db", db_url))
    assert as_json(invoke("--json", GEMMA_QUERY, "--db", db_url))["results"][0]["title"] == edited["title"]

    out, out2, db_b = tmp_path / "out", tmp_path / "out2", tmp_path / "b.db"
    ok(invoke("export", str(out), "--db", db_url))
    assert f"{N} added" in ok(invoke("ingest", str(out), "--db", str(db_b)))
    ok(invoke("export", str(out2), "--db", str(db_b)))
    assert _files(out) == _files(out2) and len(_files(out)) == N
    assert ok(invoke("list", "--json", "--db", db_url)) == ok(invoke("list", "--json", "--db", str(db_b)))
    assert stored(db_url) == stored(file_url(db_b))


# -- a concurrent writer (subprocess) -------------------------------------------------------


def test_ingest_while_another_writer_holds_the_lock(
    tmp_path: Path, cases_dir: Path, ingested: Path, run_kbq: RunKbq
) -> None:
    data = load_yaml(cases_dir / "mgm-28.yaml")
    data["title"] = "changed while locked"
    dump_yaml(data, cases_dir / "mgm-28.yaml")
    before = sqlite_rows(ingested)

    holder = sqlite3.connect(ingested, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        proc = run_kbq("ingest", str(cases_dir), "--db", str(ingested), env={"KBQ_LOCK_TIMEOUT": "0.3"})
        line = one_error(proc)
        assert "locked" in line and "0.3" in line
        holder.execute("ROLLBACK")
    finally:
        holder.close()

    assert sqlite_rows(ingested) == before
    # once the lock is gone the same ingest goes through
    assert "1 updated" in ok(invoke("ingest", str(cases_dir), "--db", str(ingested)))


# -- schema commands -------------------------------------------------------------------------


def test_db_upgrade_current_downgrade(tmp_path: Path, cases_dir: Path, kbq_home: Path) -> None:
    db = tmp_path / "schema.db"
    assert "base (empty)" in ok(invoke("db", "current", "--db", str(db)))
    assert not db.exists(), "`db current` must not create the file"

    assert ok(invoke("db", "upgrade", "--db", str(db))).strip().endswith(f"schema at revision {HEAD}")
    assert ok(invoke("db", "current", "--db", str(db))).strip().endswith(f"schema at revision {HEAD}")
    assert "0 case(s)" in ok(invoke("list", "--db", str(db)))
    assert f"{N} added" in ok(invoke("ingest", str(cases_dir), "--db", str(db)))

    line = one_error(invoke("db", "downgrade", "base", "--db", str(db)), code=2)
    assert "--yes" in line and "drops" in line
    assert f"{N} case(s)" in ok(invoke("list", "--db", str(db))), "a refused downgrade changes nothing"
    assert ok(invoke("db", "downgrade", "base", "--yes", "--db", str(db))).strip().endswith("schema at revision base")
    assert "base (empty)" in ok(invoke("db", "current", "--db", str(db)))
    with closing(sqlite3.connect(db)) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not tables & {"cases", "kbq_meta"}
    line = one_error(invoke("--db", str(db), GEMMA_QUERY))
    assert "no kbq schema" in line and "kbq db upgrade" in line

    assert f"schema at revision {HEAD}" in ok(invoke("db", "upgrade", "--db", str(db)))
    assert "0 case(s)" in ok(invoke("list", "--db", str(db)))
    assert f"{N} added" in ok(invoke("ingest", str(cases_dir), "--db", str(db)))
    assert as_json(invoke("--json", GEMMA_QUERY, "--db", str(db)))["results"][0]["id"] == GEMMA_CASE


def test_db_commands_on_each_backend(db_url: str, kbq_home: Path) -> None:
    assert "base (empty)" in ok(invoke("db", "current", "--db", db_url))
    assert f"schema at revision {HEAD}" in ok(invoke("db", "upgrade", "--db", db_url))
    assert f"schema at revision {HEAD}" in ok(invoke("db", "current", "--db", db_url))
    assert "schema at revision base" in ok(invoke("db", "downgrade", "base", "--yes", "--db", db_url))
    assert "base (empty)" in ok(invoke("db", "current", "--db", db_url))


def test_markup_like_case_text_is_shown_verbatim(tmp_path: Path) -> None:
    """Case text is data: '[/INST]' or '[bold]' in a title must print as written, not as rich markup."""
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    data = _base_case()
    data.update(id="zz-markup", title="Llama-2 chat [INST] prompt [/INST] tags and [bold]x[/] in a title")
    dump_yaml(data, cases_dir / "zz-markup.yaml")
    db = str(tmp_path / "m.db")
    ok(invoke("ingest", str(cases_dir), "--db", db))
    for args in (("list",), ("show", "zz-markup"), ("--json", "[/INST] tags"), ("[/INST] tags in a title",)):
        assert "[/INST]" in ok(invoke(*args, "--db", db))


# -- where the query comes from: words, stdin, --file (real processes) -------------


def kbq_process(home: Path, *args: str, stdin: bytes | None = None, cwd: Path | None = None):
    """The real ``kbq`` (``python -m cli.main``) with ``stdin`` on a pipe, or /dev/null when None."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("KBQ_DB", "KBQ_DEBUG", "KBQ_LOCK_TIMEOUT")}
    env.update({"KBQ_HOME": str(home), "COLUMNS": "120"})
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"))


def query_json(proc) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


ISSUE_REPORT = """\
### Reminder

- [X] I have read the README and searched the existing issues.

### System Info

- GPU number: 2

### Reproduction

Gemma3 fine-tuning with DeepSpeed zero3: loss 70 at the start, stuck around 10.

### Others

_No response_
"""


def test_unquoted_words_are_one_query(shared_home: Path) -> None:
    words = query_json(kbq_process(shared_home, "--json", "-k", "3", "gemma3", "loss", "70", "zero3"))
    quoted = query_json(kbq_process(shared_home, "--json", "-k", "3", GEMMA_QUERY))
    assert words["query"] == GEMMA_QUERY
    assert words["results"][0]["id"] == GEMMA_CASE
    assert words == quoted
    explicit = query_json(kbq_process(shared_home, "query", "gemma3", "loss", "70", "zero3", "--json", "-k", "3"))
    assert explicit == quoted


def test_dash_reads_the_query_from_stdin(shared_home: Path) -> None:
    data = query_json(kbq_process(shared_home, "-", "--json", "-k", "3", stdin=f"{GEMMA_QUERY}\n".encode()))
    assert data["query"] == GEMMA_QUERY
    assert data["results"][0]["id"] == GEMMA_CASE


def test_a_pipe_with_no_query_is_the_query(shared_home: Path) -> None:
    bare = kbq_process(shared_home, stdin=GEMMA_QUERY.encode())
    assert bare.returncode == 0, bare.stderr
    assert f"1. {GEMMA_CASE}" in bare.stdout
    data = query_json(kbq_process(shared_home, "--json", stdin=ISSUE_REPORT.encode()))
    assert data["query"] == ISSUE_REPORT.strip()
    assert data["results"][0]["id"] == GEMMA_CASE
    features = data["parsed"]["features"]
    assert features["model"] == ["gemma-3"] and features["zero_stage"] == [3] and features["gpu_count"] == [2]
    for boilerplate in ("reminder", "readme", "reproduction", "response", "others"):
        assert boilerplate not in data["parsed"]["unknown_terms"]


def test_no_query_and_no_pipe(shared_home: Path) -> None:
    bare = kbq_process(shared_home)  # stdin is /dev/null: help, as before
    assert "Usage" in bare.stdout + bare.stderr and "Traceback" not in bare.stderr
    line = one_error(kbq_process(shared_home, "query", "--json"), code=2)
    assert "no query" in line and "--file" in line


def test_file_option_reads_the_query(shared_home: Path, tmp_path: Path) -> None:
    report = tmp_path / "issue.md"
    report.write_text(ISSUE_REPORT, encoding="utf-8")
    data = query_json(kbq_process(shared_home, "--file", str(report), "--json", "-k", "3"))
    assert data["query"] == ISSUE_REPORT.strip()
    assert data["results"][0]["id"] == GEMMA_CASE
    with_bom = tmp_path / "bom.md"
    with_bom.write_bytes(b"\xef\xbb\xbf" + GEMMA_QUERY.encode())
    assert query_json(kbq_process(shared_home, "--json", "--file", str(with_bom)))["query"] == GEMMA_QUERY


def test_file_errors_name_the_file(shared_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-report.md"
    line = one_error(kbq_process(shared_home, "--file", str(missing)), code=2)
    assert str(missing) in line and "does not exist" in line
    latin1 = tmp_path / "latin1.md"
    latin1.write_bytes("loss bleibt hoch, Größe 7b".encode("latin-1"))
    line = one_error(kbq_process(shared_home, "--file", str(latin1)), code=2)
    assert str(latin1) in line and "UTF-8" in line and "0xf6" in line
    line = one_error(kbq_process(shared_home, "--file", str(tmp_path)), code=2)
    assert str(tmp_path) in line and "directory" in line
    line = one_error(kbq_process(shared_home, "--file", str(latin1), "loss", "70"), code=2)
    assert "not both" in line


def test_report_starting_with_dashes(shared_home: Path, tmp_path: Path) -> None:
    report = "--- loss 70 with gemma3 and zero3 ---"
    after_separator = query_json(kbq_process(shared_home, "--json", "-k", "3", "--", report))
    assert after_separator["query"] == report
    assert after_separator["results"][0]["id"] == GEMMA_CASE
    assert query_json(kbq_process(shared_home, "--json", "-k", "3", stdin=report.encode())) == after_separator
    (tmp_path / "dashes.txt").write_text(report, encoding="utf-8")
    assert query_json(kbq_process(shared_home, "--json", "-k", "3", "--file", str(tmp_path / "dashes.txt"))) == after_separator


def test_stdin_and_file_obey_the_query_limits(shared_home: Path, tmp_path: Path) -> None:
    assert "empty query" in one_error(kbq_process(shared_home, "-", stdin=b" \n\t\n"), code=2)
    assert "empty query" in one_error(kbq_process(shared_home, stdin=b""), code=2)
    long_line = one_error(kbq_process(shared_home, "--json", stdin=b"loss " * 4000), code=2)
    assert "too long" in long_line and "16384" in long_line
    huge = tmp_path / "training.log"
    huge.write_bytes(b"step 1 loss 2.0\n" * 100000)
    line = one_error(kbq_process(shared_home, "--file", str(huge)), code=2)
    assert "too long" in line and "16384" in line and str(huge) in line
    assert "UTF-8" in one_error(kbq_process(shared_home, "-", stdin=b"\xff loss"), code=2)


def test_subcommands_ignore_a_pipe(shared_home: Path) -> None:
    shown = kbq_process(shared_home, "show", GEMMA_CASE, "--json", stdin=b"this is not read")
    assert json.loads(shown.stdout)["id"] == GEMMA_CASE
    listed = kbq_process(shared_home, "list", "--json", stdin=b"this is not read")
    assert len(json.loads(listed.stdout)) == N


# -- where the database is ------------------------------------------------------------


def test_ingest_into_a_missing_directory_creates_nothing(tmp_path: Path, cases_dir: Path, kbq_home: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "kb.db"
    line = one_error(invoke("ingest", str(cases_dir), "--db", str(target)))
    assert "directory" in line and "does not exist" in line and str(target.parent) in line
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", [["stats"], ["loss nan"], ["ingest"]])
def test_empty_db_option_is_an_error_not_the_default(command: list[str], kbq_home: Path) -> None:
    line = one_error(invoke(*command, "--db", "", home=kbq_home))
    assert "empty database path" in line
    assert not (kbq_home / "kbq.db").exists()


def test_tests_never_write_to_the_real_user_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test runs with a private KBQ_HOME (conftest), even one that opens a database by
    path: its index directories land beside that home, not in ~/.local/share/kbq."""
    from kb.paths import user_data_dir
    from kb.service import KnowledgeBase

    base = tmp_path_factory.getbasetemp().resolve()
    assert base in user_data_dir().resolve().parents
    assert base in KnowledgeBase(db=str(tmp_path_factory.mktemp("elsewhere") / "x.db")).index_parent.resolve().parents


def test_ingest_of_a_folder_without_case_files_is_an_error(tmp_path: Path, kbq_home: Path) -> None:
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "README.md").write_text("not a case", encoding="utf-8")
    db = tmp_path / "kb.db"
    line = one_error(invoke("ingest", str(empty), "--db", str(db)))
    assert str(empty) in line and "no case files" in line
    assert not db.exists()


# -- export: one line for every failure, and nothing written outside the folder -----------


def test_export_to_a_file_or_an_unwritable_place_is_one_line(ingested: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me", encoding="utf-8")
    for target in (a_file, a_file / "sub"):
        line = one_error(invoke("export", str(target), "--db", str(ingested)), code=1)
        assert str(target) in line or str(a_file) in line, line
    assert a_file.read_text(encoding="utf-8") == "keep me"
    if sys.platform.startswith("linux"):  # a place even root cannot create a folder in
        line = one_error(invoke("export", "/sys/kbq-export-test", "--db", str(ingested)), code=1)
        assert "/sys/kbq-export-test" in line and "cannot create the folder" in line


def test_export_overwrite_replaces_a_link_instead_of_writing_through_it(ingested: Path, tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside.yaml"
    out.mkdir()
    outside.write_text("not kbq's to change", encoding="utf-8")
    link = out / f"{GEMMA_CASE}.yaml"
    link.symlink_to(outside)
    assert "would be overwritten" in one_error(invoke("export", str(out), "--db", str(ingested)))
    dangling = out / f"{BUNDLED_IDS[1]}.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    link.unlink()
    assert "would be overwritten" in one_error(invoke("export", str(out), "--db", str(ingested)))
    assert not (tmp_path / "nowhere.yaml").exists()
    link.symlink_to(outside)

    assert f"wrote {N} case file(s)" in ok(invoke("export", str(out), "--overwrite", "--db", str(ingested)))
    assert outside.read_text(encoding="utf-8") == "not kbq's to change"
    assert not (tmp_path / "nowhere.yaml").exists()
    assert not link.is_symlink() and not dangling.is_symlink()
    assert yaml.safe_load(link.read_text(encoding="utf-8"))["id"] == GEMMA_CASE
    assert not list(out.glob(".*.tmp"))
