"""Reading and writing cases: the only module that touches the case tables.

An ingest is one transaction: it either applies every change (and a new
``revision``) or none. Writers are serialized: on SQLite by ``BEGIN
IMMEDIATE`` (see :mod:`kb.db.engine`), on PostgreSQL by locking the
``revision`` row, so two ingests never interleave. Connection and transaction
handling shared with other stores lives in :mod:`kb.db._base`. A case's rows in
``case_threads`` (its sources by thread key) are written and removed with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import Connection, Text, TextClause, bindparam, cast, column, delete, insert, inspect, select, text, update

from kb.db import queries
from kb.db._base import StoreBase, schema_version
from kb.db._common import no_schema_message, utc
from kb.db.engine import describe
from kb.db.fastmeta import DbState
from kb.db.migrate import HEAD, upgrade_in
from kb.db.schema import CaseRow, CaseThreadRow, MetaRow, case_threads_table, cases_table
from kb.errors import DatabaseError
from kb.models import Case, document_hash
from kb.stored import StoredCase, StoredJson

REVISION_KEY = "revision"
T = TypeVar("T")
_CHUNK = 500  # ids per IN (...), well under every backend's parameter limit
# Cases read, looked up and written per round: large enough that executemany, not
# the per-statement overhead, sets the pace; small enough to keep memory flat.
BATCH = 1000


@dataclass
class IngestReport:
    """What one :meth:`CaseStore.upsert` did, id by id."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # guarded writes left alone (see upsert)
    meta_updated: list[str] = field(default_factory=list)
    revision: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.meta_updated)


