"""Checks on query text before any work is done, each failing with one clear line."""

from __future__ import annotations

import re

from .errors import QueryError
from .report import ANSI_ESCAPE as _ANSI

# A pasted issue with its environment block fits easily; a whole training log does not.
MAX_QUERY_CHARS = 16384
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
    control = _CONTROL.search(query)
    if control:
        raise QueryError(
            f"query contains a binary control character (0x{ord(control.group()):02x} at character {control.start()}); give plain text"
        )
    text = query.strip()
    if not text:
        raise QueryError('empty query: describe the symptom, e.g. kbq "gemma3 loss 70 zero3"')
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(
            f"query too long: {len(text)} characters (limit {MAX_QUERY_CHARS}); paste the symptom and key settings, not a whole log"
        )
    return text
