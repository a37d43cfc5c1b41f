"""Work in one thread while it computes, on a pool of threads once it waits.

A mark or a sweep makes many small reads. From a warm page cache each is a few
system calls wrapped in Python, and threads only fight over the GIL: at 100,000
blobs, 4 mark threads took twice the CPU time of one and no less wall time
(bench/README.md). When the reads wait for a disk instead (a cold page cache) or
for the network, several in flight overlap their waits: from a cold cache on the
bench's virtual disk, 4 threads in each of the mark's two processes took its scan
of 2,000 repositories from 4.8 to 2.6 s.

Which case holds is measured, not configured. Items run one after the other in
the calling thread, and the time they take is counted in windows of
WINDOW_SECONDS: a window in which that thread's CPU time was under WAITING of the
wall time spent the rest waiting. After two such windows in a row the rest goes
to the pool, from then on: a cold cache stays cold for the rest of a run, whose
reads go to files it has not read. Measured at 100,000 blobs, windows of warm
work had 0.94 to 1.00 of their wall time on the CPU, cold ones 0.37 to 0.51; two
windows in a row make a scheduler's preemption on a busy host unlikely to be
taken for a wait. (Meter, the windows alone, also tells the warming process of
gc/prefetch.py when to stop.)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WAITING = 0.75
WINDOW_SECONDS = 0.02
_WINDOWS = 2

Clock = Callable[[], float]


def waits(wall: float, cpu: float) -> bool:
    """Whether work that took `wall` seconds, `cpu` of them on its thread's CPU,
    spent the rest waiting."""
    return cpu < WAITING * wall


class Meter:
    """Times work done in the calling thread, in windows of `window` seconds of
    it: each window, once full, says whether it waited. Only the time spent in
    run() counts: a caller's own work between two items (or its wait on
    something else) says nothing of the items."""

    def __init__(
        self,
        window: float = WINDOW_SECONDS,
        clocks: tuple[Clock, Clock] = (time.perf_counter, time.thread_time),
    ) -> None:
        self.window = window
        self._wall, self._cpu = clocks
        self._spent = [0.0, 0.0]  # wall and CPU seconds of the window so far
        self.share = 1.0  # CPU share of the last full window

    def run(self, fn: Callable[[T], R], item: T) -> tuple[R, bool | None]:
        """fn(item), and the verdict of the window it filled (None: not full yet)."""
        wall, cpu = self._wall(), self._cpu()
        result = fn(item)
        spent = self._spent
        spent[0] += self._wall() - wall
        spent[1] += self._cpu() - cpu
        if spent[0] < self.window:
            return result, None
        self.share = spent[1] / spent[0]
        self._spent = [0.0, 0.0]
        return result, waits(spent[0], spent[1])


class Pace:
    """map() in the calling thread while it computes; on `threads` threads once it
    waits (see the module doc). Close it to end the threads (a process forks only
    while it runs one thread); it remembers that work waits, and starts a new pool
    when asked again, in whichever process: a forked child inherits the verdict,
    not the parent's threads."""

    def __init__(
        self,
        threads: int,
        *,
        what: str = "reads",
        clocks: tuple[Clock, Clock] = (time.perf_counter, time.thread_time),
    ) -> None:
        self.threads = threads
        self.what = what
        self.waiting = False
        self._meter = Meter(clocks=clocks)
        self._slow_windows = 0
        self._pool: ThreadPoolExecutor | None = None
        self._owner = 0

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """[fn(item) for item in items], in order; exceptions propagate as there."""
        results: list[R] = []
        done = 0
        if not self.waiting:
            for item in items:
                result, verdict = self._meter.run(fn, item)
                results.append(result)
                done += 1
                if verdict is not None and self._judge(verdict):
                    break
        if done < len(items):
            results += self._executor().map(fn, items[done:])
        return results

    def _judge(self, waited: bool) -> bool:
        """Whether work goes to threads from now on, after a window that `waited`."""
        if not waited or self.threads < 2:
            self._slow_windows = 0
            return False
        self._slow_windows += 1
        if self._slow_windows < _WINDOWS:
            return False
        self.waiting = True
        log.info(
            "%s wait more than they compute: %d threads from now on",
            self.what,
            self.threads,
            extra={"threads": self.threads, "cpu_share": round(self._meter.share, 2)},
        )
        return True

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._owner != os.getpid():
            # (A forked child's copy of the parent's pool has no threads behind it.)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.what)
            self._owner = os.getpid()
        return self._pool

    def close(self) -> None:
        """End the pool's threads, if any; the verdict stays."""
        pool, self._pool = self._pool, None
        if pool is not None and self._owner == os.getpid():
            pool.shutdown()

    def __enter__(self) -> Pace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
