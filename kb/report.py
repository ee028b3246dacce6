"""From a pasted report to the text worth searching.

People ask kbq by pasting a whole GitHub issue: a template with headings and
check boxes, a traceback with dozens of frames, log lines prefixed with ranks
and timestamps. Left in, that material swamps the few sentences that describe
the problem, and worse, it makes the parser see things that are not there
(``/opt/conda/...`` reads as the model OPT, ``[Rank 3]`` as LoRA rank 3,
``site-packages/deepspeed/runtime/zero/stage3.py`` as ZeRO-3).

:func:`clean_report` removes that material and keeps what the reporter said,
the final error line of each traceback, and key/value dumps (library versions
matter). It errs on the side of keeping text: everything it drops is a shape
that never describes the problem itself. A short one-line query is left as
typed except for rank tags and file paths, which mislead at any length.

Regular expressions that start with a literal (so the scan is fast), cheap
substring tests before the rare ones, and one pass over the lines only when a
traceback is present: a 16 KiB paste costs one to three milliseconds.
"""

from __future__ import annotations

import functools
import re
from typing import Iterator

# Up to this many characters, a query without line breaks is taken as typed.
SHORT_QUERY_CHARS = 300

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HTML_TAG = re.compile(r"</?(?:details|summary|br|p|pre|code|sup|sub|kbd)\s*/?>", re.I)

# Distributed-run tags: torch's '[rank3]:' and '[default0]:', DeepSpeed's '[Rank 3]',
# mpirun's '[1,0]<stderr>:'. Removed anywhere; they number processes, not settings.
RANK_TAG = re.compile(r"\[(?:rank|default|local_rank)\s*\d+\]:? ?|\[\d+,\d+\]<std(?:out|err)>: ?", re.I)

# File paths. Absolute (and ~/, ./, ../) paths of two or more parts; relative
# paths only when they end in a file extension, because 'Qwen/Qwen2-7B' is a
# model id, not a path. Found from their slashes (a literal, so the scan is
# fast) and extended leftwards by hand: a regex that starts with a repeated
# character class is slow on long words.
_CODE_EXT = re.compile(
    r"\.(?:py|pyc|pyx|pyi|so|dll|sh|bash|yaml|yml|json|jsonl|txt|md|c|cc|cpp|cu|cuh|h|hpp|log|toml|cfg|ini|"
    r"ipynb|whl|egg|bin|safetensors|pt|pth|ckpt|csv|parquet|arrow|tar|gz|zip)$",
    re.I,
)
_SLASH_RUN = re.compile(r"/[\w.@+%\-/]*")
_PATH_HEAD = re.compile(r"[\w.@+%~\-]*")  # matched on the reversed text, from the first slash leftwards
_LINE_SUFFIX = re.compile(r":\d+(?::\d+)?")
_WINDOWS_PATH = re.compile(r"[a-zA-Z]:\\[^\s\"'<>|*?]*")
_WINDOWS_PATH_SPACED = re.compile(r" [a-zA-Z]:\\[^\s\"'<>|*?]* ")
# Paths whose last part may name a model or project directory keep that part:
# '/data/models/Qwen2-7B-Instruct' leaves 'Qwen2-7B-Instruct'. Library code and
# installed packages go whole.
_LIBRARY_PATH = re.compile(r"site-packages|dist-packages|/lib/python|/lib64/|/usr/|/bin/|/include/|/conda/|/envs/", re.I)

# Prefixes that log handlers put before a message, at the start of a line.
LINE_PREFIX = re.compile(
    r"^(?:"
    r"[\w.\-]+:\d+:\d+ \[\d+\] "  # NCCL: host:pid:tid [device]
    r"|[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d+\s+\d+\s+[^\s\]]+\] ?"  # glog: W0501 12:00:00.123 4567 file.cpp:12]
    r"|\[?\d{4}[-/]\d{2}[-/]\d{2}[ T_]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?\]?[ \t]*(?:[-|,][ \t]*)?"
    r"|\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}[ \t]*(?:-[ \t]*)?"
    r"|\[?(?:INFO|WARNING|WARN|ERROR|DEBUG|CRITICAL|FATAL)(?![A-Za-z])(?:\|[\w./\-]+:\d+)?\]?[ \t]*(?:[-:|][ \t]*|>>[ \t]*)?"
    r"|\[[\w.\-]+\.py:\d+(?::\w+)?\][ \t]*"  # [logging.py:96:log_dist]
    r"|>>[ \t]*"
    r")+",
    re.M,
)
# Each prefix above has a clock or one of these in it, so the multi-line scan can be skipped.
_PREFIX_HINTS = ("INFO", "WARN", "ERROR", "DEBUG", "CRITICAL", "FATAL", ">>", ".py:", "] ")
# The patterns below start with a digit or a literal so the scan stays fast; the
# rarer ones only run when a cheap substring test says they can match.
_TIMESTAMP = re.compile(r"\d\d(?:\d\d[-/]\d\d[-/]\d\d[ T_]|/\d\d/\d{4} )\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?")
_HAS_CLOCK = re.compile(r":\d\d:\d\d")
_PROGRESS_BAR = re.compile(r"\d{1,3}%\|[^|\n]{0,120}\|\s*[\d.]+[kM]?/[\d.]+[kM]?(?:\s*\[[^\]\n]*\])?")
_HEX_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{9,}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}")  # uuids, hashes
_URL_QUERY = re.compile(r"(https?://[^\s?#<>\"')\]]+)[?#][^\s<>\"')\]]*")

