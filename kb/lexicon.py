"""The alias lexicon: finds concepts (models, frameworks, settings, symptoms) in text.

``kb/data/lexicon.yaml`` is written for people; :func:`compile_lexicon` turns it
into plain lookup tables that are stored inside the persisted index, so a
query never parses YAML. :class:`Lexicon` does the matching for both the
tokenizer (concept tokens for TF-IDF) and the query parser (features).
"""

from __future__ import annotations

import operator
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from .paths import data_file

LEXICON_FILE = "lexicon.yaml"

# CJK Unified Ideographs (+ extension A) and the compatibility block.
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAS_CJK = re.compile(f"[{CJK_CHARS}]")
_ASCII_WORD = re.compile(r"[a-z0-9]+")
# What may stand between the parts of a multi-word alias ("gemma 3", "zero_stage-3").
_JOINER = re.compile(r"[\s\-_./:=]{0,3}")


# A count before 'x' and a name or a four-digit GPU number ('8xA100', '4x3090'); not '448x448'.
_COUNT_TIMES = re.compile(r"(?<![a-z0-9.])(\d+)\s*[x×*]\s*(?=[a-z]|[1-9]\d{3}(?![0-9]))")


def normalize(text: str) -> str:
    """Fold width and case so that 'ＺｅＲＯ－３' and 'zero-3' look alike.

    A count glued to a name ('8xA100', '8*A100', '4x3090') is spaced out
    ('8 x a100') so the name can be matched as a word.
    """
    return _COUNT_TIMES.sub(r"\1 x ", unicodedata.normalize("NFKC", text).lower())


def has_cjk(text: str) -> bool:
    return bool(_HAS_CJK.search(text))


def detect_language(text: str) -> str:
    """'zh' when Chinese characters make up a real share of the letters, else 'en'."""
    letters = sum(1 for ch in text if ch.isalpha())
    chinese = len(_HAS_CJK.findall(text))
    return "zh" if letters and chinese / letters > 0.15 else "en"


def _alias_key(alias: str) -> tuple[str, bool]:
    """The lookup key of an alias and whether it is matched as a substring (CJK)."""
    norm = normalize(alias).strip()
    if has_cjk(norm):
        return norm, True
    return " ".join(_ASCII_WORD.findall(norm)), False


class Match(NamedTuple):
    """A concept found in normalized text, at ``start:end``. A named tuple, not a frozen
    dataclass: an index build makes ~200 of them per case, and a frozen dataclass is built
    through object.__setattr__ (measured: 30% of find()'s own time)."""

    group: str
    concept: str
    start: int
    end: int


