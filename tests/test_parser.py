"""Fast unit tests of query understanding: lexicon aliases and number extraction."""

from __future__ import annotations

import pytest

from kb.lexicon import Lexicon, normalize
from kb.parser import parse
from kb.tokenize import Stopwords, fold_suffix, tokenize

import yaml
from kb.paths import data_file


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.from_file()


@pytest.fixture(scope="module")
def stopwords() -> Stopwords:
    lists = yaml.safe_load(data_file("stopwords.yaml").read_text(encoding="utf-8"))
    return Stopwords.from_lists(lists["en"], lists["zh"])


def features(text, lexicon, stopwords):
    return parse(text, lexicon, stopwords).features


@pytest.mark.parametrize("spelling", ["gemma3", "gemma-3", "Gemma 3", "GEMMA_3", "ｇｅｍｍａ３"])
def test_gemma3_spellings(spelling, lexicon, stopwords):
    assert features(f"{spelling} loss", lexicon, stopwords)["model"] == ["gemma-3"]


@pytest.mark.parametrize("spelling", ["zero3", "ZeRO-3", "zero stage 3", "ds_z3_config", "zero_stage=3", "ZeRO Stage-3"])
def test_zero3_spellings(spelling, lexicon, stopwords):
    assert features(f"training with {spelling}", lexicon, stopwords)["zero_stage"] == [3]


@pytest.mark.parametrize(
    "text,group,value",
    [
        ("fp16 training", "precision", "fp16"),
        ("开了半精度", "precision", "fp16"),
        ("qlora on a 4090", "finetuning", "qlora"),
        ("lora微调", "finetuning", "lora"),
        ("全参微调", "finetuning", "full"),
        ("预训练阶段", "phase", "pretrain"),
        ("continued pretraining of llama", "phase", "continued-pretrain"),
        ("增量预训练", "phase", "continued-pretrain"),
        ("用 LLaMA-Factory 训练", "framework", "llama-factory"),
        ("llamafactory", "framework", "llama-factory"),
        ("8xA100", "accelerator", "a100"),
        ("昇腾910B 上训练", "accelerator", "ascend-910b"),
    ],
)
def test_concepts(text, group, value, lexicon, stopwords):
    assert value in features(text, lexicon, stopwords)[group]


def test_longest_alias_wins(lexicon):
    found = [(m.group, m.concept) for m in lexicon.find(normalize("增量预训练 zero stage 1"))]
    assert ("phase", "continued-pretrain") in found and ("phase", "pretrain") not in found
    assert ("zero_stage", "zero-1") in found


@pytest.mark.parametrize(
    "text,expected",
    [
        ("gemma3 loss 70 zero3", [70.0]),
        ("预训练 loss 停在 2.8 不降", [2.8]),
        ("loss从70降到10", [70.0, 10.0]),
        ("loss starts ~70 and only reaches ~10", [70.0, 10.0]),
        ("stuck at a loss of 2.8 after ten days on 8 GPUs", [2.8]),
        ("损失值稳定在1.8左右", [1.8]),
        ("loss plateau 1.8-2.0", [1.8, 2.0]),
        ("loss 1.4 @3k steps", [1.4]),
        ("Loss值在前7000个step内就下降了", []),
        ("loss went nan at step 300", []),
    ],
)
def test_loss_values(text, expected, lexicon, stopwords):
    assert features(text, lexicon, stopwords).get("loss", []) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("8卡训练", [8]), ("8xA100", [8]), ("2x A100-80G", [2]), ("8 GPUs", [8]), ("单卡", [1]), ("8张A100", [8])],
)
def test_gpu_counts(text, expected, lexicon, stopwords):
    assert features(text, lexicon, stopwords)["gpu_count"] == expected


def test_numbers_of_other_kinds(lexicon, stopwords):
    found = features("Qwen2-4B lr 2e-5 batch size 1 block_size 64 lora rank 64, loss 1.1 at step 7000", lexicon, stopwords)
    assert found["model"] == ["qwen2"]
    assert found["model_size"] == [4.0]
    assert found["learning_rate"] == [2e-5]
    assert found["batch_size"] == [1]
    assert found["seq_len"] == [64]
    assert found["lora_rank"] == [64]
    assert found["step"] == [7000]
    assert found["loss"] == [1.1]