class CaseStore(StoreBase):
    """The case base in one database (SQLite file or PostgreSQL URL)."""

    # -- writing -----------------------------------------------------------

    def upsert(
        self,
        cases: Iterable[Case],
        *,
        remove_ids: Iterable[str] = (),
        meta: dict[str, str] | Callable[[IngestReport], dict[str, str]] | None = None,
        upgrade: bool = False,
        guard: Mapping[str, str] | None = None,
        new_only: bool = False,
        distinct_threads: bool = False,
    ) -> IngestReport:
        """Insert, update and remove cases and set meta keys, all or nothing.

        ``cases`` may be a generator: it is consumed ``BATCH`` cases at a time
        inside the one write transaction, so memory holds a batch, not the
        base; anything it raises (a bad case file) rolls everything back.
        ``upgrade`` first brings the schema to head in the same transaction, so
        a failed first ingest does not leave an empty schema behind.

        Timestamps given by a case win (so export then ingest reproduces the
        database exactly); otherwise a new case gets "now" and a changed one
        gets a new ``updated_at``. ``revision`` changes iff anything changed.

        ``guard`` (the refresh of the bundled cases) makes the writes conditional: a stored
        case is replaced or removed only while its content hash is still the one ``guard``
        gives for its id, i.e. what this writer put there itself. A case changed since by
        anyone else (an API revision, an ingest of the user's own file) is left as it is
        and listed in ``report.kept``; the check runs inside the write transaction.
        ``new_only`` (POST /v1/cases) refuses, with ConflictError, any id already stored,
        checked in the same transaction so two concurrent creations cannot both succeed.
        ``distinct_threads`` (ingest, the API) refuses, with DuplicateThreadError, an added or
        changed case whose source thread another case documents (kb.threads), checked last, on
        what the transaction would commit. An unchanged case is not checked again: a clash
        stored before the check existed does not block every later ingest of its file.
        """
        if isinstance(remove_ids, str):
            raise TypeError("remove_ids must be a collection of ids, not one string")
        removals = list(dict.fromkeys(remove_ids))

        report = IngestReport()
        now = datetime.now(timezone.utc)
        written: dict[str, None] = {}  # the ids written, in order
        removing = set(removals)
        with self._write(upgrade=upgrade) as conn:
            for batch in _chunks(cases, BATCH):
                _check_ids(batch, written, removing)
                if new_only:
                    _refuse_existing(conn, batch)
                _write_batch(conn, batch, now, report, guard)
            for chunk in _chunks(removals):
                stored = dict(conn.execute(select(CaseRow.id, CaseRow.content_hash).where(CaseRow.id.in_(chunk))).all())
                gone = [i for i in chunk if i in stored and (guard is None or guard.get(i) == stored[i])]
                report.kept += [i for i in chunk if i in stored and i not in gone]
                report.removed += gone
                if gone:
                    conn.execute(delete(CaseRow).where(CaseRow.id.in_(gone)))
                    conn.execute(delete(CaseThreadRow).where(CaseThreadRow.case_id.in_(gone)))
            if distinct_threads:
                changed = set(report.added) | set(report.updated)
                _refuse_shared_threads(conn, [case_id for case_id in written if case_id in changed])
            values = meta(report) if callable(meta) else (meta or {})  # a callable sees what was kept
            if REVISION_KEY in values:
                raise ValueError(f"meta key {REVISION_KEY!r} is managed by the store")
            report.meta_updated = _set_meta(conn, values)
            if report.changed:
                report.revision = uuid.uuid4().hex
                _set_meta(conn, {REVISION_KEY: report.revision})
            else:
                report.revision = conn.scalar(select(MetaRow.value).where(MetaRow.key == REVISION_KEY))
        return report

    def delete(self, ids: Iterable[str]) -> IngestReport:
        """Remove cases by id (unknown ids are ignored)."""
        return self.upsert([], remove_ids=ids)

    # -- reading -----------------------------------------------------------

    def get(self, case_id: str) -> StoredCase | None:
        with self._read() as conn:
            row = conn.execute(_stored_text(queries.CASE_BY_ID), {"id": case_id}).one_or_none()
        return _stored(row) if row else None

    def all(self, status: str | None = None) -> list[StoredCase]:
        statement, parameters = queries.cases_query(status)
        with self._read() as conn:
            return [_stored(row) for row in conn.execute(_stored_text(statement), parameters)]

    def sources(self) -> list[tuple[str, str, list[str]]]:
        """(id, status, sources) of every case, without reading the rest of the documents."""
        query = select(CaseRow.id, CaseRow.status, CaseRow.document["sources"]).order_by(CaseRow.id)
        with self._read() as conn:
            return [(case_id, status, sources or []) for case_id, status, sources in conn.execute(query)]

    def reviewed_json(self) -> list[StoredJson]:
        """Every reviewed case, ordered by id, with its document as the JSON text stored: what an
        index build reads (it decodes the documents in parallel, :mod:`kb.index`)."""
        query = text(queries.REVIEWED_JSON).columns(
            cases_table.c.id, cases_table.c.status, column("document", Text), cases_table.c.created_at, cases_table.c.updated_at
        )
        with self._read() as conn:
            return [
                StoredJson(row[0], row[1], row[2], utc(row[3]).isoformat(), utc(row[4]).isoformat())
                for row in conn.execute(query)
            ]

    def counts(self) -> dict[str, int]:
        """Number of cases by status."""
        with self._read() as conn:
            return {status: count for status, count in conn.execute(text(queries.COUNT_BY_STATUS))}

    def read_meta(self) -> dict[str, str]:
        with self._read() as conn:
            return _meta(conn)

    def revision(self) -> str | None:
        """Changes on every write; '0' for a freshly migrated, never written base."""
        return self.read_meta().get(REVISION_KEY)

    def state(self) -> DbState:
        """Schema version and meta in one read, tolerating an empty database."""
        with self._read() as conn:
            tables = set(inspect(conn).get_table_names())
            version = schema_version(conn) if "alembic_version" in tables else None
            meta = _meta(conn) if MetaRow.__tablename__ in tables else {}
        return DbState(schema_version=version, revision=meta.get(REVISION_KEY), meta=meta)

    def is_initialized(self) -> bool:
        """True when the kbq tables exist at the schema version this code needs."""
        state = self.state()
        return state.schema_version == HEAD and REVISION_KEY in state.meta

    # -- transactions ------------------------------------------------------

    @contextmanager
    def _write(self, *, upgrade: bool = False) -> Iterator[Connection]:
        """A write transaction holding the writer lock, at the expected schema
        (migrated to it first, in the same transaction, when ``upgrade``)."""
        with self._begin_write() as conn:
            if upgrade:
                upgrade_in(conn)
            locked = conn.execute(
                select(MetaRow.key).where(MetaRow.key == REVISION_KEY).with_for_update()
            ).one_or_none()
            if locked is None:
                raise DatabaseError(no_schema_message(describe(self.url)))
            self._require_head(schema_version(conn))
            yield conn


