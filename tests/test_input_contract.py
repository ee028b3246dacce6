"""The input contract of issue 8: one set of limits and one set of refused characters for
every door (case files, importers, the API; the API's own tests are in test_api.py), one
line naming the file and field when something is refused, and a terminal that never
receives control sequences from stored data or quoted input."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import case_data
from kb import limits
from kb.casefiles import validate_document
from kb.db.store import CaseStore
from kb.errors import CaseFileError
from kb.lexicon import _ASCII_WORD, _JOINER, Lexicon, Match, normalize
from kb.models import Case
from kb.paths import bundled_cases_dir
from test_cli import invoke, ok, one_error

GEMMA_CASE = "llamafactory-7416"


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(CaseFileError) as caught:
        validate_document(data, "case.yaml")
    message = str(caught.value)
    assert message.startswith("case.yaml: field '") and "\n" not in message, message
    return message


def _changed(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = case_data("contract-case", hardware={"accelerator": "A100"}, config={"learning_rate": 1e-5},
                     observations=[{"metric": "loss", "value": 2.5, "step": 10}],
                     user_phrasing={"en": "loss spikes", "zh": "loss 突然变大", "queries": ["loss spikes"]})
    change(data)
    return data


# -- sizes ----------------------------------------------------------------------------

LONG = {"name": "n" * (limits.NAME_CHARS + 1), "line": "l" * (limits.LINE_CHARS + 1), "text": "t" * (limits.TEXT_CHARS + 1)}
OVERSIZED: dict[str, tuple[Callable[[dict[str, Any]], Any], str, str]] = {
    # id: (change, the field the one line names, the limit it states)
    "title": (lambda d: d.update(title=LONG["line"]), "title", f"{limits.LINE_CHARS:,}"),
    "symptom": (lambda d: d.update(symptom=LONG["text"]), "symptom", f"{limits.TEXT_CHARS:,}"),
    "second-cause": (lambda d: d["causes"].append(LONG["text"]), "causes[1]", f"{limits.TEXT_CHARS:,}"),
    "fix-action": (lambda d: d["fixes"][0].update(action=LONG["text"]), "fixes[0].action", f"{limits.TEXT_CHARS:,}"),
    "fix-key": (lambda d: d["fixes"][0].update(key=LONG["name"]), "fixes[0].key", f"{limits.NAME_CHARS:,}"),
    "hardware-notes": (lambda d: d["hardware"].update(notes=LONG["text"]), "hardware.notes", f"{limits.TEXT_CHARS:,}"),
    "phrasing-query": (lambda d: d["user_phrasing"]["queries"].append(LONG["line"]), "user_phrasing.queries[1]",
                       f"{limits.LINE_CHARS:,}"),
    "model-name": (lambda d: d["model"].update(name=LONG["name"]), "model.name", f"{limits.NAME_CHARS:,}"),
    "library-version": (lambda d: d["framework"].update(libraries={"peft": LONG["name"]}), "framework.libraries.peft",
                        f"{limits.NAME_CHARS:,}"),
    "config-text": (lambda d: d["config"].update(note=LONG["line"]), "config.note", f"{limits.LINE_CHARS:,}"),
    "source": (lambda d: d["sources"].append("https://example.org/" + LONG["line"]), "sources[1]", f"{limits.LINE_CHARS:,}"),
    "tags": (lambda d: d.update(tags=[f"tag-{i}" for i in range(limits.ITEMS + 1)]), "tags", f"{limits.ITEMS}"),
    "config-entries": (lambda d: d.update(config={f"k{i}": i for i in range(limits.ITEMS + 1)}), "config", f"{limits.ITEMS}"),
    "observations": (lambda d: d.update(observations=[{"metric": "loss", "value": 1.0}] * (limits.ITEMS + 1)),
                     "observations", f"{limits.ITEMS}"),
    "gpu-count": (lambda d: d["hardware"].update(count=limits.COUNT_MAX + 1), "hardware.count", f"{limits.COUNT_MAX}"),
    "nodes": (lambda d: d["hardware"].update(nodes=limits.NODES_MAX + 1), "hardware.nodes", f"{limits.NODES_MAX}"),
    "step": (lambda d: d["observations"][0].update(step=limits.STEP_MAX + 1), "observations[0].step", f"{limits.STEP_MAX}"),
    "config-integer": (lambda d: d["config"].update(max_steps=limits.CONFIG_INT_MAX + 1), "config.max_steps",
                       f"{limits.CONFIG_INT_MAX:,}"),
    # each cause within its own limit, the case over its whole-case limit
    "whole-case": (lambda d: d.update(causes=[f"{i} " + "c" * (limits.TEXT_CHARS - 10) for i in range(14)]),
                   "(top level)", f"{limits.CASE_TEXT_BYTES:,}"),
}


@pytest.mark.parametrize("kind", sorted(OVERSIZED))
def test_every_field_has_a_size_limit_named_in_one_line(kind: str) -> None:
    change, field, limit = OVERSIZED[kind]
    message = _refusal(_changed(change))
    assert f"field '{field}'" in message and limit in message, message


def test_bundled_cases_are_far_inside_the_limits() -> None:
    """The limits stop abuse, not cases: the largest bundled case holds under a tenth of any of them."""
    for path in bundled_cases_dir().glob("*.yaml"):
        assert path.stat().st_size * 10 < limits.CASE_FILE_BYTES, path
        text = json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")), ensure_ascii=False)
        assert len(text.encode()) * 10 < limits.CASE_TEXT_BYTES, path


# -- control characters and numbers ----------------------------------------------------

PLACES: dict[str, tuple[Callable[[dict[str, Any], str], Any], str]] = {
    "title": (lambda d, bad: d.update(title=f"loss {bad} spikes"), "title"),
    "fix-action": (lambda d, bad: d["fixes"][0].update(action=f"lower{bad} the lr"), "fixes[0].action"),
    "second-cause": (lambda d, bad: d["causes"].append(f"a second {bad} cause"), "causes[1]"),
    "config-value": (lambda d, bad: d["config"].update(deepspeed=f"zero{bad}3"), "config.deepspeed"),
    "phrasing-zh": (lambda d, bad: d["user_phrasing"].update(zh=f"损失{bad}变大"), "user_phrasing.zh"),
    "phrasing-query": (lambda d, bad: d["user_phrasing"]["queries"].append(f"nan{bad}"), "user_phrasing.queries[1]"),
    "library-version": (lambda d, bad: d["framework"].update(libraries={"peft": f"0.12{bad}"}), "framework.libraries.peft"),
    "model-also": (lambda d, bad: d["model"].update(also=[f"qwen{bad}"]), "model.also[0]"),
    "observation-note": (lambda d, bad: d["observations"][0].update(note=f"at {bad} warm-up"), "observations[0].note"),
    "source": (lambda d, bad: d["sources"].append(f"https://example.org/{bad}"), "sources[1]"),
}


@pytest.mark.parametrize("bad", ["\x00", "\x1b[2J", "\x7f", "\x08"], ids=["nul", "esc", "del", "backspace"])
@pytest.mark.parametrize("place", sorted(PLACES))
def test_control_characters_are_refused_in_every_field(place: str, bad: str) -> None:
    change, field = PLACES[place]
    message = _refusal(_changed(lambda d: change(d, bad)))
    assert f"field '{field}'" in message and f"control character (0x{ord(bad[0]):02x}" in message, message


def test_tabs_and_line_breaks_stay_allowed() -> None:
    case = validate_document(_changed(lambda d: d.update(symptom="step\t100:\r\nloss nan")), "case.yaml")
    assert case.symptom == "step\t100:\r\nloss nan"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where,field", [
    (lambda d, v: d["observations"][0].update(value=v), "observations[0].value"),
    (lambda d, v: d["config"].update(learning_rate=v), "config.learning_rate"),
], ids=["observation", "config"])
def test_non_finite_numbers_are_refused(where, field: str, value: float) -> None:
    """SQLite stores a NaN that PostgreSQL refuses: the model refuses it for both."""
    message = _refusal(_changed(lambda d: where(d, value)))
    assert f"field '{field}'" in message and "finite" in message, message


# -- case files at `kbq ingest` ---------------------------------------------------------

def _case_yaml(case_id: str, **overrides: Any) -> str:
    return yaml.safe_dump(case_data(case_id, **overrides), allow_unicode=True, sort_keys=False)


@pytest.mark.parametrize("escape,field", [
    (r'"lower the lr\0"', "fixes[0].action"),
    (r'"lower the \e[2J lr"', "fixes[0].action"),
], ids=["nul-escape", "esc-escape"])
def test_ingest_refuses_a_yaml_escape_of_a_control_character(tmp_path: Path, kbq_home: Path, escape: str, field: str) -> None:
    path = tmp_path / "zz-escape.yaml"
    text = _case_yaml("zz-escape").replace("action: lower the learning rate to 1e-5", f"action: {escape}")
    assert escape in text
    path.write_text(text, encoding="utf-8")
    line = one_error(invoke("ingest", str(path), "--db", str(tmp_path / "kb.db")))
    assert "zz-escape.yaml" in line and f"field '{field}'" in line and "control character" in line, line


def test_ingest_refuses_a_nan_observation(tmp_path: Path, kbq_home: Path) -> None:
    path = tmp_path / "zz-nan.yaml"
    path.write_text(_case_yaml("zz-nan") + "observations:\n- {metric: loss, value: .nan}\n", encoding="utf-8")
    line = one_error(invoke("ingest", str(path), "--db", str(tmp_path / "kb.db")))
    assert "zz-nan.yaml" in line and "field 'observations[0].value'" in line and "finite" in line, line


def test_ingest_refuses_an_oversized_file_before_parsing_it(tmp_path: Path, kbq_home: Path) -> None:
    """A valid case padded with a comment past the file limit: refused by its size alone."""
    path = tmp_path / "zz-large.yaml"
    path.write_text(_case_yaml("zz-large") + "# " + "x" * limits.CASE_FILE_BYTES + "\n", encoding="utf-8")
    line = one_error(invoke("ingest", str(path), "--db", str(tmp_path / "kb.db")))
    assert "zz-large.yaml" in line and f"{limits.CASE_FILE_BYTES:,} bytes" in line, line


def test_ingest_refuses_yaml_aliases_naming_the_line(tmp_path: Path, kbq_home: Path) -> None:
    path = tmp_path / "zz-alias.yaml"
    text = _case_yaml("zz-alias").replace("symptom: loss", "symptom: &told loss")
    path.write_text(text + "user_phrasing: {en: *told, zh: loss 变成 nan}\n", encoding="utf-8")
    alias_line = len(text.splitlines()) + 1
    line = one_error(invoke("ingest", str(path), "--db", str(tmp_path / "kb.db")))
    assert f"zz-alias.yaml:{alias_line}:" in line and "alias" in line, line


def test_ingest_refuses_an_alias_bomb(tmp_path: Path, kbq_home: Path) -> None:
    """A 1 KB anchor repeated through aliases: a small file that would store a case hundreds of
    times its size. (The issue's 10 KB x 20,000 bomb is the same file, larger.)"""
    path = tmp_path / "zz-bomb.yaml"
    uses = "".join("  - *blob\n" for _ in range(300))
    phrasing = f"user_phrasing:\n  en: e\n  zh: z\n  queries:\n  - &blob {'b' * 1000}\n{uses}"
    path.write_text(_case_yaml("zz-bomb") + phrasing, encoding="utf-8")
    line = one_error(invoke("ingest", str(path), "--db", str(tmp_path / "kb.db")))
    assert "zz-bomb.yaml:" in line and "alias" in line, line


# -- importers ------------------------------------------------------------------------

def _issue(body: str) -> dict[str, Any]:
    return {"title": "Qwen2 LoRA loss becomes nan with bf16", "url": "https://github.com/hiyouga/LLaMA-Factory/issues/99999",
            "body": body, "comments": [], "labels": []}


@pytest.mark.parametrize("importer,name", [("github", "issue.json"), ("article", "article.md")])
def test_importers_name_the_byte_that_is_not_utf8(tmp_path: Path, importer: str, name: str) -> None:
    path = tmp_path / name
    good = json.dumps(_issue("loss nan")).encode() if importer == "github" else b"# Symptom\n\nloss nan\n"
    path.write_bytes(good[:-2] + b"\xff" + good[-2:])
    line = one_error(invoke("import", importer, str(path)))
    offset = len(good) - 2
    row = good[:offset].count(b"\n") + 1
    assert f"{path}:{row}: not valid UTF-8 (byte 0xff at offset {offset})" in line, line


@pytest.mark.parametrize("importer,name", [("github", "issue.json"), ("article", "article.md")])
def test_importers_refuse_an_oversized_source(tmp_path: Path, importer: str, name: str) -> None:
    path = tmp_path / name
    report = "loss spikes to nan at step 10. " * (limits.SOURCE_FILE_BYTES // 30)
    text = json.dumps(_issue(report)) if importer == "github" else f"# Symptom\n\n{report}\n"
    path.write_text(text, encoding="utf-8")
    line = one_error(invoke("import", importer, str(path)))
    assert str(path) in line and f"{limits.SOURCE_FILE_BYTES:,} bytes" in line, line


def test_github_draft_drops_terminal_colours_and_control_characters(tmp_path: Path) -> None:
    """A pasted terminal log keeps its words, not its colour codes; the draft then ingests."""
    path = tmp_path / "issue.json"
    body = "Training crashes:\n\x1b[31mRuntimeError\x1b[0m: loss is nan\x07 at step 10 with bf16\x00\x9b"
    path.write_text(json.dumps(_issue(body)), encoding="utf-8")
    drafts = tmp_path / "drafts"
    ok(invoke("import", "github", str(path), "--out", str(drafts)))
    (draft,) = drafts.glob("*.yaml")
    data = yaml.safe_load(draft.read_text(encoding="utf-8"))
    assert "RuntimeError: loss is nan at step 10" in data["symptom"], data["symptom"]
    assert not any(ch in json.dumps(data, ensure_ascii=False) for ch in "\x1b\x07\x00\x9b"), data
    validate_document(data, str(draft))


# -- what the terminal receives ---------------------------------------------------------

HOSTILE = {"title": "\x1b]0;owned\x07\x1b[2J gemma3 loss 70 zero3", "fix": "\x9b2Jrun \x1b[8mhidden\x1b[0m this"}
RAW_CONTROLS = ("\x1b", "\x07", "\x9b")


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled cases plus a row stored before the model refused control characters."""
    home = tmp_path_factory.mktemp("hostile-home")
    db = home / "kb.db"
    ok(invoke("ingest", "--db", str(db), home=home))
    case = Case.model_validate({**yaml.safe_load((bundled_cases_dir() / f"{GEMMA_CASE}.yaml").read_text(encoding="utf-8")),
                                "id": "zz-hostile"})
    case.title = HOSTILE["title"]  # assignment is not validated: this is how an old row looks
    case.fixes[0].action = HOSTILE["fix"]
    with CaseStore(f"sqlite:///{db}") as store:
        store.upsert([case])
    return db


def _shown_safely(output: str) -> None:
    assert not any(ch in output for ch in RAW_CONTROLS), repr(output)
    assert r"\x1b" in output, output


@pytest.mark.parametrize("command", [("show", "zz-hostile"), ("list",), ("query", "gemma3 loss 70 zero3", "-k", "10")],
                         ids=["show", "list", "query"])
def test_stored_control_sequences_never_reach_the_terminal(run_kbq, hostile_db: Path, command: tuple[str, ...]) -> None:
    """The real command in a process, wide enough that the list shows whole titles."""
    result = run_kbq(*command, "--db", str(hostile_db), env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    output = result.stdout
    _shown_safely(output)
    assert "owned" in output


def test_json_output_escapes_c1_controls_and_keeps_the_value(hostile_db: Path) -> None:
    output = ok(invoke("show", "zz-hostile", "--json", "--db", str(hostile_db)))
    assert not any(ch in output for ch in RAW_CONTROLS), repr(output)
    assert json.loads(output)["fixes"][0]["action"] == HOSTILE["fix"]


def test_error_lines_show_quoted_input_escaped(hostile_db: Path) -> None:
    line = one_error(invoke("show", "zz\x1b[2J\x9bnope", "--db", str(hostile_db)))
    _shown_safely(line)


# -- Lexicon.find against a plain reference ---------------------------------------------

def _reference_find(lexicon: Lexicon, norm: str) -> list[Match]:
    """What :meth:`Lexicon.find` computes, written the obvious way: every alias occurrence,
    then the longest first, each kept unless it overlaps one already kept (checked pairwise)."""
    words = list(_ASCII_WORD.finditer(norm))
    candidates = []
    for i in range(len(words)):
        for j in range(i, min(len(words), i + lexicon._max_words)):
            if j > i and not _JOINER.fullmatch(norm, words[j - 1].end(), words[j].start()):
                break
            end = words[j].end()
            targets = lexicon._ascii.get(" ".join(w.group() for w in words[i : j + 1]))
            in_decimal = end + 1 < len(norm) and norm[end] == "." and norm[end - 1].isdigit() and norm[end + 1].isdigit()
            if targets and not in_decimal:
                candidates.append((words[i].start(), end, targets))
    for key, targets in lexicon._cjk.items():
        start = norm.find(key)
        while start >= 0:
            candidates.append((start, start + len(key), targets))
            start = norm.find(key, start + 1)
    candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
    kept: list[tuple[int, int, list[list[str]]]] = []
    for start, end, targets in candidates:
        if all(end <= s or start >= e for s, e, _ in kept):
            kept.append((start, end, targets))
    matches = [Match(group, concept, start, end) for start, end, targets in kept for group, concept in targets]
    return sorted(matches, key=lambda m: (m.start, m.group))


def test_lexicon_find_equals_the_reference_on_random_text() -> None:
    lexicon = Lexicon.from_file()
    rng = random.Random(8)
    ascii_keys, cjk_keys = sorted(lexicon._ascii), sorted(lexicon._cjk)
    fillers = ["loss", "0.95", "1e-5", "the", "x", "8", "step", "nan", "损失", "训练", "。", "3", "b"]
    joiners = [" ", "-", "_", ".", "/", ": ", "  ", "\n", "", ",", " = "]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 120)):
            pick = rng.random()
            word = rng.choice(ascii_keys) if pick < 0.45 else rng.choice(cjk_keys) if pick < 0.65 else rng.choice(fillers)
            parts.append(rng.choice(joiners).join(word.split(" ")) if " " in word else word)
            parts.append(rng.choice(joiners))
        norm = normalize("".join(parts))
        assert lexicon.find(norm) == _reference_find(lexicon, norm), norm


def test_export_writes_a_row_the_model_now_refuses_as_stored_and_names_it(hostile_db: Path, tmp_path: Path) -> None:
    """An export is the way out of a database: a stored row that today's checks refuse (control
    characters) does not stop it. Its file keeps every field (escaped in YAML, never raw), the
    run names it, and `kbq ingest` of the folder then names the field to fix."""
    out = tmp_path / "out"
    result = invoke("export", str(out), "--db", str(hostile_db))
    assert result.exit_code == 0, result.output
    assert "zz-hostile" in result.stderr and "written as stored" in result.stderr
    assert not any(ch in result.stderr for ch in RAW_CONTROLS)
    text = (out / "zz-hostile.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text)["title"] == HOSTILE["title"]  # every field kept...
    assert not any(ch in text for ch in RAW_CONTROLS)  # ...and escaped in the YAML, not raw
    line = one_error(invoke("ingest", str(out), "--db", str(tmp_path / "again.db")))
    assert "zz-hostile" in line and "title" in line and "control character (0x1b" in line, line