"""The storage driver contract, modelled on distribution's storagedriver.StorageDriver.

Paths are absolute, slash-separated and relative to the driver's root: `/` is the
root itself, `/docker/registry/v2/blobs` a folder under it. Folders exist only
through the files below them (as on S3): writing `/a/b/c` makes `/a` and `/a/b`
appear, deleting the last file under a folder may make it disappear.

Every public method validates its paths before touching storage and raises
InvalidPath for a malformed one and PathNotFound for a missing one.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from layergc.errors import InvalidPath

# Same alphabet as distribution's storagedriver.PathRegexp: one or more
# `/component` with components of [A-Za-z0-9._-]; `.` and `..` are refused too.
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


def validate_path(path: str, *, allow_root: bool = False) -> str:
    """Return `path` if it is a valid driver path, else raise InvalidPath."""
    if not isinstance(path, str):
        raise InvalidPath(repr(path), "path is not a string")
    if allow_root and path == "/":
        return path
    if _PATH_RE.fullmatch(path) is None:
        raise InvalidPath(path)
    # Only a path with "/." can hold one (drivers validate every call: keep it cheap).
    if "/." in path and any(c in (".", "..") for c in path.split("/")):
        raise InvalidPath(path, "path has a relative component")
    return path


def seek_target(position: int, size: int, offset: int, whence: int) -> int:
    """Where `seek(offset, whence)` goes in a stream at `position` of `size` bytes, as
    io's seek reads its arguments; ValueError for an unknown whence or a position
    before the start."""
    if whence == io.SEEK_SET:
        target = offset
    elif whence == io.SEEK_CUR:
        target = position + offset
    elif whence == io.SEEK_END:
        target = size + offset
    else:
        raise ValueError(f"invalid whence {whence}")
    if target < 0:
        raise ValueError(f"negative seek position {target}")
    return target


def join(*parts: str) -> str:
    """Join driver path parts: join('/a', 'b', 'c') == '/a/b/c'."""
    out = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return "/" + out


def parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int  # 0 for folders
    mod_time: datetime  # timezone-aware UTC
    is_dir: bool


class FileWriter(ABC):
    """A resumable writer: `close` keeps what was written so a later
    `driver.writer(path, append=True)` goes on from `size`; `commit` makes the
    content final; `cancel` throws it away."""

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    @property
    @abstractmethod
    def size(self) -> int:
        """Bytes in the file so far, including those of earlier writers."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def cancel(self) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StorageDriver(ABC):
    """What the layer service and the garbage collector need from storage."""

    name: str = "abstract"

    @abstractmethod
    def get_content(self, path: str, limit: int | None = None) -> bytes:
        """The whole content of the file at `path`; with `limit` (never negative),
        at most its first `limit` bytes. A caller that refuses content over some size asks for one
        byte more than it: a hostile file of gigabytes is then seen as too large
        without being read (or downloaded) whole."""

    @abstractmethod
    def put_content(self, path: str, content: bytes) -> None:
        """Replace the file at `path` atomically: readers see old or new, never half."""

    @abstractmethod
    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        """A binary reader positioned at `offset` (InvalidOffset when past the end)."""

    @abstractmethod
    def writer(self, path: str, append: bool = False) -> FileWriter:
        """A writer; with append=True, continue a file left by an earlier writer."""

    @abstractmethod
    def stat(self, path: str) -> FileInfo: ...

    @abstractmethod
    def list(self, path: str) -> list[str]:
        """Full paths of the direct children of folder `path` (any order)."""

    @abstractmethod
    def move(self, source: str, dest: str) -> None:
        """Move a file or folder, replacing `dest`."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Delete a file or a whole folder (recursively)."""

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        """(child name, is_dir) for each direct child of folder `path` (any order).

        The mark phase of the garbage collector walks huge trees with it; drivers
        that learn the kind of a child while listing (os.scandir, S3 prefixes)
        override it to save one stat per child."""
        return [(basename(child), self.stat(child).is_dir) for child in self.list(path)]

    def list_names(self, path: str) -> list[str]:
        """The names of the direct children of folder `path`, files and folders alike
        (any order). For listings whose children's kind the caller does not need: a
        driver may answer it cheaper than list_entries."""
        return [name for name, _ in self.list_entries(path)]

    def walk(self, path: str) -> Iterator[FileInfo]:
        """Every file and folder below `path`, depth first, parents before children."""
        for child in sorted(self.list(path)):
            info = self.stat(child)
            yield info
            if info.is_dir:
                yield from self.walk(child)

    def exists(self, path: str) -> bool:
        from layergc.errors import PathNotFound

        try:
            self.stat(path)
        except PathNotFound:
            return False
        return True

    def close(self) -> None:  # noqa: B027 - most drivers hold nothing to release
        """Release connections or handles; the driver is unusable afterwards."""
