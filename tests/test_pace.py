"""Pace (layergc/gc/pace.py): work stays in the calling thread while it computes
and goes to threads once it waits; and a mark whose reads wait finds what one
whose reads do not finds, in one process or two."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from layergc.digest import Digest
from layergc.driver.base import FileInfo
from layergc.driver.filesystem import FilesystemDriver
from layergc.gc import pace as pace_module
from layergc.gc import scan, split
from layergc.gc.db import open_index
from layergc.gc.pace import WINDOW_SECONDS, Pace
from layergc.gc.sweep import Sweeper, SweepOptions
from layergc.gc.treegen import generate
from layergc.storage import paths
from tests.test_split import same


class Clocks:
    """Wall and CPU clocks that the work advances: each item costs `wall` seconds,
    `cpu` of them on the CPU."""

    def __init__(self) -> None:
        self.now = [0.0, 0.0]

    def work(self, wall: float, cpu: float) -> None:
        self.now[0] += wall
        self.now[1] += cpu

    @property
    def pair(self) -> tuple[pace_module.Clock, pace_module.Clock]:
        return (lambda: self.now[0]), (lambda: self.now[1])


def threads_of(pace: Pace, items: int, wall: float, cpu: float, clocks: Clocks) -> list[int]:
    def item(i: int) -> int:
        clocks.work(wall, cpu)
        return threading.get_ident()

    return pace.map(item, list(range(items)))


def test_computing_work_stays_in_the_calling_thread() -> None:
    clocks = Clocks()
    with Pace(4, clocks=clocks.pair) as pace:
        idents = threads_of(pace, 200, 0.001, 0.00095, clocks)
    assert set(idents) == {threading.get_ident()}
    assert not pace.waiting


def test_waiting_work_goes_to_threads_after_two_windows_and_stays_there() -> None:
    clocks = Clocks()
    with Pace(4, clocks=clocks.pair) as pace:
        idents = threads_of(pace, 200, 0.001, 0.0004, clocks)
        per_window = round(WINDOW_SECONDS / 0.001)
        # Two windows judged in this thread (one item more each, for rounding).
        here = idents.index(next(i for i in idents if i != threading.get_ident()))
        assert 2 * per_window <= here <= 2 * per_window + 2
        assert pace.waiting
        later = threads_of(pace, 50, 0.001, 0.001, clocks)  # computing now: still threads
    assert threading.get_ident() not in later


def test_one_slow_window_between_fast_ones_is_not_a_wait() -> None:
    """A preemption on a busy host looks like a wait for a window: two in a row count."""
    clocks = Clocks()
    with Pace(4, clocks=clocks.pair) as pace:
        for _ in range(5):
            threads_of(pace, 20, 0.001, 0.0009, clocks)  # a computing window
            threads_of(pace, 20, 0.001, 0.0001, clocks)  # a waiting one
    assert not pace.waiting


def test_time_between_calls_is_not_counted() -> None:
    """The caller's own waits (between two calls) say nothing of the items."""
    clocks = Clocks()
    with Pace(4, clocks=clocks.pair) as pace:
        for _ in range(20):
            threads_of(pace, 5, 0.001, 0.001, clocks)
            clocks.work(1.0, 0.0)  # the caller sleeps
    assert not pace.waiting


def test_one_thread_never_switches() -> None:
    clocks = Clocks()
    with Pace(1, clocks=clocks.pair) as pace:
        idents = threads_of(pace, 200, 0.001, 0.0, clocks)
    assert set(idents) == {threading.get_ident()} and not pace.waiting


def test_results_keep_their_order_and_errors_propagate() -> None:
    def slow(i: int) -> int:
        time.sleep(0.002 if i % 3 else 0.0005)  # waiting: threads, finishing out of order
        if i == 150:
            raise ValueError("item 150")
        return i * i

    with Pace(4) as pace:
        assert pace.map(slow, list(range(100))) == [i * i for i in range(100)]
        assert pace.waiting
        with pytest.raises(ValueError, match="item 150"):
            pace.map(slow, list(range(100, 200)))


def pool_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_close_ends_the_threads_and_keeps_the_verdict() -> None:
    pace = Pace(4, what="closing test")
    pace.waiting = True
    pace.map(lambda i: time.sleep(0.001), list(range(20)))
    assert pool_threads("closing test")
    pace.close()
    assert not pool_threads("closing test")  # a process may fork again
    assert pace.waiting
    idents = pace.map(lambda i: threading.get_ident(), list(range(8)))
    assert threading.get_ident() not in idents  # a new pool
    pace.close()


def test_a_forked_copy_makes_its_own_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a forked child inherits of the parent's pool has no threads: it makes a new
    one (the pid tells), and leaves the parent's alone on close."""
    pace = Pace(2, what="forked copy")
    pace.waiting = True
    pace.map(lambda i: i, [1, 2])
    parents = pace._pool
    real_getpid = os.getpid
    monkeypatch.setattr(pace_module.os, "getpid", lambda: real_getpid() + 1)
    pace.map(lambda i: i, [1, 2])
    assert pace._pool is not None and pace._pool is not parents
    pace.close()  # the "child's" own pool
    monkeypatch.undo()
    assert parents is not None
    parents.shutdown()
    assert not pool_threads("forked copy")


# --- a mark whose reads wait ------------------------------------------------------------


