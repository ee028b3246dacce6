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
     ('{"title": "t", "url": "https://github.com/a/b/issues/1", "comments": "x"}', "field 'comments'"),
     ('{"title": "t", "url": "https://github.com/a/b/issues/1", "body": ["x"]}', "field 'body'"),
     ('{"title": "t", "url": "https://github.com/a/b/issues/1", "comments": [{"body": 3}]}', "field 'comments[0].body'")],
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


# -- GitHub threads as issue templates shape them (fixtures in tests/fixtures/github) ------------

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "github"


def draft_of(name: str):
    (case,) = drafts_from_github([FIXTURES / name])
    return case


def thread_file(tmp_path: Path, thread: dict) -> Path:
    path = tmp_path / "thread.json"
    path.write_text(json.dumps(thread, ensure_ascii=False), encoding="utf-8")
    return path


def test_gpu_count_of_the_system_info_wins_over_a_comment():
    """The System Info block (pasted in a code fence, as people do) says 'GPU number: 8'; another
    user's comment mentions their own 4x3090. The count is the reporter's environment's."""
    case = draft_of("llamafactory_old_name_7416.json")
    assert case.hardware.accelerator == "a800" and case.hardware.count == 8
    assert case.config["num_gpus"] == 8


def test_gpu_count_of_the_reporters_text_wins_over_a_bigger_one_in_comments():
    case = draft_of("transformers_template_oom.json")  # '8xH100' in the report; '16 GPUs' in someone's comment
    assert case.hardware.accelerator == "h100" and case.hardware.count == 8


REPORTER = {"login": "the-reporter"}


@pytest.mark.parametrize("body,comments,accelerator,count", [
    ("全参微调 qwen2.5-7b，用 2 x A100 训练，loss 一直是 0。",
     [{"author": {"login": "visitor"}, "body": "我 8卡 也遇到了"}], "a100", 2),
    ("Full SFT of qwen2.5-7b: the loss stays at 0 from the first step.",
     [{"author": {"login": "visitor"}, "body": "Same on 8xH100 here."},
      {"author": REPORTER, "body": "Forgot to say: this is on 双卡 4090."}], "rtx-4090", 2),
    ("Full SFT of qwen2.5-7b: the loss stays at 0 from the first step.",
     [{"author": {"login": "visitor"}, "body": "We see it with 8 张 A100 too."}], "a100", 8),
], ids=["reporter-body-over-commenter", "reporter-comment-over-commenter", "only-a-commenter-says"])
def test_gpu_count_trusts_the_reporter_over_other_people(tmp_path, body, comments, accelerator, count):
    thread = {"title": "loss is 0", "url": "https://github.com/example-org/example-trainer/issues/11",
              "author": REPORTER, "body": body, "comments": comments}
    (case,) = drafts_from_github([thread_file(tmp_path, thread)])
    assert (case.hardware.accelerator, case.hardware.count) == (accelerator, count)


@pytest.mark.parametrize("written,count", [
    ("- GPU number: 8", 8), ("Running on 4x3090.", 4), ("Training on 4 x A100 80G.", 4), ("Same on 8xH100.", 8),
    ("用 8卡 训练。", 8), ("8 张 A100 上跑全参。", 8), ("双卡训练时出现。", 2), ("两张 A100 上跑全参。", 2), ("机器是 A800*8。", 8),
])
def test_gpu_counts_in_the_forms_people_write(tmp_path, written, count):
    thread = {"title": "loss is 0", "url": "https://github.com/example-org/example-trainer/issues/12",
              "body": f"Full SFT of qwen2.5-7b, the loss stays at 0.\n\n{written}\n", "comments": []}
    (case,) = drafts_from_github([thread_file(tmp_path, thread)])
    assert case.hardware.count == count


# What each template leaves in a body that is not the reporter's account of the problem.
BOILERPLATE = ("I have read", "Reminder", "System Info", "Reproduction", "Expected behavior", "Others", "No response",
               "<!--", "Who can help", "official example scripts", "My own task", "clear and concise", "Go to '",
               "ds_report", "screenshots", "Launcher context", "Add any other context", "<details>", "collect_env",
               "Before submitting", "searched for relevant issues", "Describe the bug", "**", "###", "- [")


