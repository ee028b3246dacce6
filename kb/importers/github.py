"""Draft cases from GitHub issue threads, as printed by
``gh issue view N --json title,body,author,comments,labels,url,createdAt`` (one object or a list).

* the reporter's text, without template furniture, code blocks and the environment
  section (:mod:`kb.importers.issue_text`), is the symptom, with the error line that
  ends the last traceback;
* the environment section ("System Info", "Environment", the ``- transformers version: x``
  lists that issue templates ask for) fills framework versions and hardware. GPU type
  and count are read from the first of: the environment section, the reporter's text,
  the reporter's code and logs, the reporter's comments, other people's comments;
  a count someone else mentions never overrides the reporter's own;
* comments by maintainers (OWNER, MEMBER, COLLABORATOR) or that announce a fix
  become fix candidates; one is marked confirmed when a later comment says it
  worked. Sentences in those comments that explain a cause become causes. Bots'
  comments are neither.
* the draft's id and source name the repository by its current name
  (``kb/data/repo_renames.yaml``), so a thread gives the same id however it is linked.
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
from ..parser import extract_gpu_count
from ..threads import github_thread
from .drafts import DraftParts, build_draft, first_sentences, slugify
from .issue_text import IssueBody, is_bot, split_body, symptom

MAINTAINER_ROLES = {"OWNER", "MEMBER", "COLLABORATOR"}
_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_VERSION_LINE = re.compile(r"^\s*[-*]?\s*`?([A-Za-z][\w .\-/]*?)`?\s+version(?:\s*\([^)]*\))?\s*[:：]\s*`?([^`\s(]+)", re.IGNORECASE | re.MULTILINE)
_GPU_LINE = re.compile(r"^\s*[-*]?\s*(?:gpu type|gpu model|gpu|accelerator|npu type)\s*[:：]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_FIX_ANNOUNCE = re.compile(r"\b(fixed|fixes|solved|resolved|workaround|the fix|should work|try (?:to |setting |using )|please (?:update|upgrade|use|set|try))\b|解决|修复|改成|试试|升级|更新到", re.IGNORECASE)
_CONFIRMATION = re.compile(r"\b(it works|works now|worked|that fixed|this fixed|solved|resolved|thanks?,? (?:it|that) work)|解决了|可以了|成功了|好了|有效", re.IGNORECASE)
_CAUSE = re.compile(r"\b(because|caused by|due to|the reason|root cause|is that)\b|原因|导致|是因为|由于", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[。！？!?])|(?<=\.)\s+|\n+")


def _without_code(text: str) -> str:
    return _CODE_BLOCK.sub(" ", text or "")


def read_environment(block: str, lexicon: Lexicon) -> tuple[dict[str, str], str | None]:
    """Library versions and accelerator stated in ``block`` (the environment section, else the whole body)."""
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
    return libraries, accelerator


def first_hardware(texts: list[str], lexicon: Lexicon) -> tuple[str | None, int | None]:
    """The accelerator and GPU count of the first text, in order of trust, that states each.
    Within one text the largest count wins ('单卡正常，8卡报错' is about the 8-GPU run)."""
    accelerator: str | None = None
    count: int | None = None
    for text in texts:
        if not text.strip() or (accelerator and count):
            continue
        norm = normalize(text)
        matches = [m for m in lexicon.find(norm) if m.group == "accelerator"]
        accelerator = accelerator or (matches[0].concept if matches else None)
        counts = extract_gpu_count(norm, lexicon, matches)
        count = count or (max(counts) if counts else None)
    return accelerator, count


def _login(author: Any) -> str:
    return str(author.get("login", "")) if isinstance(author, dict) else str(author or "")


def _author(comment: dict[str, Any]) -> str:
    return _login(comment.get("author"))


def _by_trust(body: IssueBody, people: list[dict[str, Any]], reporter: str) -> list[str]:
    """The texts hardware is read from, most trusted first: the environment section, the
    reporter's words, the reporter's code and logs, the reporter's comments, then the
    words of everyone else's comments (their logs are of their own runs)."""
    own = [c.get("body") or "" for c in people if reporter and _author(c) == reporter]
    others = [_without_code(c.get("body") or "") for c in people if not reporter or _author(c) != reporter]
    return [body.environment, body.report, body.logs, *own, *others]


def fix_candidates(comments: list[dict[str, Any]]) -> tuple[list[tuple[str, bool]], list[str]]:
    """Fix candidates (text, confirmed) and cause sentences from the discussion."""
    fixes: list[tuple[str, bool]] = []
    causes: list[str] = []
    for position, comment in enumerate(comments):
        text = _without_code(comment.get("body", "")).strip()
        if not text or is_bot(comment):
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
            raise CaseFileError(f"{where}: field '{key}': missing; expected the JSON of `gh issue view --json title,body,author,comments,labels,url,createdAt`")
    url = issue["url"].strip()
    thread = github_thread(url)
    case_id = slugify(f"{thread.repo}-{thread.number}") if thread else slugify(issue["title"])
    body = issue.get("body") or ""
    comments = issue.get("comments") or []
    if not isinstance(body, str):
        raise CaseFileError(f"{where}: field 'body': expected text")
    if not isinstance(comments, list) or not all(isinstance(c, dict) for c in comments):
        raise CaseFileError(f"{where}: field 'comments': expected a list of comment objects")
    for position, comment in enumerate(comments):
        if not isinstance(comment.get("body") or "", str):
            raise CaseFileError(f"{where}: field 'comments[{position}].body': expected text")
    people = [c for c in comments if not is_bot(c)]
    parts_of_body = split_body(body)
    libraries, accelerator = read_environment(parts_of_body.environment or body, lexicon)
    report = parts_of_body.report
    fixes, causes = fix_candidates(people)
    framework = lexicon.resolve("framework", thread.repo) if thread else None
    labels = [label.get("name", "") if isinstance(label, dict) else str(label) for label in issue.get("labels") or []]
    all_text = "\n".join([issue["title"], report, *(_without_code(c.get("body", "")) for c in people)])
    found_accelerator, count = first_hardware(_by_trust(parts_of_body, people, _login(issue.get("author"))), lexicon)
    parts = DraftParts(
        id=case_id,
        title=first_sentences(issue["title"], 200),
        symptom=symptom(report, parts_of_body.error, issue["title"]),
        body=all_text,
        headline=f"{issue['title']}\n{report}",
        sources=[thread.url if thread else url],
        causes=causes,
        fixes=fixes,
        tags=[slugify(label) for label in labels if label.strip()],
        libraries=libraries,
        framework_hint=framework,
        accelerator_hint=accelerator or found_accelerator,
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
