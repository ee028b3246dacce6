"""Draft cases from GitHub issue threads, as printed by
``gh issue view N --json title,body,comments,labels,url,createdAt`` (one object or a list).

* the reporter's text (code blocks and the environment block removed) is the symptom;
* the environment block ("System Info", "Environment", the ``- transformers version: x``
  lists that issue templates ask for) fills framework versions and hardware;
* comments by maintainers (OWNER, MEMBER, COLLABORATOR) or that announce a fix
  become fix candidates; one is marked confirmed when a later comment says it
  worked. Sentences in those comments that explain a cause become causes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import CaseFileError
from ..lexicon import Lexicon, normalize
from ..limits import SOURCE_FILE_BYTES, read_text
from ..models import Case
from .drafts import DraftParts, build_draft, first_sentences, slugify

MAINTAINER_ROLES = {"OWNER", "MEMBER", "COLLABORATOR"}
_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_ENV_HEADING = re.compile(r"^\s*(#{1,6}\s*)?(system info|environment|env info|环境信息|运行环境|系统信息)\b.*$", re.IGNORECASE | re.MULTILINE)
_NEXT_HEADING = re.compile(r"^\s*#{1,6}\s+\S", re.MULTILINE)
_VERSION_LINE = re.compile(r"^\s*[-*]?\s*`?([A-Za-z][\w .\-/]*?)`?\s+version(?:\s*\([^)]*\))?\s*[:：]\s*`?([^`\s(]+)", re.IGNORECASE | re.MULTILINE)
_GPU_LINE = re.compile(r"^\s*[-*]?\s*(?:gpu type|gpu model|gpu|accelerator|npu type)\s*[:：]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_GPU_COUNT_LINE = re.compile(r"^\s*[-*]?\s*(?:number of gpus|gpu count|num_gpus|gpu数量|卡数)\s*[:：]\s*(\d+)", re.IGNORECASE | re.MULTILINE)
_FIX_ANNOUNCE = re.compile(r"\b(fixed|fixes|solved|resolved|workaround|the fix|should work|try (?:to |setting |using )|please (?:update|upgrade|use|set|try))\b|解决|修复|改成|试试|升级|更新到", re.IGNORECASE)
_CONFIRMATION = re.compile(r"\b(it works|works now|worked|that fixed|this fixed|solved|resolved|thanks?,? (?:it|that) work)|解决了|可以了|成功了|好了|有效", re.IGNORECASE)
_CAUSE = re.compile(r"\b(because|caused by|due to|the reason|root cause|is that)\b|原因|导致|是因为|由于", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[。！？!?])|(?<=\.)\s+|\n+")
_ISSUE_URL = re.compile(r"github\.com/([^/]+)/([^/]+)/(?:issues|pull)/(\d+)")


def _without_code(text: str) -> str:
    return _CODE_BLOCK.sub(" ", text or "")


def split_environment(body: str) -> tuple[str, str]:
    """(the body without its environment section and heading, the environment section)."""
    heading = _ENV_HEADING.search(body)
    if not heading:
        return body, ""
    rest = body[heading.end():]
    following = _NEXT_HEADING.search(rest)
    block = rest[: following.start()] if following else rest
    return body[: heading.start()] + (rest[following.start():] if following else ""), block


_HEADING_LINE = re.compile(r"^\s*#{1,6}\s*", re.MULTILINE)


def read_environment(body: str, lexicon: Lexicon) -> tuple[dict[str, str], str | None, int | None]:
    """Library versions, accelerator and GPU count stated in the environment block."""
    block = split_environment(body)[1] or body
    libraries: dict[str, str] = {}
    for name, version in _VERSION_LINE.findall(block):
        key = lexicon.resolve("framework", name) or normalize(name).strip().replace(" ", "-")
        if key in ("python", "platform", "os"):
            continue
        libraries.setdefault(key, version.strip().rstrip(",;"))
    accelerator = None
    gpu = _GPU_LINE.search(block)
    if gpu:
        accelerator = lexicon.resolve("accelerator", gpu.group(1)) or gpu.group(1).strip()[:60]
    count = _GPU_COUNT_LINE.search(block)
    return libraries, accelerator, int(count.group(1)) if count else None


def _author(comment: dict[str, Any]) -> str:
    author = comment.get("author") or {}
    return author.get("login", "") if isinstance(author, dict) else str(author)


def fix_candidates(comments: list[dict[str, Any]]) -> tuple[list[tuple[str, bool]], list[str]]:
    """Fix candidates (text, confirmed) and cause sentences from the discussion."""
    fixes: list[tuple[str, bool]] = []
    causes: list[str] = []
    for position, comment in enumerate(comments):
        text = _without_code(comment.get("body", "")).strip()
        if not text:
            continue
        maintainer = str(comment.get("authorAssociation", "")).upper() in MAINTAINER_ROLES
        if not (maintainer or _FIX_ANNOUNCE.search(text)):
            continue
        later = comments[position + 1 :]
        confirmed = any(_CONFIRMATION.search(c.get("body", "")) and _author(c) != _author(comment) for c in later)
        fixes.append((first_sentences(text, 400), confirmed))
        for sentence in _SENTENCES.split(text):
            if _CAUSE.search(sentence) and 12 < len(sentence.strip()) < 400:
                causes.append(sentence.strip())
    return fixes[:6], list(dict.fromkeys(causes))[:4]


def parse_issue(issue: dict[str, Any], where: str, lexicon: Lexicon) -> Case:
    for key in ("title", "url"):
        if not isinstance(issue.get(key), str) or not issue[key].strip():
            raise CaseFileError(f"{where}: field '{key}': missing; expected the JSON of `gh issue view --json title,body,comments,labels,url,createdAt`")
    url = issue["url"].strip()
    located = _ISSUE_URL.search(url)
    case_id = slugify(f"{located.group(2)}-{located.group(3)}") if located else slugify(issue["title"])
    body = issue.get("body") or ""
    comments = issue.get("comments") or []
    if not isinstance(comments, list):
        raise CaseFileError(f"{where}: field 'comments': expected a list")
    libraries, accelerator, count = read_environment(body, lexicon)
    report = _HEADING_LINE.sub("", _without_code(split_environment(body)[0]))
    fixes, causes = fix_candidates(comments)
    framework = lexicon.resolve("framework", located.group(2)) if located else None
    labels = [label.get("name", "") if isinstance(label, dict) else str(label) for label in issue.get("labels") or []]
    all_text = "\n".join([issue["title"], report, *(_without_code(c.get("body", "")) for c in comments)])
    parts = DraftParts(
        id=case_id,
        title=first_sentences(issue["title"], 200),
        symptom=first_sentences(report, 900) or issue["title"],
        body=all_text,
        headline=f"{issue['title']}\n{report}",
        sources=[url],
        causes=causes,
        fixes=fixes,
        tags=[slugify(label) for label in labels if label.strip()],
        libraries=libraries,
        framework_hint=framework,
        accelerator_hint=accelerator,
        gpu_count_hint=count,
    )
    return build_draft(parts, lexicon, where)


def import_github(path: Path, lexicon: Lexicon) -> list[Case]:
    try:
        data = json.loads(read_text(path, SOURCE_FILE_BYTES))
    except json.JSONDecodeError as err:
        raise CaseFileError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    issues = data if isinstance(data, list) else [data]
    if not issues or not all(isinstance(item, dict) for item in issues):
        raise CaseFileError(f"{path}: expected an issue object or a list of them")
    return [parse_issue(issue, f"{path}[{i}]" if isinstance(data, list) else str(path), lexicon) for i, issue in enumerate(issues)]
