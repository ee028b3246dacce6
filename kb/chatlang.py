"""Which language a chat turn is answered in.

A conversation is answered in the language it started in. Its first message decides,
by :func:`kb.lexicon.detect_language` over the lines the user wrote (see
:func:`prose_lines`), so a Chinese sentence above an English traceback is a Chinese
report. Later messages switch the language only when they clearly are written in the
other one: most of their prose lines are in it, and there is enough of it
(``language.min_chinese_chars`` Chinese characters, or ``language.min_english_words``
English words made of letters only, in ``kb/data/chat.yaml``). So the replies that a
conversation is made of never switch it: a bare identifier ('LLaMA-Factory'), a number
or a numbered answer ('2', '选 2'), a pasted log or traceback, a config dump, or one
line in the other language inside a longer report.
"""

from __future__ import annotations

import re

from .lexicon import CJK_CHARS, detect_language
from .report import _LINE_PREFIX, _RANK_TAG, _TB_FRAME, _TB_HEADER, ANSI_ESCAPE

LANGUAGES = ("en", "zh")

_FENCE = re.compile(r"\s*(?:```|~~~)")
_INDENTED = re.compile(r"(?: {4}|\t)")  # a Markdown code block, a traceback's source lines
# 'RuntimeError: ...', 'torch.OutOfMemoryError: ...', 'UserWarning: ...', 'error: ...'
_EXCEPTION = re.compile(r"\s*(?:[a-z_][a-z0-9_.]*)?(?:error|exception|warning|interrupt)\b\s*(?:[:：(]|$)", re.I)
# A command line or a prompt: '$ pip install ...', '>>> import torch', 'torchrun --nproc ...'
_COMMAND = re.compile(r"\s*(?:\$|>>>|\.\.\.|#!)\s|.*\s--[a-z]")
# A setting: one name, ':' or '=', and a short value ('lr: 1e-5', 'zero_stage=3').
_SETTING = re.compile(r"\s*[-*]?\s*`?[A-Za-z0-9_.\-/]+`?\s*[:=]\s*\S+(?:\s+\S+){0,2}\s*$")
_CJK = re.compile(f"[{CJK_CHARS}]")
# An English word of prose: letters only, not glued to digits or joined into a name.
_PLAIN_WORD = re.compile(r"(?<![\w\-./])[A-Za-z]{2,}(?:'[a-z]+)?(?![\w\-./])")


def _is_material(line: str) -> bool:
    """Whether a line is pasted material (log, traceback, code, settings), not something the user said."""
    if _INDENTED.match(line) or _TB_HEADER.match(line) or _TB_FRAME.match(line):
        return True
    if _LINE_PREFIX.match(line) or _RANK_TAG.match(line.lstrip()):
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


def message_language(text: str) -> str:
    """The language of a whole message: that of its prose, or of all of it when it is only pasted material."""
    prose = prose_lines(text)
    return detect_language("\n".join(prose) if prose else text)


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
    prose = prose_lines(text)
    if not prose:
        return current
    other = "en" if current == "zh" else "zh"
    in_other = [line for line in prose if detect_language(line) == other]
    if 2 * len(in_other) <= len(prose) or detect_language("\n".join(prose)) != other:
        return current
    return other if _enough(in_other, other, settings) else current