def _meta(conn: Connection) -> dict[str, str]:
    return {key: value for key, value in conn.execute(text(queries.META))}


def _set_meta(conn: Connection, values: dict[str, str]) -> list[str]:
    """Write the keys whose value differs; returns those keys."""
    current = _meta(conn)
    changed = [key for key, value in values.items() if current.get(key) != value]
    for key in changed:
        if key in current:
            conn.execute(update(MetaRow).where(MetaRow.key == key).values(value=values[key]))
        else:
            conn.execute(insert(MetaRow).values(key=key, value=values[key]))
    return changed


def _check_ids(batch: list[Case], written: dict[str, None], removals: set[str]) -> None:
    """Refuse an id seen before or also being removed; remember the batch's ids."""
    for case in batch:
        if case.id in removals:
            raise ValueError("upsert cannot both write and remove the same case id")
        if case.id in written:
            raise ValueError("upsert got the same case id twice")
        written[case.id] = None


def _existing(conn: Connection, ids: list[str]) -> dict[str, tuple[str, datetime, datetime]]:
    """content_hash, created_at, updated_at of the ids already stored."""
    found: dict[str, tuple[str, datetime, datetime]] = {}
    columns = (CaseRow.id, CaseRow.content_hash, CaseRow.created_at, CaseRow.updated_at)
    for chunk in _chunks(ids):
        for case_id, digest, created, updated in conn.execute(select(*columns).where(CaseRow.id.in_(chunk))):
            found[case_id] = (digest, utc(created), utc(updated))
    return found


def _refuse_existing(conn: Connection, batch: list[Case]) -> None:
    from kb.errors import ConflictError

    taken = sorted(_existing(conn, [case.id for case in batch]))
    if taken:
        raise ConflictError(f"case '{taken[0]}' already exists; use PUT /v1/cases/{taken[0]} to revise it")


def _refuse_shared_threads(conn: Connection, written: list[str]) -> None:
    """Raise DuplicateThreadError when a written case and another case document one thread.

    Reads the ``case_threads`` rows of the written cases, then by the indexed digest the
    rows of every case filed under one of their keys (kb.threads.filed_keys): the work
    grows with the cases written, not with the cases stored. The rule itself is
    ThreadIndex's, applied to the keys of the sources as they read now. The rows already
    hold this transaction's writes, so cases of one ingest are checked against each other
    whatever batch they came in."""
    if not written:
        return
    from kb.errors import DuplicateThreadError
    from kb.threads import ThreadIndex, filed_keys, key_digest

    order = {case_id: position for position, case_id in enumerate(written)}
    columns = (CaseThreadRow.case_id, CaseThreadRow.position, CaseThreadRow.source)
    own = sorted((row for chunk in _chunks(written) for row in conn.execute(
        select(*columns).where(CaseThreadRow.case_id.in_(chunk)))), key=lambda row: (order[row[0]], row[1]))
    digests = list(dict.fromkeys(key_digest(key) for _, _, source in own for key in filed_keys(source)))
    seen = {(case_id, position) for case_id, position, _ in own}
    others = sorted({(case_id, position, source) for chunk in _chunks(digests) for case_id, position, source in
                     conn.execute(select(*columns).where(CaseThreadRow.key_digest.in_(chunk)))
                     if (case_id, position) not in seen})
    index = ThreadIndex()
    for case_id, position, source in [*own, *others]:
        index.add_source(case_id, source, first=position == 0)
    clash = index.clash_among(written)
    if clash is not None:
        raise DuplicateThreadError(clash.message(f"case '{clash.case_id}'"), clash)


