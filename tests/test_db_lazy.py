"""Opening the index without importing Alembic when no migration is needed (gc/db.py).

Alembic costs about half a second of CPU per `layergc` start, so `open_index` checks a
database against the migration scripts' declared heads with plain SQLAlchemy first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from layergc.gc import db


def test_declared_heads_agree_with_alembic() -> None:
    assert db.declared_heads() == db.head_revisions()


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


def test_new_database_is_created_at_head_without_alembic(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    out = _run(
        f"""
        import sys
        from layergc.gc.db import open_index
        index = open_index({str(path)!r})
        run = index.start_run(mode="sweep", dry_run=True)
        print(run, "alembic" in sys.modules)
        """
    )
    # Built from the models and stamped (test_migrations.py compares the schema with
    # the migrated one), without importing Alembic.
    assert out == "1 False"
    engine = db.create_engine_for(str(path))
    try:
        with engine.connect() as conn:
            assert db.current_revisions(conn) == db.head_revisions()
    finally:
        engine.dispose()


def test_database_at_head_opens_without_alembic(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    db.upgrade(str(path))
    out = _run(
        f"""
        import sys
        from layergc.gc.db import open_index
        index = open_index({str(path)!r})
        run = index.start_run(mode="sweep", dry_run=True)
        print(run, "alembic" in sys.modules)
        """
    )
    assert out == "1 False"


def test_database_behind_head_is_still_upgraded(tmp_path: Path) -> None:
    """A version table that is not at the declared heads goes the Alembic way: here an
    empty one (as after a failed first migration), which Alembic then fills."""
    path = tmp_path / "behind.db"
    engine = db.create_engine_for(str(path))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE {db.VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
            )
        db.ensure_schema(engine)
        with engine.connect() as conn:
            assert db.current_revisions(conn) == db.head_revisions()
    finally:
        engine.dispose()


def _scripts(folder: Path, scripts: dict[str, str]) -> None:
    versions = folder / "versions"
    versions.mkdir(parents=True)
    for name, body in scripts.items():
        (versions / name).write_text(textwrap.dedent(body))


@pytest.mark.parametrize(
    ("scripts", "heads"),
    [
        (
            {
                "a.py": 'revision: str = "a"\ndown_revision = None\n',
                "b.py": 'revision = "b"\ndown_revision: str | None = "a"\n',
            },
            ("b",),
        ),
        (  # a merge of two branches
            {
                "a.py": 'revision = "a"\ndown_revision = None\n',
                "b.py": 'revision = "b"\ndown_revision = "a"\n',
                "c.py": 'revision = "c"\ndown_revision = "a"\n',
                "m.py": 'revision = "m"\ndown_revision = ("b", "c")\n',
            },
            ("m",),
        ),
        (  # two heads
            {
                "a.py": 'revision = "a"\ndown_revision = None\n',
                "b.py": 'revision = "b"\ndown_revision = "a"\n',
                "c.py": 'revision = "c"\ndown_revision = "a"\n',
            },
            ("b", "c"),
        ),
        # Shapes left to Alembic:
        ({"a.py": 'revision = "a"\ndown_revision = None\nbranch_labels = ("x",)\n'}, None),
        ({"a.py": 'revision = "a"\ndown_revision = None\ndepends_on = "z"\n'}, None),
        ({"a.py": "revision = make_id()\ndown_revision = None\n"}, None),
        ({"a.py": 'revision = "a"\ndown_revision = PARENT\n'}, None),
        ({"a.py": "# no revision here\n"}, None),
        ({}, None),
    ],
)
def test_declared_heads_shapes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scripts: dict[str, str],
    heads: tuple[str, ...] | None,
) -> None:
    _scripts(tmp_path, scripts)
    if not scripts:
        (tmp_path / "versions").mkdir(exist_ok=True)
    monkeypatch.setattr(db, "migrations_dir", lambda: tmp_path)
    db.declared_heads.cache_clear()
    try:
        assert db.declared_heads() == heads
    finally:
        db.declared_heads.cache_clear()
