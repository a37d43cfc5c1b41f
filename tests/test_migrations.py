"""Opening the index: URLs, SQLite settings, Alembic migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import multiprocessing
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy import Engine, inspect

from layergc.errors import ConfigError
from layergc.gc import db
from layergc.gc.db import (
    VERSION_TABLE,
    IndexSchemaError,
    alembic_config,
    create_engine_for,
    current_revisions,
    head_revisions,
    include_object,
    normalize_url,
    open_index,
    upgrade,
)
from layergc.gc.index import Base
from tests.support.database import BACKENDS, database_url, open_worker

ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    "layergc_runs",
    "layergc_candidates",
    "layergc_deletions",
    "layergc_manifest_references",
    "layergc_leases",
    "layergc_marks",
}


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def revisions(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as conn:
        return current_revisions(conn)


# --- URLs and engines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:////var/lib/layergc/index.db", "sqlite:////var/lib/layergc/index.db"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("/srv/gc.db", "sqlite:////srv/gc.db"),
        (
            "postgresql://gc:s3cret@db:5432/layergc",
            "postgresql+psycopg://gc:s3cret@db:5432/layergc",
        ),
        ("postgres://db/layergc", "postgresql+psycopg://db/layergc"),
        ("postgresql+psycopg://db/layergc", "postgresql+psycopg://db/layergc"),
        (
            "postgresql://db/test?options=-csearch_path%3Dgc",
            "postgresql+psycopg://db/test?options=-csearch_path%3Dgc",
        ),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


def test_default_and_relative_paths_resolve_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url(None).database == str(tmp_path / "layergc.db")
    assert normalize_url("state/gc.db").database == str(tmp_path / "state" / "gc.db")
    with open_index() as index:
        index.start_run("sweep", dry_run=True)
    assert (tmp_path / "layergc.db").is_file()


@pytest.mark.parametrize("url", ["mysql://db/layergc", "oracle+cx://x", "not a url://"])
def test_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        normalize_url(url)


def test_sqlite_in_a_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        open_index(str(tmp_path / "nowhere" / "index.db"))


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    with open_index(str(tmp_path / "index.db")) as index, index.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_in_memory_sqlite_is_one_shared_database() -> None:
    with open_index("sqlite://") as index:
        run_id = index.start_run("sweep", dry_run=True)
        assert index.run(run_id) is not None


# --- migrations ------------------------------------------------------------------------------


def test_upgrade_from_empty_and_idempotent(engine: Engine, db_url: str) -> None:
    assert revisions(engine) == ()
    assert upgrade(db_url) == head_revisions()
    assert TABLES | {VERSION_TABLE} <= tables(engine)
    with open_index(db_url) as index:
        run_id = index.start_run("sweep", dry_run=True)
    assert upgrade(db_url) == head_revisions()  # again: nothing to do, nothing lost
    with open_index(db_url) as index:
        assert [r.id for r in index.runs()] == [run_id]


def test_open_index_creates_the_schema_on_first_use(engine: Engine, db_url: str) -> None:
    with open_index(db_url) as index:
        index.start_run("sweep", dry_run=True)
    assert revisions(engine) == head_revisions()
    assert tables(engine) >= TABLES


def test_open_index_upgrades_a_database_behind_head(engine: Engine, db_url: str) -> None:
    upgrade(db_url)
    command.downgrade(alembic_config(db_url), "base")
    assert revisions(engine) == ()
    assert not TABLES & tables(engine)
    with open_index(db_url) as index:
        index.start_run("sweep", dry_run=True)
    assert revisions(engine) == head_revisions()


def test_unknown_revision_is_refused(engine: Engine, db_url: str) -> None:
    upgrade(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = 'f00dfeed'")
    with pytest.raises(IndexSchemaError, match="f00dfeed"):
        open_index(db_url)
    with pytest.raises(IndexSchemaError):
        upgrade(db_url)


def test_models_match_migrations_and_foreign_tables_survive(engine: Engine, db_url: str) -> None:
    upgrade(db_url)
    # APScheduler's job store lives in the same database (issue 4), unmodelled by layergc.
    SQLAlchemyJobStore(engine=engine).jobs_t.create(engine, checkfirst=True)
    assert "apscheduler_jobs" in tables(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_object": include_object,
                "compare_type": True,
                "version_table": VERSION_TABLE,
            },
        )
        assert compare_metadata(context, Base.metadata) == []
    upgrade(db_url)
    assert "apscheduler_jobs" in tables(engine)


def _schema(url: str) -> dict[str, object]:
    """Everything reflection tells of layergc's tables, in comparable form."""
    engine = create_engine_for(url)
    try:
        insp = inspect(engine)
        schema: dict[str, object] = {}
        for name in sorted(TABLES | {VERSION_TABLE}):
            schema[name] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                    for c in insp.get_columns(name)
                ],
                "pk": insp.get_pk_constraint(name),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(name)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(name)
                ),
                "foreign_keys": sorted(
                    (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                    for f in insp.get_foreign_keys(name)
                ),
            }
        with engine.connect() as conn:
            schema["revisions"] = current_revisions(conn)
        return schema
    finally:
        engine.dispose()


