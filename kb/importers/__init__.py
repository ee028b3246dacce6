"""Importers: draft cases from write-ups and from GitHub issue threads.

Drafts come out with ``status: draft``; ``kbq ingest`` skips them unless asked,
and the index never serves them, until a reviewer flips the status.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CaseFileError
from ..lexicon import Lexicon
from ..models import Case
from ..threads import ThreadIndex

if TYPE_CHECKING:
    from ..progress import Progress


def drafts_from_articles(paths: list[Path], progress: Progress | None = None) -> list[Case]:
    """A draft per write-up; ``progress`` hears how many files are done (kb.progress)."""
    from ..progress import tracked
    from .article import import_article

    lexicon = Lexicon.from_file()
    with tracked(progress, "drafting cases from articles", len(paths), "files") as ticker:
        return [import_article(_existing(path), lexicon) for path in ticker.over(paths)]


def drafts_from_github(paths: list[Path], progress: Progress | None = None) -> list[Case]:
    """The drafts of each issue thread; ``progress`` hears how many files are done (kb.progress)."""
    from ..progress import tracked
    from .github import import_github

    lexicon = Lexicon.from_file()
    with tracked(progress, "drafting cases from GitHub issues", len(paths), "files") as ticker:
        return [case for path in ticker.over(paths) for case in import_github(_existing(path), lexicon)]


def screen(drafts: list[Case], known: ThreadIndex, *, keep_duplicates: bool = False) -> tuple[list[Case], list[str]]:
    """The drafts to write, and one line for each draft whose thread a known case documents
    already, naming that case: such a draft is left out unless ``keep_duplicates``. A draft
    repeated in one import (a thread linked under an old and a new repository name) is
    written once."""
    kept: list[Case] = []
    notes: list[str] = []
    seen: set[str] = set()
    for draft in drafts:
        if draft.id in seen:
            notes.append(f"draft '{draft.id}' appears twice in this import; kept the first")
            continue
        seen.add(draft.id)
        clash = known.clash(draft.id, draft.sources)
        if clash is not None:
            notes.append(f"draft '{draft.id}' {'written although' if keep_duplicates else 'left out:'} {clash.summary()}")
            if not keep_duplicates:
                continue
        known.add(draft.id, draft.sources, where="earlier in this import", status="draft")
        kept.append(draft)
    return kept, notes


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CaseFileError(f"{path}: no such file")
    return path
