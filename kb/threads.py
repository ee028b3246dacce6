"""Which discussion a case documents, so that no thread becomes two cases.

A source is reduced to a key that every spelling of the same thread shares:

* a GitHub issue, pull request or discussion (one number space per repository)
  keys on the repository's current name (``kb/data/repo_renames.yaml``: GitHub
  redirects old names) and the number; scheme, ``www.``, ``api.github.com/repos``,
  letter case of owner and name, ``.git``, a trailing slash, ``/files`` and the
  like, query strings and ``#issuecomment-...`` fragments do not matter;
* another URL keys on its host (lower case, without ``www.``), path (without a
  trailing slash) and query; scheme and fragment do not matter;
* anything else (an article's file name) keys on its text.

The rule every door applies (:class:`ThreadIndex`): a case's **first** source is
the thread it documents; later sources are related threads (duplicates merged
into it, the pull request that fixed it), which two cases may share: one pull
request can fix two problems. Two cases clash when the first source of one is
among the sources of the other.

A database keeps each stored case's keys in a table (``case_threads``, written with
the case), so a write looks up only the keys of the cases it writes: :func:`filed_keys`
and :func:`key_digest` say under what a stored row of a thread can be found.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple
from urllib.parse import urlsplit

from .paths import data_file

if TYPE_CHECKING:
    from .service import KnowledgeBase

RENAMES_FILE = "repo_renames.yaml"

_GITHUB_THREAD = re.compile(
    r"^(?:[a-z][a-z0-9+.\-]*://)?(?:www\.)?(?:api\.)?github\.com/(?:repos/)?"
    r"(?P<owner>[a-z0-9][a-z0-9\-]*)/(?P<repo>[a-z0-9._\-]+?)(?:\.git)?"
    r"/(?P<kind>issues|pull|pulls|discussions)/(?P<number>\d+)(?:[/?#].*)?$",
    re.IGNORECASE,
)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)


class GithubThread(NamedTuple):
    """A GitHub thread under its repository's current name."""

    owner: str
    repo: str
    kind: str  # issues, pull or discussions, as the URL had it
    number: int

    @property
    def url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}/{self.kind}/{self.number}"


@functools.cache
def _renames() -> dict[str, str]:
    """Every known name of a renamed repository (lower case) -> its current 'owner/name'."""
    import yaml

    with open(data_file(RENAMES_FILE), encoding="utf-8") as handle:
        raw = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    current: dict[str, str] = {}
    for name, older in raw.items():
        for alias in [name, *(older or [])]:
            current[str(alias).lower()] = str(name)
    return current


@functools.cache
def _all_names() -> dict[str, tuple[str, ...]]:
    """Current 'owner/name' (lower case) -> every name the repository had (lower case), itself included."""
    names: dict[str, list[str]] = {}
    for alias, name in _renames().items():
        names.setdefault(name.lower(), []).append(alias)
    return {name: tuple(dict.fromkeys([name, *aliases])) for name, aliases in names.items()}


def current_repo(owner: str, repo: str) -> tuple[str, str]:
    """The repository's current (owner, name): itself unless it is listed as renamed."""
    moved = _renames().get(f"{owner}/{repo}".lower())
    return tuple(moved.split("/", 1)) if moved else (owner, repo)  # type: ignore[return-value]


def github_thread(source: str) -> GithubThread | None:
    """The GitHub thread a source names, under the repository's current name; None for anything else."""
    found = _GITHUB_THREAD.match(source.strip())
    if not found:
        return None
    owner, repo = current_repo(found["owner"], found["repo"])
    kind = {"pulls": "pull"}.get(found["kind"].lower(), found["kind"].lower())
    return GithubThread(owner, repo, kind, int(found["number"]))


def thread_key(source: str) -> str:
    """The key all spellings of one thread share (see the module docstring)."""
    text = source.strip()
    thread = github_thread(text)
    if thread:
        return _github_key(f"{thread.owner}/{thread.repo}", thread.number)
    if _SCHEME.match(text):
        parts = urlsplit(text)
        host = (parts.hostname or "").removeprefix("www.")
        if parts.port and parts.port not in (80, 443):
            host = f"{host}:{parts.port}"
        query = f"?{parts.query}" if parts.query else ""
        return f"url:{host}{parts.path.rstrip('/')}{query}"
    return f"text:{text}"


def _github_key(repo: str, number: int) -> str:
    """The key of issue, pull request or discussion ``number`` of ``repo`` ('owner/name')."""
    return f"github:{repo.lower()}#{number}"


