"""Opening the index database: URLs, engines, and Alembic migrations.

`open_index(url)` is the one entry point the rest of layergc uses. It accepts

- nothing: the SQLite file `layergc.db` in the current working directory;
- a plain file path, or `sqlite:///relative/path` / `sqlite:////absolute/path`;
- `postgresql://...` (or `postgres://...`), mapped to the psycopg 3 driver; a schema other
  than `public` is chosen the libpq way: `?options=-csearch_path%3Dmyschema`.

The schema is Alembic's (`migrations/`, shipped as the package `layergc.migrations`). On
open, a database without layergc's version table (a new one) is migrated to head, and so
is one behind head (an older layergc wrote it): there is no separate install step.
`upgrade(url)`, behind `layergc db upgrade`, does the same on demand. Concurrent openers are
safe: migrations run under a lock (PostgreSQL advisory lock per schema, SQLite `BEGIN
IMMEDIATE`) and re-read the version inside it. A database at a revision this layergc does
not know (a newer layergc migrated it) is refused rather than touched.

layergc's version table is `layergc_alembic_version`, not Alembic's default, so the index can
share a PostgreSQL database with another Alembic-managed application. Tables layergc does
not model (APScheduler's `apscheduler_jobs`, anyone else's) are invisible to autogenerate.

Alembic itself is imported only when a migration has to run: importing it costs about half
a second of CPU at every start of `layergc`, while checking that a database is already at
head takes one query and the migration scripts' `revision`/`down_revision` literals. A new
database (none of layergc's tables) is built from the models and stamped at head, Alembic's
own recipe for a database made from scratch, also without importing it; a test checks that
this schema is the one the migrations build.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    inspect,
    make_url,
    select,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from layergc.errors import ConfigError, LayergcError
from layergc.gc.index import Base, Index, json_text

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

DEFAULT_DB_FILE: Final = "layergc.db"
VERSION_TABLE: Final = "layergc_alembic_version"
#: Seconds an SQLite writer waits for the lock before failing with "database is locked".
SQLITE_BUSY_TIMEOUT: Final = 30.0


class IndexSchemaError(LayergcError):
    """The database's schema revision is unknown to this layergc (a newer one migrated it)."""


# --- URLs and engines ----------------------------------------------------------------------


def normalize_url(url: str | URL | None = None) -> URL:
    """The SQLAlchemy URL for what a user wrote in `--db` (see the module docstring)."""
    if url is None:
        url = str(Path.cwd() / DEFAULT_DB_FILE)
    if isinstance(url, URL):
        parsed = url
    elif "://" not in url:
        return URL.create("sqlite", database=str(Path(url).expanduser().absolute()))
    else:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"invalid database URL {url!r}: {exc}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":  # Heroku-style spelling
        backend = "postgresql"
    if backend == "postgresql":
        return parsed.set(drivername=f"postgresql+{driver or 'psycopg'}")
    if backend == "sqlite":
        return parsed
    raise ConfigError(f"unsupported database {parsed.drivername!r}: use sqlite or postgresql")


def create_engine_for(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """An engine tuned for the index: SQLite in WAL mode with a busy timeout and foreign
    keys on, thread-shareable; PostgreSQL with a pre-pinged pool (replicas outlive restarts
    of the server)."""
    target = normalize_url(url)
    # A run's report (hundreds of KiB at 100,000 blobs) is stored as JSON: orjson
    # writes it ten times faster than the json module.
    kwargs.setdefault("json_serializer", json_text)
    if target.get_backend_name() == "sqlite":
        return _sqlite_engine(target, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(target, **kwargs)


def _set_wal(cursor: Any) -> None:
    """Put the database in WAL mode. Switching a new database takes a lock that SQLite
    does not wait for (the busy timeout does not apply): processes that open a new index
    at the same moment get "database is locked" at once, so they retry until it is done
    or the busy timeout has passed."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
    connect_args.update(kwargs.pop("connect_args", {}))
    memory = url.database in (None, "", ":memory:")
    if memory:
        # One shared connection, or each pooled connection would see its own empty database.
        kwargs.setdefault("poolclass", StaticPool)
    else:
        parent = Path(url.database or "").parent
        if not parent.is_dir():
            raise ConfigError(f"directory for the SQLite index does not exist: {parent}")
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            if not memory:
                # Readers never block the writer, and a commit costs no fsync of the db file.
                _set_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


# --- migrations ----------------------------------------------------------------------------


def migrations_dir() -> Path:
    """The Alembic script directory: the installed `layergc.migrations` package, or the
    source tree's `migrations/` when running from a checkout that was not installed."""
    try:
        import layergc.migrations as package

        return Path(package.__file__ or "").parent
    except ImportError:
        return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | URL | None = None, output_buffer: TextIO | None = None) -> Config:
    """An Alembic configuration built in code (no alembic.ini). For developers:
    `command.revision(alembic_config(url), autogenerate=True, message=...)`; offline SQL
    (`command.upgrade(config, "head", sql=True)`) is written to `output_buffer`."""
    from alembic.config import Config

    config = Config(output_buffer=output_buffer)
    config.set_main_option("script_location", str(migrations_dir()))
    # "%" is ConfigParser interpolation syntax; URLs may carry it percent-encoded.
    rendered = normalize_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


@cache
def head_revisions() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return tuple(sorted(script.get_heads()))


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {rev.revision for rev in script.walk_revisions()}


@cache
def declared_heads() -> tuple[str, ...] | None:
    """The head revisions, read from the migration scripts' source without Alembic: each
    script assigns `revision` and `down_revision` as literals. None when a script does not
    fit that plain shape (branch labels, dependencies, no source shipped): Alembic decides
    then. tests/test_db_lazy.py checks that this agrees with head_revisions()."""
    import ast

    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted((migrations_dir() / "versions").glob("*.py")):
        values: dict[str, Any] = {}
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError):
                    values[target.id] = value  # not a literal: fine unless it matters below
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str) or values.get("branch_labels") or values.get("depends_on"):
            return None
        if isinstance(down, str):
            down = (down,)
        if down is not None and not (
            isinstance(down, tuple | list) and all(isinstance(d, str) for d in down)
        ):
            return None
        revisions.add(revision)
        parents.update(down or ())
    if not revisions:
        return None
    return tuple(sorted(revisions - parents))


