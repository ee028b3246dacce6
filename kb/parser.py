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
from bisect import bisect_right
from dataclasses import dataclass, field

from .lexicon import Lexicon, Match, iter_groups, normalize
from .report import clean_report
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
# The value right after a cue word: 'lr 2e-5', 'lr=[1e-05]', '"num_gpus": 8', '学习率为0.01'.
_CUE_NUMBER = re.compile(r"[\s:=为是~约\"'\[(]*(\d+(?:\.\d+)?(?:e-?\d+)?)")
_SCI_NUMBER = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?e-?\d+|0\.0\d+)(?![0-9]|\.\d)")
# A small number right after a key that is not a learning rate belongs to that key:
# 'weight_decay: 0.01', "'grad_norm': 0.05", 'eps=1e-08', 'dropout 0.05'.
_KEY_BEFORE = re.compile(r"([a-z][a-z0-9_]*)[\"']?\s*[:=]\s*[\"'\[(]?\s*$")
_NOT_LR_WORD_BEFORE = re.compile(
    r"(?:weight[\s_]?decay|dropout|grad(?:ient)?[\s_]?norm|warmup[\s_]?ratio|eps|epsilon|beta[12]?|temperature|"
    r"top[\s_]?p|smoothing|momentum|ratio|clip(?:ping)?)\s*(?:of|为|是)?\s*$"
)
# Which numbers after the bare word 'rank' are LoRA ranks: distributed logs say
# 'on rank 3', 'local_rank=0', 'rank 3/8', and LoRA ranks are powers of two.
_PROCESS_RANK_BEFORE = re.compile(r"(?:local|global|world|process|node|on|from|of|at|in|every|each|other|all|by)[\s_\-]*$")
# Counts in launch settings: 'CUDA_VISIBLE_DEVICES=0,1,2,3' names four devices.
_VISIBLE_DEVICES = re.compile(r"(?:cuda|ascend_rt|hip|npu)_visible_devices\s*[=:]\s*[\"']?(\d+(?:\s*,\s*\d+)*)")
# A vendor or series word between a count and an accelerator name: '2 x nvidia a100', '4 x rtx 3090',
# '两张 A100' (a Chinese numeral of one character: '十六张' is not six; '两台 4090' are two machines).
_COUNT_BEFORE_ACCELERATOR = re.compile(
    r"(?<![0-9.一二三四五六七八九十百])(?:(\d+)\s*(?:x|张|块|台|\*)?|([单双两二三四五六七八十])\s*(?:张|块|个)?)\s*"
    r"(?:(?:nvidia|geforce|rtx|gtx|tesla|huawei|华为|英伟达)[\s\-]*){0,2}$"
)
# A count after the accelerator name, its memory size between: 'a800*8', 'h100 80gb x 8'.
_COUNT_AFTER_ACCELERATOR = re.compile(
    r"(?:[\s\-]*\d+\s*gb?)?\s*[x×*]\s*(\d+)(?![0-9.])(?!\s*(?:gb?|b|nodes?|machines?|servers?|台|机|节点)(?![a-z]))"
)
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
    # What was searched: the text after :func:`kb.report.clean_report` (``text`` stays as given).
    clean_text: str = ""

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


_OTHER_NUMBER_CUES = ("learning_rate", "batch_size", "seq_len", "lora_rank", "gpu_count")


def _loss_numbers(norm: str, lexicon: Lexicon, *, prose: bool = False) -> list[tuple[float, int]]:
    """(value, position) of each loss number: in the clause after a loss cue, until another setting is named."""
    found: list[tuple[float, int]] = []
    ends, window = (_SENTENCE_END, _SENTENCE_WINDOW) if prose else (_CLAUSE_END, _LOSS_WINDOW)
    others = [lexicon.cue_pattern(name) for name in _OTHER_NUMBER_CUES if lexicon.has_cue(name)]
    for cue in lexicon.cue_pattern("loss").finditer(norm):
        clause = _clause_after(norm, cue.end(), window, ends)
        # A number right after another setting's cue is that setting's: 'loss 2.3 lr 0.01'.
        owned: set[int] = set()
        for other in others:
            for named in other.finditer(clause):
                number = _CUE_NUMBER.match(clause, named.end())
                if number:
                    owned.add(number.start(1))
        taken = 0
        for number in _FREE_NUMBER.finditer(clause):
            if number.start(1) in owned:
                continue
            after = clause[number.end() :]
            before = clause[: number.start()]
            if _NOT_A_LOSS_AFTER.match(after) or _NOT_A_LOSS_BEFORE.search(before):
                continue
            # 'loss 1.8-2.0' is a range: both ends count; '-' as a minus sign is ignored.
            value = float(number.group(1))
            if value < 1000:
                found.append((value, cue.end() + number.start(1)))
            taken += 1
            if taken == 3:
                break
    return found


def extract_losses(norm: str, lexicon: Lexicon, *, prose: bool = False) -> list[float]:
    """Loss values: numbers in the clause (``prose``: the sentence) after a loss cue, minus steps, counts and sizes."""
    values: list[float] = []
    for value, _ in _loss_numbers(norm, lexicon, prose=prose):
        if value not in values:
            values.append(value)
    return values


