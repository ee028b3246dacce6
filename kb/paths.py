"""Where kbq finds its bundled resources and keeps its per-user data.

In a wheel the cases and migrations are copied into ``kb/_bundled``; in a
source checkout (editable install, tests) they are read from the repository
root. Both resolve through the functions below so no caller has to care.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
_BUNDLED = PACKAGE_DIR / "_bundled"
_REPO_ROOT = PACKAGE_DIR.parent


def _bundled(name: str) -> Path:
    inside = _BUNDLED / name
    return inside if inside.is_dir() else _REPO_ROOT / name


def bundled_cases_dir() -> Path:
    return _bundled("cases")


def migrations_dir() -> Path:
    return _bundled("migrations")


def data_file(name: str) -> Path:
    return DATA_DIR / name


def user_data_dir() -> Path:
    """Per-user home of the default database and the persisted index.

    ``KBQ_HOME`` wins; otherwise the XDG data directory.
    """
    explicit = os.environ.get("KBQ_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "kbq"


def user_cache_dir() -> Path:
    """Where kbq keeps what it can always recompute: the sentence model's mappable copy and
    the case embeddings. ``KBQ_CACHE_DIR`` wins; otherwise the XDG cache directory. Shared by
    every database of the user, so a second database reuses the first one's embeddings."""
    explicit = os.environ.get("KBQ_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kbq"