def compile_lexicon(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn the human-written YAML structure into JSON-able lookup tables.

    Raises ValueError naming the group and concept when an entry is malformed or
    an alias degenerates to nothing (e.g. made only of punctuation).
    """
    concepts: dict[str, dict[str, dict[str, Any]]] = {}
    ascii_table: dict[str, list[list[str]]] = {}
    cjk_table: dict[str, list[list[str]]] = {}
    max_words = 1
    for group, entries in (raw.get("groups") or {}).items():
        concepts[group] = {}
        for concept_id, spec in (entries or {}).items():
            concept_id = str(concept_id)
            if isinstance(spec, list):
                spec = {"aliases": spec}
            if not isinstance(spec, dict):
                raise ValueError(f"lexicon group {group!r}, concept {concept_id!r}: expected a list or a mapping")
            info = {k: spec[k] for k in ("family", "parent", "value") if spec.get(k) is not None}
            concepts[group][concept_id] = info
            for alias in [concept_id, *(str(a) for a in spec.get("aliases") or [])]:
                key, is_cjk = _alias_key(alias)
                if not key or (not is_cjk and len(key) < 2):
                    # '</s>' would become the word 's', '-100' the number 100: such aliases match everywhere.
                    raise ValueError(f"lexicon group {group!r}, concept {concept_id!r}: alias {alias!r} is too short once punctuation is dropped")
                table = cjk_table if is_cjk else ascii_table
                targets = table.setdefault(key, [])
                if [group, concept_id] not in targets:
                    targets.append([group, concept_id])
                if not is_cjk:
                    max_words = max(max_words, key.count(" ") + 1)
    cues: dict[str, dict[str, list[str]]] = {}
    for cue, words in (raw.get("cues") or {}).items():
        entry: dict[str, list[str]] = {"ascii": [], "cjk": []}
        for word in words:
            key, is_cjk = _alias_key(str(word))
            if key:
                entry["cjk" if is_cjk else "ascii"].append(key)
        cues[cue] = entry
    return {
        "features": list(raw.get("features") or []),
        "concepts": concepts,
        "ascii": ascii_table,
        "cjk": cjk_table,
        "max_words": max_words,
        "cues": cues,
    }


def load_lexicon_source(path: Path | None = None) -> dict[str, Any]:
    import yaml  # only needed when (re)building the index

    path = path or data_file(LEXICON_FILE)
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


_BY_START_AND_GROUP = operator.itemgetter(2, 0)  # Match.start, Match.group


class Lexicon:
    """Matching over a compiled lexicon (see :func:`compile_lexicon`)."""

    def __init__(self, compiled: dict[str, Any]):
        self.compiled = compiled
        self.features: list[str] = compiled["features"]
        self.concepts: dict[str, dict[str, dict[str, Any]]] = compiled["concepts"]
        self._ascii: dict[str, list[list[str]]] = compiled["ascii"]
        self._cjk: dict[str, list[list[str]]] = compiled["cjk"]
        self._max_words: int = compiled["max_words"]
        # Every leading run of words of an alias ('gemma', 'gemma 3'): a scan stops extending
        # as soon as the words so far begin no alias.
        self._prefixes: frozenset[str] = frozenset(
            " ".join(words[:n]) for words in (key.split(" ") for key in self._ascii) for n in range(1, len(words) + 1)
        )
        self._cue_patterns: dict[str, re.Pattern[str]] = {}  # compiled on first use: a cold query needs few
        self._automaton = None

    def _cjk_automaton(self):
        """Aho-Corasick over the Chinese aliases (pyahocorasick): one pass over the text finds
        them all, instead of one substring search per alias."""
        if self._automaton is None:
            import ahocorasick

            automaton = ahocorasick.Automaton()
            for key in self._cjk:
                automaton.add_word(key, key)
            if len(automaton):
                automaton.make_automaton()
            self._automaton = automaton
        return self._automaton

    @classmethod
    def from_file(cls, path: Path | None = None) -> "Lexicon":
        return cls(compile_lexicon(load_lexicon_source(path)))

    def info(self, group: str, concept: str) -> dict[str, Any]:
        return self.concepts.get(group, {}).get(concept, {})

    def find(self, norm: str) -> list[Match]:
        """All concept matches in normalized text; longest wins where spans overlap."""
        candidates: list[tuple[int, int, list[list[str]]]] = []
        words = _ASCII_WORD.findall(norm)
        prefixes = self._prefixes
        # most words start no alias: one set look-up each, and positions only when one does
        firsts = [i for i, word in enumerate(words) if word in prefixes]
        spans = [m.span() for m in _ASCII_WORD.finditer(norm)] if firsts else []
        ascii_table, joined, size = self._ascii, _JOINER.fullmatch, len(norm)
        for i in firsts:
            key = words[i]
            end_limit = min(len(words), i + self._max_words)
            for j in range(i, end_limit):
                if j > i:
                    # the cheap test first: most words extend no alias
                    key = f"{key} {words[j]}"
                    if key not in prefixes or not joined(norm, spans[j - 1][1], spans[j][0]):
                        break
                targets = ascii_table.get(key)
                if targets:
                    end = spans[j][1]
                    # not when it stops inside a decimal ('loss 0' in 'loss 0.95'); inlined: hot
                    if not (end + 1 < size and norm[end] == "." and norm[end - 1].isdigit() and norm[end + 1].isdigit()):
                        candidates.append((spans[i][0], end, targets))
        if has_cjk(norm):
            for end, key in self._cjk_automaton().iter(norm):
                candidates.append((end + 1 - len(key), end + 1, self._cjk[key]))
        # Longest first; a span already taken blocks any overlapping shorter match. The
        # occupancy array keeps this linear in the text, however many matches there are.
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        taken = bytearray(len(norm))
        matches: list[Match] = []
        for start, end, targets in candidates:
            if any(taken[start:end]):
                continue
            taken[start:end] = b"\x01" * (end - start)
            matches.extend(Match(group, concept, start, end) for group, concept in targets)
        matches.sort(key=_BY_START_AND_GROUP)
        return matches

    def resolve(self, group: str, value: str) -> str | None:
        """The concept id a free-form value (e.g. 'Gemma-3', 'ZeRO3') stands for in a group."""
        for match in self.find(normalize(value)):
            if match.group == group:
                return match.concept
        return None

    def cue_pattern(self, name: str) -> re.Pattern[str]:
        pattern = self._cue_patterns.get(name)
        if pattern is None:
            pattern = self._cue_patterns[name] = _cue_pattern(self.compiled["cues"][name])
        return pattern

    def has_cue(self, name: str) -> bool:
        """Cues added later are optional, so an index built with an older lexicon still answers."""
        return name in self.compiled["cues"]


def _cue_pattern(spec: dict[str, list[str]]) -> re.Pattern[str]:
    """A regex finding any cue word: whole words for Latin cues, anywhere for CJK ones.

    The word-boundary checks stand once around all Latin cues rather than in each of
    them: the same matches, but the engine tests the boundary once per position instead
    of once per cue (the cue scans were 12% of an index build's per-case analysis)."""
    words = [r"[\s\-_./]{0,3}".join(re.escape(w) for w in key.split(" ")) for key in sorted(spec["ascii"], key=len, reverse=True)]
    parts = [rf"(?<![a-z0-9])(?:{'|'.join(words)})(?![a-z0-9])"] if words else []
    parts.extend(re.escape(k) for k in sorted(spec["cjk"], key=len, reverse=True))
    return re.compile("|".join(parts) if parts else r"(?!x)x")


def concept_token(group: str, concept: str) -> str:
    return f"{group}:{concept}"


def iter_groups(matches: Iterable[Match], group: str) -> list[str]:
    """Concept ids of one group, in order of appearance, without repeats."""
    seen: list[str] = []
    for match in matches:
        if match.group == group and match.concept not in seen:
            seen.append(match.concept)
    return seen