@pytest.mark.parametrize("name,kept,error", [
    ("llamafactory_old_name_7416.json", "训练一开始 loss 就有 70 多", None),
    ("transformers_template_oom.json", "the run dies at step 500",
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.91 GiB."),
    ("deepspeed_template_ranks.json", "fails on every rank",
     "ValueError: shape mismatch: flattened partition has 1024 elements but 2048 were expected"),
    ("vllm_template_long.json", "generations suddenly turn into repeated tokens",
     "RuntimeError: CUDA error: an illegal memory access was encountered"),
], ids=["llama-factory", "transformers", "deepspeed", "vllm"])
def test_symptom_is_the_reporters_words_and_the_error_line(name, kept, error):
    case = draft_of(name)
    left = [marker for marker in BOILERPLATE if marker.lower() in case.symptom.lower()]
    assert not left, f"template furniture in the symptom: {left}: {case.symptom}"
    assert kept in case.symptom
    assert "Evaluation should fit in memory" not in case.symptom  # the expected behaviour is not the symptom
    if error:
        assert error in case.symptom
        assert "Traceback" not in case.symptom and 'File "' not in case.symptom


def test_error_line_survives_a_symptom_cut_to_length():
    """The report alone is longer than a symptom may be: sentences are cut, the error line stays."""
    case = draft_of("vllm_template_long.json")
    assert len(case.symptom) <= 900
    assert case.symptom.endswith("RuntimeError: CUDA error: an illegal memory access was encountered")
    assert "We serve rollouts" in case.symptom


def test_worker_error_line_wins_over_the_launchers():
    case = draft_of("deepspeed_template_ranks.json")  # the launcher's CalledProcessError comes last
    assert "CalledProcessError" not in case.symptom and "[rank0]" not in case.symptom
    assert case.hardware.count == 4  # 'one machine with 4 x A100 80GB' under 'System info (...)'


def test_error_line_outside_a_code_block_and_without_its_traceback(tmp_path):
    thread = {"title": "crash", "url": "https://github.com/example-org/example-trainer/issues/13", "comments": [],
              "body": "Training Qwen2-7B with LoRA stops right after loading the data.\n\n"
                      "  File \"train.py\", line 40, in main\n    trainer.train()\n"
                      "KeyError: 'input_ids'\n\nAny idea?"}
    (case,) = drafts_from_github([thread_file(tmp_path, thread)])
    assert case.symptom.count("KeyError: 'input_ids'") == 1 and 'File "' not in case.symptom
    cut = {**thread, "body": "Training Qwen2-7B with LoRA stops right after loading the data.\n\n"
                             "```\n...(log cut here)\nAssertionError: labels and logits differ in length\n```"}
    (case,) = drafts_from_github([thread_file(tmp_path, cut)])
    assert case.symptom.endswith("AssertionError: labels and logits differ in length")


def test_bot_comments_are_neither_fixes_nor_causes():
    case = draft_of("llamafactory_old_name_7416.json")
    assert not any("automatically marked as stale" in fix.action for fix in case.fixes)
    assert "升级" in case.fixes[0].action and case.fixes[0].confirmed


# -- one thread, one case -------------------------------------------------------------------


def test_spellings_of_one_thread_share_a_key():
    from kb.threads import thread_key

    same = [
        "https://github.com/hiyouga/LlamaFactory/issues/7416",
        "https://github.com/hiyouga/LLaMA-Factory/issues/7416",
        "http://www.github.com/HIYOUGA/llama-factory/issues/7416/",
        "https://github.com/hiyouga/LLaMA-Factory.git/issues/7416",
        "https://github.com/hiyouga/LLaMA-Factory/issues/7416#issuecomment-2741234567",
        "https://github.com/hiyouga/LLaMA-Factory/issues/7416?notification_referrer_id=abc",
        "https://github.com/hiyouga/LLaMA-Factory/pull/7416/files",
        "github.com/hiyouga/LLaMA-Efficient-Tuning/issues/7416",
        "https://api.github.com/repos/hiyouga/LLaMA-Factory/issues/7416",
    ]
    assert len({thread_key(url) for url in same}) == 1
    different = ["https://github.com/hiyouga/LlamaFactory/issues/7417", "https://github.com/hiyouga/ChatGLM-Efficient-Tuning/issues/7416",
                 "https://github.com/someone/LlamaFactory/issues/7416", same[0]]
    assert len({thread_key(url) for url in different}) == 4
    assert thread_key("https://github.com/microsoft/DeepSpeed/issues/4661") == thread_key("https://github.com/deepspeedai/DeepSpeed/issues/4661")
    assert thread_key("https://WWW.Example.com/post/12/#comments") == thread_key("http://example.com/post/12")
    assert thread_key("https://example.com/post/12?page=2") != thread_key("https://example.com/post/12")
    assert thread_key("002_1df62d3820df2b03.txt") != thread_key("003_98a592a1533266dd.txt")


def test_a_draft_of_a_renamed_repository_gets_the_current_name():
    case = draft_of("llamafactory_old_name_7416.json")  # linked as hiyouga/LLaMA-Factory
    assert case.id == "llamafactory-7416"
    assert case.sources == ["https://github.com/hiyouga/LlamaFactory/issues/7416"]


def test_only_a_shared_first_source_is_a_clash():
    """The first source is the thread a case documents; two cases may share a later one (the pull
    request that fixed both), but not a first one, whichever side it is first on."""
    from kb.threads import ThreadIndex

    known = ThreadIndex()
    known.add("a", ["https://github.com/o/r/issues/1", "https://github.com/o/r/pull/5"])
    assert known.clash("b", ["https://github.com/o/r/issues/7", "https://github.com/o/r/pull/5"]) is None
    assert known.clash("b", ["https://github.com/O/R/issues/1#issuecomment-3"]).other_id == "a"
    assert known.clash("c", ["https://github.com/o/r/issues/9", "https://github.com/o/r/issues/1"]).other_id == "a"
    assert known.clash("d", ["https://github.com/o/r/issues/5"]).other_id == "a"  # /pull/5 is the same number
    assert known.clash("a", ["https://github.com/o/r/issues/1"]).other_id == "a"  # a draft would replace reviewed 'a'
    known.add("e", ["https://github.com/o/r/issues/2"], status="draft")
    assert known.clash("e", ["https://github.com/o/r/issues/2"]) is None  # another copy of the same draft


def run_kbq_in_process(*args: str, home: Path):
    return CliRunner().invoke(app, list(args), env={"KBQ_HOME": str(home), "KBQ_DB": None, "KBQ_SEMANTIC": "0"})


def test_import_names_the_case_a_draft_would_duplicate_and_skips_it(tmp_path):
    out = tmp_path / "drafts"
    home = tmp_path / "home"
    renamed = str(FIXTURES / "llamafactory_old_name_7416.json")
    fresh = str(FIXTURES / "transformers_template_oom.json")
    result = run_kbq_in_process("import", "github", renamed, fresh, "--out", str(out), home=home)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("kbq: note:")]
    assert len(notes) == 1 and "'llamafactory-7416'" in notes[0] and "LlamaFactory/issues/7416" in notes[0]
    assert sorted(p.name for p in out.iterdir()) == ["transformers-98765.yaml"]
    to_stdout = run_kbq_in_process("import", "github", renamed, home=home)
    assert to_stdout.exit_code == 0 and to_stdout.stdout == "" and "llamafactory-7416" in to_stdout.stderr
    forced = run_kbq_in_process("import", "github", renamed, "--out", str(out), "--allow-duplicates", home=home)
    assert forced.exit_code == 0 and (out / "llamafactory-7416.yaml").exists()
    assert "written although" in forced.stderr and "'llamafactory-7416'" in forced.stderr


