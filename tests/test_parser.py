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
