"""A driver wrapper that injects faults, to prove the sweep fails safe.

On a chosen fraction of calls (seeded, so a failing test replays) it raises an
error, stalls then raises a timeout, or cuts a listing short. A cut listing
raises after yielding part of its entries, as a paginated S3 listing does when a
later page fails: real stores say a listing is truncated, they do not hide it,
so a listing that silently drops entries is not a fault this wrapper models.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from layergc.driver.base import FileInfo, FileWriter, StorageDriver
from layergc.errors import StorageDriverError

ERROR, TIMEOUT, PARTIAL = "error", "timeout", "partial-list"
READ_OPERATIONS = frozenset({"get_content", "stat", "list", "list_entries", "walk", "reader"})
WRITE_OPERATIONS = frozenset({"put_content", "writer", "move", "delete"})


class InjectedFault(StorageDriverError):
    """A failure made on purpose by FaultInjectingDriver."""


class FaultInjectingDriver(StorageDriver):
    def __init__(
        self,
        driver: StorageDriver,
        rate: float,
        *,
        seed: int = 0,
        kinds: Iterable[str] = (ERROR, TIMEOUT, PARTIAL),
        operations: Iterable[str] = READ_OPERATIONS | WRITE_OPERATIONS,
        stall: float = 0.01,
    ) -> None:
        self.inner = driver
        self.rate = rate
        self.kinds = tuple(kinds)
        self.operations = frozenset(operations)
        self.stall = stall
        self.name = f"faulty-{driver.name}"
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def _fault(self, operation: str, path: str) -> str | None:
        with self._lock:
            self.calls[operation] += 1
            if operation not in self.operations or self._random.random() >= self.rate:
                return None
            kind = self._random.choice(self.kinds)
            if kind == PARTIAL and operation not in ("list", "list_entries", "walk"):
                kind = ERROR
            self.injected[kind] += 1
        if kind == TIMEOUT:
            time.sleep(self.stall)
            raise InjectedFault(f"injected timeout: {operation} {path}")
        if kind == ERROR:
            raise InjectedFault(f"injected error: {operation} {path}")
        return kind

    @property
    def faults(self) -> int:
        return sum(self.injected.values())

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        self._fault("get_content", path)
        return self.inner.get_content(path, limit)

    def put_content(self, path: str, content: bytes) -> None:
        self._fault("put_content", path)
        self.inner.put_content(path, content)

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        self._fault("reader", path)
        return self.inner.reader(path, offset)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        self._fault("writer", path)
        return self.inner.writer(path, append)

    def stat(self, path: str) -> FileInfo:
        self._fault("stat", path)
        return self.inner.stat(path)

    def list(self, path: str) -> list[str]:
        partial = self._fault("list", path)
        entries = self.inner.list(path)
        if partial:
            raise InjectedFault(f"injected partial listing after {len(entries) // 2}: {path}")
        return entries

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        partial = self._fault("list_entries", path)
        entries = self.inner.list_entries(path)
        if partial:
            raise InjectedFault(f"injected partial listing after {len(entries) // 2}: {path}")
        return entries

    def move(self, source: str, dest: str) -> None:
        self._fault("move", source)
        self.inner.move(source, dest)

    def delete(self, path: str) -> None:
        self._fault("delete", path)
        self.inner.delete(path)

    def walk(self, path: str) -> Iterator[FileInfo]:
        partial = self._fault("walk", path)
        for n, info in enumerate(self.inner.walk(path)):
            if partial and n >= 1:
                raise InjectedFault(f"injected partial listing after {n}: {path}")
            yield info
