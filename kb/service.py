"""The one entry point the CLI and the HTTP API call: a case base behind a database URL.

Responsibilities, and the reason they live together: deciding *when* work is
needed. A query on an up-to-date case base reads the database revision
(stdlib sqlite3, ~1 ms) and one JSON index file, and imports neither
SQLAlchemy nor scikit-learn. Anything heavier happens only when something
changed:

* the default database (``~/.local/share/kbq/kbq.db``) is created from the
  bundled cases on first use, and refreshed by itself whenever the bundled
  cases change (for example after upgrading kbq);
* a database named with ``--db``/``KBQ_DB`` is never changed behind the
  user's back: kbq says when its schema is old or the bundled cases are newer;
* the index is rebuilt when the database revision, the lexicon, the weights
  or the stop words change; case embeddings are kept across rebuilds, so only
  new or edited cases are embedded again.

``KBQ_SEMANTIC=0`` switches the semantic stage off (lexical and features only).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import DatabaseError, NotFoundError
from .runtime import MMAPPED_ARRAYS_FROM_CASES, keep_freed_memory, settle_heap
from .paths import bundled_cases_dir, user_cache_dir, user_data_dir
from .querytext import validate_query
from .filters import Filters

if TYPE_CHECKING:
    from .models import Case
    from .db.fastmeta import DbState
    from .index import LoadedIndex
    from .results import SearchOutcome
    from .db.fastread import CaseReader
    from .progress import Progress

DB_ENV = "KBQ_DB"
SEMANTIC_ENV = "KBQ_SEMANTIC"
DEFAULT_DB_NAME = "kbq.db"
BUNDLED_FINGERPRINT_KEY = "bundled_fingerprint"
BUNDLED_IDS_KEY = "bundled_ids"
BUNDLED_HASHES_KEY = "bundled_hashes"


def _bundled_meta(hashes: dict[str, str]) -> dict[str, str]:
    """The meta that records which bundled cases were loaded, and as what (content hashes)."""
    return {BUNDLED_IDS_KEY: json.dumps(sorted(hashes)), BUNDLED_HASHES_KEY: json.dumps(hashes, sort_keys=True)}


def _content_hashes(cases: Iterable[Case]) -> dict[str, str]:
    """Each case's content hash, as the store computes it for its row."""
    from .models import document_hash

    return {case.id: document_hash(case.to_document()) for case in cases}


def bundled_fingerprint(directory: Path | None = None) -> str:
    """Hash of the bundled case files' names and bytes (cheap: a few hundred small files)."""
    directory = directory or bundled_cases_dir()
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.y*ml")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class Stats:
    url: str
    counts: dict[str, int]
    by_model_family: dict[str, int]
    by_framework: dict[str, int]
    by_phase: dict[str, int]
    by_language: dict[str, int]
    index_cases: int
    index_terms: int
    revision: str | None