@cache
def _version_table() -> Table:
    """layergc's version table, as Alembic creates it."""
    return Table(
        VERSION_TABLE,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )


def _stored_revisions(conn: Connection) -> tuple[str, ...]:
    """What the version table holds, with plain SQLAlchemy (empty when there is none)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return ()
    return tuple(sorted(conn.scalars(select(_version_table().c.version_num))))


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The revisions the database is at (empty for a database layergc never touched)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return tuple(sorted(context.get_current_heads()))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Autogenerate filter: compare only what layergc models, so a migration never drops
    APScheduler's job table or anything else living in the same database."""
    if type_ == "table" and reflected and compare_to is None:
        return name in Base.metadata.tables
    return True


def lock_for_migration(conn: Connection) -> None:
    """Serialise migrations of one database across processes, for this transaction."""
    if conn.dialect.name == "sqlite":
        # pysqlite starts no transaction for DDL: take the write lock explicitly, which
        # also makes the whole migration one atomic SQLite transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        # One lock per schema: test sessions migrating their own schemas never wait.
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock("
            "hashtext('layergc-migrate:' || coalesce(current_schema(), '')))"
        )


def _upgrade_engine(engine: Engine, revision: str) -> tuple[str, ...]:
    from alembic import command

    config = alembic_config(engine.url)
    with engine.connect() as conn:
        lock_for_migration(conn)
        before = current_revisions(conn)
        _refuse_unknown(before)
        # env.py uses this connection, already in our locked transaction.
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        after = current_revisions(conn)
        conn.commit()
    if before != after:
        log.info(
            "index migrated",
            extra={"db": engine.url.render_as_string(), "from": before, "to": after},
        )
    return after


def _refuse_unknown(revisions: tuple[str, ...]) -> None:
    unknown = set(revisions) - _known_revisions()
    if unknown:
        raise IndexSchemaError(
            f"the index database is at revision {', '.join(sorted(unknown))}, which this "
            "layergc does not know: a newer layergc migrated it; upgrade layergc"
        )


def upgrade(url: str | URL | None = None, revision: str = "head") -> tuple[str, ...]:
    """Migrate the database to `revision` (head by default); idempotent. Returns the
    revisions it is at afterwards. This is `layergc db upgrade`."""
    engine = create_engine_for(url)
    try:
        return _upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def _create_at_head(engine: Engine, heads: tuple[str, ...]) -> bool:
    """Give a new database (no table of layergc's at all) the models' schema, stamped at
    `heads`: Alembic's recipe for a database built from scratch (create_all, then stamp),
    done without importing Alembic, which cost each first run 0.2 s of CPU and 11 MiB.
    tests/test_migrations.py checks, on SQLite and PostgreSQL, that the schema is the one
    the migrations build. False when the database turns out not to be new (another
    process created it first, or it holds some of layergc's tables): Alembic decides."""
    with engine.connect() as conn:
        lock_for_migration(conn)
        present = set(inspect(conn).get_table_names())
        if VERSION_TABLE in present or present & set(Base.metadata.tables):
            conn.rollback()
            return False
        Base.metadata.create_all(conn)
        table = _version_table()
        table.create(conn)
        conn.execute(table.insert(), [{"version_num": head} for head in heads])
        conn.commit()
    log.info("new index database: schema created", extra={"db": str(engine.url), "at": heads})
    return True


def ensure_schema(engine: Engine) -> None:
    """Bring the database to head if it is new or behind; refuse an unknown revision."""
    heads = declared_heads()
    if heads is not None:
        # The common cases, without importing Alembic: a database already at head, and
        # a new one.
        with engine.connect() as conn:
            stored = _stored_revisions(conn)
        if stored == heads or (not stored and _create_at_head(engine, heads)):
            return
    with engine.connect() as conn:
        current = current_revisions(conn)
    if current == head_revisions():
        return
    _refuse_unknown(current)
    if not current:
        log.info("new index database: creating the schema", extra={"db": str(engine.url)})
    _upgrade_engine(engine, "head")


def open_index(url: str | URL | None = None, *, migrate: bool = True) -> Index:
    """Open (and on first use create) the index; see the module docstring for URLs."""
    engine = create_engine_for(url)
    try:
        if migrate:
            ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return Index(engine)


def default_url() -> str:
    """The URL `open_index()` uses without one, for messages and `layergc report`."""
    return normalize_url(None).render_as_string(hide_password=True)


__all__ = [
    "DEFAULT_DB_FILE",
    "VERSION_TABLE",
    "IndexSchemaError",
    "alembic_config",
    "create_engine_for",
    "current_revisions",
    "default_url",
    "ensure_schema",
    "head_revisions",
    "include_object",
    "normalize_url",
    "open_index",
    "upgrade",
]
