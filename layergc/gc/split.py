"""A share of a mark's work done by a forked child process, on a second CPU.

On local storage a mark is bound by the interpreter, not by the disk: each link
read or folder listing is a few system calls wrapped in Python, so threads only
fight over the GIL (2 and 4 mark threads gave no gain, see bench/README.md). A
child forked once the blob listing is done starts with everything the parent
has built (the listing, the interner) at no cost, works on another CPU, and
sends back a compact result through a pipe.

The work is cut into chunks that both processes claim from one queue (a pipe
holding the chunks' numbers: a read of one record is atomic), so neither waits
for the other when the chunks or the CPUs differ, and the parent can first do
something else (read the reference cache) and then join in.

A fork is safe only in a process running a single thread: a lock another thread
held at the fork would stay held in the child forever. `layergc sweep` is such a
process; `layergc serve` (its scheduler has threads) and test runners with
threads are not, and there the parent does every chunk itself. The result is
the same either way, and when the child fails (an exception, a crash, a signal)
the parent does the chunks the child had claimed, and logs why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")

# LAYERGC_MARK_PROCESSES=1 keeps a mark in one process (for comparisons, or a host
# that forbids fork); anything else, or unset, allows the split.
ENV = "LAYERGC_MARK_PROCESSES"
_RECORD = struct.Struct("=I")
# Records in the queue at most: they must all fit in a pipe's buffer (64 KiB on
# Linux by default; 4 KiB is what POSIX promises, hence the check in _queue).
_MAX_CHUNKS = 8192


def can_fork() -> bool:
    """Whether a split may fork here: a single-threaded process that may use more
    than one CPU."""
    if not hasattr(os, "fork") or os.environ.get(ENV, "").strip() == "1":
        return False
    if threading.active_count() != 1:
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus > 1


def worth_it(driver_name: str, items: int, least: int) -> bool:
    """Whether sharing `items` pays: on the local filesystem (elsewhere the work
    waits on the network and threads serve), for at least `least` items (a fork
    and the pickling cost a few milliseconds), where a fork is allowed."""
    return driver_name == "filesystem" and items >= least and can_fork()


def chunk_size(count: int, least: int) -> int:
    """Items per chunk for `count` items: `least`, or more to stay under _MAX_CHUNKS."""
    return max(least, -(-count // _MAX_CHUNKS))


def share(
    count: int,
    size: int,
    mine: Callable[[int, int], None],
    theirs: Callable[[int, int], R],
    deliver: Callable[[int, R], None],
    *,
    first: Callable[[], None] | None = None,
) -> None:
    """Run every chunk [start, stop) of range(count), `size` items each, once.

    A forked child runs `theirs(start, stop)` on the chunks it claims and sends
    back what it returns; this process runs `first()`, then `mine(start, stop)`
    on the chunks it claims, then `deliver(start, result)` for each chunk of the
    child's, one at a time (never all of them held at once). Without a fork
    (can_fork() is False), or when the child fails, `mine` runs here on every
    chunk the child did not deliver.

    What `theirs` returns must pickle, and must be all the caller needs of it: its
    effects on memory stay in the child. It must not write to shared resources
    (the index's connections, stdout): the child inherits them."""
    starts = range(0, count, size)
    child = _fork(starts, count, size, theirs) if len(starts) > 1 and can_fork() else None
    done: set[int] = set()
    if child is None:
        if first is not None:
            first()
    else:
        done = _share_with(child, count, size, mine, deliver, first)
    for start in starts:  # all of them without a child; those it failed to deliver
        if start not in done:
            mine(start, min(start + size, count))


def _share_with(
    child: tuple[int, int, IO[bytes]],
    count: int,
    size: int,
    mine: Callable[[int, int], None],
    deliver: Callable[[int, R], None],
    first: Callable[[], None] | None,
) -> set[int]:
    """This process's side of share() beside a forked child: the chunks done."""
    pid, queue, results = child
    done: set[int] = set()
    with results:
        try:
            try:
                if first is not None:
                    first()
                for start, stop in _claims(queue, count, size):
                    mine(start, stop)
                    done.add(start)
            finally:
                os.close(queue)
        except BaseException:
            _reap(pid, kill=True)
            raise
        status = _reap(pid, kill=False)
        results.seek(0)
        delivered = 0
        for start, result in _frames(results):
            deliver(start, result)
            done.add(start)
            delivered += 1
    if status != 0:
        log.warning(
            "mark: the forked child failed (wait status %d, %d chunks delivered); "
            "the rest of its share is done in-process",
            status,
            delivered,
        )
    return done


def _fork(
    starts: range, count: int, size: int, theirs: Callable[[int, int], R]
) -> tuple[int, int, IO[bytes]] | None:
    """Fork the child: (its pid, the queue, its results file); None (logged) when
    the system refuses (no descriptors, processes or space left): one process
    then does it all, as it would without a second CPU."""
    queue = -1
    results: IO[bytes] | None = None
    try:
        queue = _queue(starts)
        # The child writes each chunk's result as soon as it is made (and frees
        # it), to a file: it never waits for the parent, busy with its own chunks.
        results = tempfile.TemporaryFile(prefix="layergc-split-")  # noqa: SIM115 - the caller closes it
        pid = os.fork()
    except OSError as exc:
        log.warning("mark: cannot fork a second process (%s); one does it all", exc)
        if results is not None:
            results.close()
        if queue >= 0:
            os.close(queue)
        return None
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        _child(results, _claims(queue, count, size), theirs)
    return pid, queue, results


def _queue(starts: range) -> int:
    """A pipe's read end holding one record per chunk, then end of file."""
    read_fd, write_fd = os.pipe()
    try:
        data = b"".join(_RECORD.pack(i) for i in range(len(starts)))
        if os.write(write_fd, data) != len(data):  # pragma: no cover - a small pipe
            raise OSError("the pipe's buffer cannot hold the work queue")
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def _claims(queue: int, count: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield (start, stop) of each chunk this process claims, until none is left."""
    while record := os.read(queue, _RECORD.size):
        start = _RECORD.unpack(record)[0] * size
        yield start, min(start + size, count)


def _child(
    results: IO[bytes], claims: Iterator[tuple[int, int]], work: Callable[[int, int], object]
) -> None:
    """Write (start, work(start, stop)) of each claimed chunk; never return."""
    code = 1
    try:
        # A Ctrl-C reaches the whole process group: the child just ends (the parent
        # decides what the interrupted run does), and runs none of its handlers.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for start, stop in claims:
            pickle.dump((start, work(start, stop)), results, pickle.HIGHEST_PROTOCOL)
        code = 0
    except BaseException:  # the parent sees the status, and redoes what is missing
        log.exception("mark: forked child")
    finally:
        # The chunks done reach the parent even after a failure (a torn last frame
        # is dropped there). Then no atexit handlers, no flush of buffers inherited
        # from the parent.
        with contextlib.suppress(Exception):
            results.flush()
        os._exit(code)


def _frames(results: IO[bytes]) -> Iterator[Any]:
    """The child's frames, up to the first incomplete one (it died writing it)."""
    while True:
        try:
            yield pickle.load(results)  # our own child's bytes, in our own file
        except EOFError:
            return
        except Exception as exc:
            log.warning("mark: a forked child's last result is torn (%s)", exc)
            return


def _reap(pid: int, *, kill: bool) -> int:
    """Wait for the child (killed first with `kill`); its wait status."""
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return os.waitpid(pid, 0)[1]
