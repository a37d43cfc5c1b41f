"""The garbage collector's SQL index: typed models and the repository-style API the sweep uses.

One schema serves SQLite (the embedded default) and PostgreSQL (shared by daemon replicas).
The schema itself is owned by Alembic (`migrations/`); `layergc.gc.db.open_index` brings a
database to head before handing out an `Index`.

Large sets travel in chunks, each chunk as one statement whose rows are one bound
parameter (PostgreSQL: `unnest` of arrays; SQLite: `json_each` of a JSON array): no per-row
work in SQLAlchemy or the driver. (The reference cache's plain inserts on SQLite go to the
driver's executemany instead, which costs less there.) Every upsert is a single dialect-specific
`INSERT ... ON CONFLICT` statement, so the semantics below hold under concurrent writers
without read-then-write races. Reads of many keys go the same way (`= ANY(array)` /
`IN (SELECT value FROM json_each(?))`), a few queries for tens of thousands of keys.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, Final, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import Index as SqlIndex
from sqlalchemy.sql import Select

from layergc.digest import ALGORITHMS, Digest

log = logging.getLogger(__name__)

#: Rows per bulk write statement.
CHUNK: Final = 1000
#: Keys per membership query: one bound array (PostgreSQL) or JSON text (SQLite) each.
LOOKUP_CHUNK: Final = 10_000
REFERENCE_LOOKUP_CHUNK: Final = 5_000  # keys per query of the reference cache
# Entries per write of the reference cache: a first mark writes tens of thousands while
# its own data is at its largest; 1,000 at a time added 7 MiB to its peak, 250 add 3.
REFERENCE_WRITE_CHUNK: Final = 250
# The columns of a stored reference row, in its order (see Index.reference_rows).
_REFERENCE_COLUMNS: Final = (
    "digest",
    "media_type",
    "kind",
    "blobs",
    "children",
    "subject",
    "extra",
)

RUN_MODES: Final = ("sweep", "purge-uploads")
RUN_STATUSES: Final = ("running", "succeeded", "failed", "interrupted")
CANDIDATE_KINDS: Final = ("blob", "manifest", "upload")
CANDIDATE_STATES: Final = ("pending", "quarantined", "deleted", "restored", "referenced")
#: The counters `finish_run` accepts (each a Run column).
RUN_COUNTS: Final = (
    "repositories",
    "manifests_marked",
    "blobs_marked",
    "blobs_found",
    "blobs_deleted",
    "manifests_found",
    "manifests_deleted",
    "uploads_found",
    "uploads_deleted",
    "bytes_reclaimed",
)

# A lease released on purpose expires at the epoch, so the next acquirer takes it at once.
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_T = TypeVar("_T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so values are normalised to
    UTC on the way in (which also keeps its text comparisons ordered) and tagged UTC on the
    way out. A naive datetime is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores text: drop the offset so every stored value has the same shape.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONType(TypeDecorator[Any]):
    """JSONB on PostgreSQL (compact, indexable); JSON text elsewhere.

    The PostgreSQL type is looked up when a PostgreSQL engine first uses it: with
    `with_variant` the dialect (and the async drivers it pulls in) was imported at every
    start, a quarter of a second of each one-shot sweep on SQLite."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))


def json_text(value: Any) -> str:
    """Compact JSON text (orjson: ten times faster than json), for bulk parameters and
    the engine's JSON columns."""
    return orjson.dumps(value).decode()


def _postgresql() -> Any:
    """The PostgreSQL dialect module, imported only by code that runs on PostgreSQL."""
    from sqlalchemy.dialects import postgresql

    return postgresql


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType(),
        list[Any]: JSONType(),
    }


class Run(Base):
    """One sweep or upload purge: options, outcome, counters and the final report."""

    __tablename__ = "layergc_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[str] = mapped_column(String(32))
    dry_run: Mapped[bool]
    delete_untagged: Mapped[bool]
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    repositories: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    manifests_marked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    blobs_marked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    blobs_found: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    blobs_deleted: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    manifests_found: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    manifests_deleted: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    uploads_found: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    uploads_deleted: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes_reclaimed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    errors: Mapped[list[Any]] = mapped_column(default=list)
    report: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, mode={self.mode!r}, status={self.status!r})"


