"""InMemoryDriver: the conformance suite, and what only the in-memory driver promises."""

from __future__ import annotations

import pytest

from layergc.driver.base import StorageDriver
from layergc.driver.inmemory import InMemoryDriver
from tests.driver_conformance import DriverConformance, FolderConformance


class TestInMemoryDriver(DriverConformance, FolderConformance):
    @pytest.fixture
    def driver(self) -> InMemoryDriver:
        return InMemoryDriver()


def test_folders_are_implied_by_files() -> None:
    driver = InMemoryDriver()
    driver.put_content("/a/b/c", b"x")
    driver.put_content("/a/d", b"y")
    driver.delete("/a/b/c")
    assert driver.list("/a") == ["/a/d"]
    assert not driver.exists("/a/b")
    driver.move("/a/d", "/e/d")
    assert driver.list("/") == ["/e"]
    writer = driver.writer("/f/g")
    writer.cancel()
    assert driver.list("/") == ["/e"]


def test_readers_see_a_snapshot() -> None:
    driver = InMemoryDriver()
    driver.put_content("/file", b"old")
    stream = driver.reader("/file")
    with driver.writer("/file", append=True) as writer:
        writer.write(b" and new")
    assert stream.read() == b"old"
    assert driver.get_content("/file") == b"old and new"


def test_default_list_entries_matches_override() -> None:
    """The base class's list_entries (list + stat) agrees with the fast one."""
    driver = InMemoryDriver()
    for path in ("/a/b/c", "/a/d", "/e"):
        driver.put_content(path, b"x")
    for folder in ("/", "/a", "/a/b"):
        assert sorted(StorageDriver.list_entries(driver, folder)) == sorted(
            driver.list_entries(folder)
        )


def test_cancel_of_a_replaced_file_keeps_the_new_one() -> None:
    driver = InMemoryDriver()
    writer = driver.writer("/upload")
    writer.write(b"old")
    driver.put_content("/upload", b"new")
    writer.cancel()
    assert driver.get_content("/upload") == b"new"
