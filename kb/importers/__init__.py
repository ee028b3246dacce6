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


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CaseFileError(f"{path}: no such file")
    return path