class Candidate(Base):
    """Something seen unreferenced: a blob (key = digest), a manifest revision
    (key = "repo@digest") or an upload (key = "repo/uuid")."""

    __tablename__ = "layergc_candidates"
    __table_args__ = (
        UniqueConstraint("kind", "key"),
        SqlIndex("ix_layergc_candidates_kind_state", "kind", "state"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(Text)
    repository: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    first_seen_unreferenced: Mapped[datetime]
    last_seen: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    # The run that last saw it. Deliberately no foreign key: the check would cost a
    # lookup per row on the hottest write path, and runs may be pruned independently.
    last_run_id: Mapped[int | None]
    quarantine_path: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"Candidate({self.kind!r}, {self.key!r}, state={self.state!r})"


class Deletion(Base):
    """The audit log: one row per object actually deleted."""

    __tablename__ = "layergc_deletions"
    __table_args__ = (SqlIndex("ix_layergc_deletions_kind_key", "kind", "key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("layergc_runs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(Text)
    repository: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    deleted_at: Mapped[datetime]


class ManifestReferences(Base):
    """What a manifest digest references. Manifests are immutable, so an entry never goes
    stale: a repeated mark reads it here instead of fetching and parsing the manifest.

    The digest lists are space-separated text, not JSON: a repeated mark loads tens of
    thousands of entries, and str.split/join are several times cheaper than json.loads/
    dumps there. Any other field of an entry goes to the JSON `extra` (NULL when empty).
    """

    __tablename__ = "layergc_manifest_references"

    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    media_type: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(String(32))
    blobs: Mapped[str] = mapped_column(Text)
    children: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(200))
    extra: Mapped[dict[str, Any] | None]


class Mark(Base):
    """Scratch space for a mark set too large for memory: the digests one run keeps. The
    sweep can then stream the blob listing through `unmarked` chunk by chunk. Rows live
    only while their run does (finish_run and mark_stale_running_runs clear them)."""

    __tablename__ = "layergc_marks"
    __table_args__ = {"sqlite_with_rowid": False}  # the key is the row: one B-tree, not two

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(200), primary_key=True)


class Lease(Base):
    """A named lease with a fencing token, electing one runner among replicas."""

    __tablename__ = "layergc_leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(Text)
    token: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime]


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _check(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")
    return value


def _seconds(ttl: float | timedelta) -> timedelta:
    delta = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    if delta <= timedelta(0):
        raise ValueError(f"lease ttl must be positive, got {ttl!r}")
    return delta


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# The reference-cache fields with a column of their own (the rest go to `extra`).
_REF_COLUMNS: Final = ("media_type", "kind", "blobs", "children", "subject")


def _join_digests(digests: Sequence[str] | None, what: str) -> str:
    joined = " ".join(digests or ())
    if len(joined.split()) != len(digests or ()):
        raise ValueError(f"{what}: a digest is empty or holds whitespace: {digests!r}")
    return joined


def _reference_entry(row: Sequence[Any]) -> dict[str, Any]:
    """get_references' form of a stored row (see reference_rows)."""
    _digest, media_type, kind, blobs, children, subject, extra = row
    entry = {
        "media_type": media_type,
        "kind": kind,
        "blobs": blobs.split(),
        "children": children.split(),
        "subject": subject,
    }
    if extra:
        entry.update(extra)
    return entry


def _reference_row(digest: str, value: Mapping[str, Any]) -> tuple[Any, ...]:
    extra = {k: v for k, v in value.items() if k not in _REF_COLUMNS and v not in (None, [], ())}
    return (
        digest,
        value.get("media_type"),
        value.get("kind"),
        _join_digests(value.get("blobs"), digest),
        _join_digests(value.get("children"), digest),
        value.get("subject"),
        json_text(extra) if extra else None,
    )


class Index:
    """The repository-style API over one database. Thread-safe: each call takes its own
    connection from the engine's pool. Build it with `layergc.gc.db.open_index`."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {dialect!r}")
        self.engine = engine
        self._dialect = dialect
        self._insert = sqlite.insert if dialect == "sqlite" else _postgresql().insert

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Index({self.engine.url.render_as_string(hide_password=True)!r})"

    # --- helpers -----------------------------------------------------------------------

    def _session(self) -> Session:
        # Objects outlive the session that loaded them: callers get plain, detached values.
        return Session(self.engine, expire_on_commit=False)

    def _member_of(self, column: Any) -> ColumnElement[bool]:
        """`column IN members` with a single bound parameter, whatever the list's length
        (given at execution by `_members`): a text[] on PostgreSQL, a JSON array read by
        json_each on SQLite. This keeps one statement in the compiled cache and under
        every bind-parameter limit, and no list inside statement objects (see
        `_bulk_rows`)."""
        if self._dialect == "postgresql":
            return column == any_(bindparam("members", type_=_postgresql().ARRAY(Text)))
        members = func.json_each(bindparam("members", type_=Text))
        return column.in_(select(members.table_valued("value").c.value))

    def _members(self, values: Sequence[str]) -> dict[str, Any]:
        """The parameter that gives a `_member_of` condition its members."""
        if self._dialect == "postgresql":
            return {"members": list(values)}
        return {"members": json_text(list(values))}

    def _bulk_rows(self, columns: Mapping[str, Any]) -> Select[Any]:
        """A SELECT over rows passed, by `_bulk_params`, as one bound parameter per
        column (PostgreSQL: unnest of arrays) or one in all (SQLite: json_each of a JSON
        array of rows).

        A bulk write then is one statement with a handful of parameters, whatever the
        row count: no per-row parameter processing in SQLAlchemy or the driver, and no
        per-row statement execution in the database. The rows travel with the
        execution, not in the statement: one statement serves every chunk, and no
        chunk's data stays behind in statement objects (a mark runs with the cyclic
        garbage collector paused: 10 MiB of them outlived its cache writes)."""
        names = list(columns)
        if self._dialect == "postgresql":
            arrays = [
                bindparam(f"bulk_{name}", type_=_postgresql().ARRAY(t))
                for name, t in columns.items()
            ]
            src = func.unnest(*arrays).table_valued(*names).render_derived(name="src")
            return select(*(src.c[name] for name in names))
        doc = bindparam("bulk_rows", type_=Text)
        src = func.json_each(doc).table_valued("value").alias("src")
        fields = [
            func.json_extract(src.c.value, f"$[{i}]", type_=t).label(name)
            for i, (name, t) in enumerate(columns.items())
        ]
        # "WHERE true": without it SQLite would read ON CONFLICT as a join constraint.
        return select(*fields).where(true())

    def _bulk_params(
        self, columns: Mapping[str, Any], rows: Sequence[tuple[Any, ...]]
    ) -> dict[str, Any]:
        """The parameters that give a `_bulk_rows(columns)` statement these rows."""
        if self._dialect == "postgresql":
            return {f"bulk_{name}": [row[i] for row in rows] for i, name in enumerate(columns)}
        return {"bulk_rows": json_text(rows)}

    def _clock(self) -> ColumnElement[datetime]:
        """Now, by the database server's clock where there is one (replicas on several
        hosts then agree on lease expiry); SQLite is local, so the local clock is the same."""
        if self._dialect == "postgresql":
            return func.statement_timestamp(type_=UTCDateTime())
        return literal(utcnow(), UTCDateTime())

    def _in_future(self, delta: timedelta) -> ColumnElement[datetime]:
        if self._dialect == "postgresql":
            return func.statement_timestamp(type_=UTCDateTime()) + literal(delta)
        return literal(utcnow() + delta, UTCDateTime())

    # --- runs --------------------------------------------------------------------------

    def start_run(
        self,
        mode: str,
        dry_run: bool,
        delete_untagged: bool = False,
        host: str | None = None,
        pid: int | None = None,
        *,
        started_at: datetime | None = None,
    ) -> int:
        """Record a run as "running"; host and pid default to this process's."""
        _check(mode, RUN_MODES, "run mode")
        with self.engine.begin() as conn:
            run_id = conn.execute(
                insert(Run)
                .values(
                    mode=mode,
                    dry_run=dry_run,
                    delete_untagged=delete_untagged,
                    status="running",
                    started_at=started_at or utcnow(),
                    host=host if host is not None else socket.gethostname(),
                    pid=pid if pid is not None else os.getpid(),
                    errors=[],
                )
                .returning(Run.id)
            ).scalar_one()
        log.info("run started", extra={"run_id": run_id, "mode": mode, "dry_run": dry_run})
        return int(run_id)

    def finish_run(
        self,
        run_id: int,
        status: str,
        counts: Mapping[str, int] | None = None,
        errors: Sequence[Any] | None = None,
        report: Mapping[str, Any] | None = None,
        *,
        finished_at: datetime | None = None,
    ) -> None:
        """Close a run with its outcome. `counts` keys are the names in RUN_COUNTS."""
        _check(status, RUN_STATUSES[1:], "final run status")
        counts = dict(counts or {})
        unknown = set(counts) - set(RUN_COUNTS)
        if unknown:
            raise ValueError(f"unknown run counters: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {
            "status": status,
            "finished_at": finished_at or utcnow(),
            "errors": list(errors or []),
            "report": dict(report) if report is not None else None,
            **{name: int(value) for name, value in counts.items()},
        }
        with self.engine.begin() as conn:
            done = conn.execute(update(Run).where(Run.id == run_id).values(**values)).rowcount
            conn.execute(delete(Mark).where(Mark.run_id == run_id))
        if done != 1:
            raise KeyError(f"no run {run_id}")
        log.info("run finished", extra={"run_id": run_id, "status": status})

    def mark_stale_running_runs(
        self, older_than: datetime | None = None, *, now: datetime | None = None
    ) -> list[int]:
        """Turn runs left "running" by a process that is gone into "interrupted".

        A run is stale when it started before `older_than`, or when it was started on this
        host by a process id that no longer exists (never this process's own runs). A
        replica that holds the sweep lease may pass `older_than=now`: no other run can
        legitimately be in flight then. Returns the ids it changed.
        """
        here, me = socket.gethostname(), os.getpid()
        with self._session() as session:
            running = session.execute(
                select(Run.id, Run.started_at, Run.host, Run.pid).where(Run.status == "running")
            ).all()
        stale = [
            row.id
            for row in running
            if (older_than is not None and row.started_at < older_than)
            or (
                row.host == here
                and row.pid is not None
                and row.pid != me
                and not _pid_alive(row.pid)
            )
        ]
        if not stale:
            return []
        with self.engine.begin() as conn:
            conn.execute(
                update(Run)
                .where(Run.id.in_(stale), Run.status == "running")
                .values(status="interrupted", finished_at=now or utcnow())
            )
            conn.execute(delete(Mark).where(Mark.run_id.in_(stale)))
        log.warning("stale runs marked interrupted", extra={"run_ids": stale})
        return stale

    def runs(self, limit: int | None = 20) -> list[Run]:
        """The most recent runs, newest first."""
        with self._session() as session:
            return list(session.scalars(select(Run).order_by(Run.id.desc()).limit(limit)))

    def run(self, run_id: int) -> Run | None:
        with self._session() as session:
            return session.get(Run, run_id)

    # --- candidates --------------------------------------------------------------------

    def observe_unreferenced(
        self,
        run_id: int,
        kind: str,
        items: Iterable[tuple[str, str | None, int | None]],
        now: datetime | None = None,
    ) -> dict[str, datetime]:
        """Upsert what this run found unreferenced; return each key's first sighting.

        New keys start "pending" with first_seen = now. A key seen before keeps its
        first_seen while it stayed pending or quarantined; one that was "referenced",
        "restored" or "deleted" in between (so is unreferenced anew, or was uploaded again)
        restarts its grace period from now. last_seen = now and last_run_id = run_id
        always; the state goes back to "pending" unless the key is quarantined.
        """
        _check(kind, CANDIDATE_KINDS, "candidate kind")
        c = Candidate.__table__.c
        when = bindparam("now", now or utcnow(), type_=UTCDateTime())
        # Plain ORs, not IN: no expanding parameter in the statement.
        grace_continues = or_(c.state == "pending", c.state == "quarantined")
        first_seen: dict[str, datetime] = {}
        columns = {"key": Text(), "repository": Text(), "size": BigInteger()}
        src = self._bulk_rows(columns).subquery("observed")
        ins = self._insert(Candidate)
        stmt = (
            ins.from_select(
                [
                    *(c.key, c.repository, c.size, c.kind, c.state, c.last_run_id),
                    *(c.first_seen_unreferenced, c.last_seen),
                ],
                select(
                    src.c.key,
                    src.c.repository,
                    src.c.size,
                    literal(kind, String()),
                    literal("pending", String()),
                    literal(int(run_id), Integer()),
                    when,
                    when,
                ).where(true()),
            )
            .on_conflict_do_update(
                index_elements=[c.kind, c.key],
                set_={
                    "first_seen_unreferenced": case(
                        (grace_continues, c.first_seen_unreferenced),
                        else_=ins.excluded.first_seen_unreferenced,
                    ),
                    "last_seen": ins.excluded.last_seen,
                    "last_run_id": ins.excluded.last_run_id,
                    "state": case(
                        (c.state == "quarantined", c.state), else_=ins.excluded.state
                    ),
                    "repository": func.coalesce(ins.excluded.repository, c.repository),
                    "size": func.coalesce(ins.excluded.size, c.size),
                },
            )
            .returning(c.key, c.first_seen_unreferenced)
        )
        with self.engine.begin() as conn:
            for chunk in _chunks(items, CHUNK):
                # One statement must not touch a row twice (PostgreSQL refuses): last one wins.
                rows = list({item[0]: tuple(item[:3]) for item in chunk}.values())
                params = self._bulk_params(columns, rows)
                first_seen.update(conn.execute(stmt, params).all())  # rows of (key, first_seen)
        return first_seen

    def forget_absent(self, kind: str, run_id: int) -> int:
        """Mark "referenced" every pending candidate of `kind` this run did not observe
        (it is referenced again, or gone). Call it only after a complete scan of `kind`.
        Returns how many rows changed."""
        _check(kind, CANDIDATE_KINDS, "candidate kind")
        with self.engine.begin() as conn:
            return conn.execute(
                update(Candidate)
                .where(
                    Candidate.kind == kind,
                    Candidate.state == "pending",
                    (Candidate.last_run_id.is_(None)) | (Candidate.last_run_id != run_id),
                )
                .values(state="referenced")
            ).rowcount

    def set_state(
        self,
        kind: str,
        keys: Iterable[str],
        state: str,
        quarantine_path: str | Mapping[str, str] | None = None,
    ) -> int:
        """Move candidates to `state`. `quarantine_path` is one path for all keys or a
        per-key mapping; leaving the quarantine (any other state) clears the path unless one
        is given. Returns how many rows changed (keys not in the index are ignored)."""
        _check(kind, CANDIDATE_KINDS, "candidate kind")
        _check(state, CANDIDATE_STATES, "candidate state")
        changed = 0
        with self.engine.begin() as conn:
            if isinstance(quarantine_path, Mapping):
                stmt = (
                    update(Candidate)
                    .where(Candidate.kind == kind, Candidate.key == bindparam("b_key"))
                    .values(state=state, quarantine_path=bindparam("b_path"))
                )
                for chunk in _chunks(quarantine_path.items(), CHUNK):
                    rows = [{"b_key": k, "b_path": p} for k, p in chunk]
                    changed += conn.execute(stmt, rows).rowcount
                return changed
            stmt = (
                update(Candidate)
                .where(Candidate.kind == kind, self._member_of(Candidate.key))
                .values(state=state, quarantine_path=quarantine_path)
                .execution_options(synchronize_session=False)
            )
            for chunk in _chunks(keys, LOOKUP_CHUNK):
                changed += conn.execute(stmt, self._members(chunk)).rowcount
        return changed

    def candidates(self, kind: str, keys: Iterable[str]) -> dict[str, Candidate]:
        """The index's rows for these keys (missing keys are absent from the result)."""
        found: dict[str, Candidate] = {}
        query = select(Candidate).where(Candidate.kind == kind, self._member_of(Candidate.key))
        with self._session() as session:
            for chunk in _chunks(keys, LOOKUP_CHUNK):
                found.update((c.key, c) for c in session.scalars(query, self._members(chunk)))
        return found

    def known_sizes(self, kind: str) -> dict[str, int]:
        """key -> size of every candidate of `kind` whose size is recorded, whatever
        its state: a blob's size never changes (its digest names its content), so a
        sweep need not stat a blob again to report it."""
        c = Candidate.__table__.c
        query = select(c.key, c.size).where(
            c.kind == _check(kind, CANDIDATE_KINDS, "kind"), c.size.is_not(None)
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(query).all())  # rows of (key, size)

    def quarantined(self, kind: str | None = None) -> list[Candidate]:
        """Candidates in quarantine: what a crashed sweep left to finish or undo."""
        query = select(Candidate).where(Candidate.state == "quarantined")
        if kind is not None:
            query = query.where(Candidate.kind == _check(kind, CANDIDATE_KINDS, "kind"))
        with self._session() as session:
            return list(session.scalars(query.order_by(Candidate.id)))

    def pending_candidates(
        self, limit: int | None = None, kind: str | None = None
    ) -> list[Candidate]:
        """Pending candidates, longest unreferenced first."""
        query = select(Candidate).where(Candidate.state == "pending")
        if kind is not None:
            query = query.where(Candidate.kind == _check(kind, CANDIDATE_KINDS, "kind"))
        query = query.order_by(Candidate.first_seen_unreferenced, Candidate.id).limit(limit)
        with self._session() as session:
            return list(session.scalars(query))

    def candidate_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(kind, state) -> (how many, their known bytes): one GROUP BY, for reports and
        metrics that must not load every row."""
        query = select(
            Candidate.kind,
            Candidate.state,
            func.count(),
            func.coalesce(func.sum(Candidate.size), 0),
        ).group_by(Candidate.kind, Candidate.state)
        with self.engine.connect() as conn:
            return {
                (kind, state): (int(n), int(size)) for kind, state, n, size in conn.execute(query)
            }

    def iter_observed(self, run_id: int, kind: str, *, batch: int = CHUNK) -> Iterator[Candidate]:
        """Stream the candidates `run_id` observed, in id order, `batch` rows at a time:
        the bounded-memory alternative to holding observe_unreferenced's whole result."""
        last = 0
        while True:
            with self._session() as session:
                page = list(
                    session.scalars(
                        select(Candidate)
                        .where(
                            Candidate.kind == kind,
                            Candidate.last_run_id == run_id,
                            Candidate.id > last,
                        )
                        .order_by(Candidate.id)
                        .limit(batch)
                    )
                )
            if not page:
                return
            yield from page
            last = page[-1].id

    def prune_candidates(self, last_seen_before: datetime) -> int:
        """Drop settled history: candidates referenced, restored or deleted whose last
        sighting is older than `last_seen_before`. Pending and quarantined rows stay."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(Candidate).where(
                    Candidate.state.in_(("referenced", "restored", "deleted")),
                    Candidate.last_seen < last_seen_before,
                )
            ).rowcount

    # --- the mark set, staged in the database (for stores too large to mark in memory) ----

    def add_marks(self, run_id: int, digests: Iterable[str]) -> int:
        """Record digests `run_id` keeps (duplicates are fine). Returns how many were given."""
        given = 0
        columns = {"digest": Text()}
        src = self._bulk_rows(columns).subquery("m")
        stmt = (
            self._insert(Mark)
            .from_select(
                [Mark.run_id, Mark.digest],
                select(literal(int(run_id), Integer()), src.c.digest).where(true()),
            )
            .on_conflict_do_nothing()
        )
        with self.engine.begin() as conn:
            for chunk in _chunks(digests, CHUNK * 5):
                conn.execute(stmt, self._bulk_params(columns, [(d,) for d in chunk]))
                given += len(chunk)
        return given

    def unmarked(self, run_id: int, digests: Iterable[str]) -> list[str]:
        """Those of `digests` that `run_id` did not mark, in one query per 5,000."""
        found: list[str] = []
        columns = {"digest": Text()}
        src = self._bulk_rows(columns).subquery("b")
        marked = select(Mark.digest).where(Mark.run_id == run_id, Mark.digest == src.c.digest)
        query = select(src.c.digest).where(~marked.exists())
        with self.engine.connect() as conn:
            for chunk in _chunks(digests, CHUNK * 5):
                params = self._bulk_params(columns, [(d,) for d in chunk])
                found.extend(conn.scalars(query, params))
        return found

    def clear_marks(self, run_id: int | None = None) -> int:
        """Drop one run's marks, or every run's (leftovers of crashed processes)."""
        query = delete(Mark)
        if run_id is not None:
            query = query.where(Mark.run_id == run_id)
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount

    # --- the audit log -----------------------------------------------------------------

    def record_deletions(
        self,
        run_id: int,
        items: Iterable[tuple[str, str, str | None, int | None]],
        deleted_at: datetime | None = None,
    ) -> int:
        """Append (kind, key, repository, size) rows to the audit log; returns the count."""
        deleted_at = deleted_at or utcnow()
        written = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(items, CHUNK):
                rows = [
                    {
                        "run_id": run_id,
                        "kind": _check(kind, CANDIDATE_KINDS, "kind"),
                        "key": key,
                        "repository": repository,
                        "size": size,
                        "deleted_at": deleted_at,
                    }
                    for kind, key, repository, size in chunk
                ]
                conn.execute(insert(Deletion), rows)
                written += len(rows)
        return written

    def deletions(self, run_id: int) -> list[Deletion]:
        with self._session() as session:
            query = select(Deletion).where(Deletion.run_id == run_id).order_by(Deletion.id)
            return list(session.scalars(query))

    # --- the manifest reference cache --------------------------------------------------

    def get_references(self, digests: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Cached references for the digests that have them, each as
        {"media_type", "kind", "blobs": [...], "children": [...], "subject", **extra}:
        what `put_references` got, less extra fields that were empty."""
        return {row[0]: _reference_entry(row) for row in self.reference_rows(digests)}

    def reference_rows(self, digests: Iterable[str] | None) -> Iterator[tuple[Any, ...]]:
        """The stored rows behind get_references: (digest, media_type, kind, blobs,
        children, subject, extra), the digest lists as space-separated text; every
        row for None. A caller that converts each row at once never holds every
        entry twice."""
        m = ManifestReferences.__table__.c
        query = select(m.digest, m.media_type, m.kind, m.blobs, m.children, m.subject, m.extra)
        if digests is None:
            batches: Iterable[dict[str, Any]] = [{}]
        else:
            query = query.where(self._member_of(m.digest))
            batches = map(self._members, _chunks(digests, REFERENCE_LOOKUP_CHUNK))
        with self.engine.connect() as conn:
            # Thousands of keys per query and a few hundred rows per fetch: far cheaper
            # than row by row, and a repeated mark (which reads every manifest's entry)
            # holds little of them at a time.
            for params in batches:
                for rows in conn.execute(query, params).partitions(500):
                    yield from rows

    def reference_count(self) -> int:
        """How many manifests the reference cache holds."""
        query = select(func.count()).select_from(ManifestReferences)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def put_references(
        self,
        mapping: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
    ) -> int:
        """Cache what manifests reference: digest -> {"media_type", "kind", "blobs",
        "children", "subject", and any other JSON-able fields}, as `ManifestRefs.to_dict`
        gives. A digest already cached is left alone (manifests are immutable, and a
        concurrent writer computed the same thing). Returns how many entries were offered.
        (digest, entry) pairs may come from an iterator instead: they are then made and
        written one chunk at a time."""
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        return self.put_reference_rows(_reference_row(digest, value) for digest, value in items)

    def put_reference_rows(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """put_references of rows in the stored form (see reference_rows), made one
        chunk at a time from an iterator."""
        if self._dialect == "sqlite":
            # No parameter needs converting, and SQLite's own executemany of the plain
            # INSERT costs less than rows unpacked by json_each: 0.20 s against 0.29 s
            # for a first mark's 18,000 entries.
            sql = self._sqlite_put_references

            def write(conn: Connection, chunk: list[tuple[Any, ...]]) -> None:
                conn.exec_driver_sql(sql, chunk)

        else:
            m = ManifestReferences.__table__.c
            columns = dict.fromkeys(_REFERENCE_COLUMNS, Text())
            src = self._bulk_rows(columns).subquery("refs")
            # `extra` travels as JSON text; PostgreSQL stores it as jsonb.
            extra = cast(src.c.extra, _postgresql().JSONB)
            fields = [src.c[name] for name in _REFERENCE_COLUMNS[:-1]]
            stmt = (
                self._insert(ManifestReferences)
                .from_select(
                    [m[name] for name in _REFERENCE_COLUMNS],
                    select(*fields, extra).where(true()),
                )
                .on_conflict_do_nothing(index_elements=[m.digest])
            )

            def write(conn: Connection, chunk: list[tuple[Any, ...]]) -> None:
                conn.execute(stmt, self._bulk_params(columns, chunk))

        offered = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(rows, REFERENCE_WRITE_CHUNK):
                write(conn, chunk)
                offered += len(chunk)
        return offered

    @functools.cached_property
    def _sqlite_put_references(self) -> str:
        """The INSERT of stored reference rows, as SQLAlchemy compiles it for SQLite,
        its parameters in the rows' order (checked)."""
        m = ManifestReferences.__table__.c
        compiled = (
            self._insert(ManifestReferences)
            .values({name: bindparam(name) for name in _REFERENCE_COLUMNS})
            .on_conflict_do_nothing(index_elements=[m.digest])
            .compile(dialect=self.engine.dialect)
        )
        if tuple(compiled.positiontup or ()) != _REFERENCE_COLUMNS:
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
        return str(compiled)

    def delete_references(self, digests: Iterable[str]) -> int:
        """Forget cached entries (for manifests whose blobs were deleted)."""
        m = ManifestReferences.__table__.c
        removed = 0
        stmt = delete(ManifestReferences).where(self._member_of(m.digest))
        with self.engine.begin() as conn:
            for chunk in _chunks(digests, LOOKUP_CHUNK):
                removed += conn.execute(stmt, self._members(chunk)).rowcount
        return removed

    # --- leases ------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: float | timedelta) -> int | None:
        """Take or renew the lease `name` for `ttl`; return its fencing token, or None
        while another holder's lease is unexpired.

        One atomic upsert: the holder of an unexpired lease renews it with the same token;
        a free, released or expired lease goes to the caller with token + 1 (1 for a new
        name). Tokens never go down, so a storage write can be fenced on them.
        """
        delta = _seconds(ttl)
        lease = Lease.__table__.c
        ins = self._insert(Lease)
        now = self._clock()
        still_mine = (lease.holder == ins.excluded.holder) & (lease.expires_at >= now)
        stmt = (
            ins.values(name=name, holder=holder, token=1, expires_at=self._in_future(delta))
            .on_conflict_do_update(
                index_elements=[lease.name],
                set_={
                    "holder": ins.excluded.holder,
                    "expires_at": ins.excluded.expires_at,
                    "token": case((still_mine, lease.token), else_=lease.token + 1),
                },
                where=(lease.expires_at < now) | (lease.holder == ins.excluded.holder),
            )
            .returning(lease.token)
        )
        with self.engine.begin() as conn:
            token = conn.execute(stmt).scalar_one_or_none()
        return None if token is None else int(token)

    def renew_lease(self, name: str, holder: str, token: int, ttl: float | timedelta) -> bool:
        """Extend a lease this holder acquired as `token`. False once anyone else has
        acquired it since (the token moved on): the caller must stop acting as the holder."""
        delta = _seconds(ttl)
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Lease)
                .where(Lease.name == name, Lease.holder == holder, Lease.token == token)
                .values(expires_at=self._in_future(delta))
            ).rowcount
        return changed == 1

    def release_lease(self, name: str, holder: str, token: int | None = None) -> bool:
        """Give the lease up now (it stays in the table, expired, so tokens keep growing)."""
        query = update(Lease).where(Lease.name == name, Lease.holder == holder)
        if token is not None:
            query = query.where(Lease.token == token)
        with self.engine.begin() as conn:
            return conn.execute(query.values(expires_at=_EPOCH)).rowcount == 1

    def lease(self, name: str) -> Lease | None:
        with self._session() as session:
            return session.get(Lease, name)

    def reference_cache(self) -> IndexReferenceCache:
        """The mark's ReferenceCache (get_many/put_many of ManifestRefs) over this index."""
        return IndexReferenceCache(self)


