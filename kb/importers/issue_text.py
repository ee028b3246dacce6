"""A GitHub issue body taken apart: the reporter's account, the environment, the logs.

Bug-report templates wrap a report in furniture that is the same in every
issue of a tracker: check boxes ("I have searched the existing issues"),
headings, "No response" for an empty field, prompts left as written. A draft's
symptom should be the reporter's words, so the body is read section by section
(the words that name sections and furniture are data:
``kb/data/issue_templates.yaml``):

* environment sections ("System Info") are kept apart, for versions and GPUs;
* sections that never describe the problem (check lists, who to tag, the
  expected behaviour) are dropped;
* the rest is the report: its code blocks go to the logs, its furniture lines
  are dropped, and what is left is cleaned like a pasted query
  (:func:`kb.report.clean_report`: traceback frames, rank tags, paths).

The error line that ends the last traceback (``RuntimeError: CUDA out of
memory...``) is kept aside, so the symptom can hold it even though the
traceback itself, in a code block or past the symptom's length, is gone.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from ..paths import data_file
from ..report import HTML_COMMENT, RANK_TAG, clean_report, traceback_errors
from .drafts import first_sentences

TEMPLATES_FILE = "issue_templates.yaml"
ERROR_CHARS = 300  # the longest error line a symptom keeps

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)[\s#]*$")
_BOLD_HEADING = re.compile(r"^\s*\*\*([^*].*?)\*\*\s*[:：]?\s*$")
_LEADING_SYMBOLS = re.compile(r"^[^\w一-鿿]+")
_REMARK = re.compile(r"\s*[(（][^)）]*[)）]")
_TRAILING = re.compile(r"[\s:：.。?？!！…*_]+$")
# An error line standing on its own (a traceback cut before it began): 'ValueError: ...',
# 'torch.OutOfMemoryError: CUDA out of memory', 'AssertionError'.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)(?::\s.*|:?)$")


@dataclass(frozen=True)
class Templates:
    environment: tuple[str, ...]
    skipped: tuple[str, ...]
    template: tuple[str, ...]
    boilerplate: re.Pattern[str]
    bot_logins: re.Pattern[str]
    bot_comments: re.Pattern[str]
    wrapper_errors: frozenset[str]


@functools.cache
def templates() -> Templates:
    import yaml

    with open(data_file(TEMPLATES_FILE), encoding="utf-8") as handle:
        raw = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

    def words(key: str) -> tuple[str, ...]:
        return tuple(str(word).lower() for word in raw.get(key) or [])

    def either(key: str) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{pattern})" for pattern in raw.get(key) or []) or r"(?!)", re.IGNORECASE)

    return Templates(words("environment_headings"), words("skipped_headings"), words("template_headings"),
                     either("boilerplate_lines"), either("bot_logins"), either("bot_comments"),
                     frozenset(raw.get("wrapper_errors") or []))


def _heading(line: str) -> str | None:
    """The text of a heading line (Markdown or a bold-only line), or None."""
    found = _MD_HEADING.match(line) or _BOLD_HEADING.match(line)
    return found.group(1) if found else None


def _names(heading: str, phrases: tuple[str, ...]) -> bool:
    """Whether the heading is one of ``phrases``: equal to one, or, for a phrase of two words or
    more, starting with it. Emoji, a remark in brackets and end punctuation do not count, and
    a bilingual heading ('期望行为 | Expected Behavior') matches by either half."""
    for part in heading.split("|"):
        text = _TRAILING.sub("", _REMARK.sub("", _LEADING_SYMBOLS.sub("", part.strip()))).lower()
        if any(text == phrase or (" " in phrase and text.startswith(phrase + " ")) for phrase in phrases):
            return True
    return False


def _kind(heading: str, known: Templates) -> str:
    if _names(heading, known.environment):
        return "environment"
    if _names(heading, known.skipped):
        return "skipped"
    if _names(heading, known.template):
        return "template"
    return "own"


@dataclass(frozen=True)
class IssueBody:
    report: str  # the reporter's account, as text a symptom can be made of
    environment: str  # the environment sections as pasted (code blocks included)
    logs: str  # code blocks and logs of the report's sections
    error: str | None  # the error line of the last traceback: a worker's rather than a launcher's


def split_body(body: str) -> IssueBody:
    """Read an issue body section by section (see the module docstring)."""
    known = templates()
    text = HTML_COMMENT.sub("", body.replace("\r\n", "\n").replace("\r", "\n"))
    kind = "own"
    prose: list[str] = []
    logs: list[str] = []
    environment: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        opened = _FENCE.match(line)
        if fence is None:
            heading = _heading(line)
            if heading is not None:
                kind = _kind(heading, known)
                if kind == "own":
                    prose.append(heading)
                continue
        if kind == "environment":
            environment.append(line)
        elif kind == "skipped":
            pass
        elif fence is not None or opened:
            if not opened:
                logs.append(line)
        elif not known.boilerplate.search(line.strip()):
            prose.append(line)
        if opened and (fence is None or opened.group(1).startswith(fence)):
            fence = None if fence is not None else opened.group(1)[0] * 3
    raw = "\n".join([*prose, *logs])
    return IssueBody(clean_report("\n".join(prose)), "\n".join(environment), "\n".join(logs), error_line(raw, known))


def error_line(text: str, known: Templates | None = None) -> str | None:
    """The error line of the last traceback in ``text`` (a launcher's report of a failed worker
    only when no worker's error is there); failing a traceback, the last error line standing alone."""
    known = known or templates()
    found = traceback_errors(text) or [
        line.strip() for line in RANK_TAG.sub("", text).split("\n") if _ERROR_LINE.match(line.strip())
    ]
    own = [line for line in found if line.split(":", 1)[0].rsplit(".", 1)[-1] not in known.wrapper_errors]
    chosen = (own or found or [None])[-1]
    return chosen[:ERROR_CHARS].rstrip() if chosen else None


def symptom(report: str, error: str | None, fallback: str, limit: int = 900) -> str:
    """Whole sentences of the report, then the error line unless the kept text already says it."""
    if not error:
        return first_sentences(report, limit) or fallback
    text = first_sentences(report, limit - len(error) - 1) if report else ""
    if error in text or (clean_report(error) and clean_report(error) in text):
        return text
    return f"{text} {error}".strip()


def is_bot(comment: dict[str, Any]) -> bool:
    """A comment by a bot account, or a bot's notice (stale, auto-closed) posted as a person."""
    known = templates()
    author = comment.get("author") or {}
    login = author.get("login", "") if isinstance(author, dict) else str(author)
    if isinstance(author, dict) and (author.get("is_bot") or str(author.get("type", "")).lower() == "bot"):
        return True
    return bool(known.bot_logins.search(login) or known.bot_comments.search(comment.get("body") or ""))
