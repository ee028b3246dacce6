"""Checks on text from users (queries, and any field a door stores) before any work is done,
each failing with one clear line."""

from __future__ import annotations

import re
from typing import Any

from .errors import QueryError
from .report import ANSI_ESCAPE as _ANSI

# A pasted issue with its environment block fits easily; a whole training log does not.
MAX_QUERY_CHARS = 16384
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def control_character(text: str) -> str | None:
    """What makes ``text`` other than plain text, or None.

    NUL, DEL and the C0 controls other than tab, newline and carriage return are binary,
    never part of a report; and SQLite stores a NUL that PostgreSQL refuses, so every door
    refuses them the same way instead of letting the backend decide.
    """
    found = _CONTROL.search(text)
    if found is None:
        return None
    return f"contains a binary control character (0x{ord(found.group()):02x} at character {found.start()})"


def first_control_character(document: Any) -> tuple[str, str] | None:
    """The first string of a JSON-like document, field names included, that is not plain text:
    its field path (``fixes[0].action``, as case validation names fields) and what is wrong.

    Walked with a stack rather than recursion: a request body can nest as deep as its parser allows.
    """
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            problem = control_character(value)
            if problem is not None:
                return where or "(top level)", problem
        elif isinstance(value, dict):
            for key in value:
                problem = control_character(key) if isinstance(key, str) else None
                if problem is not None:
                    return where or "(top level)", f"has a field name that {problem}"
            pending += [(f"{where}.{key}" if where else str(key), item) for key, item in reversed(value.items())]
        elif isinstance(value, list):
            pending += [(f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value)))]
    return None


def validate_query(query: str) -> str:
    """The query stripped of surrounding white space, or QueryError saying what is wrong.

    Terminal colour codes are removed first: a log pasted from a terminal carries them,
    and they are formatting, not binary data.
    """
    if "\x1b" in query:
        query = _ANSI.sub("", query)
    if _SURROGATE.search(query):
        position = _SURROGATE.search(query).start()
        byte = ord(query[position]) - 0xDC00 if 0xDC80 <= ord(query[position]) <= 0xDCFF else None
        shown = f" 0x{byte:02x}" if byte is not None else ""
        raise QueryError(f"query is not valid UTF-8 text (undecodable byte{shown} at character {position})")
    control = control_character(query)
    if control:
        raise QueryError(f"query {control}; give plain text")
    text = query.strip()
    if not text:
        raise QueryError('empty query: describe the symptom, e.g. kbq "gemma3 loss 70 zero3"')
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(
            f"query too long: {len(text)} characters (limit {MAX_QUERY_CHARS}); paste the symptom and key settings, not a whole log"
        )
    return text