class IndexReferenceCache:
    """Adapts the reference cache tables to the scan's ReferenceCache protocol: keyed by
    Digest, valued by ManifestRefs (stored through its to_dict/from_dict form)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def get_many(
        self, digests: Iterable[Any], intern: dict[str, Digest] | None = None
    ) -> dict[Any, Any]:
        # One Digest per digest across every entry (layers are shared by many manifests),
        # the mark's own where it has one, and each row converted as it comes: a
        # repeated mark loads every manifest's entry, and the intermediate dicts of
        # get_references, Digest.parse per reference, or a map of every wanted digest's
        # string, cost more time and memory than the rest of it. `intern` maps
        # well-formed hexes to their Digests (a mark's interner): _digests relies on it.
        wanted = list(digests)
        by_hex: dict[str, Digest] = {} if intern is None else intern
        for d in wanted:
            by_hex.setdefault(d.hex, d)
        return self._entries(self.index.reference_rows(map(str, wanted)), by_hex)

    def get_all(self, intern: dict[str, Digest] | None = None) -> dict[Any, Any]:
        return self._entries(self.index.reference_rows(None), {} if intern is None else intern)

    def count(self) -> int:
        return self.index.reference_count()

    @staticmethod
    def _entries(rows: Iterable[Sequence[Any]], by_hex: dict[str, Digest]) -> dict[Any, Any]:
        # Imported here: the index must not need the manifest parser to open or migrate.
        from layergc.storage.manifests import ManifestRefs

        found: dict[Any, Any] = {}
        for row in rows:
            # Its hex finds the entry's Digest (hex lengths differ between algorithms):
            # the caller's, or one made here from a key checked as a reference is.
            algorithm, _, hex_ = row[0].partition(":")
            key = by_hex.get(hex_)
            if key is None or key.algorithm != algorithm:
                digests = _digests(row[0], by_hex)
                if not digests or len(digests) != 1:
                    raise ValueError(f"reference cache: malformed key {row[0][:200]!r}")
                key = digests[0]
            found[key] = _cached_refs(row, by_hex, ManifestRefs)
        return found

    def put_many(self, refs: Mapping[Any, Any]) -> None:
        # Rows made as they are written (a first mark's whole set in to_dict form at
        # once was the peak of that run's memory), straight from the ManifestRefs: the
        # to_dict form cost more than the database's part of the write.
        self.index.put_reference_rows(_stored_refs(d, r) for d, r in refs.items())


def _stored_refs(digest: Digest, refs: Any) -> tuple[Any, ...]:
    """The stored row of a ManifestRefs: what _reference_row makes of its to_dict."""
    media_type, kind, blobs, children, subject, unknown = refs
    return (
        str(digest),
        media_type,
        kind,
        _digest_text(blobs),
        _digest_text(children),
        None if subject is None else str(subject),
        json_text({"unknown_algorithms": list(unknown)}) if unknown else None,
    )


def _digest_text(digests: Sequence[Digest]) -> str:
    """The digests as put_references stores them: space-separated strings."""
    if not digests:
        return ""
    # In one C-level join when every one is a sha256 digest (as good as always):
    # then, and only then, the text is 72 characters a digest (64 hex, the prefix,
    # a separator).
    text = "sha256:" + " sha256:".join(map(_HEX, digests))
    if len(text) == 72 * len(digests) - 1:
        return text
    return " ".join(map(str, digests))


def _cached_refs(row: Sequence[Any], by_hex: dict[str, Digest], refs_type: Any) -> Any:
    """refs_type.from_dict (ManifestRefs's) of a stored row (see Index.reference_rows),
    faster. What the fast path does not take (extra fields, an unknown kind or
    algorithm, a malformed digest) goes through from_dict, which judges it (and
    raises) as before."""
    _digest, media_type, kind, blobs, children, subject, extra = row
    if not extra and kind in _MANIFEST_KINDS:
        blob_digests = _digests(blobs, by_hex)
        child_digests = _digests(children, by_hex) if children else ()
        subject_digest = _digests(subject, by_hex) if subject else ()
        if blob_digests is not None and child_digests is not None and subject_digest is not None:
            # Interned: a few distinct values, held by every entry of a mark. By
            # position (media type, kind, blobs, children, subject): by keyword cost
            # more than the rest of this.
            return refs_type(
                sys.intern(str(media_type)),
                sys.intern(kind),
                blob_digests,
                child_digests,
                subject_digest[0] if subject_digest else None,
            )
    return refs_type.from_dict(_reference_entry(row))


def _digests(text: str, by_hex: dict[str, Digest]) -> tuple[Digest, ...] | None:
    """The Digests of space-separated digest strings (as put_references stores them),
    one object per digest through `by_hex`; None unless every one is a well-formed
    digest of a supported algorithm. One regular expression checks a whole list: the
    per-digest checks of Digest.parse were most of a repeated mark's cache reads."""
    if not text:
        return ()
    # The hex alone names the digest (each algorithm has its own length), and the
    # mark's interner (`by_hex`) holds nearly all of them: found in one pass in C,
    # holding the blob listing's own strings, not a copy per manifest.
    count, extra = divmod(len(text) + 1, _SHA256_ITEM)
    if (
        not extra
        and text.startswith("sha256:")
        and text.count("sha256:") == count
        and text.count(" sha256:") == count - 1
    ):
        # As _digest_text writes sha256 digests. Then each prefix opens the text or
        # follows a space, and `count` hexes that by_hex holds (well-formed, each
        # at least 64 long) in 64 * count characters are sha256 hexes: the text is
        # well-formed without the regular expression (which took longer than the rest).
        found = list(map(by_hex.get, text.replace("sha256:", "").split(" ")))
        if len(found) == count and all(found):
            return tuple(found)  # type: ignore[arg-type]
    if not _DIGEST_LIST.fullmatch(text):
        return None
    # Imported here: the index must not need the manifest parser to open or migrate.
    from layergc.storage.manifests import interned_digest

    hexes = map(sys.intern, _ALGORITHM_PREFIX.sub("", text).split(" "))
    return tuple(interned_digest(by_hex, hex_) for hex_ in hexes)


_HEX: Final = operator.attrgetter("hex")
_SHA256_ITEM: Final = len("sha256:") + ALGORITHMS["sha256"] + len(" ")
_ALGORITHM_PREFIX: Final = re.compile("|".join(f"{name}:" for name in ALGORITHMS))
_ONE_DIGEST: Final = "|".join(f"{name}:[0-9a-f]{{{n}}}" for name, n in ALGORITHMS.items())
_DIGEST_LIST: Final = re.compile(f"(?:(?:{_ONE_DIGEST})(?: (?:{_ONE_DIGEST}))*)?")
_MANIFEST_KINDS: Final = frozenset(("image", "index", "schema1", "unknown"))