# Python tracebacks: the header, the frames and what Python prints between chained exceptions.
TB_HEADER = re.compile(
    r"\s*(?:Traceback \(most recent call last\)"
    r"|During handling of the above exception, another exception occurred"
    r"|The above exception was the direct cause of the following exception):?\s*$"
)
# Python frames, and the C++ frames of torch's c10 errors ('frame #3: ... (0x7f.. in libc10.so)').
TB_FRAME = re.compile(r"\s*(?:File \"[^\"\n]*\", line \d+|frame #\d+:|Exception raised from \S+ at \S+)")
_TB_STARTS = ("Traceback", "During handling", "The above exception", 'File "', "frame #", "Exception raised from")
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?::|$)")

# Issue-template furniture, as whole lines: check boxes ('- [X] I have read the README...'),
# code fences, rules, and the headings every issue of a tracker shares ('### System Info',
# '_No response_', '### 期望行为 | Expected Behavior'). The text under a heading stays.
_TEMPLATE_HEADINGS = """
    reminder|system info|system information|environment|environment info|environment information|
    reproduction|to reproduce|steps to reproduce|steps to reproduce the behavior|reproduce|
    expected behavior|expected behaviour|expected result|actual behavior|actual behaviour|current behavior|
    others|other|additional context|additional information|anything else|describe the bug|bug description|
    description|who can help|information|tasks|motivation|your contribution|related issues|screenshots|
    logs|error log|error message|checklist|no response|
    is there an existing issue for this|is there an existing issue / discussion for this|
    is there an existing answer for this in faq|
    i have read the readme and searched the existing issues|
    当前行为|期望行为|预期行为|复现方法|复现步骤|运行环境|环境|环境信息|系统信息|备注|其他|其它|问题描述|
    错误日志|报错信息|是否已有关于该错误的issue或讨论|该问题是否在faq中有解答
"""


def _trie_pattern(words: list[str]) -> str:
    """One regex for many literal words, shaped as a trie so a line start costs a few steps, not one per word."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return body + "?" if len(branches) == 1 and len(branches[0]) == 1 else f"(?:{body})?"
        return body

    return build(trie)


_HEADING = _trie_pattern([h.strip() for h in _TEMPLATE_HEADINGS.split("|") if h.strip()])
_HEADING_END = r"[ \t*_:：?？.。!！]*"


@functools.cache
def _template_line() -> re.Pattern[str]:
    """Template headings, check boxes and fences, one line each. Compiled on first use
    (~3 ms): only a multi-line paste needs it, not every short query's start-up."""
    return re.compile(
        # '(?=(X*))\1' takes X* without giving anything back (an atomic group that Python 3.10
        # also has), so a line of ten thousand spaces or '#' is rejected in one step.
        r"^(?=([ \t]*))\1(?:"
        r"[-*+][ \t]*\[[ xX✓✔]\][ \t].*"
        r"|(?:```|~~~)[\w+\-.]*[ \t]*"
        r"|[=\-_*~#]{3,}[ \t]*"
        rf"|(?=([#>*_ \t]*))\2{_HEADING}{_HEADING_END}(?:\|[ \t*_]*{_HEADING}{_HEADING_END})*"
        r")$\n?",
        re.M | re.I,
    )


_SPACE_RUNS = re.compile(r"  +")
_BLANK_LINES = re.compile(r"\n[ ]*(?=\n)")
_NEWLINE_RUNS = re.compile(r"\n\n+")


def _path_replacement(path: str) -> str | None:
    """What a path-like token becomes: '' (dropped), its last part, or None (not a path: keep)."""
    head, _, _ = path.partition("/")
    parts = [part for part in path.split("/") if part and part not in ("~", ".", "..")]
    if not parts:
        return None
    if _CODE_EXT.search(parts[-1]):
        return ""
    if head not in ("", "~", ".", ".."):
        return None  # 'Qwen/Qwen2-7B', 'tokens/s', 'and/or', 'github.com/org/repo'
    if len(parts) < 2:
        return None  # '/tmp', '/s'
    return "" if _LIBRARY_PATH.search(path) else parts[-1]