class WaitingDriver(FilesystemDriver):
    """Every read waits half a millisecond and every listing two, as from a cold
    cache (the repository walk then goes to threads too); the threads that read
    and list are recorded (in this process)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.readers: set[int] = set()
        self.listers: set[int] = set()

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        self.readers.add(threading.get_ident())
        time.sleep(0.0005)
        return super().get_content(path, limit)

    def list_names(self, path: str) -> list[str]:
        self.listers.add(threading.get_ident())
        time.sleep(0.002)
        return super().list_names(path)

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        self.listers.add(threading.get_ident())
        time.sleep(0.002)
        return super().list_entries(path)


class Forks:
    """os.fork, with what the process was like at each attempt: (threads running,
    threads that had listed); refused, as by a system out of processes, if `refuse`."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, driver: WaitingDriver, *, refuse: bool
    ) -> None:
        self.attempts: list[tuple[int, int]] = []
        real_fork = os.fork

        def fork() -> int:
            self.attempts.append((threading.active_count(), len(driver.listers)))
            if refuse:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return real_fork()

        monkeypatch.setattr(split.os, "fork", fork)


def without_who_met(result: scan.MarkResult) -> scan.MarkResult:
    errors = [dataclasses.replace(e, repository=None) for e in result.errors]
    return dataclasses.replace(result, errors=errors)


@pytest.fixture
def waiting_tree(tmp_path: Path) -> tuple[FilesystemDriver, WaitingDriver]:
    """A generated tree whose repositories, but the first few, hold one unparseable
    manifest (each thread or process may meet it), seen by a plain driver and a
    waiting one."""
    driver = FilesystemDriver(tmp_path / "root")
    summary = generate(driver, 2000, seed=7)
    bad = Digest.of(b"{")
    driver.put_content(paths.blob_data(bad), b"{")
    # Not in the first repositories: met first once reads went to threads.
    for repo in sorted(summary.repositories)[12:]:
        driver.put_content(paths.manifest_revision_link(repo, bad), str(bad).encode())
    return driver, WaitingDriver(tmp_path / "root")


def test_a_mark_whose_reads_wait_uses_threads_and_finds_the_same(
    waiting_tree: tuple[FilesystemDriver, WaitingDriver],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain, waiting = waiting_tree
    monkeypatch.setattr(split, "can_fork", lambda: False)
    expected = scan.mark(plain, delete_untagged=True)
    with caplog.at_level(logging.INFO, logger=pace_module.__name__):
        found = scan.mark(waiting, delete_untagged=True)
    same(expected, found)
    assert "mark reads wait more than they compute" in caplog.text
    assert len(waiting.readers) > 1
    assert [e.kind for e in found.errors].count(scan.UNPARSEABLE_MANIFEST) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("mark reads")]


@pytest.mark.parametrize("fork", ["forked", "refused"])
def test_a_split_mark_whose_reads_wait_finds_the_same(
    waiting_tree: tuple[FilesystemDriver, WaitingDriver],
    monkeypatch: pytest.MonkeyPatch,
    fork: str,
) -> None:
    """Threads in each process, parsing along; the unparseable manifest that every
    repository holds is reported once. (With the fork refused, this process does
    every chunk of the split, parsing along on its threads.)"""
    plain, waiting = waiting_tree
    monkeypatch.setattr(split, "can_fork", lambda: False)
    expected = scan.mark(plain)
    monkeypatch.setattr(scan, "_SPLIT_MIN_REPOSITORIES", 4)
    monkeypatch.setattr(scan, "_SPLIT_REPOSITORIES_CHUNK", 6)
    monkeypatch.setattr(split, "can_fork", lambda: True)
    forks = Forks(monkeypatch, waiting, refuse=fork == "refused")
    found = scan.mark(waiting)
    # One attempt, made in a process of one thread after a repository walk on
    # several: the walk's threads had ended.
    assert len(forks.attempts) == 1
    threads_then, listed_on = forks.attempts[0]
    assert threads_then == 1 and listed_on > 1
    if fork == "refused":
        assert len(waiting.readers) > 1  # this process's chunks, on threads
    # The error names the repository in which it was met first: here, whichever
    # process or thread that was.
    same(without_who_met(expected), without_who_met(found))
    assert expected.stats.manifests_parsed == found.stats.manifests_parsed
    assert [e.kind for e in found.errors].count(scan.UNPARSEABLE_MANIFEST) == 1


# --- the sweep's stats --------------------------------------------------------------------


class StatWaitingDriver(FilesystemDriver):
    """Every stat waits a millisecond; the threads that stat are recorded."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.staters: set[int] = set()

    def stat(self, path: str) -> FileInfo:
        self.staters.add(threading.get_ident())
        time.sleep(0.001)
        return super().stat(path)


def test_a_sweep_whose_stats_wait_stats_on_threads_and_reports_the_same(tmp_path: Path) -> None:
    generate(FilesystemDriver(tmp_path / "root"), 2000, seed=11)
    plain, waiting = FilesystemDriver(tmp_path / "root"), StatWaitingDriver(tmp_path / "root")
    options = SweepOptions(dry_run=True, grace=timedelta(0))
    reports = []
    for name, driver in (("plain", plain), ("waiting", waiting)):
        with open_index(f"sqlite:///{tmp_path / name}.db") as index:
            reports.append(Sweeper(driver, index, options).run().as_json())
    assert reports[1]["blobs"] == reports[0]["blobs"] and len(reports[0]["blobs"]) == 200
    assert reports[1]["errors"] == reports[0]["errors"] == []
    assert len(waiting.staters) > 1  # the stats went to threads