def _thread_rows(cases: Iterable[Case]) -> list[dict[str, Any]]:
    """The ``case_threads`` rows of ``cases``: one per source, under its thread key's digest."""
    from kb.threads import key_digest, thread_key

    return [{"case_id": case.id, "position": position, "source": source, "key_digest": key_digest(thread_key(source))}
            for case in cases for position, source in enumerate(case.sources)]


def _write_batch(conn: Connection, batch: list[Case], now: datetime, report: IngestReport,
                 guard: Mapping[str, str] | None = None) -> None:
    """One lookup of what is stored, then one executemany each for new and for changed rows
    (and for their ``case_threads`` rows: a changed case's are replaced)."""
    existing = _existing(conn, [case.id for case in batch])
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    threaded: list[Case] = []
    for case in batch:
        old = existing.get(case.id)
        row = _row(case, old, now)
        if row is None:
            report.unchanged.append(case.id)
        elif guard is not None and old is not None and guard.get(case.id) != old[0]:
            report.kept.append(case.id)
        elif old is None:
            new.append(row)
            threaded.append(case)
            report.added.append(case.id)
        else:
            # executemany SETs every key of the row: the id goes to the WHERE under its own name
            row["row_id"] = row.pop("id")
            changed.append(row)
            threaded.append(case)
            report.updated.append(case.id)
    if new:
        conn.execute(insert(cases_table), new)
    if changed:
        conn.execute(update(cases_table).where(cases_table.c.id == bindparam("row_id")), changed)
        for chunk in _chunks(row["row_id"] for row in changed):
            conn.execute(delete(CaseThreadRow).where(CaseThreadRow.case_id.in_(chunk)))
    if threaded:
        conn.execute(insert(case_threads_table), _thread_rows(threaded))


def _row(case: Case, old: tuple[str, datetime, datetime] | None, now: datetime) -> dict[str, Any] | None:
    """The whole row to write for ``case`` given the stored hash and timestamps
    (``old``, None for a new case); None when the row would not change."""
    given_created = utc(case.created_at) if case.created_at else None
    given_updated = utc(case.updated_at) if case.updated_at else None
    values = _columns(case)
    if old is None:
        return {**values, "created_at": given_created or now, "updated_at": given_updated or now}
    old_hash, old_created, old_updated = old
    if values["content_hash"] != old_hash:
        return {**values, "created_at": given_created or old_created, "updated_at": given_updated or now}
    # Same content: only timestamps given in the case, and differing, are news.
    times = (given_created or old_created, given_updated or old_updated)
    if times == (old_created, old_updated):
        return None
    return {**values, "created_at": times[0], "updated_at": times[1]}


def _columns(case: Case) -> dict[str, Any]:
    """The row for a case, minus timestamps: the document plus its filter columns."""
    document = case.to_document()
    return {
        "id": case.id,
        "title": case.title,
        "status": case.status,
        "language": case.language,
        "phase": case.phase,
        "model_family": case.model.family,
        "model_version": case.model.version,
        "framework": case.framework.name,
        "document": document,
        "content_hash": document_hash(document),
    }


def _stored_text(statement: str) -> TextClause:
    """A statement of :mod:`kb.db.queries` returning stored cases, typed by the table's columns
    (JSON documents and timestamps come back decoded, as from any query on the table)."""
    return text(statement).columns(*(cases_table.c[name] for name in queries.STORED_COLUMNS))


def _stored(row: Any) -> StoredCase:
    return StoredCase(
        id=row.id,
        status=row.status,
        document=row.document,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def _chunks(items: Iterable[T], size: int = _CHUNK) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter); reads lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
