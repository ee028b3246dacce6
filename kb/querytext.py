"""Checks on text from users (queries, and any field a door stores) before any work is done,
each failing with one clear line."""

from __future__ import annotations

import re

from .errors import QueryError
from .report import ANSI_ESCAPE as _ANSI

# A pasted issue with its environment block fits easily; a whole training log does not.
MAX_QUERY_CHARS = 16384
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# What a terminal may act on: C0 (but tab and line feed unless one line is wanted), DEL and C1,
# where 0x9b is a one-character CSI.
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_UNSHOWN_IN_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f]")


def shown(text: str, *, one_line: bool = False) -> str:
    """``text`` with each control character a terminal would act on written as an escape
    (``\\x1b``); with ``one_line``, tabs and line breaks too. For text kbq did not write
    (stored cases, input quoted in a message) on its way to a person."""
    return (_UNSHOWN_IN_A_LINE if one_line else _UNSHOWN).sub(lambda found: f"\\x{ord(found.group()):02x}", text)


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
