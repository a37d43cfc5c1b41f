"""Throwaway index databases for tests: an SQLite file, or a fresh PostgreSQL schema.

Each PostgreSQL database gets its own randomly named schema (chosen through libpq's
`options=-csearch_path=...`), dropped afterwards, so parallel test sessions sharing the
server's `test` database never see each other's tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from tests.support.components import require_postgres

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def with_search_path(url: str, schema: str) -> str:
    """`url` with every connection's search_path set to `schema`."""
    query = {"options": f"-csearch_path={schema}"}
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections land in a new, empty schema; dropped on exit."""
    base = require_postgres()
    schema = f"lgc_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(base, poolclass=NullPool)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield with_search_path(base, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for a new, empty index database on `backend` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        yield str(tmp_path / "index.db")
    else:
        with postgres_schema() as url:
            yield url


# --- workers for multi-process tests ---------------------------------------------------------


def lease_worker(url: str, name: str, holder: str, ttl: float, barrier: Any, out: Any) -> None:
    """Open the index, wait for everyone, try to take the lease once; report the token."""
    from layergc.gc.db import open_index

    with open_index(url) as index:
        barrier.wait(timeout=60)
        out.put((holder, index.acquire_lease(name, holder, ttl)))


def open_worker(url: str, barrier: Any, out: Any) -> None:
    """Open (and so migrate) a new index at the same moment as other processes."""
    from layergc.gc.db import open_index

    barrier.wait(timeout=60)
    try:
        with open_index(url) as index:
            run_id = index.start_run("sweep", dry_run=True)
        out.put(("ok", run_id))
    except Exception as exc:  # reported to the parent, which fails the test with it
        out.put(("error", repr(exc)))
