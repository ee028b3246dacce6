"""Whether the bot comments on an issue, and the comment it writes.

It comments only when the search is confident: at least one result is marked
``confident`` (see ``kb/retriever.py``: the fitted confidence model says the top
case is the reporter's problem, and it shares more than names with the report).
No threshold of the bot's own: an issue tracker is a worse place for a wrong
guess than a terminal, and kbq's own judgement is the one its eval measures.

The comment is Markdown in the issue's language. Case text is shown as data:
HTML, link brackets and emphasis are escaped, and ``@name`` and ``#123`` are
broken up so that a case's text neither pings people nor links to unrelated
issues of the repository being commented on. A hidden HTML comment (the
marker) identifies the bot's comments, so an earlier answer can be found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from ..lexicon import detect_language
from ..paths import data_file
from ..report import clean_report
from ..results import Hit, RecommendedFix, SearchOutcome
from ..results import value_text
from .issue import Issue, IssueRef

_CODE_SPAN = re.compile(r"`[^`\n]+`")
_MARKDOWN = re.compile(r"([\\*\[\]~])")
_MENTION = re.compile(r"(?<![\w`])@(?=[A-Za-z0-9])")
_ISSUE_NUMBER = re.compile(r"(?<![\w/&])#(?=\d)")
_BREAK = "&#8203;"  # a zero-width space: '@&#8203;name' shows as '@name' but mentions nobody


@lru_cache(maxsize=1)
def bot_settings() -> dict[str, Any]:
    import yaml

    with open(data_file("github_bot.yaml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@dataclass(frozen=True)
class Suggestion:
    """The search for one issue and what the bot would post (``body`` None: it stays silent)."""

    issue: Issue
    language: str
    outcome: SearchOutcome
    hits: list[Hit] = field(default_factory=list)
    body: str | None = None

    @property
    def confident(self) -> bool:
        return self.body is not None

    @property
    def case_ids(self) -> list[str]:
        return [hit.case_id for hit in self.hits]

    @property
    def reason(self) -> str:
        """Why the bot stays silent (English: it is said to the operator, not on the issue)."""
        if self.confident:
            return ""
        if not self.outcome.hits:
            return "no case shares a term or a feature with the issue"
        return self.outcome.abstain_reason or "no case is close enough"


def issue_language(issue: Issue) -> str:
    """'zh' or 'en': the title decides when it is Chinese (templates are often English),
    else the cleaned report does (logs and tracebacks removed, which are English anyway)."""
    if detect_language(issue.title) == "zh":
        return "zh"
    return detect_language(clean_report(f"{issue.title}\n\n{issue.body}"))


def confident_hits(outcome: SearchOutcome) -> list[Hit]:
    return [hit for hit in outcome.hits if hit.confident][: int(bot_settings()["max_cases"])]


def suggestion(issue: Issue, outcome: SearchOutcome) -> Suggestion:
    language = issue_language(issue)
    hits = confident_hits(outcome)
    body = compose(issue.ref, outcome, hits, language) if hits else None
    return Suggestion(issue, language, outcome, hits, body)


# -- the marker ----------------------------------------------------------------------

def marker(ref: IssueRef, case_ids: list[str]) -> str:
    return f"<!-- {bot_settings()['marker']} issue={ref} cases={','.join(case_ids)} -->"


def is_bot_answer(body: str) -> bool:
    """Whether a comment is one of the bot's answers: it starts with the marker."""
    return body.lstrip().startswith(f"<!-- {bot_settings()['marker']} ")


# -- the comment ---------------------------------------------------------------------

def compose(ref: IssueRef, outcome: SearchOutcome, hits: list[Hit], language: str) -> str:
    """The Markdown comment: the cases, why each matched, the fixes, and that a bot wrote it."""
    settings = bot_settings()
    words = settings["text"][language]
    lines = [marker(ref, [h.case_id for h in hits]), words["heading"], "",
             words["intro"].format(count=len(hits), percent=round(outcome.confidence * 100)), ""]
    for rank, hit in enumerate(hits, start=1):
        lines.append(words["case"].format(rank=rank, title=markdown_text(hit.case["title"]), id=hit.case_id))
        reasons = why(hit, language)
        if reasons:
            lines.append(f"- {words['why']}: {words['reason_separator'].join(reasons)}")
        causes = hit.case.get("causes") or []
        if causes:
            lines.append(f"- {words['cause']}: {markdown_text(causes[0])}")
        links = [markdown_link(url) for url in hit.case.get("sources", [])]
        if links:
            lines.append(f"- {words['sources']}: {words['list_separator'].join(links)}")
        lines.append("")
    lines += _fixes(outcome.fixes, words, int(settings["max_fixes"]))
    lines.append(f"<sub>{markdown_text(words['footer'].format(cases=outcome.case_count))}</sub>")
    return "\n".join(lines).strip() + "\n"


def why(hit: Hit, language: str) -> list[str]:
    """The evidence that made the case match, in words: features it shares with the issue,
    the terms that carried the text score, and how close the meaning is."""
    settings = bot_settings()
    words = settings["text"][language]
    names = settings["features"][language]
    reasons = []
    for feature in hit.matched_features:
        name = names.get(feature.name, feature.name)
        if feature.similarity >= 0.99:
            reasons.append(words["same"].format(name=name, value=markdown_text(value_text(feature.case))))
        else:
            reasons.append(words["similar"].format(name=name, query=markdown_text(value_text(feature.query)),
                                                   case=markdown_text(value_text(feature.case))))
    terms = [term.split(":", 1)[-1] for term, _ in hit.text.terms[: int(settings["max_terms"])]]
    if terms:
        reasons.append(words["terms"].format(terms=words["list_separator"].join(f"`{t}`" for t in terms if "`" not in t)))
    if hit.semantic is not None:
        reasons.append(words["meaning"].format(cosine=hit.semantic))
    return reasons


def _fixes(fixes: list[RecommendedFix], words: dict[str, str], limit: int) -> list[str]:
    confirmed = [fix for fix in fixes if fix.confirmed]
    shown = (confirmed or fixes)[:limit]
    if not shown:
        return []
    lines = [words["fixes"] if confirmed else words["suggested"]]
    for number, fix in enumerate(shown, start=1):
        cases = ", ".join(f"`{case_id}`" for case_id in fix.cases)
        lines.append(f"{number}. {markdown_text(fix.action)} ({words['from']} {cases})")
    return lines + [""]


def markdown_text(text: str) -> str:
    """``text`` on one line, safe to put in Markdown: code spans are kept (they are inert),
    the rest has HTML and emphasis escaped and mentions and issue numbers broken up."""
    text = " ".join(str(text).split())
    parts, position = [], 0
    for span in _CODE_SPAN.finditer(text):
        parts += [_plain(text[position:span.start()]), span.group()]
        position = span.end()
    parts.append(_plain(text[position:]))
    return "".join(parts)


def _plain(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN.sub(r"\\\1", text)
    text = _MENTION.sub("@" + _BREAK, text)
    return _ISSUE_NUMBER.sub("#" + _BREAK, text)


def markdown_link(url: str) -> str:
    """A link to ``url`` named by its host and path; a source that is not http(s) is shown, not linked."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return markdown_text(url)
    name = markdown_text(f"{parts.netloc}{parts.path}".rstrip("/"))
    return f"[{name}]({quote(url.strip(), safe=':/?#&=%+@,;~.-_!$*')})"