@dataclass
class KnowledgeBase:
    """A case base addressed by ``db`` (path or SQLAlchemy URL); None means the per-user default."""

    db: str | None = None
    home: Path = field(default_factory=user_data_dir)
    cache: Path = field(default_factory=user_cache_dir)
    notices: list[str] = field(default_factory=list)
    every_field: bool = False  # index fields of zero weight too (weight fitting tries them)
    progress: Progress | None = None  # hears how long work goes (kb.progress); None: nobody listens

    def __post_init__(self) -> None:
        if self.db is None:  # an empty KBQ_DB counts as unset; an empty --db is an error
            self.db = os.environ.get(DB_ENV) or None
        self.is_default = self.db is None
        if self.db is None:
            self.url = f"sqlite:///{(self.home / DEFAULT_DB_NAME).resolve()}"
            try:
                self.home.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatabaseError(f"cannot create the kbq data directory {self.home}: {err.strerror}") from None
        elif "://" not in self.db:
            if not self.db.strip():
                raise DatabaseError("empty database path: give a file path or a SQLAlchemy URL")
            self.url = f"sqlite:///{Path(self.db).expanduser().resolve()}"
        else:
            from .db.engine import normalize_url

            self.url = normalize_url(self.db)
        self._index: LoadedIndex | None = None
        self._bundled: str | None = None
        self._interaction_store = None
        self._encoder = None
        self.semantic = os.environ.get(SEMANTIC_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        import threading

        self._rebuild = threading.Lock()

    # -- locations ---------------------------------------------------------------
    @property
    def index_parent(self) -> Path:
        """Where this database's index directories live (one per index key)."""
        name = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return self.home / "index" / name

    def index_dir(self, key: dict[str, Any]) -> Path:
        from .indexkey import key_name

        suffix = ("" if self.semantic else "-lexical") + ("-every" if self.every_field else "")
        return self.index_parent / f"{key_name(key)}{suffix}"

    def encoder(self):
        """The sentence encoder (loaded on first use), or None when the stage is off."""
        if not self.semantic:
            return None
        if self._encoder is None:
            from .semantic import Encoder

            self._encoder = Encoder(self.cache / "models")
        return self._encoder

    def embed(self, text: str):
        encoder = self.encoder()
        return None if encoder is None else encoder.encode([text])[0]

    def describe(self) -> str:
        from .db._common import mask_password

        return mask_password(self.url)

    # -- readiness ----------------------------------------------------------------
    def bundled_fingerprint(self) -> str:
        """The bundled cases' fingerprint, hashed once per process: they are package files and
        change only with a reinstall, while a server would otherwise re-read them on every request."""
        if self._bundled is None:
            self._bundled = bundled_fingerprint()
        return self._bundled

    def _state(self):
        from .db.fastmeta import read_state

        return read_state(self.url)

    @contextmanager
    def _init_lock(self) -> Iterator[None]:
        """Serialise first-run set-up between kbq processes started at the same moment."""
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: SQLite's own locking still keeps the data safe
            yield
            return
        with open(self.home / ".init.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure_ready(self):
        """Make sure the database can answer; returns its state."""
        from .db.migrate import HEAD, REVISIONS, schema_problem

        state = self._state()
        if self.is_default:
            if state is not None and state.schema_version not in (None, *REVISIONS):
                raise DatabaseError(schema_problem(state.schema_version, self.describe(), ""))
            fingerprint = self.bundled_fingerprint()
            if state is None or state.schema_version != HEAD or state.meta.get(BUNDLED_FINGERPRINT_KEY) != fingerprint:
                from .progress import tracked

                with self._init_lock(), tracked(self.progress, self._setup_task(state.meta if state else {})):
                    state = self._state()
                    if state is None or state.schema_version != HEAD:
                        self.upgrade()
                        state = self._state()
                    if state.meta.get(BUNDLED_FINGERPRINT_KEY) != fingerprint:
                        self.sync_bundled(fingerprint, state.meta)
                        state = self._state()
            return state
        where = self.describe()
        if state is None:
            raise DatabaseError(f"{where}: no such database; create it with `kbq ingest --db {self.db}`")
        problem = schema_problem(state.schema_version, where, f" --db {self.db}")
        if problem:
            raise DatabaseError(problem)
        known = state.meta.get(BUNDLED_FINGERPRINT_KEY)
        if known and known != self.bundled_fingerprint():
            self.notices.append(f"the bundled cases changed since this database was loaded; refresh with `kbq ingest --db {self.db}`")
        return state

    def _setup_task(self, meta: dict[str, str]) -> str:
        """How progress names the loading of the bundled cases into the default database."""
        where = self.home / DEFAULT_DB_NAME
        if BUNDLED_FINGERPRINT_KEY in meta:
            return f"updating the bundled cases in {where}"
        return f"loading the bundled cases into {where} (first run)"

    def upgrade(self, revision: str = "head") -> str | None:
        from .db import migrate

        return migrate.upgrade(self.url, revision)

    def downgrade(self, revision: str) -> str | None:
        from .db import migrate

        return migrate.downgrade(self.url, revision)

    def schema_revision(self) -> str | None:
        """The schema revision; a SQLite file is read without SQLAlchemy (a missing file: None)."""
        from .db.fastmeta import sqlite_file

        if sqlite_file(self.url) is not None:
            state = self._state()
            return None if state is None else state.schema_version
        from .db import migrate

        return migrate.current(self.url)

    # -- writing ------------------------------------------------------------------
    def _store(self):
        from .db.store import CaseStore

        return CaseStore(self.url)

    def _reader(self) -> CaseReader:
        """For reading only: a SQLite file is read with the stdlib, without SQLAlchemy (kb.db.fastread)."""
        from .db.fastread import case_reader

        return case_reader(self.url)

    def sync_bundled(self, fingerprint: str, meta: dict[str, str]):
        """Mirror the bundled cases into the default database (cases dropped upstream go too),
        except the ones changed through kbq since the bundled copy was loaded: an API revision
        or an ingest of the user's own file outlives an upgrade of kbq. Those are kept, and a
        notice names them. The hash of each bundled case as loaded is kept in the meta; a
        database loaded before kbq kept it has none, so there every stored case that differs
        from its bundled copy is kept (the safe side: `kbq ingest` with no paths takes the
        bundled versions)."""
        from .casefiles import discover, iter_cases
        from .progress import tracked

        loaded: dict[str, str] = json.loads(meta.get(BUNDLED_HASHES_KEY, "{}"))
        previous = set(loaded) | set(json.loads(meta.get(BUNDLED_IDS_KEY, "[]")))

        def recorded(report) -> dict[str, str]:
            # A kept case stays guarded by the hash it was loaded with (none: never loaded by us).
            kept = {i: loaded.get(i, "") for i in report.kept}
            return {BUNDLED_FINGERPRINT_KEY: fingerprint, **_bundled_meta({**hashes, **kept})}

        files = discover([bundled_cases_dir()])
        with tracked(self.progress, self._setup_task(meta), len(files), "cases") as ticker:
            cases = [loaded.case for loaded in ticker.over(iter_cases(files)) if loaded.case.status == "reviewed"]
            hashes = _content_hashes(cases)
            with self._store() as store:
                report = store.upsert(cases, remove_ids=sorted(previous - set(hashes)), meta=recorded, guard=loaded)
        if report.kept:
            shown = ", ".join(report.kept[:5]) + (f" and {len(report.kept) - 5} more" if len(report.kept) > 5 else "")
            self.notices.append(
                f"the bundled cases were updated; kept {len(report.kept)} case(s) changed through kbq since they "
                f"were loaded: {shown} (`kbq ingest` with no paths replaces them with the bundled versions)"
            )
        return report

    def ingest(self, paths: list[Path] | None = None, *, include_drafts: bool = False):
        """Stream the case files into one transaction: read, validate and write a batch at a
        time, so memory holds a batch rather than the whole base. The first bad file aborts
        the transaction, leaving the database as it was (a missing schema is created in the
        same transaction, so not even that stays behind).

        Returns the store's report and the ids of the drafts left out."""
        from .casefiles import discover, iter_cases
        from .db.migrate import HEAD, REVISIONS, schema_problem

        bundled = not paths
        files = discover(paths or [bundled_cases_dir()])  # a missing path fails before any write
        if not files:
            from .errors import CaseFileError

            named = ", ".join(str(p) for p in paths or [])
            raise CaseFileError(f"{named}: no case files (*.yaml, *.yml) to ingest")
        state = self._state()
        upgrade = state is None or state.schema_version != HEAD
        if upgrade and state is not None and state.schema_version is not None:
            # An empty database gets its schema in the ingest's transaction; an old one is
            # upgraded only when asked (the default database is kbq's own to upgrade).
            if not self.is_default or state.schema_version not in REVISIONS:
                raise DatabaseError(schema_problem(state.schema_version, self.describe(), f" --db {self.db}" if self.db else ""))
        from .progress import Ticker, tracked

        drafts: list[str] = []

        def wanted(ticker: Ticker) -> Iterator[Case]:
            for loaded in ticker.over(iter_cases(files)):
                if include_drafts or loaded.case.status == "reviewed":
                    yield loaded.case
                else:
                    drafts.append(loaded.case.id)

        from .errors import DuplicateThreadError

        try:
            with tracked(self.progress, "validating case files", len(files), "files") as ticker:
                cases: Iterable[Case] = wanted(ticker)
                meta = {}
                if bundled:  # a few hundred files: the ids the meta records are needed before the write
                    cases = list(cases)
                    meta = {BUNDLED_FINGERPRINT_KEY: self.bundled_fingerprint(), **_bundled_meta(_content_hashes(cases))}
                with self._store() as store:
                    report = store.upsert(cases, meta=meta, upgrade=upgrade, distinct_threads=True)
        except DuplicateThreadError as err:  # named by file: the case's, and the other's if it is one of them
            def file_of(case_id: str) -> Path | None:
                return next((path for path in files if path.stem == case_id), None)

            clash = replace(err.clash, other_where=str(file_of(err.clash.other_id) or f"stored in {self.describe()}"))
            raise DuplicateThreadError(clash.message(str(file_of(clash.case_id))), clash) from None
        self._index = None
        return report, drafts

    def export(self, directory: Path, *, overwrite: bool = False) -> tuple[list[Path], list[str]]:
        """Write every stored case to ``directory``; returns the files and the ids of cases
        written as stored because they fail this kbq's checks (stored before a check existed).
        An export is the way out of a database, so such a case does not stop it: its file
        keeps every field, and `kbq ingest` names what to fix in it."""
        from .casefiles import case_yaml, write_case_texts
        from .errors import CaseFileError

        self.ensure_ready()
        with self._store() as store:
            stored = store.all()
        as_stored: list[str] = []

        def texts() -> Iterator[tuple[str, str]]:
            for row in stored:
                try:
                    yield row.id, case_yaml(row.to_case())
                except CaseFileError:
                    import yaml

                    as_stored.append(row.id)
                    yield row.id, yaml.safe_dump(_document_with_times(row), allow_unicode=True, sort_keys=False)

        written = write_case_texts([row.id for row in stored], texts(), directory, overwrite=overwrite)
        return written, as_stored

    # -- reading ------------------------------------------------------------------
    def index(self, *, wait: bool = False, state: DbState | None = None) -> LoadedIndex:
        """The current index, rebuilt first if the case base or the data files changed.

        With an index already loaded (a server), a newer revision never makes a request
        wait for a build: if another process already built its index (kbq keeps them in
        the per-user home) it is loaded, which takes milliseconds; otherwise one background
        thread builds it while requests keep answering from the loaded index, a consistent
        if slightly older view, and the new one is swapped in whole (a reference
        assignment). Only a process with no index yet, or ``wait=True`` (a write asked to
        be searchable on return), waits for a build. ``state``: the database state, when the
        caller has just read it.
        """
        from .indexkey import index_key

        state = state or self.ensure_ready()
        key = index_key(state.revision)
        current = self._index
        if current is not None and current.key == key:
            return current
        if current is not None and not wait:
            if not self._rebuild.acquire(blocking=False):
                return current  # a refresh is under way in this process
            if (self.index_dir(key) / "meta.json").exists():
                try:
                    return self._load_or_build(key)
                finally:
                    self._rebuild.release()
            self._refresh_in_background()
            return current
        with self._rebuild:
            return self._load_or_build(key)

    def _refresh_in_background(self) -> None:
        """Bring the index to the newest revision in a thread of its own, which takes over
        the ``_rebuild`` lock the caller holds and releases it when done."""

        def refresh() -> None:
            from .indexkey import index_key

            try:
                self._load_or_build(index_key(self.ensure_ready().revision))
            except Exception:  # noqa: BLE001 - the next request retries; this one must not die silently
                import logging

                logging.getLogger("kbq").exception("background index refresh failed")
            finally:
                self._rebuild.release()

        import threading

        threading.Thread(target=refresh, name="kbq-index-refresh", daemon=True).start()

    def _load_or_build(self, key: dict[str, Any]) -> LoadedIndex:
        """Load the index of ``key`` (another process may have built it) or build it aside,
        reusing what earlier indexes hold; then make it the current one. Holds ``_rebuild``."""
        from .index import build_aside, earlier_indexes, load_index, remove_stale

        if self._index is not None and self._index.key == key:
            return self._index
        directory = self.index_dir(key)
        index = load_index(directory)
        if index is None or index.key != key:
            from .semantic import VectorCache

            with self._reader() as store:
                documents = store.reviewed_json()
            encoder = self.encoder()
            from .bundled_vectors import seed_for

            cache = VectorCache(self.cache / "vectors" / encoder.name, seed=seed_for(encoder.name)) if encoder is not None else None
            earlier = [self._index.directory] if self._index is not None else []
            earlier += [d for d in earlier_indexes(self.index_parent, directory) if d not in earlier]
            build_aside(documents, key, directory, encoder=encoder, vector_cache=cache, every_field=self.every_field,
                        previous=earlier, progress=self.progress)
            index = load_index(directory)
            if index is None:
                raise DatabaseError(f"{directory}: the index was built but cannot be read back")
            remove_stale(self.index_parent, directory)
        self._index = index
        settle_heap()  # the index's tables are long-lived: keep them out of full GC passes
        if len(index) >= MMAPPED_ARRAYS_FROM_CASES:
            keep_freed_memory()
        return index

    # -- the retain step and other server-side writes --------------------------------
    def put_case(self, data: Any, *, case_id: str | None = None, create: bool = False,
                 wait: bool = False) -> tuple[dict[str, Any], bool]:
        """Validate one case exactly like ingest and write it in one transaction. Returns the
        stored case and whether it is new, as soon as it is committed: searches see it once
        the index refresh it starts has swapped in (see :meth:`index`), or on return with
        ``wait=True``, which waits for that refresh."""
        from .casefiles import validate_document
        from .errors import CaseFileError

        case = validate_document(data, "request body")
        if case_id is not None and case.id != case_id:
            raise CaseFileError(f"request body: field 'id': '{case.id}' does not match the case id in the URL '{case_id}'")
        self.ensure_ready()
        from .errors import DuplicateThreadError

        try:
            with self._store() as store:
                report = store.upsert([case], new_only=create, distinct_threads=True)
        except DuplicateThreadError as err:
            raise DuplicateThreadError(err.clash.message("request body"), err.clash) from None
        if wait or self._index is not None:
            self.index(wait=wait)  # without wait this only starts the refresh; with no index yet, a search builds it
        return self.get(case.id), bool(report.added)

    def case_sources(self) -> list[tuple[str, str, list[str]]]:
        """(id, status, sources) of every stored case: what the importers and review check
        a draft's thread against (kb.threads)."""
        self.ensure_ready()
        with self._store() as store:
            return store.sources()

    def page(self, *, limit: int, offset: int, filters: Filters = Filters(), status: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        cases = self.cases(filters, status=status)
        return len(cases), cases[offset : offset + limit]

    def _interactions(self):
        """One store (one engine and its connection pool) for feedback and chat sessions."""
        if self._interaction_store is None:
            from .db.interactions import InteractionStore

            self.ensure_ready()
            self._interaction_store = InteractionStore(self.url)
        return self._interaction_store

    def add_feedback(self, query: str, case_id: str, helpful: bool, comment: str | None = None):
        self.get(case_id)  # NotFoundError for an unknown case
        return self._interactions().add_feedback(validate_query(query), case_id, helpful, comment)

    def feedback(self, limit: int = 100, case_id: str | None = None):
        return self._interactions().list_feedback(limit=limit, case_id=case_id)

    def chat(self):
        """The conversation engine, with sessions kept in this database."""
        from .chat import ChatEngine, chat_settings

        kb = self

        class Sessions:
            def load(self, session_id: str):
                found = kb._interactions().load_session(session_id)
                return found.state if found else None

            def save(self, session_id: str, state: dict, language: str) -> None:
                kb._interactions().save_session(session_id, state, language, int(chat_settings()["session_ttl_seconds"]))

        return ChatEngine(self.index, Sessions(), self._embedder)

    def readiness(self) -> dict[str, Any]:
        """What the index holds, and the database revision it may lag behind (while a refresh runs)."""
        state = self.ensure_ready()
        index = self.index(state=state)
        revision = state.revision
        return {"cases": len(index), "index_version": f"{index.key['revision']}:{index.key['data']}",
                "revision": revision, "index_current": index.key["revision"] == revision, "database": self.describe()}

    def search(self, query: str, k: int = 5, filters: Filters = Filters()) -> SearchOutcome:
        from .parser import parse
        from .retriever import search

        text = validate_query(query)
        if not 1 <= k <= 100:
            from .errors import QueryError

            raise QueryError(f"top-k must be between 1 and 100, got {k}")
        index = self.index()
        return search(index, parse(text, index.lexicon, index.stopwords), k=k, filters=filters, embed=self._embedder(index))

    def _embedder(self, index: LoadedIndex):
        return self.embed if index.semantic_model is not None and self.semantic else None

    def ranker(self, k: int = 10, weights: dict | None = None):
        """A function query -> (ranked case ids, abstained), for evaluation."""
        from .parser import parse
        from .retriever import search

        index = self.index()

        def rank(query: str) -> tuple[list[str], bool]:
            outcome = search(
                index, parse(validate_query(query), index.lexicon, index.stopwords), k=k, weights=weights, embed=self._embedder(index)
            )
            return [hit.case_id for hit in outcome.hits], outcome.abstained

        return rank

    def evaluate(self, path: Path, split: str = "all", k: int = 10):
        from .evaluate import evaluate, load_queries, reference_map, select

        queries = select(load_queries(path), split)
        return evaluate("kbq", self.ranker(k), queries, reference_map(self.index().all_documents()))

    def get(self, case_id: str) -> dict[str, Any]:
        self.ensure_ready()
        with self._reader() as store:
            stored = store.get(case_id)
        if stored is None:
            raise NotFoundError(f"no case with id '{case_id}' in {self.describe()}")
        return _document_with_times(stored)

    def cases(self, filters: Filters = Filters(), status: str | None = None) -> list[dict[str, Any]]:
        """All stored cases (drafts too unless ``status`` says otherwise), filtered like a search
        (the filters are answered by the index, so only filtering needs it)."""
        state = self.ensure_ready()
        allowed = None
        if filters.model or filters.framework or filters.tag:
            from .retriever import matching_ids

            allowed = matching_ids(self.index(state=state), filters)
        with self._reader() as store:
            documents = [_document_with_times(s) for s in store.all(status=status)]
        return [d for d in documents if allowed is None or d["id"] in allowed]

    def stats(self) -> Stats:
        """Counts by status from the database, by facet from the index. A built index is only
        summarised (its meta.json, kb.indexkey), not loaded; a missing one is built first."""
        from .indexkey import IndexSummary, index_key, read_summary

        state = self.ensure_ready()
        key = index_key(state.revision)
        summary = read_summary(self.index_dir(key), key)
        if summary is None:  # not built yet: build it (a server may answer from its loaded one meanwhile)
            summary = IndexSummary.of(self.index(state=state).meta)
        with self._reader() as store:
            counts = store.counts()
            revision = store.revision()
        return Stats(
            url=self.describe(),
            counts=counts,
            by_model_family=summary.counts["by_model_family"],
            by_framework=summary.counts["by_framework"],
            by_phase=summary.counts["by_phase"],
            by_language=summary.counts["by_language"],
            index_cases=summary.cases,
            index_terms=summary.terms,
            revision=revision,
        )


def _document_with_times(stored) -> dict[str, Any]:
    document = dict(stored.document)
    document["created_at"] = stored.created_at.isoformat()
    document["updated_at"] = stored.updated_at.isoformat()
    return document
