"""A thread-safe in-memory StorageDriver, for tests and for trying layergc out.

The content is a tree of folders and files held under one lock. Folders exist
only through the files below them: writing `/a/b/c` creates `/a` and `/a/b`,
and deleting or moving away the last file of a folder removes the folder too
(as on S3, which the conformance suite holds every driver to).

Choices where the Go driver is silent or loose, shared with the filesystem driver:
- reading (get_content, reader) a folder raises PathNotFound: there is no file there;
- listing a file raises PathNotFound: there is no folder there;
- writing a file where a folder is, or below a file, raises InvalidPath.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import BinaryIO

from layergc.driver.base import (
    FileInfo,
    FileWriter,
    StorageDriver,
    basename,
    join,
    validate_path,
)
from layergc.errors import InvalidOffset, InvalidPath, PathNotFound, StorageDriverError


def _now() -> datetime:
    return datetime.now(UTC)


class _File:
    __slots__ = ("data", "mod_time")

    def __init__(self) -> None:
        # A bytearray so that writers append in amortised O(1).
        self.data = bytearray()
        self.mod_time = _now()


class _Dir:
    __slots__ = ("children", "mod_time")

    def __init__(self) -> None:
        self.children: dict[str, _Dir | _File] = {}
        self.mod_time = _now()


def _components(path: str) -> list[str]:
    return [] if path == "/" else path.split("/")[1:]


class InMemoryDriver(StorageDriver):
    name = "inmemory"

    def __init__(self) -> None:
        self._root = _Dir()
        # Reentrant so that helpers may call each other while holding it.
        self._lock = threading.RLock()

    # --- tree helpers (call with the lock held) --------------------------------

    def _find(self, path: str) -> _Dir | _File | None:
        node: _Dir | _File = self._root
        for name in _components(path):
            if not isinstance(node, _Dir):
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def _find_file(self, path: str) -> _File:
        node = self._find(path)
        if not isinstance(node, _File):
            raise PathNotFound(path)
        return node

    def _find_dir(self, path: str) -> _Dir:
        node = self._find(path)
        if not isinstance(node, _Dir):
            raise PathNotFound(path)
        return node

    def _parent_dir(self, path: str, *, create: bool) -> _Dir | None:
        """The folder that holds `path`, created on the way when `create`."""
        node = self._root
        for name in _components(path)[:-1]:
            child = node.children.get(name)
            if child is None:
                if not create:
                    return None
                child = node.children[name] = _Dir()
                node.mod_time = _now()
            elif isinstance(child, _File):
                raise InvalidPath(path, "a parent of the path is a file")
            node = child
        return node

    def _check_creatable(self, path: str) -> None:
        """Raise before anything is created if `path` cannot hold a file."""
        self._check_parents(path)
        if isinstance(self._find(path), _Dir):
            raise InvalidPath(path, "path is a folder")

    def _check_parents(self, path: str) -> None:
        """Raise before anything changes if a parent of `path` is a file."""
        node: _Dir | _File = self._root
        for name in _components(path)[:-1]:
            if isinstance(node, _File):
                raise InvalidPath(path, "a parent of the path is a file")
            child = node.children.get(name)
            if child is None:
                return
            node = child
        if isinstance(node, _File):
            raise InvalidPath(path, "a parent of the path is a file")

    def _mkfile(self, path: str, *, truncate: bool) -> _File:
        self._check_creatable(path)
        folder = self._parent_dir(path, create=True)
        assert folder is not None
        name = basename(path)
        node = folder.children.get(name)
        if not isinstance(node, _File):
            node = folder.children[name] = _File()
            folder.mod_time = node.mod_time
        elif truncate:
            node.data = bytearray()
            node.mod_time = _now()
        return node

    def _unlink(self, path: str) -> _Dir | _File:
        """Detach the node at `path` and prune the folders it leaves empty."""
        names = _components(path)
        if not names:
            raise InvalidPath(path, "cannot remove the root")
        chain: list[_Dir] = [self._root]
        for name in names[:-1]:
            child = chain[-1].children.get(name)
            if not isinstance(child, _Dir):
                raise PathNotFound(path)
            chain.append(child)
        node = chain[-1].children.pop(names[-1], None)
        if node is None:
            raise PathNotFound(path)
        now = _now()
        chain[-1].mod_time = now
        # Folders are implied by files: drop the ones that became empty.
        for depth in range(len(chain) - 1, 0, -1):
            if chain[depth].children:
                break
            del chain[depth - 1].children[names[depth - 1]]
            chain[depth - 1].mod_time = now
        return node

    # --- the contract ----------------------------------------------------------

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        validate_path(path)
        with self._lock:
            data = self._find_file(path).data
            return bytes(data if limit is None else data[:limit])

    def put_content(self, path: str, content: bytes) -> None:
        validate_path(path)
        node = _File()
        node.data = bytearray(content)  # copied outside the lock
        with self._lock:
            self._check_creatable(path)
            folder = self._parent_dir(path, create=True)
            assert folder is not None
            # A new file, as the filesystem's rename makes a new inode: a writer
            # still open on the old one no longer reaches this path.
            folder.children[basename(path)] = node
            node.mod_time = folder.mod_time = _now()

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        validate_path(path)
        if offset < 0:
            raise InvalidOffset(path, offset)
        with self._lock:
            data = self._find_file(path).data
            if offset > len(data):
                raise InvalidOffset(path, offset)
            # A snapshot: later writes must not change what this reader sees.
            stream = io.BytesIO(data)
        stream.seek(offset)
        return stream

    def writer(self, path: str, append: bool = False) -> FileWriter:
        validate_path(path)
        with self._lock:
            node = self._mkfile(path, truncate=not append)
        return _InMemoryWriter(self, path, node)

    def stat(self, path: str) -> FileInfo:
        validate_path(path, allow_root=True)
        with self._lock:
            node = self._find(path)
            if node is None:
                raise PathNotFound(path)
            if isinstance(node, _File):
                return FileInfo(path, len(node.data), node.mod_time, False)
            return FileInfo(path, 0, node.mod_time, True)

    def list(self, path: str) -> list[str]:
        validate_path(path, allow_root=True)
        with self._lock:
            names = list(self._find_dir(path).children)
        return [join(path, name) for name in names]

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        validate_path(path, allow_root=True)
        with self._lock:
            folder = self._find_dir(path)
            return [(name, isinstance(node, _Dir)) for name, node in folder.children.items()]

    def move(self, source: str, dest: str) -> None:
        validate_path(source)
        validate_path(dest)
        if source == dest:
            with self._lock:
                if self._find(source) is None:
                    raise PathNotFound(source)
            return
        if dest.startswith(source + "/"):
            raise InvalidPath(dest, f"cannot move {source!r} into itself")
        with self._lock:
            if self._find(source) is None:
                raise PathNotFound(source)
            self._check_parents(dest)
            moved = self._unlink(source)
            if self._find(dest) is not None:
                self._unlink(dest)
            folder = self._parent_dir(dest, create=True)
            assert folder is not None
            folder.children[basename(dest)] = moved
            folder.mod_time = _now()

    def delete(self, path: str) -> None:
        validate_path(path)
        with self._lock:
            self._unlink(path)

    def walk(self, path: str) -> Iterator[FileInfo]:
        validate_path(path, allow_root=True)
        with self._lock:
            # Snapshot under the lock so that callers may change the tree meanwhile.
            infos: list[FileInfo] = []
            self._walk_into(self._find_dir(path), path, infos)
        return iter(infos)

    def _walk_into(self, folder: _Dir, path: str, out: list[FileInfo]) -> None:
        for name in sorted(folder.children):
            node = folder.children[name]
            child = join(path, name)
            if isinstance(node, _File):
                out.append(FileInfo(child, len(node.data), node.mod_time, False))
            else:
                out.append(FileInfo(child, 0, node.mod_time, True))
                self._walk_into(node, child, out)


class _InMemoryWriter(FileWriter):
    """Writes land in the file at once (as in Go's inmemory driver); cancel removes it."""

    def __init__(self, driver: InMemoryDriver, path: str, node: _File) -> None:
        self._driver = driver
        self._path = path
        self._node = node
        self._closed = self._committed = self._cancelled = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageDriverError(f"writer for {self._path!r} already closed")
        if self._committed:
            raise StorageDriverError(f"writer for {self._path!r} already committed")
        if self._cancelled:
            raise StorageDriverError(f"writer for {self._path!r} already cancelled")

    def write(self, data: bytes) -> int:
        self._check_open()
        with self._driver._lock:
            self._node.data += data
            self._node.mod_time = _now()
        return len(data)

    @property
    def size(self) -> int:
        with self._driver._lock:
            return len(self._node.data)

    def close(self) -> None:
        # Idempotent, unlike Go's, so that `with` after commit or cancel works.
        self._closed = True

    def cancel(self) -> None:
        self._check_open()
        self._cancelled = True
        with self._driver._lock:
            # Only remove the file if it is still the one this writer wrote.
            if self._driver._find(self._path) is self._node:
                self._driver._unlink(self._path)

    def commit(self) -> None:
        self._check_open()
        self._committed = True
