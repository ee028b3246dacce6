"""Article and GitHub importers: real seed articles, hand-built `gh issue view` JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from kb.importers import drafts_from_articles, drafts_from_github
from kb.review import findings

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
FURNITURE = ("登录后查看全文", "热门项目推荐", "项目优选", "AutoGLM", "Kimi-K2", "ERNIE-4.5", "HunyuanOCR", "GLM-TTS", "deepin linux kernel")

needs_seeds = pytest.mark.skipif(not SEEDS.exists(), reason=f"{SEEDS} not present")


@pytest.fixture(scope="module")
def seed_drafts() -> dict:
    return {case.sources[0]: case for case in drafts_from_articles(sorted(SEEDS.glob("*.txt")))}


def losses(case) -> list[float]:
    return [o.value for o in case.observations if o.metric == "loss"]


@needs_seeds
@pytest.mark.parametrize(
    "seed,model,framework",
    [
        ("000_cf8b3ba9eb5a9e54.txt", "qwen2", "mgm"),
        ("001_f7b107db66be2f00.txt", "moe-llava", "moe-llava"),
        ("002_1df62d3820df2b03.txt", "gemma-3", "llama-factory"),
        ("003_98a592a1533266dd.txt", "qwen2", "medicalgpt"),
        ("004_b68cff1ea9da2e3a.txt", "chinese-llama-2", "chinese-llama-alpaca-2"),
    ],
)
def test_seed_drafts_have_model_and_framework(seed_drafts, seed, model, framework):
    case = seed_drafts[seed]
    assert case.status == "draft" and case.language == "zh"
    assert case.model.version == model
    assert case.framework.name == framework


@needs_seeds
def test_seed_drafts_carry_the_key_numbers(seed_drafts):
    gemma = seed_drafts["002_1df62d3820df2b03.txt"]
    assert {70.0, 10.0} <= set(losses(gemma)) and gemma.config["zero_stage"] == 3
    medical = seed_drafts["003_98a592a1533266dd.txt"]
    assert 2.8 in losses(medical) and medical.model.size == "1.1b" and medical.hardware.count == 8
    moe = seed_drafts["001_f7b107db66be2f00.txt"]
    assert {1.4, 1.1} <= set(losses(moe)) and moe.config["per_device_batch_size"] == 32
    mgm = seed_drafts["000_cf8b3ba9eb5a9e54.txt"]
    assert 1.8 in losses(mgm) and mgm.model.size == "4b"
    alpaca = seed_drafts["004_b68cff1ea9da2e3a.txt"]
    assert alpaca.config["learning_rate"] == 2e-5 and alpaca.config["block_size"] == 64 and alpaca.config["finetuning"] == "lora"


@needs_seeds
def test_seed_drafts_have_causes_fixes_and_no_furniture(seed_drafts):
    for seed, case in seed_drafts.items():
        text = yaml.safe_dump(case.model_dump(mode="json"), allow_unicode=True)
        leaked = [marker for marker in FURNITURE if marker in text]
        assert not leaked, f"{seed}: furniture leaked: {leaked}"
        assert case.fixes, seed
    verified = [f for f in seed_drafts["002_1df62d3820df2b03.txt"].fixes if f.confirmed]
    assert verified and "升级" in verified[0].action  # the article's "解决方案验证" section


def test_english_markdown_article(tmp_path):
    article = tmp_path / "qlora-nan.md"
    article.write_text(
        "# QLoRA fine-tuning of Llama-2-7B: loss becomes nan after 200 steps\n\n"
        "2024-05-01 author: someone\n\n"
        "## Symptom\n\nTraining Llama 2 7B with QLoRA in fp16 on 1x A100, learning rate 2e-4, the loss went from 1.9 to nan.\n\n"
        "## Root cause\n\n- fp16 overflow in the attention scores.\n\n"
        "## Fix\n\n- Switch to bf16.\n- Lower the learning rate to 1e-4.\n\n"
        "Recommended projects\n- Some other repo\n",
        encoding="utf-8",
    )
    (case,) = drafts_from_articles([article])
    assert case.id == "qlora-nan" and case.language == "en"
    assert case.model.version == "llama-2" and case.model.size == "7b"
    assert case.config["finetuning"] == "qlora" and case.config["precision"] == "fp16"
    assert 1.9 in losses(case)
    assert case.causes == ["fp16 overflow in the attention scores."]
    assert [f.action for f in case.fixes] == ["Switch to bf16.", "Lower the learning rate to 1e-4."]
    assert "Some other repo" not in case.model_dump_json()


THREAD = {
    "title": "Qwen2.5-7B full SFT with DeepSpeed ZeRO-3: loss is 0 and grad_norm nan from step 1",
    "url": "https://github.com/example-org/example-trainer/issues/4321",
    "createdAt": "2025-01-02T03:04:05Z",
    "labels": [{"name": "bug"}, {"name": "pending"}],
    "body": (
        "When I fine-tune Qwen2.5-7B with full parameters under zero3 and fp16 the loss is 0 "
        "and grad_norm is nan from the first step.\n\n"
        "```\n{'loss': 0.0, 'grad_norm': nan, 'learning_rate': 1e-05, 'epoch': 0.01}\n```\n\n"
        "### System Info\n\n"
        "- `transformers` version: 4.46.1\n- Platform: Linux-5.15\n- Python version: 3.10.14\n"
        "- PyTorch version (GPU?): 2.4.0+cu121 (True)\n- DeepSpeed version: 0.15.1\n"
        "- GPU type: NVIDIA A100-SXM4-80GB\n- Number of GPUs: 8\n\n"
        "### Reproduction\n\nrun the sft example\n"
    ),
    "comments": [
        {"author": {"login": "another-user"}, "authorAssociation": "NONE", "body": "Same here, +1"},
        {
            "author": {"login": "maintainer"},
            "authorAssociation": "MEMBER",
            "body": "This happens because fp16 overflows with Qwen2.5 activations. Please use bf16 instead of fp16.",
        },
        {"author": {"login": "reporter"}, "authorAssociation": "NONE", "body": "Switched to bf16 and it works now, thanks!"},
        {"author": {"login": "bystander"}, "authorAssociation": "NONE", "body": "Does this affect Llama too?"},
    ],
}


def test_github_thread_becomes_a_draft(tmp_path):
    path = tmp_path / "issue.json"
    path.write_text(json.dumps(THREAD), encoding="utf-8")
    (case,) = drafts_from_github([path])
    assert case.id == "example-trainer-4321" and case.status == "draft"
    assert case.sources == [THREAD["url"]]
    assert case.model.version == "qwen2.5" and case.model.size == "7b"
    assert case.framework.libraries == {"transformers": "4.46.1", "pytorch": "2.4.0+cu121", "deepspeed": "0.15.1"}
    assert case.hardware.accelerator == "a100" and case.hardware.count == 8
    assert case.config["zero_stage"] == 3 and case.config["precision"] == "fp16" and case.config["finetuning"] == "full"
    assert "System Info" not in case.symptom and "grad_norm': nan" not in case.symptom
    assert [f.confirmed for f in case.fixes] == [True]  # the maintainer's advice, confirmed by a later comment
    assert "bf16" in case.fixes[0].action
    assert any("because fp16 overflows" in cause for cause in case.causes)
    assert {"bug", "pending", "imported"} <= set(case.tags)


def test_github_list_of_threads_and_cli_out_dir(tmp_path):
    second = dict(THREAD, url="https://github.com/example-org/example-trainer/issues/99", title="another", comments=[])
    path = tmp_path / "issues.json"
    path.write_text(json.dumps([THREAD, second]), encoding="utf-8")
    out = tmp_path / "drafts"
    result = CliRunner().invoke(app, ["import", "github", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["example-trainer-4321.yaml", "example-trainer-99.yaml"]
    again = CliRunner().invoke(app, ["import", "github", str(path), "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


@pytest.mark.parametrize(
    "content,message",
    [("{not json", "not valid JSON"), ('{"body": "no title"}', "field 'title'"), ("[1, 2]", "expected an issue object"),
     ('{"title": "t", "url": "https://github.com/a/b/issues/1", "comments": "x"}', "field 'comments'")],
)
def test_github_bad_input_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["import", "github", str(path)])
    assert result.exit_code == 1
    assert message in result.output and result.output.startswith("kbq: error:") and result.output.count("\n") == 1


def test_drafts_stay_out_until_reviewed(tmp_path):
    path = tmp_path / "issue.json"
    path.write_text(json.dumps(THREAD), encoding="utf-8")
    out = tmp_path / "drafts"
    runner = CliRunner()
    assert runner.invoke(app, ["import", "github", str(path), "--out", str(out)]).exit_code == 0
    review = runner.invoke(app, ["review", str(out), "--json", "--db", str(tmp_path / "x.db")], env={"KBQ_HOME": str(tmp_path / "home")})
    assert review.exit_code == 1  # --db names a database that does not exist yet
    db = str(tmp_path / "x.db")
    skipped = runner.invoke(app, ["ingest", str(out), "--db", db])
    assert skipped.exit_code == 0 and "0 added" in skipped.output and "1 draft(s) skipped" in skipped.output
    included = runner.invoke(app, ["ingest", str(out), "--db", db, "--include-drafts"])
    assert "1 added" in included.output
    listed = json.loads(runner.invoke(app, ["review", str(out), "--json", "--db", db]).output)
    locations = sorted(r["location"] for r in listed)
    assert locations[0] == str(out / "example-trainer-4321.yaml")  # the draft file
    assert locations[1].startswith("sqlite:") and locations[1].endswith("x.db")  # and the draft stored with --include-drafts
    assert all(r["id"] == "example-trainer-4321" for r in listed)
    answer = json.loads(runner.invoke(app, ["--json", "--db", db, THREAD["title"]]).output)
    assert answer["case_count"] == 0 and answer["results"] == []  # a draft is never an answer


def test_review_findings_name_the_gaps():
    notes = findings({"model": {"name": "not stated"}, "framework": {"name": "x"}, "symptom": "short", "causes": [], "fixes": []})
    assert any("no cause" in n for n in notes) and any("no fix" == n for n in notes)
    assert any("model not recognised" in n for n in notes) and any("very short" in n for n in notes)