def test_a_new_database_gets_the_migrated_schema(backend: str, tmp_path: Path) -> None:
    """open_index builds a new database from the models and stamps it at head, without
    running Alembic (tests/test_db_lazy.py): the schema must be exactly the migrated one."""
    (tmp_path / "created").mkdir()
    (tmp_path / "migrated").mkdir()
    with (
        database_url(backend, tmp_path / "created") as created,
        database_url(backend, tmp_path / "migrated") as migrated,
    ):
        open_index(created).close()
        assert upgrade(migrated) == head_revisions()
        assert _schema(created) == _schema(migrated)


def test_include_object_ignores_unmodelled_tables() -> None:
    assert include_object(None, "apscheduler_jobs", "table", True, None) is False
    assert include_object(None, "layergc_runs", "table", True, None) is True
    assert include_object(None, "layergc_runs", "table", False, object()) is True


def test_concurrent_first_opens_migrate_once(db_url: str) -> None:
    # Eight at once. Two openers switching a new SQLite file to WAL at the same moment
    # made one fail with "database is locked" (seen in CI; the switch does not always
    # wait on the busy timeout), which db._set_wal retries.
    openers = 8
    ctx = multiprocessing.get_context("fork")  # quick: the children need no new imports
    barrier = ctx.Barrier(openers)
    out = ctx.Queue()
    procs = [ctx.Process(target=open_worker, args=(db_url, barrier, out)) for _ in range(openers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(status == "ok" for status, _ in results), results
    assert sorted(run_id for _, run_id in results) == list(range(1, openers + 1))
    engine = create_engine_for(db_url)
    try:
        assert revisions(engine) == head_revisions()
    finally:
        engine.dispose()


def test_offline_sql_for_postgresql() -> None:
    buffer = io.StringIO()
    config = alembic_config("postgresql://db/layergc", output_buffer=buffer)
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    for table in TABLES | {VERSION_TABLE}:
        assert f"CREATE TABLE {table}" in sql
    assert "JSONB" in sql and "TIMESTAMP WITH TIME ZONE" in sql


# --- packaging -------------------------------------------------------------------------------


def test_migrations_ship_as_the_package_layergc_migrations() -> None:
    import layergc.migrations

    folder = Path(layergc.migrations.__file__ or "").parent
    assert folder.resolve() == (ROOT / "migrations").resolve()
    assert db.migrations_dir() == folder
    assert (folder / "env.py").is_file() and (folder / "script.py.mako").is_file()
    assert sorted(p.name for p in (folder / "versions").glob("*.py"))


def test_every_package_is_listed_in_pyproject() -> None:
    # The package list is explicit (migrations/ is mapped to layergc.migrations, which
    # automatic discovery cannot express): a new subpackage must be added there.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "layergc").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert config["package-dir"]["layergc.migrations"] == "migrations"
