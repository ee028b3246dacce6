"""An issue as the bot sees it: where it is (``owner/repo#12``) and the text to search."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..querytext import MAX_QUERY_CHARS
from ..report import clean_report

# GitHub's own limits: an owner is 1-39 letters, digits or hyphens; a repository name
# up to 100 letters, digits, '.', '_' or '-'. Issue numbers fit PostgreSQL's integer.
_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_REPO = r"[A-Za-z0-9._-]{1,100}"
_SHORT_REF = re.compile(rf"^({_OWNER})/({_REPO})#([0-9]{{1,10}})$")
_URL_REF = re.compile(rf"^https?://(?:www\.)?github\.com/({_OWNER})/({_REPO})/(?:issues|pull)/([0-9]{{1,10}})/?(?:[?#].*)?$")
MAX_ISSUE_NUMBER = 2**31 - 1
REF_USAGE = "give the issue as OWNER/REPO#NUMBER (e.g. hiyouga/LLaMA-Factory#7416) or as its https://github.com/OWNER/REPO/issues/NUMBER URL"

# Text that cannot be searched: lone surrogates (JSON can carry them) and binary controls.
_UNSEARCHABLE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class IssueRef:
    owner: str
    repo: str
    number: int

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"

    def __str__(self) -> str:
        return f"{self.owner}/{self.repo}#{self.number}"


@dataclass(frozen=True)
class Issue:
    ref: IssueRef
    title: str
    body: str
    url: str | None = None


def valid_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ISSUE_NUMBER


def make_ref(owner: str, repo: str, number: Any) -> IssueRef | None:
    """The reference, or None when a part is not what GitHub allows."""
    if not (isinstance(owner, str) and isinstance(repo, str) and valid_number(number)):
        return None
    if not (re.fullmatch(_OWNER, owner) and re.fullmatch(_REPO, repo)) or repo in (".", ".."):
        return None
    return IssueRef(owner, repo, number)


def parse_ref(text: str) -> IssueRef:
    """``owner/repo#12`` or ``https://github.com/owner/repo/issues/12``, else UsageError naming the input."""
    given = (text or "").strip()
    found = _SHORT_REF.match(given) or _URL_REF.match(given)
    ref = make_ref(found.group(1), found.group(2), int(found.group(3))) if found else None
    if ref is None:
        raise UsageError(f"not an issue reference: {given[:200]!r}; {REF_USAGE}")
    return ref


def search_text(issue: Issue) -> str:
    """What the bot searches: the title, then the body (the pasted report).

    A body longer than a query may be is cleaned first (kb.report drops templates, logs and
    tracebacks, keeping what the reporter wrote), then cut: an issue is answered from its
    beginning, where reporters describe the problem, rather than refused.
    """
    text = _UNSEARCHABLE.sub(" ", f"{issue.title.strip()}\n\n{issue.body or ''}").strip()
    if len(text) > MAX_QUERY_CHARS:
        text = clean_report(text).strip()
    return text[:MAX_QUERY_CHARS]
