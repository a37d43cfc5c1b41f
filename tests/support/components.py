"""Real components the tests need, and how a missing one is handled.

In CI (the `CI` variable is set) a missing component fails the test: a green run
must mean the component was there. Elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = bool(os.environ.get("CI"))

POSTGRES_URL = os.environ.get(
    "LAYERGC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


def require(available: bool, reason: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless `available`."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, package: str | None = None) -> str:
    """The path of command `name` (from Debian's `package`, by default its namesake)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (apt-get install {package or name})")
    assert path is not None
    return path


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_postgres() -> str:
    require(port_open("127.0.0.1", 5432), "PostgreSQL is not listening on 127.0.0.1:5432")
    return POSTGRES_URL


def require_redis() -> tuple[str, int]:
    require(port_open(REDIS_HOST, REDIS_PORT), "Redis is not listening on 127.0.0.1:6379")
    return REDIS_HOST, REDIS_PORT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