def test_unknown_words_are_kept(lexicon, stopwords):
    parsed = parse("gemma3 flibbertigibbet loss", lexicon, stopwords)
    assert "flibbertigibbet" in parsed.unknown
    assert "flibbertigibbet" in parsed.tokens


def test_chinese_and_english_meet_on_concepts(lexicon, stopwords):
    chinese = set(tokenize("预训练损失不降", lexicon, stopwords))
    english = set(tokenize("pretraining loss stuck", lexicon, stopwords))
    assert {"phase:pretrain", "term:loss", "symptom:loss-plateau"} <= chinese & english


def test_chinese_bigrams_split_at_stopwords(lexicon, stopwords):
    tokens = tokenize("模型的损失", lexicon, stopwords)
    assert "模型" in tokens and "损失" in tokens and "型的" not in tokens


@pytest.mark.parametrize(
    "words,stem",
    [(["converge", "converges", "converged", "converging"], "converg"), (["loss", "losses"], "loss"), (["gpu", "gpus"], "gpu")],
)
def test_suffix_folding(words, stem):
    assert {fold_suffix(w) for w in words} == {stem}
    assert fold_suffix("deepspeed") == "deepspeed"


# -- pasted reports: what must not be read as a setting --------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'File "/opt/conda/lib/python3.10/site-packages/...", line 12',
        'File "/opt/conda/lib/python3.10/site-packages/deepspeed/runtime/zero/stage3.py", line 1871, in step',
        r"C:\tools\miniconda3\envs\qwen\lib\site-packages\peft\tuners\lora\model.py:301",
        "  File \"/home/u/venv/lib/python3.12/site-packages/transformers/models/llama/modeling_llama.py\", line 40",
    ],
)
def test_file_paths_give_no_features(text, lexicon, stopwords):
    parsed = parse(text, lexicon, stopwords)
    assert parsed.features == {}
    assert not any(t.startswith(("model:", "framework:", "family:")) for t in parsed.tokens)


def test_model_ids_and_model_directories_still_count(lexicon, stopwords):
    assert "qwen2" in features("finetuning Qwen/Qwen2-7B-Instruct with lora", lexicon, stopwords)["model"]
    assert features("loading /mnt/weights/gemma-3-4b fails", lexicon, stopwords)["model"] == ["gemma-3"]


@pytest.mark.parametrize(
    "text",
    [
        "[Rank 3] NCCL timeout after 1800 seconds",
        "[rank3]: RuntimeError: NCCL communicator was aborted",
        "[rank7]:[E ProcessGroupNCCL.cpp:563] Watchdog caught collective operation timeout",
        "the job hangs on rank 4 while the others wait",
        "local_rank=2 exited with code 1",
        "process rank 3/8 never reaches the barrier",
        "rank 0 saves the checkpoint",
    ],
)
def test_process_ranks_are_not_lora_ranks(text, lexicon, stopwords):
    assert "lora_rank" not in features(text, lexicon, stopwords)


@pytest.mark.parametrize(
    "text,expected",
    [("lora rank 64, alpha 16", [64]), ("rank 16 alpha 32", [16]), ("lora_r: 8", [8]), ("lora_rank=12", [12])],
)
def test_lora_ranks_are_still_read(text, expected, lexicon, stopwords):
    assert features(text, lexicon, stopwords)["lora_rank"] == expected


