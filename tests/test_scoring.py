"""Unit tests of local similarities and their weighted, explainable combination."""

from __future__ import annotations

import pytest
import yaml

from kb.lexicon import Lexicon
from kb.paths import data_file
from kb.similarity import combine, local_similarity, log_ratio


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.from_file()


@pytest.fixture(scope="module")
def weights() -> dict:
    return yaml.safe_load(data_file("weights.yaml").read_text(encoding="utf-8"))


def test_log_ratio_is_scale_free():
    assert log_ratio(70, 70, 2.5) == 1.0
    assert log_ratio(70, 1.8, 2.5) == 0.0
    assert log_ratio(2.8, 2.0, 2.5) == pytest.approx(log_ratio(28, 20, 2.5))
    assert log_ratio(70, 60, 2.5) > log_ratio(70, 35, 2.5) > 0
    assert log_ratio(0, 0, 2.5) == 1.0  # a loss of 0 is a value, not an error


def test_model_family_gets_partial_credit(lexicon, weights):
    spec = weights["features"]["specs"]["model"]
    case = {"model": ["gemma-3"], "model_family": "gemma", "model_also": ["llama-3"]}
    exact, _, _ = local_similarity("model", spec, ["gemma-3"], case, lexicon)
    family, _, _ = local_similarity("model", spec, ["gemma-2"], case, lexicon)
    compared, _, _ = local_similarity("model", spec, ["llama-3"], case, lexicon)
    other, _, _ = local_similarity("model", spec, ["qwen2"], case, lexicon)
    assert exact == 1.0 and other == 0.0
    assert 0 < family < 1 and 0 < compared < 1


def test_parent_model_credit(lexicon, weights):
    spec = weights["features"]["specs"]["model"]
    case = {"model": ["chinese-llama-2"], "model_family": "llama"}
    sim, _, _ = local_similarity("model", spec, ["llama-2"], case, lexicon)
    assert sim == spec["parent"]


def test_table_similarity(lexicon, weights):
    spec = weights["features"]["specs"]["finetuning"]
    sim, _, _ = local_similarity("finetuning", spec, ["qlora"], {"finetuning": ["lora"]}, lexicon)
    assert sim == spec["table"]["lora|qlora"]


def test_loss_near_seventy_not_near_two(lexicon, weights):
    spec = weights["features"]["specs"]["loss"]
    near, _, _ = local_similarity("loss", spec, [70.0], {"loss": [70.0, 10.0]}, lexicon)
    far, _, _ = local_similarity("loss", spec, [70.0], {"loss": [1.8]}, lexicon)
    assert near == 1.0 and far == 0.0


def test_contributions_add_up(lexicon, weights):
    query = {"model": ["gemma-3"], "zero_stage": [3], "loss": [70.0], "precision": ["fp16"]}
    case = {"model": ["gemma-3"], "model_family": "gemma", "zero_stage": [3], "loss": [70.0]}
    total, parts = combine(query, case, weights, lexicon)
    assert sum(p.contribution for p in parts) == pytest.approx(weights["features"]["weight"] * total, abs=1e-3)
    by_name = {p.name: p for p in parts}
    assert by_name["precision"].similarity == 0  # the case does not state it: no credit
    assert by_name["model"].contribution > by_name["zero_stage"].contribution  # model weighs more
    assert 0 < total < 1  # the prior keeps even a perfect match short of 1


def test_symptoms_count_by_overlap(lexicon, weights):
    spec = weights["features"]["specs"]["symptom"]
    case = {"symptom": ["loss-nan", "oom"]}
    both, _, _ = local_similarity("symptom", spec, ["loss-nan", "oom"], case, lexicon)
    half, _, _ = local_similarity("symptom", spec, ["loss-nan", "hang"], case, lexicon)
    none, _, _ = local_similarity("symptom", spec, ["hang"], case, lexicon)
    assert (both, half, none) == (1.0, 0.5, 0.0)


def test_problem_evidence_outweighs_names(weights):
    specs = weights["features"]["specs"]
    assert specs["symptom"]["weight"] > specs["model"]["weight"] > specs["accelerator"]["weight"]
    assert specs["loss"]["weight"] > specs["framework"]["weight"]
    groups = weights["lexical"]["query_groups"]
    assert groups["symptom"] > groups["model"] and groups["symptom"] > groups["framework"]


def test_no_features_no_feature_score(lexicon, weights):
    assert combine({}, {"model": ["gemma-3"]}, weights, lexicon) == (0.0, [])


def test_feature_scorer_totals_equal_combine(lexicon, weights):
    """The re-ranking's memoised totals are combine()'s, case by case, for every kind of feature."""
    from kb.similarity import FeatureScorer

    query = {"model": ["llama-3"], "framework": ["llama-factory"], "symptom": ["loss-nan", "oom"], "loss": [70.0],
             "precision": ["fp16"], "zero_stage": [3], "gpu_count": [8]}
    cases = [
        {"model": ["llama-3"], "model_family": "llama", "framework": ["deepspeed"], "symptom": ["loss-nan"], "loss": [65.0]},
        {"model": ["llama-2"], "model_family": "llama", "framework": ["llama-factory"], "precision": ["bf16"], "zero_stage": [3]},
        {"model": ["qwen2"], "model_also": ["llama-3"], "framework": ["trl"], "framework_libraries": ["llama-factory"]},
        {"model": ["llama-2"], "model_family": "other", "symptom": ["oom", "loss-nan"], "gpu_count": [4], "loss": [1.8]},
        {"model": ["qwen2"], "framework": ["trl"]},  # same model and framework as the third, without what made them count
        {},
    ]
    scorer = FeatureScorer(query, weights, lexicon)
    totals = [scorer.total(case) for case in cases * 2]  # the second round is answered from the memo
    assert totals == [combine(query, case, weights, lexicon, explain=False)[0] for case in cases * 2]
    assert len(set(totals)) > 3 and totals[2] != totals[4]
    assert FeatureScorer({}, weights, lexicon).total(cases[0]) == 0.0