def _numbers_after_cue(norm: str, lexicon: Lexicon, cue: str, window: int = 14) -> list[str]:
    values = []
    for match in lexicon.cue_pattern(cue).finditer(norm):
        clause = _clause_after(norm, match.end(), window)
        number = _CUE_NUMBER.match(clause)
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
    for acc in accelerators:  # '8 x a100', '8张a100', '2x a100-80g', '4 x rtx 3090', '两张a100', 'a800*8'
        number = _COUNT_BEFORE_ACCELERATOR.search(norm, max(0, acc.start - 24), acc.start)
        if number:
            counts.append(int(number.group(1)) if number.group(1) else _CHINESE_DIGITS[number.group(2)])
        after = _COUNT_AFTER_ACCELERATOR.match(norm, acc.end)
        if after:
            counts.append(int(after.group(1)))
    if lexicon.has_cue("gpu_count"):  # 'GPU number: 8', 'num_gpus=8', '--nproc_per_node 8'
        counts.extend(int(float(raw)) for raw in _numbers_after_cue(norm, lexicon, "gpu_count") if re.fullmatch(r"\d+", raw))
    for match in _VISIBLE_DEVICES.finditer(norm):
        counts.append(match.group(1).count(",") + 1)
    return sorted(set(c for c in counts if 0 < c <= 4096))


def extract_model_sizes(norm: str) -> list[float]:
    sizes = []
    for match in _MODEL_SIZE.finditer(norm):
        experts, size = match.group(1), float(match.group(2))
        value = size * int(experts) if experts else size
        if 0.01 <= value <= 2000:
            sizes.append(round(value, 3))
    return sorted(set(sizes))


def extract_learning_rates(norm: str, lexicon: Lexicon, loss_positions: set[int] = frozenset()) -> list[float]:
    """Numbers after a learning-rate cue, and small bare numbers ('2e-5', '0.01') that belong to nothing else.

    A bare number is not a learning rate when it was read as a loss ('loss 从 2.3 降到 0.01')
    or stands after another key ('weight_decay: 0.01', "'grad_norm': 0.05").
    """
    rates = {float(v) for v in _numbers_after_cue(norm, lexicon, "learning_rate")}
    lr_cue = lexicon.cue_pattern("learning_rate")
    for match in _SCI_NUMBER.finditer(norm):
        if match.start(1) in loss_positions:
            continue
        before = norm[max(0, match.start() - 40) : match.start()]
        key = _KEY_BEFORE.search(before)
        if key and not lr_cue.fullmatch(key.group(1)):
            continue
        if _NOT_LR_WORD_BEFORE.search(before):
            continue
        rates.add(float(match.group(1)))
    return sorted(r for r in rates if 0 < r < 1)


def extract_lora_ranks(norm: str, lexicon: Lexicon) -> list[int]:
    """LoRA ranks after a rank cue; the bare word 'rank' only when it cannot be a process rank."""
    ranks: list[int] = []
    for match in lexicon.cue_pattern("lora_rank").finditer(norm):
        number = re.match(r"[\s:=为是~约\"'\[(]*(\d+)(?![0-9.])", norm[match.end() : match.end() + 14])
        if not number:
            continue
        value = int(number.group(1))
        if match.group().strip() == "rank":
            after = norm[match.end() + number.end() : match.end() + number.end() + 2]
            if (
                value < 1 or value & (value - 1)  # 0 or not a power of two
                or after.lstrip().startswith("/")  # 'rank 3/8'
                or _PROCESS_RANK_BEFORE.search(norm, max(0, match.start() - 12), match.start())
            ):
                continue
        if value not in ranks:
            ranks.append(value)
    return ranks


def extract_features(norm: str, matches: list[Match], lexicon: Lexicon, *, prose: bool = False) -> dict[str, list]:
    features: dict[str, list] = {}
    for group in CONCEPT_FEATURES:
        for concept in iter_groups(matches, group):
            _add(features, group, concept)
    for concept in iter_groups(matches, "zero_stage"):
        _add(features, "zero_stage", int(lexicon.info("zero_stage", concept).get("value", concept[-1])))
    for match in _ZERO_STAGE.finditer(norm):
        _add(features, "zero_stage", int(match.group(1)))
    losses = _loss_numbers(norm, lexicon, prose=prose)
    for value, _ in losses:
        _add(features, "loss", value)
    for value in extract_steps(norm, lexicon):
        _add(features, "step", value)
    accelerators = [m for m in matches if m.group == "accelerator"]
    for value in extract_gpu_count(norm, lexicon, accelerators):
        _add(features, "gpu_count", value)
    for value in extract_model_sizes(norm):
        _add(features, "model_size", value)
    for value in extract_learning_rates(norm, lexicon, {position for _, position in losses}):
        _add(features, "learning_rate", value)
    for value in extract_lora_ranks(norm, lexicon):
        _add(features, "lora_rank", value)
    for name, cue in (("batch_size", "batch_size"), ("seq_len", "seq_len")):
        for raw in _numbers_after_cue(norm, lexicon, cue):
            if re.fullmatch(r"\d+", raw):
                _add(features, name, int(raw))
    return {name: values for name, values in features.items() if values}


def _covered(matches: list[Match], starts: list[int], position: int) -> bool:
    """Whether a concept match spans the position; matches are sorted by start and do not overlap."""
    i = bisect_right(starts, position) - 1
    return i >= 0 and position < matches[i].end


def parse(text: str, lexicon: Lexicon, stopwords: Stopwords) -> ParsedQuery:
    """Features, tokens and unknown words of a query; a pasted report is cleaned first (kb.report)."""
    clean_text = clean_report(text)
    norm = normalize(clean_text)
    matches = lexicon.find(norm)
    tokens = tokenize(clean_text, lexicon, stopwords, matches=matches)
    starts = [m.start for m in matches]
    unknown = [
        w.group()
        for w in re.finditer(r"[a-z0-9]+(?:\.[a-z0-9]+)*", norm)
        if not _covered(matches, starts, w.start()) and w.group() not in stopwords.english
    ]
    return ParsedQuery(
        text=text,
        features=extract_features(norm, matches, lexicon),
        matches=matches,
        tokens=tokens,
        unknown=unknown,
        clean_text=clean_text,
    )