@pytest.mark.parametrize(
    "text,losses",
    [
        ("loss 从 2.3 降到 0.01", [2.3, 0.01]),
        ("the loss fell to 0.05 within 100 steps", [0.05]),
        ("{'loss': 0.0231, 'grad_norm': 0.07, 'learning_rate': 1.5e-05, 'epoch': 0.4}", [0.0231]),
        ("loss 2.3 lr 0.01", [2.3]),
    ],
)
def test_loss_values_are_not_learning_rates(text, losses, lexicon, stopwords):
    found = features(text, lexicon, stopwords)
    assert found.get("loss") == losses
    assert not set(found.get("learning_rate", [])) & set(losses)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lr 0.01 is far too high", [0.01]),
        ("loss 2.3 lr 0.01", [0.01]),
        ("learning_rate: 1e-05", [1e-05]),
        ("学习率 2e-5, loss 一直是 3.1", [2e-05]),
        ("weight_decay: 0.01, warmup_ratio: 0.03, lr=[3e-05]", [3e-05]),
        ("adam eps=1e-08 and dropout 0.05", []),
        ("accelerate 0.0.1 and xformers 0.0.28", []),
    ],
)
def test_learning_rates(text, expected, lexicon, stopwords):
    assert features(text, lexicon, stopwords).get("learning_rate", []) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4x3090", [4]),
        ("4 x RTX 3090", [4]),
        ("2 x NVIDIA A100", [2]),
        ("GPU number: 8", [8]),
        ("- GPU number: 8\n- GPU type: A800", [8]),
        ("8 GPUs", [8]),
        ("num_gpus=8", [8]),
        ("nproc_per_node=8", [8]),
        ("torchrun --nproc_per_node 4 train.py", [4]),
        ("CUDA_VISIBLE_DEVICES=0,1,2,3 python train.py", [4]),
        ("两张A100跑全参", [2]),
        ("机器是 A800*8", [8]),
        ("on H100 80GB x 8", [8]),
    ],
)
def test_gpu_counts_in_report_notation(text, expected, lexicon, stopwords):
    assert features(text, lexicon, stopwords)["gpu_count"] == expected


@pytest.mark.parametrize("text,wrong", [("十六张A100", 6), ("A100 x 2 nodes", 2), ("A100 x 80GB", 80)])
def test_numbers_near_an_accelerator_that_are_not_its_count(text, wrong, lexicon, stopwords):
    assert wrong not in features(text, lexicon, stopwords).get("gpu_count", [])


def test_version_numbers_are_not_gpu_counts(lexicon, stopwords):
    assert "gpu_count" not in features("transformers 4.40 on a 3090", lexicon, stopwords)


TEMPLATE = """\
### Reminder

- [X] I have read the README and searched the existing issues.

### System Info

_No response_

### Reproduction

{body}

### Expected behavior

_No response_

### Others

_No response_
"""


@pytest.mark.parametrize(
    "body",
    ["gemma3 loss 70 with zero3 on 2 cards", "预训练 loss 停在 2.8 不降，学习率 1e-4"],
)
def test_issue_template_is_not_text(body, lexicon, stopwords):
    pasted = parse(TEMPLATE.format(body=body), lexicon, stopwords)
    alone = parse(body, lexicon, stopwords)
    assert pasted.tokens == alone.tokens
    assert pasted.features == alone.features
    assert pasted.unknown == alone.unknown


def test_parsed_text_is_the_original(lexicon, stopwords):
    report = "[rank0]: loss is nan\n" + 'File "/opt/x/y.py", line 1'
    parsed = parse(report, lexicon, stopwords)
    assert parsed.text == report
    assert "[rank0]" not in parsed.clean_text and "/opt" not in parsed.clean_text


def test_cue_patterns_match_as_one_boundary_check_per_cue_would():
    """The cue regexes test word boundaries once around all Latin cues; they must find exactly
    what a pattern with the boundaries inside each cue finds (the plain reading of the rule)."""
    import re

    from kb.casefiles import load_cases
    from kb.lexicon import Lexicon, _cue_pattern, normalize
    from kb.paths import bundled_cases_dir

    lexicon = Lexicon.from_file()
    texts = [normalize("\n".join([c.case.title, c.case.symptom, *c.case.causes])) for c in load_cases([bundled_cases_dir()])]
    texts += ["lr=2e-5, bs 8 x 4 gpus; loss 0.69 at step 300", "8xa100 seqlen 4096 lora r 16 学习率 1e-4 批大小 32", "blr 3 lrs"]
    for name, spec in lexicon.compiled["cues"].items():
        joiner = r"[\s\-_./]{0,3}"
        plain = [r"(?<![a-z0-9])" + joiner.join(map(re.escape, key.split(" "))) + r"(?![a-z0-9])"
                 for key in sorted(spec["ascii"], key=len, reverse=True)]
        reference = re.compile("|".join(plain + [re.escape(k) for k in sorted(spec["cjk"], key=len, reverse=True)]))
        for text in texts:
            assert [m.span() for m in _cue_pattern(spec).finditer(text)] == [m.span() for m in reference.finditer(text)], name