def _strip_unix_paths(text: str) -> str:
    if "/" not in text:
        return text
    reversed_text = text[::-1]
    size = len(text)
    pieces: list[str] = []
    last = 0
    for run in _SLASH_RUN.finditer(text):
        start, end = run.span()
        begin = start - (_PATH_HEAD.match(reversed_text, size - start).end() - (size - start))
        if begin < last or (begin and text[begin - 1] in ":/\\"):
            continue  # a URL ('https://...') or inside something already handled
        trimmed = text[start:end].rstrip(".-")
        if len(trimmed) > 1 and not trimmed.endswith("/"):
            end = start + len(trimmed)  # sentence punctuation after a path, but not '/...'
        replacement = _path_replacement(text[begin:end])
        if replacement is None:
            continue
        suffix = _LINE_SUFFIX.match(text, end)  # 'trainer.py:2048'
        end = suffix.end() if suffix else end
        if not replacement and begin and text[begin - 1] == " " and text[end : end + 1] == " ":
            end += 1  # 'crash in /x/y.py with' -> 'crash in with'
        pieces += [text[last:begin], replacement]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def strip_paths_and_ranks(text: str) -> str:
    """Remove rank tags and file paths, the two things that mislead the parser in any query."""
    if "[" in text:
        text = RANK_TAG.sub("", text)
    if ":\\" in text:
        text = _WINDOWS_PATH_SPACED.sub(" ", text)
        text = _WINDOWS_PATH.sub("", text)
    return _strip_unix_paths(text)


def _drop_hex(match: re.Match[str]) -> str:
    """Hashes and ids: runs of hex with both letters and digits, standing alone."""
    token, text = match.group(), match.string
    start, end = match.span()
    if (start and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum()):
        return token
    has_letter = any(c in "abcdefABCDEF" for c in token)
    return " " if has_letter and any(c.isdigit() for c in token) else token


def _traceback_lines(lines: list[str]) -> Iterator[tuple[str, bool]]:
    """The lines outside tracebacks, each with whether it is the error line that ends one;
    the header, the frames and their source lines are left out."""
    state = "text"  # "text", "trace" (inside a traceback) or "frame" (just after a frame line)
    for line in lines:
        if line.lstrip().startswith(_TB_STARTS):
            if TB_HEADER.match(line):
                state = "trace"
                continue
            if TB_FRAME.match(line):
                state = "frame"
                continue
        ends = state != "text"
        if state == "frame":
            state = "trace"
            # The line under a frame is its source (indented or not, depending on how the
            # paste survived), unless the frame showed none and the exception follows.
            if not line.strip() or line[:1].isspace() or not _EXCEPTION_LINE.match(line):
                continue
            state = "text"
        elif state == "trace":
            if not line.strip() or line[:1].isspace():
                continue  # carets, wrapped source, '[Previous line repeated ...]'
            state = "text"  # the exception line ends the traceback
        yield line, ends


def _drop_tracebacks(lines: list[str]) -> list[str]:
    """Keep each traceback's final error line; drop the header, the frames and their source lines."""
    return [line for line, _ in _traceback_lines(lines)]


def traceback_errors(text: str) -> list[str]:
    """The error line that ends each Python traceback in ``text`` (rank tags removed), in order."""
    return [line.strip() for line, ends in _traceback_lines(RANK_TAG.sub("", text).split("\n")) if ends]


def clean_report(text: str) -> str:
    """The part of a query worth searching: see the module docstring for what goes and why."""
    if "\x1b" in text:
        text = ANSI_ESCAPE.sub("", text)
    if "\n" not in text and "\r" not in text and len(text) < SHORT_QUERY_CHARS:
        return strip_paths_and_ranks(text).strip()
    if "<!--" in text:
        text = HTML_COMMENT.sub("", text)
    if "[" in text:
        text = RANK_TAG.sub("", text)
    text = _BLANK_LINES.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    "))
    if _HAS_CLOCK.search(text) or any(hint in text for hint in _PREFIX_HINTS):
        text = LINE_PREFIX.sub("", text)
    text = _template_line().sub("", text)
    if "Traceback" in text or 'File "' in text or "frame #" in text:
        text = "\n".join(_drop_tracebacks(text.split("\n")))
    if "<" in text:
        text = _HTML_TAG.sub(" ", text)
    if "%|" in text:
        text = _PROGRESS_BAR.sub(" ", text)
    if _HAS_CLOCK.search(text):
        text = _TIMESTAMP.sub(" ", text)
    if "http" in text:
        text = _URL_QUERY.sub(r"\1", text)
    text = strip_paths_and_ranks(text)
    if "0x" in text or "0X" in text:
        text = _HEX_ADDRESS.sub(" ", text)
    text = _HEX_RUN.sub(_drop_hex, text)
    text = _SPACE_RUNS.sub(" ", text).replace(" \n", "\n").replace("\n ", "\n")
    return _NEWLINE_RUNS.sub("\n", text).strip()
