"""Which language a chat turn is answered in.

A conversation is answered in the language it started in. Its first message decides,
by :func:`kb.lexicon.detect_language` over what the user wrote in words: the lines that
are not pasted material (:func:`prose_lines`), and of those, the Chinese characters and
the English words of letters only, not names such as 'LLaMA-Factory', 'zero3' or
'self.padding_side'. So a Chinese sentence above an English traceback, or a Chinese
report naming many settings, is Chinese; an English report with one Chinese line is
English. Later messages switch the language only when they clearly are written in the
other one: most of their lines with words are in it, and there is enough of it
(``language.min_chinese_chars`` Chinese characters, or ``language.min_english_words``
English words, in ``kb/data/chat.yaml``). So the replies that a conversation is made of
never switch it: a bare name, a number or a numbered answer ('2', '选 2'), a pasted log
or traceback, a config dump, or one line in the other language inside a longer report.
"""

from __future__ import annotations

import re

from .lexicon import CJK_CHARS, detect_language
from .report import LINE_PREFIX, RANK_TAG, TB_FRAME, TB_HEADER, ANSI_ESCAPE

LANGUAGES = ("en", "zh")

_FENCE = re.compile(r"\s*(?:```|~~~)")
_INDENTED = re.compile(r"(?: {4}|\t)")  # a Markdown code block, a traceback's source lines
# 'RuntimeError: ...', 'torch.OutOfMemoryError: ...', 'UserWarning: ...', 'error: ...'
_EXCEPTION = re.compile(r"\s*(?:[a-z_][a-z0-9_.]*)?(?:error|exception|warning|interrupt)\b\s*(?:[:：(]|$)", re.I)
# A command line or a prompt: '$ pip install ...', '>>> import torch', 'torchrun --nproc ...'
_COMMAND = re.compile(r"\s*(?:\$|>>>|\.\.\.|#!)\s|.*\s--[a-z]")
# A setting: one name, ':' or '=', and a short value ('lr: 1e-5', 'zero_stage=3').
_SETTING = re.compile(r"\s*[-*]?\s*`?[A-Za-z0-9_.\-/]+`?\s*[:=]\s*\S+(?:\s+\S+){0,2}\s*$")
# An exception's name and its message, to the end of the line, inside a line of prose.
_QUOTED_ERROR = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception|Warning)\b\s*[:：].*")
_CJK = re.compile(f"[{CJK_CHARS}]")
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
# An English word of prose: letters only, not part of a name ('LLaMA-Factory', 'zero3',
# 'self.padding_side'), a quoted value or a call ('assert(').
_PLAIN_WORD = re.compile(r"(?<![\w\-./'\"`=])[A-Za-z]{2,}(?:'[a-z]+)?(?![\w\-./'\"`=(])")


def _is_material(line: str) -> bool:
    """Whether a line is pasted material (log, traceback, code, settings), not something the user said."""
    if _INDENTED.match(line) or TB_HEADER.match(line) or TB_FRAME.match(line):
        return True
    if LINE_PREFIX.match(line) or RANK_TAG.match(line.lstrip()):
        return True
    if _EXCEPTION.match(line) or _COMMAND.match(line) or _SETTING.match(line):
        return True
    visible = [ch for ch in line if not ch.isspace()]
    letters = sum(1 for ch in visible if ch.isalpha())
    return letters * 2 < len(visible)  # mostly digits and symbols: numbers, dicts, tensors, bars


def prose_lines(text: str) -> list[str]:
    """The lines of a message that the user wrote, without code blocks and pasted material."""
    if "\x1b" in text:
        text = ANSI_ESCAPE.sub("", text)
    kept: list[str] = []
    in_code = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if in_code or not any(ch.isalpha() for ch in line) or _is_material(line):
            continue
        kept.append(line)
    return kept


def _words(text: str) -> str:
    """The words of a text, for telling its language: its Chinese and its English words, without
    names, and without an error message quoted after its exception's name ('报错：ValueError: ...')."""
    text = _QUOTED_ERROR.sub(" ", text)
    return " ".join(_CJK_RUN.findall(text) + _PLAIN_WORD.findall(text))


def message_language(text: str) -> str:
    """The language of a whole message: that of the words it says, or of the words in its pasted
    material when it says none, or of all of it when it has no words at all (only names)."""
    words = _words("\n".join(prose_lines(text))) or _words(text)
    return detect_language(words or text)


def _enough(lines: list[str], language: str, settings: dict) -> bool:
    text = "\n".join(lines)
    if language == "zh":
        return len(_CJK.findall(text)) >= int(settings["min_chinese_chars"])
    return len(_PLAIN_WORD.findall(text)) >= int(settings["min_english_words"])


def turn_language(text: str, current: str | None, settings: dict) -> str:
    """The language to answer ``text`` in, in a conversation answered in ``current`` so far
    (None before its first message); ``settings`` is chat.yaml's ``language`` section."""
    if current not in LANGUAGES:
        return message_language(text)
    spoken = [(line, _words(line)) for line in prose_lines(text)]
    spoken = [(line, words) for line, words in spoken if words]
    other = "en" if current == "zh" else "zh"
    in_other = [line for line, words in spoken if detect_language(words) == other]
    if 2 * len(in_other) <= len(spoken) or detect_language(" ".join(words for _, words in spoken)) != other:
        return current
    return other if _enough(in_other, other, settings) else current