def filed_keys(source: str) -> list[str]:
    """Every key a stored row of ``source``'s thread may be filed under: its key, and for a
    GitHub thread the key under each earlier name of the repository too (a row written
    before ``repo_renames.yaml`` listed a move keys on the name of that day). A change of
    the key rules themselves needs a migration that writes the rows again."""
    key = thread_key(source)
    thread = github_thread(source.strip())
    if thread is None:
        return [key]
    names = _all_names().get(f"{thread.owner}/{thread.repo}".lower(), ())
    return list(dict.fromkeys([key, *(_github_key(name, thread.number) for name in names)]))


def key_digest(key: str) -> str:
    """The fixed-length form of a key a database indexes: a key can be as long as a source
    (1,000 characters of any script), longer than PostgreSQL indexes a text value."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Clash:
    """Case ``case_id``'s ``source`` is the same thread as ``other_source`` of case ``other_id``."""

    case_id: str
    source: str
    other_id: str
    other_source: str
    other_where: str | None = None

    def summary(self) -> str:
        """'<source>' is already a source of case '<other>' (<its spelling there>, <where it is>)."""
        notes = [note for note in (self.other_source if self.source != self.other_source else None, self.other_where) if note]
        return f"'{self.source}' is already a source of case '{self.other_id}'" + (f" ({', '.join(notes)})" if notes else "")

    def message(self, where: str) -> str:
        """One line for ``where`` (a file, ``request body``) naming both cases."""
        return (f"{where}: field 'sources': {self.summary()}; case '{self.case_id}' would document "
                "that thread a second time: merge the two cases, or drop the source")


def _clashing(first: bool, other_first: bool) -> bool:
    """The rule: a shared thread is a clash when it is the first source of either case."""
    return first or other_first


class _Owner(NamedTuple):
    case_id: str
    source: str
    first: bool
    where: str | None
    status: str


class ThreadIndex:
    """The threads of a set of cases, to check another case against them (import, review) or
    to find clashes among them (ingest and the API, inside the write transaction)."""

    def __init__(self) -> None:
        self._owners: dict[str, list[_Owner]] = {}

    def add(self, case_id: str, sources: Iterable[str], *, where: str | None = None, status: str = "reviewed") -> None:
        for position, source in enumerate(sources):
            self.add_source(case_id, source, first=position == 0, where=where, status=status)

    def add_source(self, case_id: str, source: str, *, first: bool, where: str | None = None,
                   status: str = "reviewed") -> None:
        """One source of a case (a database gives them one row at a time); ``first`` says
        whether it is the thread the case documents."""
        self._owners.setdefault(thread_key(source), []).append(_Owner(case_id, source, first, where, status))

    def clash(self, case_id: str, sources: Iterable[str]) -> Clash | None:
        """The first case of the index whose thread draft ``case_id`` would document again. A
        case of the same id counts when it is reviewed (the draft would replace it); another
        copy of the draft (its file, and the draft stored with ``--include-drafts``) does not."""
        for position, source in enumerate(sources):
            for owner in self._owners.get(thread_key(source), ()):
                if owner.case_id == case_id and owner.status != "reviewed":
                    continue
                if owner.case_id == case_id or _clashing(position == 0, owner.first):
                    return Clash(case_id, source, owner.case_id, owner.source, owner.where)
        return None

    def clash_among(self, written: list[str]) -> Clash | None:
        """A clash between two cases of the index of which at least one is in ``written`` (in
        write order); the later written of the two is the one named as the duplicate."""
        order = {case_id: position for position, case_id in enumerate(written)}
        found: list[tuple[int, Clash]] = []
        for owners in self._owners.values():
            if len(owners) < 2:
                continue
            for i, a in enumerate(owners):
                for b in owners[i + 1:]:
                    if a.case_id == b.case_id or not _clashing(a.first, b.first):
                        continue
                    if a.case_id not in order and b.case_id not in order:
                        continue  # both stored before: not this write's doing
                    new, old = (a, b) if order.get(a.case_id, -1) > order.get(b.case_id, -1) else (b, a)
                    found.append((order[new.case_id], Clash(new.case_id, new.source, old.case_id, old.source, old.where)))
        return min(found, key=lambda item: item[0])[1] if found else None


def known_threads(kb: "KnowledgeBase", paths: Iterable[Path] = ()) -> ThreadIndex:
    """The threads of every case kbq knows: those stored in ``kb``'s database (drafts too), the
    bundled case files, and the case files in ``paths`` (a folder of drafts under review)."""
    from .casefiles import load_cases
    from .paths import bundled_cases_dir

    index = ThreadIndex()
    stored = f"stored in {kb.describe()}"
    for case_id, status, sources in kb.case_sources():
        index.add(case_id, sources, where=stored, status=status)
    bundled = bundled_cases_dir().resolve()
    for group in [[bundled], *([path] for path in paths if path.resolve() != bundled)]:
        for loaded in load_cases(group, include_drafts=True):
            index.add(loaded.case.id, loaded.case.sources, where=str(loaded.path), status=loaded.case.status)
    return index
