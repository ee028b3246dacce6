"""How much a case, and a file read to make one, may hold: the one set of numbers every door
(``kbq ingest``, the importers, ``POST/PUT /v1/cases``) applies, through :mod:`kb.models`.

Each limit sits far above the largest value in the bundled cases (in brackets), so no real
case meets it, while a case that does is refused before it costs the index anything: a
50 MB case once held a query for 900 s at 7.3 GB.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CaseFileError

NAME_CHARS = 200  # a name, version, tag, metric, key or id-like value [50]
LINE_CHARS = 1_000  # one line: a title, a source, a user's query, a config value [214]
TEXT_CHARS = 20_000  # free text: the symptom, a cause, a fix, a note, a phrasing [553]
ITEMS = 200  # entries of any list or mapping (causes, tags, config...) [16]
CASE_TEXT_BYTES = 256 * 1024  # all the text of one case together, in UTF-8 [5.8 KB]
CASE_FILE_BYTES = 1 << 20  # a case file, checked before it is parsed [5.8 KB]; as the API's body cap
SOURCE_FILE_BYTES = 4 << 20  # an article or a GitHub thread an importer drafts from
COUNT_MAX = 1_000_000  # accelerators in one run [8]
NODES_MAX = 100_000  # machines in one run [4]
STEP_MAX = 10**12  # a training step [20,000]
# A config integer [2,969,526]: the largest any JSON reader (JavaScript's numbers) keeps exactly.
CONFIG_INT_MAX = 2**53


def read_text(path: Path, limit: int) -> str:
    """The UTF-8 text of a file of at most ``limit`` bytes, or one line saying what is wrong.

    Never reads more than ``limit + 1`` bytes, so an oversized file costs nothing however
    large it is; an undecodable byte is named by line and byte offset.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as err:
        raise CaseFileError(f"{path}: cannot read: {err.strerror or err}") from None
    if len(raw) > limit:
        raise CaseFileError(f"{path}: larger than the limit of {limit:,} bytes")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not text
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CaseFileError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
