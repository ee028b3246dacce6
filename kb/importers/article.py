"""Draft cases from troubleshooting write-ups (Chinese or English, plain text or Markdown).

Steps: cut the page furniture (everything from a "log in to read more" or
"recommended projects" marker on, plus byline/date lines), split the text
into sections by their headings (问题现象 / 原因分析 / 解决方案 / 实践建议,
Symptom / Cause / Fix ...), then let the shared draft builder read model,
framework, settings and numbers with the query parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CaseFileError
from ..lexicon import Lexicon
from ..limits import SOURCE_FILE_BYTES, read_text
from ..models import Case
from .drafts import DraftParts, build_draft, first_sentences, slugify

# Page furniture: the article ends where one of these lines starts.
FURNITURE_MARKERS = (
    "登录后查看全文", "热门项目推荐", "相关项目推荐", "项目优选", "最新内容推荐", "推荐阅读", "相关推荐", "相关文章",
    "recommended projects", "related projects", "related articles", "recommended reading", "read more", "sign in to read",
)
_BYLINE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[\s\d:]*(作者|author)?[:：]?.*$", re.IGNORECASE)
_HEADING_MARK = re.compile(r"^\s*(#{1,6}\s+|\*\*)(.+?)(\*\*)?\s*$")
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.、)]|[（(]\d+[)）])\s*")

# Section kinds and the words that name them, in priority order.
SECTION_CUES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fix_verified", ("解决方案验证", "验证有效", "verified fix", "confirmed fix", "what worked")),
    ("fix", ("解决方案", "解决方法", "解决办法", "修复", "解决", "方案", "建议", "实践", "fix", "solution", "workaround", "resolution", "recommendation")),
    ("cause", ("原因", "分析", "本质", "解析", "cause", "root cause", "why", "diagnosis", "analysis")),
    ("symptom", ("现象", "问题描述", "问题背景", "背景", "观察", "symptom", "problem", "issue", "observation", "background")),
    ("summary", ("总结", "结论", "summary", "conclusion", "takeaway")),
)


@dataclass
class Section:
    kind: str
    heading: str
    lines: list[str]


def strip_furniture(text: str) -> str:
    kept: list[str] = []
    for line in text.splitlines():
        lowered = line.strip().lower()
        if any(lowered.startswith(marker) for marker in FURNITURE_MARKERS) or _is_blurb(line):
            break
        if _BYLINE.match(line):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept).strip()


def _is_blurb(line: str) -> bool:
    """A promotion blurb of an aggregator site: it starts with the product name written twice,
    with or without separators ("AutoGLM-Phone-9BAutoGLM-Phone-9B是…", "Kimi-K2-ThinkingKimi K2 Thinking 是…")."""
    head = line.strip().split(" ")[0]
    folded = re.sub(r"[\s_\-]", "", line.strip()).lower()
    for size in range(3, min(61, len(head) // 2 + 1)):
        name = re.sub(r"[\s_\-]", "", head[:size]).lower()
        if len(name) >= 3 and folded.startswith(name * 2):
            return True
    return False


def _section_kind(line: str) -> str | None:
    """The kind of section a line opens, if it looks like a heading."""
    marked = _HEADING_MARK.match(line)
    if not marked and _BULLET.match(line) and line.strip() not in ("",):
        return None  # a list item, however short, is content
    raw = (marked.group(2) if marked else line).strip()
    text = raw.strip(":：").strip()
    if not text or len(text) > 30 or (not marked and text[-1:] in "。.!?！？，,;；"):
        return None
    if raw[-1:] in ":：" and len(text) > 12:  # "这种现象可能由以下几个因素导致:" introduces a list; it is no heading
        return None
    lowered = text.lower()
    for kind, cues in SECTION_CUES:
        if any(cue in lowered for cue in cues):
            return kind
    return None


def split_sections(body: str) -> tuple[list[str], list[Section]]:
    """Lines before the first heading (the lead), and the sections."""
    lead: list[str] = []
    sections: list[Section] = []
    for line in body.splitlines():
        kind = _section_kind(line)
        if kind:
            sections.append(Section(kind, line.strip(), []))
        elif sections:
            sections[-1].lines.append(line)
        else:
            lead.append(line)
    return lead, sections


def items(lines: list[str]) -> list[str]:
    """Bullet items or paragraphs of a section; a bare '-' line introduces the next line's text."""
    out: list[str] = []
    current: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or _BULLET.fullmatch(stripped):
            if current:
                out.append(" ".join(current))
                current = []
            continue
        if _BULLET.match(stripped) and current:
            out.append(" ".join(current))
            current = []
        current.append(_BULLET.sub("", stripped, count=1))
    if current:
        out.append(" ".join(current))
    # A line ending in a colon introduces the list that follows; it is not an item itself.
    return [first_sentences(item, 400) for item in out if len(item) > 3 and item[-1] not in ":："]


def parse_article(text: str, source: str, lexicon: Lexicon) -> Case:
    body = strip_furniture(text)
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        raise CaseFileError(f"{source}: no article text left after removing page furniture")
    title = _HEADING_MARK.sub(r"\2", lines[0]).strip().lstrip("#").strip()
    lead, sections = split_sections("\n".join(lines[1:]))
    by_kind = {kind: [s for s in sections if s.kind == kind] for kind, _ in SECTION_CUES}
    first_diagnosis = next((i for i, s in enumerate(sections) if s.kind not in ("symptom", "summary")), len(sections))
    symptom_lines = [line for s in sections[:first_diagnosis] if s.kind == "symptom" for line in s.lines] or lead or lines[1:4]
    causes = [item for s in by_kind["cause"] for item in items(s.lines)]
    fixes = [(item, False) for s in by_kind["fix"] for item in items(s.lines)]
    fixes = [(item, True) for s in by_kind["fix_verified"] for item in items(s.lines)] + fixes
    parts = DraftParts(
        id=slugify(Path(source).stem),
        title=first_sentences(title, 200),
        symptom=first_sentences(" ".join(line.strip() for line in symptom_lines), 700) or title,
        body=body,
        headline=title,
        sources=[Path(source).name],
        causes=causes[:8],
        fixes=fixes[:8],
    )
    return build_draft(parts, lexicon, source)


def import_article(path: Path, lexicon: Lexicon) -> Case:
    return parse_article(read_text(path, SOURCE_FILE_BYTES), str(path), lexicon)
