"""A read-only view of a registry's tree, answered from bulk listings (S3).

The mark asks storage three kinds of question: which folders are below a folder
(thousands of them), what a link file holds (one per manifest revision and
tag), and what a manifest blob holds. On S3 each is a request, and one listing
per folder or GET per link makes a sweep cost several requests per manifest.
`take(driver)` lists `blobs/` and `repositories/` once, with the driver's
parallel flat listing (`list_tree`), and answers the first two kinds from that:

- `list` / `list_entries` of any folder below those roots, from the keys;
- `stat` of a file that was listed: its size and time (the sweep's grace and
  size checks of candidates need no HEAD);
- `get_content` of a `link` file whose content can be told from its listing:
  S3 reports the MD5 of a single-part, unencrypted object as its ETag, so a
  link whose ETag is the MD5 of the digest its path names (a revision or
  layer link), or of the digest of one of the listed revisions (a tag's
  `current/link`), holds exactly that. A link whose ETag matches nothing
  (another content, multipart, SSE-KMS) is read from storage as before.

Everything else goes to the driver: blob data (manifests), uploads' files,
walks, and anything the listing did not see (asked about again, not assumed
absent). The answers are as of the listing, which is what the mark reads
anyway: it is a snapshot taken at its start. The view is made per mark and
thrown away; it never writes.

A driver without `list_tree` (filesystem, in-memory) is returned as it is:
there a folder listing costs a system call, not a round trip.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

from layergc.digest import ALGORITHMS
from layergc.driver.base import FileInfo, FileWriter, StorageDriver, validate_path
from layergc.errors import PathNotFound
from layergc.storage import paths

log = logging.getLogger(__name__)

ROOTS = (paths.BLOBS, paths.REPOSITORIES)
_HEX = "0123456789abcdef"
_LINK = "/link"
_MANIFESTS = f"/{paths.MANIFESTS_DIR}/"
_REVISIONS = f"{_MANIFESTS}revisions/"


class Listed(Protocol):
    """What `list_tree` yields per object (layergc.driver.s3.ObjectInfo)."""

    path: str
    size: int
    mod_time: datetime
    etag: str


class TreeLister(Protocol):
    def list_tree(self, path: str) -> Iterable[Listed]: ...


def take(driver: StorageDriver, lister: Any = None, roots: Sequence[str] = ROOTS) -> StorageDriver:
    """A snapshot view over `driver`, listed through `lister` (default: the
    driver itself), or `driver` unchanged when the lister cannot list trees.

    `lister` differs from `driver` when the reads go through a wrapper of the
    driver (the sweep's QuarantineOverlay) and the listing through the driver."""
    lister = driver if lister is None else lister
    if not callable(getattr(lister, "list_tree", None)):
        return driver
    return TreeSnapshot(driver, lister, roots)


def _digest_link(path: str) -> bytes | None:
    """The content a link at `.../<alg>/<hex>/link` holds when it is intact."""
    head, _, _ = path.rpartition("/")
    head, _, hex_ = head.rpartition("/")
    algorithm = head.rpartition("/")[2]
    if ALGORITHMS.get(algorithm) == len(hex_) and not hex_.strip(_HEX):
        return f"{algorithm}:{hex_}".encode("ascii")
    return None


def _md5(content: bytes) -> str:
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


class _Columns:
    """Objects as they stream in, a few bytes each beyond the path: only the
    links the mark reads (revisions, tags) keep their ETag."""

    def __init__(self, objects: Iterable[Listed]) -> None:
        self.paths: list[str] = []
        self.sizes = array("q")
        self.times = array("d")
        self.etags: list[str | None] = []
        for o in objects:
            path = o.path
            self.paths.append(path)
            self.sizes.append(o.size)
            self.times.append(o.mod_time.timestamp())
            self.etags.append(o.etag if path.endswith(_LINK) and _MANIFESTS in path else None)


class TreeSnapshot(StorageDriver):
    """The listing of `roots`, and `driver` behind it for everything else."""

    def __init__(self, driver: StorageDriver, lister: TreeLister, roots: Sequence[str]) -> None:
        self._driver = driver
        self.name = driver.name
        self.roots = tuple(roots)
        started = time.perf_counter()
        with ThreadPoolExecutor(len(self.roots), thread_name_prefix="layergc-list") as pool:
            columns = list(pool.map(lambda root: _Columns(lister.list_tree(root)), self.roots))
        # Roots are disjoint folders: each one's keys, sorted, then the roots in order.
        columns.sort(key=lambda c: c.paths[0] if c.paths else "")
        self._paths: list[str] = []
        self._sizes = array("q")
        self._times = array("d")
        self._etags: list[str | None] = []
        for c in columns:
            order = sorted(range(len(c.paths)), key=c.paths.__getitem__)
            self._paths.extend(c.paths[i] for i in order)
            self._sizes.extend(c.sizes[i] for i in order)
            self._times.extend(c.times[i] for i in order)
            self._etags.extend(c.etags[i] for i in order)
        del columns
        self._targets: dict[str, bytes] | None = None  # MD5 -> content, of revision links
        self._lock = threading.Lock()
        self.links_from_listing = 0
        self.links_read = 0
        self.seconds = time.perf_counter() - started
        log.info(
            "listed the tree",
            extra={"objects": len(self._paths), "seconds": round(self.seconds, 3)},
        )

    @property
    def objects(self) -> int:
        """How many objects were listed (no __len__: an empty view is still a view)."""
        return len(self._paths)

    # --- lookups ------------------------------------------------------------------

    def _covers(self, path: str) -> bool:
        return any(path == root or path.startswith(root + "/") for root in self.roots)

    def _index(self, path: str) -> int | None:
        i = bisect.bisect_left(self._paths, path)
        return i if i < len(self._paths) and self._paths[i] == path else None

    def _revision_targets(self) -> dict[str, bytes]:
        with self._lock:
            if self._targets is None:
                targets: dict[str, bytes] = {}
                for p in self._paths:
                    if p.endswith(_LINK) and _REVISIONS in p:
                        content = _digest_link(p)
                        if content is not None:
                            targets[_md5(content)] = content
                self._targets = targets
            return self._targets

    def _link_content(self, path: str, etag: str) -> bytes | None:
        expected = _digest_link(path)
        if expected is not None and _md5(expected) == etag:
            return expected
        return self._revision_targets().get(etag)

    # --- the read side of the contract -----------------------------------------------

    def files(self, path: str) -> list[tuple[str, int]]:
        """(path, size) of every listed file at or below `path` ([] outside the
        roots or when none was listed)."""
        if not self._covers(path):
            return []
        found: list[tuple[str, int]] = []
        i = self._index(path)
        if i is not None:
            found.append((path, self._sizes[i]))
        prefix = path + "/"
        j = bisect.bisect_left(self._paths, prefix)
        while j < len(self._paths) and self._paths[j].startswith(prefix):
            found.append((self._paths[j], self._sizes[j]))
            j += 1
        return found

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        validate_path(path, allow_root=True)
        if not self._covers(path):
            return self._driver.list_entries(path)
        prefix = path + "/"
        keys = self._paths
        entries: dict[str, bool] = {}
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            name, slash, _ = keys[i][len(prefix) :].partition("/")
            if not name:  # `a//b`, or a folder marker `a/`: no valid path, as the driver
                i += 1
            elif slash:
                entries[name] = True
                # Past every key below `name/`: '0' follows '/'.
                i = bisect.bisect_left(keys, f"{prefix}{name}0", i)
            else:
                entries.setdefault(name, False)
                i += 1
        if not entries:
            raise PathNotFound(path)
        return sorted(entries.items())

    def list(self, path: str) -> list[str]:
        base = "" if path == "/" else path
        return [f"{base}/{name}" for name, _ in self.list_entries(path)]

    def stat(self, path: str) -> FileInfo:
        validate_path(path, allow_root=True)
        if self._covers(path):
            i = self._index(path)
            if i is not None:
                when = datetime.fromtimestamp(self._times[i], UTC)
                return FileInfo(path, self._sizes[i], when, False)
            j = bisect.bisect_left(self._paths, path + "/")
            if j < len(self._paths) and self._paths[j].startswith(path + "/"):
                # As the S3 driver: a folder has the time of its first object.
                return FileInfo(path, 0, datetime.fromtimestamp(self._times[j], UTC), True)
        return self._driver.stat(path)

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        validate_path(path)
        if path.endswith(_LINK) and self._covers(path):
            i = self._index(path)
            etag = self._etags[i] if i is not None else None
            if etag:
                content = self._link_content(path, etag)
                if content is not None:
                    self.links_from_listing += 1
                    return content[:limit]
            self.links_read += 1
        return self._driver.get_content(path, limit)

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        return self._driver.reader(path, offset)

    def walk(self, path: str) -> Iterator[FileInfo]:
        return self._driver.walk(path)

    # --- never writes --------------------------------------------------------------------

    def put_content(self, path: str, content: bytes) -> None:
        raise PermissionError("a tree snapshot is read-only")

    def writer(self, path: str, append: bool = False) -> FileWriter:
        raise PermissionError("a tree snapshot is read-only")

    def move(self, source: str, dest: str) -> None:
        raise PermissionError("a tree snapshot is read-only")

    def delete(self, path: str) -> None:
        raise PermissionError("a tree snapshot is read-only")
