"""A driver wrapper that records every call, to prove what the layer service touches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO

from layergc.driver.base import FileInfo, FileWriter, StorageDriver


class RecordingDriver(StorageDriver):
    """Delegates to `inner` and appends (operation, path) to `calls` for every call."""

    def __init__(self, inner: StorageDriver) -> None:
        self.inner = inner
        self.name = f"recording({inner.name})"
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _record(self, op: str, path: str) -> None:
        with self._lock:
            self.calls.append((op, path))

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def ops(self, *names: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in names]

    def reads_of(self, path: str) -> list[tuple[str, str]]:
        """Calls that read the content of `path`."""
        return [c for c in self.calls if c[1] == path and c[0] in ("reader", "get_content")]

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        self._record("get_content", path)
        return self.inner.get_content(path, limit)

    def put_content(self, path: str, content: bytes) -> None:
        self._record("put_content", path)
        self.inner.put_content(path, content)

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        self._record("reader", path)
        return self.inner.reader(path, offset)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        self._record("writer", path)
        return self.inner.writer(path, append)

    def stat(self, path: str) -> FileInfo:
        self._record("stat", path)
        return self.inner.stat(path)

    def list(self, path: str) -> list[str]:
        self._record("list", path)
        return self.inner.list(path)

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        self._record("list_entries", path)
        return self.inner.list_entries(path)

    def move(self, source: str, dest: str) -> None:
        self._record("move", source)
        self.inner.move(source, dest)

    def delete(self, path: str) -> None:
        self._record("delete", path)
        self.inner.delete(path)

    def walk(self, path: str) -> Iterator[FileInfo]:
        self._record("walk", path)
        return self.inner.walk(path)

    def exists(self, path: str) -> bool:
        self._record("exists", path)
        return self.inner.exists(path)
