"""Warm the page cache for a mark while a one-shot sweep starts up.

A one-shot `layergc sweep` spends its first half second importing (SQLAlchemy,
most of it) while the disk is idle; from a cold page cache its mark then waits
on the disk for most of its time. A process forked before those imports reads
what the mark will read (the folders under repositories/, the revision and tag
links, the layer-link folders) and throws it away: the mark finds it in memory.
It reads the repositories in the reverse of the mark's order, so that the two
meet instead of reading the same files one after the other, and it stops where
its reads stop waiting (the mark, or an earlier reader, has been there; on a
warm cache, its first 5 ms of reads stop it).

It reads with the mark's own walk and repository scan (gc/scan.py), so the two
read the same files; it only reads, through the filesystem driver (never outside
the root, never through a symlink), and keeps nothing: what the mark finds cannot
depend on it.
It ends when its walk is done or stops waiting, when the sweep stops it, or
when its parent is gone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from layergc.driver.filesystem import FilesystemDriver
from layergc.gc import pace, scan, split

T = TypeVar("T")

# Folders or repositories per batch: each starts in one thread, timed (_batch).
_BATCH = 16
# Short windows (pace.Meter): on a warm cache the warming must end within the
# sweep's imports, before the mark needs both CPUs.
_WINDOW_SECONDS = 0.005


class Prefetch:
    """The warming process: stop() ends it (if it still runs) and reaps it.

    It is signalled through a pidfd where the system has them: under an inherited
    "SIGCHLD ignored" the kernel reaps it by itself, and its number may have gone
    to another process by the time the sweep ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux 5.3+: see stop()
            self._pidfd = None

    def stop(self) -> None:
        pid, self.pid = self.pid, 0
        if not pid:
            return
        pidfd, self._pidfd = self._pidfd, None
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # gone already
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            elif os.waitpid(pid, os.WNOHANG) == (0, 0):  # still running: the number is its
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # reaped already
            os.waitpid(pid, 0)
        if pidfd is not None:
            os.close(pidfd)


def start(storage: Mapping[str, Any]) -> Prefetch | None:
    """Fork the warming process for `storage` (a registry config's storage
    section) where it may help: a filesystem root, in a process that may fork
    (one thread, a second CPU: split.can_fork). Call it before the heavy imports."""
    root = storage.get("rootdirectory") if storage.get("driver") == "filesystem" else None
    if not isinstance(root, str) or not os.path.isdir(root) or not split.can_fork():
        return None
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        return None  # (no processes left: the sweep will say so itself, if it matters)
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            _child(root, parent)
        finally:  # (a Ctrl-C before _child's own handlers)
            os._exit(1)
    return Prefetch(pid)


def _child(root: str, parent: int) -> NoReturn:
    code = 1
    try:
        # A Ctrl-C reaches the whole process group: the warming just ends.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # What the scan finds wrong, the sweep's own mark reports.
        logging.disable(logging.CRITICAL)
        warm(FilesystemDriver(root, hold_root=True), lambda: os.getppid() == parent)
        code = 0
    finally:
        os._exit(code)  # no atexit handlers, no flush of the parent's buffers


def warm(
    driver: FilesystemDriver,
    wanted: Callable[[], bool] = lambda: True,
    meter: pace.Meter | None = None,
) -> int:
    """Read what a mark reads (its own walk and repository scan), repositories in
    reverse order, while reads wait (as `meter` says) and `wanted()`; how many
    repositories were read."""
    meter = pace.Meter(_WINDOW_SECONDS) if meter is None else meter
    marker = scan.repository_reader(driver)
    # As many reads in flight as the mark's own threads once its reads wait.
    with ThreadPoolExecutor(scan.PACED_THREADS, thread_name_prefix="prefetch") as pool:
        batch = functools.partial(_batch, pool, meter, wanted)
        repositories: list[Any] = []
        level = [""]
        while level:
            names, level = level, []
            for start in range(0, len(names), _BATCH):
                part = names[start : start + _BATCH]
                listed = batch(marker.list_repository_folder, part)
                if listed is None:
                    return 0
                for name, folders in zip(part, listed, strict=True):
                    if folders is not None:
                        repository, below = marker.found_in(name, folders)
                        if repository is not None:
                            repositories.append(repository)
                        level += below
        repositories.sort(key=lambda r: r.name, reverse=True)
        for start in range(0, len(repositories), _BATCH):
            if batch(marker.scan_repository, repositories[start : start + _BATCH]) is None:
                return start
        return len(repositories)


def _batch(
    pool: ThreadPoolExecutor,
    meter: pace.Meter,
    wanted: Callable[[], bool],
    fn: Callable[[Any], T],
    items: list[Any],
) -> list[T] | None:
    """[fn(item) for item in items]: in this thread, timed, until a window of them
    waited, then the rest on the pool; None, the rest not done, once a window did
    not wait (the reads come from memory) or the warming is no longer wanted."""
    if not wanted():
        return None
    results: list[T] = []
    for i, item in enumerate(items):
        result, waited = meter.run(fn, item)
        results.append(result)
        if waited is False:
            return None
        if waited:
            return results + list(pool.map(fn, items[i + 1 :]))
    return results