def test_import_twice_of_one_thread_under_two_names(tmp_path):
    thread = json.loads((FIXTURES / "transformers_template_oom.json").read_text(encoding="utf-8"))
    moved = dict(thread, url=thread["url"].replace("huggingface/transformers", "HuggingFace/Transformers") + "#issuecomment-1")
    path = tmp_path / "both.json"
    path.write_text(json.dumps([thread, moved]), encoding="utf-8")
    result = run_kbq_in_process("import", "github", str(path), "--out", str(tmp_path / "out"), home=tmp_path / "home")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["transformers-98765.yaml"]
    assert "appears twice" in result.stderr


def old_style_draft(directory: Path) -> Path:
    """A draft as the importer wrote it before ids followed renames: 'llama-factory-7416', its
    source under the repository's old name: the bundled case 'llamafactory-7416' again."""
    directory.mkdir(parents=True, exist_ok=True)
    case = draft_of("llamafactory_old_name_7416.json").model_dump(mode="json", exclude_none=True)
    case.update(id="llama-factory-7416", sources=["https://github.com/hiyouga/LLaMA-Factory/issues/7416"])
    path = directory / "llama-factory-7416.yaml"
    path.write_text(yaml.safe_dump(case, allow_unicode=True), encoding="utf-8")
    return path


def test_review_lists_a_draft_of_a_known_thread_as_a_duplicate(tmp_path):
    drafts = tmp_path / "drafts"
    old_style_draft(drafts)
    result = run_kbq_in_process("review", str(drafts), "--json", home=tmp_path / "home")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["id"] == "llama-factory-7416" and report["duplicate_of"] == "llamafactory-7416"
    assert report["findings"][0].startswith("duplicate:") and "'llamafactory-7416'" in report["findings"][0]
    assert "LLaMA-Factory/issues/7416" in report["findings"][0]
    shown = run_kbq_in_process("review", str(drafts), home=tmp_path / "home")
    assert "duplicate:" in shown.stdout and "llamafactory-7416" in shown.stdout


def test_ingest_refuses_a_draft_of_a_known_thread(tmp_path):
    drafts = tmp_path / "drafts"
    path = old_style_draft(drafts)
    home = tmp_path / "home"
    assert run_kbq_in_process("ingest", home=home).exit_code == 0  # the bundled cases, in the default database
    result = run_kbq_in_process("ingest", str(drafts), "--include-drafts", home=home)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kbq: error: {path}: field 'sources':")
    assert "'llama-factory-7416'" in line and "'llamafactory-7416'" in line
    listed = json.loads(run_kbq_in_process("list", "--json", "--status", "draft", home=home).stdout)
    assert listed == []
