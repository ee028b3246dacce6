"""Text tokenizer shared by index building and querying, for English and Chinese.

Three kinds of token come out of one text:

* Latin words and numbers, lower-cased, stop words dropped, with a light
  suffix folding so 'converges', 'converged' and 'converging' meet;
* Chinese character bigrams (a lone character stays a unigram); runs are cut at
  Chinese stop words first. Bigrams were chosen over a word segmenter such as
  jieba because they need no dictionary load (jieba costs ~0.5 s per cold
  start) and match partial phrasings; ``benches/tokenizer_choice.py`` measures
  both on the evaluation queries;
* concept tokens ``group:id`` from the alias lexicon ('预训练' and 'pretraining'
  both give ``phase:pretrain``), plus ``family:<f>`` for model concepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .lexicon import CJK_CHARS, Lexicon, Match, concept_token, normalize

_WORD = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*")
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")


@dataclass(frozen=True)
class Stopwords:
    english: frozenset[str]
    chinese_splitter: re.Pattern[str]

    @classmethod
    def from_lists(cls, english: list[str], chinese: list[str]) -> "Stopwords":
        ordered = sorted({w for w in chinese if w}, key=len, reverse=True)
        splitter = re.compile("|".join(re.escape(w) for w in ordered) if ordered else r"(?!x)x")
        return cls(frozenset(normalize(w) for w in english), splitter)


@lru_cache(maxsize=1 << 16)
def fold_suffix(word: str) -> str:
    """A deliberately tiny stemmer for alphabetic words of 4+ letters.

    'converge', 'converges', 'converged' and 'converging' all become 'converg';
    'deepspeed', 'loss' and 'this' are left alone.
    """
    if len(word) < 4 or not word.isalpha():
        return word
    if word.endswith("ing") and len(word) >= 7:
        word = word[:-3]
    elif word.endswith("ed") and not word.endswith("eed") and len(word) >= 6:
        word = word[:-2]
    elif word.endswith(("sses", "xes", "ches", "shes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "is", "ous")):
        word = word[:-1]
    if word.endswith("e") and len(word) >= 5:
        word = word[:-1]
    return word


def word_tokens(norm: str, stopwords: Stopwords) -> list[str]:
    tokens = []
    for word in _WORD.findall(norm):
        if word in stopwords.english:
            continue
        if len(word) == 1:
            continue
        tokens.append(fold_suffix(word))
    return tokens


def cjk_tokens(norm: str, stopwords: Stopwords) -> list[str]:
    tokens: list[str] = []
    for run in _CJK_RUN.findall(norm):
        for piece in stopwords.chinese_splitter.split(run):
            if len(piece) == 1:
                tokens.append(piece)
            else:
                tokens.extend(piece[i : i + 2] for i in range(len(piece) - 1))
    return tokens


def concept_tokens(matches: list[Match], lexicon: Lexicon) -> list[str]:
    tokens = []
    for match in matches:
        tokens.append(concept_token(match.group, match.concept))
        family = lexicon.info(match.group, match.concept).get("family")
        if match.group == "model" and family:
            tokens.append(f"family:{family}")
    return tokens


def tokenize(text: str, lexicon: Lexicon, stopwords: Stopwords, matches: list[Match] | None = None) -> list[str]:
    """All tokens of a text; ``matches`` may be passed when the caller already has them."""
    norm = normalize(text)
    return tokenize_normalized(norm, lexicon, stopwords, lexicon.find(norm) if matches is None else matches)


def tokenize_normalized(norm: str, lexicon: Lexicon, stopwords: Stopwords, matches: list[Match]) -> list[str]:
    """:func:`tokenize` of text already passed through :func:`kb.lexicon.normalize`."""
    return word_tokens(norm, stopwords) + cjk_tokens(norm, stopwords) + concept_tokens(matches, lexicon)


# What count_tokens counts: a CJK character on its own, or a run of other letters and digits.
_COUNTED = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+")


def count_tokens(text: str) -> int:
    """The length of a text in units that mean the same in English and Chinese.

    Each Chinese character is one token (a Chinese word is one to three of them, and
    LLM tokenizers give a character about one token), and so is each run of other
    letters or digits: a word, a number, 'gemma3'. Punctuation, markup and white space
    count nothing. Splitting on white space instead would count a whole Chinese
    sentence as one word.
    """
    return sum(1 for _ in _COUNTED.finditer(text))
