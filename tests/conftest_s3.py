"""Pytest plugin: a session-wide moto_server and fresh buckets for S3 tests.

Load it with `pytest_plugins = ["tests.conftest_s3"]` (in tests/conftest.py, or
in each test module that needs it). Fixtures:

- `moto_server`: one MotoServer for the session (parts down to TEST_MIN_PART_SIZE);
- `s3_bucket`: a new, empty bucket for one test, dropped afterwards (moto keeps
  objects in memory, and its listings slow down as a bucket grows);
- `s3_driver`: an S3Driver over that bucket, sized for tests (small parts).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from layergc.driver.s3 import S3Driver
from tests.support.s3server import TEST_MIN_PART_SIZE, MotoServer, make_s3_driver


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer(min_part_size=TEST_MIN_PART_SIZE) as server:
        yield server


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> Iterator[str]:
    bucket = moto_server.create_bucket()
    yield bucket
    moto_server.drop_bucket(bucket)


@pytest.fixture
def s3_driver(moto_server: MotoServer, s3_bucket: str) -> Iterator[S3Driver]:
    driver = make_s3_driver(moto_server, s3_bucket)
    yield driver
    driver.close()
