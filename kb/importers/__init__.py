"""Importers: draft cases from write-ups and from GitHub issue threads.

Drafts come out with ``status: draft``; ``kbq ingest`` skips them unless asked,
and the index never serves them, until a reviewer flips the status.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CaseFileError
from ..lexicon import Lexicon
from ..models import Case


def drafts_from_articles(paths: list[Path]) -> list[Case]:
    from .article import import_article

    lexicon = Lexicon.from_file()
    return [import_article(_existing(path), lexicon) for path in paths]


def drafts_from_github(paths: list[Path]) -> list[Case]:
    from .github import import_github

    lexicon = Lexicon.from_file()
    return [case for path in paths for case in import_github(_existing(path), lexicon)]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CaseFileError(f"{path}: no such file")
    return path
