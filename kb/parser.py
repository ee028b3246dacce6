"""Query understanding: free text (English, Chinese, shorthand) -> structured features.

Concepts come from the alias lexicon (data); numbers come from the short
patterns below, introduced by cue words that are also lexicon data ('loss',
'损失', 'lr', '学习率', ...). Everything the parser does not recognise stays in
the text tokens, so nothing a user typed is thrown away.

Feature values are lists: a report may name two models ('gemma3 vs llama3')
or two losses ('loss从70降到10').
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .lexicon import Lexicon, Match, iter_groups, normalize
from .tokenize import Stopwords, tokenize

CONCEPT_FEATURES = ("model", "framework", "precision", "finetuning", "phase", "accelerator")

_NUMBER = r"\d+(?:\.\d+)?"
# A number standing on its own (not part of 'zero3', 'v1.2.3', 'qwen2').
# A dash counts as a range ('1.8-2.0'), never as part of a name ('zero-3', '2e-5').
_FREE_NUMBER = re.compile(rf"(?<![a-z0-9.])(?<![a-z_]-)[~≈约]?\s*({_NUMBER})(?![0-9])")
# What may follow a number and makes it something other than a loss value:
# a glued unit ('30m', '4b', '3k', '50%'), a unit word, or a Chinese measure word.
_NOT_A_LOSS_AFTER = re.compile(
    r"(?:[a-z%]"
    r"|\s+(?:k|m|b|x|billion|million|steps?|epochs?|iters?|gpus?|npus?|cards?|nodes?|days?|hours?|mins?|"
    r"samples?|records?|rows?|lines?|examples?|tokens?|gb|mb|params?|parameters?)\b"
    r"|\s*(?:个|条|天|张|块|卡|万|亿|步|轮|小时|分钟|秒|行|倍|次|份|e-?\d))"
)
_NOT_A_LOSS_BEFORE = re.compile(r"(?:@|step|steps|epoch|epochs|第|步|x|×|\*)\s*$")
_CLAUSE_END = re.compile(r"[,;!?，；。！？\n]|\.(?:\s|$)|\b(?:but|while|whereas|and then)\b|但|而")
# Prose (articles, issue bodies) spreads one observation over a sentence:
# '损失值初始高达70，经过训练后仅能降至10左右'. Queries are terser, so they use clauses.
_SENTENCE_END = re.compile(r"[!?；。！？\n]|\.(?:\s|$)")
_LOSS_WINDOW = 48
_SENTENCE_WINDOW = 90
_SCI_NUMBER = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?e-?\d+|0\.0\d+)(?![0-9])")
_MODEL_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*b(?![a-z0-9])")
_ZERO_STAGE = re.compile(r"zero[\s_\-]*(?:optimization)?[\s_\-\"':=]*stage[\s_\-\"':=]*([0-3])\b")
_CHINESE_DIGITS = {"单": 1, "一": 1, "双": 2, "两": 2, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "十": 10}


@dataclass
class ParsedQuery:
    text: str
    features: dict[str, list] = field(default_factory=dict)
    matches: list[Match] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def feature_summary(self) -> dict[str, list]:
        return {name: values for name, values in self.features.items() if values}


def _add(features: dict[str, list], name: str, value) -> None:
    values = features.setdefault(name, [])
    if value not in values:
        values.append(value)


def _clause_after(norm: str, start: int, limit: int, ends: re.Pattern[str] = _CLAUSE_END) -> str:
    window = norm[start : start + limit]
    cut = ends.search(window)
    return window[: cut.start()] if cut else window


def extract_losses(norm: str, lexicon: Lexicon, *, prose: bool = False) -> list[float]:
    """Loss values: numbers in the clause (``prose``: the sentence) after a loss cue, minus steps, counts and sizes."""
    found: list[float] = []
    ends, window = (_SENTENCE_END, _SENTENCE_WINDOW) if prose else (_CLAUSE_END, _LOSS_WINDOW)
    for cue in lexicon.cue_pattern("loss").finditer(norm):
        clause = _clause_after(norm, cue.end(), window, ends)
        taken = 0
        for number in _FREE_NUMBER.finditer(clause):
            after = clause[number.end() :]
            before = clause[: number.start()]
            if _NOT_A_LOSS_AFTER.match(after) or _NOT_A_LOSS_BEFORE.search(before):
                continue
            # 'loss 1.8-2.0' is a range: both ends count; '-' as a minus sign is ignored.
            value = float(number.group(1))
            if value < 1000 and value not in found:
                found.append(value)
            taken += 1
            if taken == 3:
                break
    return found


def _numbers_after_cue(norm: str, lexicon: Lexicon, cue: str, window: int = 14) -> list[str]:
    values = []
    for match in lexicon.cue_pattern(cue).finditer(norm):
        clause = _clause_after(norm, match.end(), window)
        number = re.match(r"[\s:=为是~约]*(\d+(?:\.\d+)?(?:e-?\d+)?)", clause)
        if number:
            values.append(number.group(1))
    return values


def extract_steps(norm: str, lexicon: Lexicon) -> list[int]:
    steps: list[int] = []
    for match in re.finditer(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*(k)?\s*(?:个)?\s*(?:steps?|步|iters?|iterations?)(?![a-z])", norm):
        steps.append(int(float(match.group(1)) * (1000 if match.group(2) else 1)))
    for match in re.finditer(r"(?:steps?|@|第)\s*(\d+)\s*(k)?(?![0-9.])", norm):
        steps.append(int(float(match.group(1)) * (1000 if match.group(2) else 1)))
    return sorted(set(s for s in steps if s > 0))


def extract_gpu_count(norm: str, lexicon: Lexicon, accelerators: list[Match]) -> list[int]:
    counts: list[int] = []
    unit = lexicon.cue_pattern("gpu_unit").pattern
    for match in re.finditer(rf"(?<![a-z0-9.])(\d+)\s*(?:张|块|台|个)?\s*(?:{unit})", norm):
        counts.append(int(match.group(1)))
    for match in re.finditer(rf"([单双两二三四五六七八十])\s*(?:张|块|台|个)?\s*(?:{unit})", norm):
        counts.append(_CHINESE_DIGITS[match.group(1)])
    for acc in accelerators:  # '8 x a100', '8张a100', '2x a100-80g'
        before = norm[max(0, acc.start - 8) : acc.start]
        number = re.search(r"(\d+)\s*(?:x|张|块|台|\*)?\s*$", before)
        if number:
            counts.append(int(number.group(1)))
    return sorted(set(c for c in counts if 0 < c <= 4096))


def extract_model_sizes(norm: str) -> list[float]:
    sizes = []
    for match in _MODEL_SIZE.finditer(norm):
        experts, size = match.group(1), float(match.group(2))
        value = size * int(experts) if experts else size
        if 0.01 <= value <= 2000:
            sizes.append(round(value, 3))
    return sorted(set(sizes))


def extract_learning_rates(norm: str, lexicon: Lexicon) -> list[float]:
    rates = {float(v) for v in _numbers_after_cue(norm, lexicon, "learning_rate")}
    rates.update(float(m.group(1)) for m in _SCI_NUMBER.finditer(norm))
    return sorted(r for r in rates if 0 < r < 1)


def extract_features(norm: str, matches: list[Match], lexicon: Lexicon, *, prose: bool = False) -> dict[str, list]:
    features: dict[str, list] = {}
    for group in CONCEPT_FEATURES:
        for concept in iter_groups(matches, group):
            _add(features, group, concept)
    for concept in iter_groups(matches, "zero_stage"):
        _add(features, "zero_stage", int(lexicon.info("zero_stage", concept).get("value", concept[-1])))
    for match in _ZERO_STAGE.finditer(norm):
        _add(features, "zero_stage", int(match.group(1)))
    for value in extract_losses(norm, lexicon, prose=prose):
        _add(features, "loss", value)
    for value in extract_steps(norm, lexicon):
        _add(features, "step", value)
    accelerators = [m for m in matches if m.group == "accelerator"]
    for value in extract_gpu_count(norm, lexicon, accelerators):
        _add(features, "gpu_count", value)
    for value in extract_model_sizes(norm):
        _add(features, "model_size", value)
    for value in extract_learning_rates(norm, lexicon):
        _add(features, "learning_rate", value)
    for name, cue in (("batch_size", "batch_size"), ("seq_len", "seq_len"), ("lora_rank", "lora_rank")):
        for raw in _numbers_after_cue(norm, lexicon, cue):
            if re.fullmatch(r"\d+", raw):
                _add(features, name, int(raw))
    return {name: values for name, values in features.items() if values}


def parse(text: str, lexicon: Lexicon, stopwords: Stopwords) -> ParsedQuery:
    norm = normalize(text)
    matches = lexicon.find(norm)
    tokens = tokenize(text, lexicon, stopwords, matches=matches)
    covered = [(m.start, m.end) for m in matches]
    unknown = [
        w.group()
        for w in re.finditer(r"[a-z0-9]+(?:\.[a-z0-9]+)*", norm)
        if not any(s <= w.start() < e for s, e in covered) and w.group() not in stopwords.english
    ]
    return ParsedQuery(
        text=text,
        features=extract_features(norm, matches, lexicon),
        matches=matches,
        tokens=tokens,
        unknown=unknown,
    )
