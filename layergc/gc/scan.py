"""The mark: what a registry's storage keeps, read straight from the Go layout.

`mark(driver)` lists the blob store, finds every repository, reads its
revision links and tags, parses each manifest once per digest and computes the
set of blobs that kept manifests reference. It reads only what a mark needs
(link files and manifests) and lists folders with `list_entries`: it never
stats a blob or reads layer data, and it never writes.

Fail closed. One bad object is an entry in `errors`, never the end of the
scan. Whatever could hide a reference (an unparseable manifest, a folder or
link under `repositories/` that cannot be read, a revision folder with an
invalid name) sets `blob_deletion_blocked`, and the sweep then deletes no blob
in that run. Decisions where the Go registry (2.8) is silent or unsafe:

- A repository is a folder holding `_manifests`, `_layers` or `_uploads`
  (Go looks only at `_layers`). A folder name that breaks the repository-name
  grammar is reported, and its repository is still read: all of its revisions
  are kept whatever the tags say, and it is offered no untagged deletion and
  no upload purge (those act through names we refuse to build paths from).
- A revision folder whose `link` file is gone is a deleted manifest: not a
  revision. A link that is empty or corrupt is reported; the folder's digest
  stays a kept revision (an intact reading would keep it). A valid link that
  names another digest than its folder is reported; both digests are kept.
- A revision whose manifest blob is missing is reported and is not a root
  (as in Go); it is never offered for untagged deletion either.
- With `delete_untagged`, a manifest is kept iff a tag's `current/link`
  points at it, or a kept manifest references it (the children of a tagged
  index are kept, unlike Go 2.8), or it is an OCI referrer whose subject is
  kept; to a fixpoint, within its repository. A tag's `index/` history keeps
  nothing. A tag whose target has no revision link still keeps that manifest
  when its blob exists (reported). A repository where anything could not be
  read (a folder listing, a corrupt tag link, an unparseable manifest) keeps
  every revision.
- Marked blobs are global: every kept manifest marks itself, its blobs and its
  children by digest, and a child's own references are marked too, whichever
  repository it sits in.
- Blob folders are listed, never stat'ed; a name that is not a valid digest,
  or of an unsupported algorithm, is reported and never offered for deletion.
  The listing stands for the existence check of manifests found in the
  reference cache (those missing from it are checked one by one). In one
  process blobs are listed first; a mark shared with a forked child lists
  them while the child reads links (see scan_repositories: safety does not
  rest on that order).
- A manifest blob whose content does not hash to its digest is unparseable.

Speed (100,000 blobs: ~20,000 manifests, ~80,000 layer links): the cost is
one call per folder listed and per link or manifest read, plus Python work
per name. So: digests are hex strings inside (str hashing is C, a Digest's is
not) with one shared string object per digest; names are validated a folder
at a time in C; manifests parse once per digest (and never again with a
reference cache); Digest objects are made at the edges, and the big results
(marked, all_blobs, layer_links) are read-only views over those strings. On
the filesystem, where that Python work is the bound and threads only contend
for the GIL, a forked child process takes a share of the repositories (and of
the manifests to parse, on a first mark), on a second CPU: gc/split.py.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import logging
import operator
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, NamedTuple, Protocol, TypeVar, overload

from layergc.digest import ALGORITHMS, Digest
from layergc.driver.base import StorageDriver
from layergc.errors import InvalidLink, InvalidManifest, PathNotFound
from layergc.gc import split
from layergc.gc.pace import Pace
from layergc.names import is_valid_repository_name
from layergc.storage import manifests, paths
from layergc.storage.links import MAX_LINK_SIZE, parse_link
from layergc.storage.manifests import ManifestRefs, interned_digest, is_lower_hex, make_digest

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")
Progress = Callable[[str, int, int | None], None]

# Error kinds. Those reported with blocking=True stop blob deletion for the run.
UNREADABLE = "unreadable"  # a folder or file under repositories/ that could not be read
INVALID_REPOSITORY_NAME = "invalid-repository-name"
INVALID_NAME = "invalid-name"  # a folder name that is not what the layout allows there
CORRUPT_LINK = "corrupt-link"
NONCANONICAL_LINK = "noncanonical-link"  # a digest with surrounding whitespace: read as it
LINK_MISMATCH = "link-mismatch"
MISSING_MANIFEST_BLOB = "missing-manifest-blob"
UNPARSEABLE_MANIFEST = "unparseable-manifest"
TAG_WITHOUT_REVISION = "tag-without-revision"
TAG_WITHOUT_MANIFEST = "tag-without-manifest"
UNKNOWN_ALGORITHM = "unknown-algorithm"
UNKNOWN_MEDIA_TYPE = "unknown-media-type"
BLOB_LISTING = "blob-listing"
REFERENCE_CACHE = "reference-cache"


def _all_hex(names: list[str], length: int, prefix: str = "") -> bool:
    """Whether every name is `length` lowercase hex digits starting with
    `prefix`: one pass in C over a whole folder listing."""
    if not names:
        return True
    if set(map(len, names)) != {length}:
        return False
    joined = "".join(names)
    count = len(names)
    for i, char in enumerate(prefix):
        if joined[i::length] != char * count:
            return False
    return is_lower_hex(joined, length * count)


# Internally a digest is its hex string: the supported algorithms have hex of
# different lengths (ALGORITHM_OF_LENGTH), so the hex alone names the digest, and a str hashes in C
# where a Digest (a Python dataclass) does not. Digests are made at the edges.
_hex_attr = operator.attrgetter("hex")
_HASHES = {algorithm: getattr(hashlib, algorithm) for algorithm in ALGORITHMS}


@dataclass(frozen=True, slots=True)
class ScanError:
    kind: str
    path: str
    repository: str | None
    message: str
    blocking: bool = False  # True when it stopped blob deletion for the run
    # True for what a registry in service produces by itself and layergc handled
    # safely (a report warning: the run still succeeds).
    warning: bool = False


def _about(error: ScanError) -> tuple[str, str, str]:
    """What an error is about, whichever repository met it."""
    return error.kind, error.path, error.message


class ManifestEntry(NamedTuple):
    repository: str
    digest: Digest
    tagged: bool
    kept: bool


class ReferenceCache(Protocol):
    """Remembers what a manifest digest references (immutable, so never stale).

    Two methods are optional, looked up when used: `get_all(intern=None)`, every
    entry as get_many gives them (read while a forked child scans), and `count()`,
    how many entries it holds (an empty cache lets the manifests be parsed along
    the scan). A cache without them is read as before, by get_many after the scan."""

    def get_many(
        self, digests: Iterable[Digest], intern: dict[str, Digest] | None = None
    ) -> dict[Digest, ManifestRefs]:
        """Entries known for `digests`; the Digests in them taken from `intern`
        (hex -> Digest) where it has them, and entered there otherwise."""
        ...

    def put_many(self, refs: Mapping[Digest, ManifestRefs]) -> None: ...


class DictReferenceCache:
    """The in-process ReferenceCache: pass one instance to successive marks."""

    def __init__(self) -> None:
        self.entries: dict[Digest, ManifestRefs] = {}

    def get_many(
        self, digests: Iterable[Digest], intern: dict[str, Digest] | None = None
    ) -> dict[Digest, ManifestRefs]:
        entries = self.entries
        return {d: entries[d] for d in digests if d in entries}

    def get_all(self, intern: dict[str, Digest] | None = None) -> dict[Digest, ManifestRefs]:
        return dict(self.entries)

    def count(self) -> int:
        return len(self.entries)

    def put_many(self, refs: Mapping[Digest, ManifestRefs]) -> None:
        self.entries.update(refs)


# --- read-only views over hex strings --------------------------------------------


class _Interner(dict[str, Digest]):
    """hex -> the one Digest object made for it.

    The blob listing fills it first, so its strings are the ones every holder
    shares (links, manifests' references, cached entries): one string, one
    Digest and one hash-table entry per blob, where sys.intern and a set of the
    listing each cost another table (8 MiB at 100,000 blobs)."""

    digest = interned_digest

    def canon(self, hex_: str) -> str:
        """The shared string equal to `hex_` (the listing's, if it is a blob there)."""
        d = self.get(hex_)
        return d.hex if d is not None else sys.intern(hex_)


def _hex_of(item: object) -> str | None:
    """The internal key of a Digest, None for anything else."""
    if isinstance(item, Digest) and ALGORITHMS.get(item.algorithm) == len(item.hex):
        return item.hex
    return None


class DigestSet(AbstractSet[Digest]):
    """A read-only set of Digests, held as hex strings (100,000 Digests in a
    real set cost a Python-level hash each)."""

    __slots__ = ("_digest", "_hexes")

    def __init__(self, hexes: set[str], interner: _Interner) -> None:
        self._hexes = hexes
        self._digest = interner.digest

    def __contains__(self, item: object) -> bool:
        return _hex_of(item) in self._hexes

    def __iter__(self) -> Iterator[Digest]:
        return map(self._digest, self._hexes)

    def __len__(self) -> int:
        return len(self._hexes)

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        return set(it)  # results of &, |, - are plain sets

    def __repr__(self) -> str:
        return f"<DigestSet of {len(self)}>"


class DigestList(Sequence[Digest]):
    """A read-only list of Digests, held as hex strings."""

    __slots__ = ("_digest", "_hexes")

    def __init__(self, hexes: list[str], interner: _Interner) -> None:
        self._hexes = hexes
        self._digest = interner.digest

    @overload
    def __getitem__(self, index: int) -> Digest: ...

    @overload
    def __getitem__(self, index: slice) -> list[Digest]: ...

    def __getitem__(self, index: int | slice) -> Digest | list[Digest]:
        if isinstance(index, slice):
            return [self._digest(h) for h in self._hexes[index]]
        return self._digest(self._hexes[index])

    def __iter__(self) -> Iterator[Digest]:
        return map(self._digest, self._hexes)

    def __len__(self) -> int:
        return len(self._hexes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<DigestList of {len(self)}>"


class DigestMap(Mapping[Digest, list[str]]):
    """A read-only mapping digest -> repositories, keyed by hex strings inside
    (a value is one repository name, or a list of them)."""

    __slots__ = ("_digest", "_map")

    def __init__(self, mapping: dict[str, str | list[str]], interner: _Interner) -> None:
        self._map = mapping
        self._digest = interner.digest

    def __getitem__(self, key: Digest) -> list[str]:
        value = self._map.get(_hex_of(key))  # type: ignore[arg-type]
        if value is None:
            raise KeyError(key)
        return [value] if isinstance(value, str) else list(value)

    def get(self, key: Digest, default: Any = None) -> Any:  # type: ignore[override]
        value = self._map.get(_hex_of(key))  # type: ignore[arg-type]
        if value is None:
            return default
        return [value] if isinstance(value, str) else list(value)

    def __contains__(self, key: object) -> bool:
        return _hex_of(key) in self._map

    def __iter__(self) -> Iterator[Digest]:
        return map(self._digest, self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"<DigestMap of {len(self)}>"


# --- the result --------------------------------------------------------------------


@dataclass(slots=True)
class MarkStats:
    repositories: int = 0
    revisions: int = 0
    tags: int = 0
    manifests_kept: int = 0
    manifests_parsed: int = 0
    manifests_cached: int = 0
    layer_links: int = 0
    blobs: int = 0
    marked: int = 0
    unreferenced: int = 0
    uploads: int = 0
    errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase


@dataclass(slots=True)
class MarkResult:
    started_at: datetime  # taken before anything was listed
    repositories: list[str]
    manifests: list[ManifestEntry]  # every revision of every repository
    untagged_to_delete: list[tuple[str, Digest]]  # only with delete_untagged
    marked: AbstractSet[Digest] = field(repr=False)
    all_blobs: Sequence[Digest] = field(repr=False)
    unreferenced: list[Digest] = field(repr=False)  # all_blobs not marked, in listing order
    # digest -> repositories linking it, for the digests not marked (the sweep's
    # candidates, and links to blobs the listing did not see)
    layer_links: Mapping[Digest, list[str]] = field(repr=False)
    uploads: list[tuple[str, str]] = field(repr=False)  # (repository, uuid)
    errors: list[ScanError]
    blob_deletion_blocked: bool
    stats: MarkStats
    _refs: dict[str, ManifestRefs] = field(default_factory=dict, repr=False)

    def references(self, digest: Digest) -> ManifestRefs | None:
        """What manifest `digest` references, if the mark read it."""
        hex_ = _hex_of(digest)
        return None if hex_ is None else self._refs.get(hex_)

    def closure(self, manifests: Iterable[Digest]) -> set[Digest]:
        """Every digest that keeping `manifests` keeps: themselves, their blobs,
        their children and, recursively, what the children reference."""
        interner = _Interner()
        roots = [h for h in map(_hex_of, manifests) if h is not None]
        marked = _expand(roots, self._refs.get, self._refs.__contains__, set())
        return {interner.digest(h) for h in marked}


def mark(
    driver: StorageDriver,
    *,
    delete_untagged: bool = False,
    reference_cache: ReferenceCache | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> MarkResult:
    """Mark what the storage behind `driver` keeps. Never writes; never raises
    for a bad object (see `errors` and `blob_deletion_blocked`).

    `progress(phase, done, total)` is called now and then. `workers` > 1 reads
    repositories and manifests from a thread pool. It pays where reads wait:
    per-request latency (S3), a cold page cache (10,000 blobs: 1.2 s instead
    of 1.9 to 2.6 s). With a warm cache on a local disk it costs: at 100,000
    blobs 4 threads took twice the CPU time of one and no less wall time (the
    GIL), so the default is one thread for local drivers.
    """
    if workers is None:
        workers = 1 if driver.name in LOCAL_DRIVERS else 16
    with gc_paused():
        return _Marker(driver, delete_untagged, reference_cache, progress, workers).run()


def repository_reader(driver: StorageDriver) -> _Marker:
    """A marker whose walk and repository scan are used alone, for their reads
    (gc/prefetch.py): no reference cache, no progress, no thread pool."""
    return _Marker(driver, False, None, None, 1)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a mark (or the sweep's decision after
    it): a mark builds several hundred thousand objects, none in cycles, and the
    collector's passes over them cost ~6% of a mark at 100,000 blobs (a full pass
    in the decision, 70 ms). Nested or concurrent marks restore
    the collector only when the last one ends, and only if it was on."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


# Local drivers: threads only add GIL contention there (see mark).
LOCAL_DRIVERS = frozenset({"filesystem", "inmemory"})
# How long a link read empty waits before it is read again (read_link).
_EMPTY_LINK_RETRY_SECONDS = 0.01
# What is read of a blob to tell whether it may be a manifest (is_manifest).
_SNIFF_BYTES = 64
# Manifests read per batch: bounds memory (content is dropped once parsed).
_BATCH = 512
# Below this, a forked child (gc/split.py) costs more than its share saves.
_SPLIT_MIN_REPOSITORIES = 256
# Threads per process once the mark's reads wait (gc/pace.py). From a cold cache at
# 100,000 blobs, with 1, 2, 3, 4, 6 and 8 threads in each of two processes, a repeated
# mark scanned the repositories in 4.8, 3.4, 3.0, 2.6, 2.6 and 2.6 s; a first one
# (which reads the manifests too) took 5.73 to 5.80 s in all with 4, 5.46 to 5.54
# with 6 and 5.51 to 5.55 with 8.
PACED_THREADS = 6
# Repositories scanned between two progress reports, in one process.
_PROGRESS_REPOSITORIES = 250
# Repositories per chunk of shared work: small enough to balance, large enough
# that a claim (one pipe read) and the writing of its result cost little.
_SPLIT_REPOSITORIES_CHUNK = 16
# What a forked child sends back for one manifest (see _pack_outcome).
_Packed = tuple[Any, ...] | str


# --- the marker --------------------------------------------------------------------


@dataclass(slots=True)
class _Repository:
    name: str
    markers: frozenset[str]
    valid: bool
    # Revision hex -> True when it must be kept whatever the tags say.
    revisions: dict[str, bool] = field(default_factory=dict)
    tagged: set[str] = field(default_factory=set)
    extra_roots: list[str] = field(default_factory=list)
    uncertain: bool = False  # something unreadable: keep every revision
    layers: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    tags: int = 0


class _Missing:
    """Sentinel: the blob does not exist."""


class _Unparseable:
    """Sentinel: the manifest blob exists but cannot be read or parsed."""


class _Gone:
    """Sentinel: the link file does not exist."""


MISSING = _Missing()
UNPARSEABLE = _Unparseable()
_GONE = _Gone()
_Loaded = ManifestRefs | _Missing | _Unparseable


# What a forked child sends back (gc/split.py): plain tuples of hex strings, which
# pickle compactly; the parent turns them back into its own shared strings and
# Digests (through its interner), as if it had done the work itself.


def _pack_repository(repo: _Repository) -> tuple[Any, ...]:
    """What the child found in `repo`, taken out of it: the child keeps nothing
    of a chunk once it is written."""
    packed = (
        repo.revisions,
        repo.tagged,
        repo.extra_roots,
        repo.uncertain,
        repo.layers,
        repo.uploads,
        repo.tags,
    )
    repo.revisions, repo.tagged, repo.extra_roots, repo.layers, repo.uploads = {}, set(), [], [], []
    return packed


def _unpack_repository(
    repo: _Repository, fields: tuple[Any, ...], canon: Callable[[str], str]
) -> None:
    revisions, tagged, extra_roots, repo.uncertain, layers, repo.uploads, repo.tags = fields
    repo.revisions = {canon(h): keep for h, keep in revisions.items()}
    repo.tagged = set(map(canon, tagged))
    repo.extra_roots = list(map(canon, extra_roots))
    repo.layers = list(map(canon, layers))


def _pack_outcome(outcome: _Loaded) -> _Packed:
    if isinstance(outcome, _Missing):
        return "missing"
    if isinstance(outcome, _Unparseable):
        return "unparseable"
    media_type, kind, blobs, children, subject, unknown = outcome
    return (
        media_type,
        kind,
        tuple(map(_hex_attr, blobs)),
        tuple(map(_hex_attr, children)),
        None if subject is None else subject.hex,
        unknown,
    )


def _unpack_outcome(packed: _Packed, digest: Callable[[str], Digest]) -> _Loaded:
    if packed == "missing":
        return MISSING
    if packed == "unparseable":
        return UNPARSEABLE
    media_type, kind, blobs, children, subject, unknown = packed
    return ManifestRefs(
        sys.intern(media_type),
        sys.intern(kind),
        tuple(map(digest, blobs)),
        tuple(map(digest, children)),
        None if subject is None else digest(subject),
        unknown,
    )


class _Marker:
    def __init__(
        self,
        driver: StorageDriver,
        delete_untagged: bool,
        cache: ReferenceCache | None,
        progress: Progress | None,
        workers: int,
    ) -> None:
        self.driver = driver
        self.delete_untagged = delete_untagged
        self.cache = cache
        self.progress = progress
        self.workers = max(1, workers)
        self.pool: ThreadPoolExecutor | None = None  # workers > 1: threads from the start
        self.pace = Pace(PACED_THREADS, what="mark reads")  # else: threads once reads wait
        self.errors: list[ScanError] = []
        self.blocked = False
        self.stats = MarkStats()
        self.interner = _Interner()
        self.digest = self.interner.digest
        self.blob_hexes: list[str] = []  # sorted, once listed
        self.loaded: dict[str, _Loaded] = {}
        self.not_manifests: set[str] = set()  # blobs is_manifest read and found none
        self.owner: dict[str, str] = {}  # a repository holding each manifest, for reports
        self.prefetched: dict[str, ManifestRefs] | None = None  # see prefetch
        self.parsed: set[str] = set()  # manifests parse_revisions read in this process
        self.parsing = threading.Lock()  # guards `parsed`
        self.fresh: list[str] = []  # manifests parsed, not yet offered to the cache

    # --- errors & plumbing -------------------------------------------------------

    def error(
        self,
        kind: str,
        path: str,
        repository: str | None,
        message: str,
        *,
        blocking: bool,
        warning: bool = False,
    ) -> None:
        self.errors.append(ScanError(kind, path, repository, message, blocking, warning))
        if blocking:
            self.blocked = True
        log.warning(
            "mark: %s",
            message,
            extra={"kind": kind, "path": path, "repository": repository, "blocking": blocking},
        )

    def report(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def list_dirs(
        self, path: str, repository: str | None, *, blocking: bool = True, typed: bool = True
    ) -> list[str] | None:
        """Names of the sub-folders of `path`: [] if it is gone, None (reported)
        if it cannot be read.

        `typed=False` takes every child's name, files too, from a cheaper untyped
        listing: for folders the layout fills with folders only (blob prefixes,
        revisions, tags, layer links), where a stray file named like a folder is
        then met as missing when the mark reads below it (ENOTDIR)."""
        try:
            if not typed:
                return self.driver.list_names(path)
            return [name for name, is_dir in self.driver.list_entries(path) if is_dir]
        except PathNotFound:
            return []  # never there, or removed while we look (a concurrent delete)
        except Exception as exc:  # any failure is an entry in the report, never fatal
            kind = UNREADABLE if blocking else BLOB_LISTING
            self.error(kind, path, repository, f"cannot list {path}: {exc}", blocking=blocking)
            return None

    def repo_dirs(self, path: str, repo: _Repository, *, typed: bool = True) -> list[str]:
        """list_dirs inside a repository: what cannot be listed there (reported,
        blocking) also makes the repository keep every revision."""
        folders = self.list_dirs(path, repo.name, typed=typed)
        if folders is None:
            repo.uncertain = True
            return []
        return folders

    def pool_map(self, fn: Callable[[_T], _R], items: list[_T], chunk: int = 1) -> Iterator[_R]:
        """map(fn, items): on the thread pool if there is one, `chunk` items per
        task (a task costs tens of microseconds of its own); else paced."""
        if self.pool is None:
            return iter(self.pace.map(fn, items))
        if len(items) < 2:
            return map(fn, items)

        def run_chunk(part: list[_T]) -> list[_R]:
            return [fn(item) for item in part]

        parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        return (result for part in self.pool.map(run_chunk, parts) for result in part)

    def timed(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.stats.seconds[phase] = round(now - since, 4)
        return now

    # --- the phases ------------------------------------------------------------

    def run(self) -> MarkResult:
        if self.workers == 1:
            with self.pace:
                return self.mark()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mark") as pool:
            self.pool = pool
            try:
                return self.mark()
            finally:
                self.pool = None

    def mark(self) -> MarkResult:
        started_at = datetime.now(UTC)
        t = time.perf_counter()
        repos = self.find_repositories()
        t = self.timed("repositories", t)
        self.scan_repositories(repos)  # and the blob listing (self.blob_hexes)
        t = self.timed("links", t)
        self.load_refs(self.wanted_manifests(repos))
        t = self.timed("manifests", t)
        entries, to_delete, kept = self.keep(repos)
        marked = _expand(kept, self.refs_for, self.is_manifest, set())
        unreferenced = [self.digest(h) for h in self.blob_hexes if h not in marked]
        self.timed("closure", t)
        return self.result(started_at, repos, entries, to_delete, marked, unreferenced)

    def list_blobs_timed(self) -> None:
        t = time.perf_counter()
        self.blob_hexes = self.list_blobs()
        self.timed("blobs", t)

    def list_blobs(self) -> list[str]:
        """Every blob folder `blobs/<alg>/<xx>/<hex>`, by name alone, sorted; each
        entered in the interner (before any thread, or this process's scan, needs
        it: its strings are then the ones every holder shares)."""
        hexes: list[str] = []
        interner = self.interner
        for algorithm in sorted(self.list_dirs(paths.BLOBS, None, blocking=False) or []):
            base = paths.blob_algorithm_dir(algorithm)
            length = ALGORITHMS.get(algorithm)
            if length is None:
                self.invalid(base, None, f"blob folder of unsupported algorithm {algorithm!r}")
                continue
            prefixes = sorted(self.list_dirs(base, None, blocking=False, typed=False) or [])
            for i, prefix in enumerate(prefixes):
                folder = f"{base}/{prefix}"
                if not is_lower_hex(prefix, 2):
                    self.invalid(folder, None, f"blob prefix folder {prefix!r}")
                    continue
                # A stray file named like a blob folder becomes a candidate whose
                # data is missing: the sweep finds it vanished and leaves it.
                names = self.list_dirs(folder, None, blocking=False, typed=False) or []
                if not _all_hex(names, length, prefix):
                    names = self.valid_names(names, length, folder, None, "blob", prefix)
                interner.update(zip(names, map(make_digest, repeat(algorithm), names), strict=True))
                hexes.extend(names)
                if i % 32 == 31:
                    self.report("blobs", len(hexes), None)
        self.report("blobs", len(hexes), len(hexes))
        hexes.sort()  # for is_listed
        return hexes

    def valid_names(
        self,
        names: list[str],
        length: int,
        folder: str,
        repository: str | None,
        what: str,
        prefix: str = "",
    ) -> list[str]:
        """The names that are hex digests (starting with `prefix`); the others reported."""
        valid = []
        for name in names:
            if is_lower_hex(name, length) and name.startswith(prefix):
                valid.append(name)
            else:
                self.invalid(f"{folder}/{name}", repository, f"{what} folder {name!r}")
        return valid

    def invalid(self, path: str, repository: str | None, what: str, blocking: bool = False) -> None:
        consequence = "what it keeps is unknown" if blocking else "ignored, never deleted"
        self.error(
            INVALID_NAME,
            path,
            repository,
            f"{what} is not a name the layout allows there: {consequence}",
            blocking=blocking,
        )

    def find_repositories(self) -> list[_Repository]:
        """Every folder under repositories/ that holds a marker folder, sorted."""
        found: list[_Repository] = []
        level: list[str] = [""]  # a level at a time: its listings may be read in parallel
        while level:
            listings = self.pool_map(self.list_repository_folder, level)
            names, level = level, []
            for name, folders in zip(names, listings, strict=True):
                if folders is not None:  # (None: reported, blocking: repositories may hide below)
                    repository, below = self.found_in(name, folders)
                    if repository is not None:
                        found.append(repository)
                    level += below
        found.sort(key=lambda r: r.name)
        self.stats.repositories = len(found)
        return found

    @staticmethod
    def repositories_path(name: str) -> str:
        return f"{paths.REPOSITORIES}/{name}" if name else paths.REPOSITORIES

    def list_repository_folder(self, name: str) -> list[str] | None:
        return self.list_dirs(self.repositories_path(name), name or None)

    def found_in(self, name: str, folders: list[str]) -> tuple[_Repository | None, list[str]]:
        """The repository that folder `name` (holding `folders`) is, if it is one; and
        its sub-folders to look into."""
        path = self.repositories_path(name)
        markers = frozenset(f for f in folders if f in paths.REPOSITORY_MARKERS)
        repository = None
        if markers and not name:
            self.error(
                INVALID_REPOSITORY_NAME,
                path,
                None,
                "repository folders directly in repositories/ (no name) cannot be read",
                blocking=True,
            )
        elif markers:
            repository = self.repository(name, path, markers)
        return repository, [f"{name}/{f}" if name else f for f in folders if f not in markers]

    def repository(self, name: str, path: str, markers: frozenset[str]) -> _Repository:
        valid = is_valid_repository_name(name)
        if not valid:
            self.error(
                INVALID_REPOSITORY_NAME,
                path,
                name,
                f"repository folder {name!r} breaks the repository-name grammar: "
                "all of its manifests are kept and nothing in it is offered for deletion",
                blocking=False,
            )
        return _Repository(name, markers, valid)

    def scan_repositories(self, repos: list[_Repository]) -> None:
        """The blob listing, and scan_repository of each repository.

        In one process, the listing comes first: a blob written after it is simply
        not a candidate, and it stands for the manifests' existence check. Shared
        with a forked child (if that pays), the child starts on the repositories
        at once, while this process lists the blobs and reads the whole reference
        cache (for load_refs), then joins in. The fork then finds this process
        small, and the child copies less of it. The overlap does not weaken
        safety: in either order, a push during the mark can leave a blob listed
        whose manifest the mark did not read. What saves that blob is the sweep:
        its grace window, and the re-check of everything linked since the mark
        began, before any delete (DESIGN.md)."""
        self.pace.close()  # a fork needs a process of one thread (its verdict stays)
        shared = self.pool is None and split.worth_it(
            self.driver.name, len(repos), _SPLIT_MIN_REPOSITORIES
        )
        if not shared:
            self.list_blobs_timed()
            for start in range(0, len(repos), _PROGRESS_REPOSITORIES):
                part = repos[start : start + _PROGRESS_REPOSITORIES]
                for _ in self.pool_map(self.scan_repository, part):
                    pass
                self.report("repositories", start + len(part), len(repos))
            return
        scanned = 0
        # With no cached references (a first mark), the manifests are parsed here
        # too, each by the process that found its revision, rather than after.
        parse = self.cache_is_cold()

        def scan_one(repo: _Repository) -> list[tuple[str, _Loaded]]:
            """scan_repository, and the manifests parsed along (see `parse`)."""
            self.scan_repository(repo)
            return self.parse_revisions(repo) if parse else []

        def scan_mine(start: int, stop: int) -> None:
            nonlocal scanned
            for found in self.pace.map(scan_one, repos[start:stop]):
                for h, outcome in found:
                    self.loaded[h] = outcome
                    self.fresh.append(h)
            scanned += stop - start
            self.report("repositories", scanned, len(repos))

        def scan_theirs(start: int, stop: int) -> tuple[Any, ...]:
            with self.apart() as errors:
                packed, parsed = [], []
                part = repos[start:stop]
                for repo, found in zip(part, self.pace.map(scan_one, part), strict=True):
                    parsed += [(h, _pack_outcome(o)) for h, o in found]
                    packed.append(_pack_repository(repo))
            return packed, parsed, errors

        canon, digest = self.interner.canon, self.digest

        def deliver(start: int, result: tuple[Any, ...]) -> None:
            packed, parsed, errors = result
            for repo, fields in zip(repos[start : start + size], packed, strict=True):
                _unpack_repository(repo, fields, canon)
            for h, outcome in parsed:
                h = canon(h)
                if h not in self.loaded:  # (both processes may parse one manifest)
                    self.loaded[h] = _unpack_outcome(outcome, digest)
                    self.fresh.append(h)
            self.adopt(errors)

        def first() -> None:
            self.list_blobs_timed()
            self.prefetch()

        size = split.chunk_size(len(repos), _SPLIT_REPOSITORIES_CHUNK)
        split.share(len(repos), size, scan_mine, scan_theirs, deliver, first=first)
        self.report("repositories", len(repos), len(repos))

    def cache_is_cold(self) -> bool:
        """Whether the reference cache is absent or empty (a cache that cannot say
        counts as warm: the manifests are then parsed after the scan, as always)."""
        if self.cache is None:
            return True
        count = getattr(self.cache, "count", None)
        try:
            return count is not None and count() == 0
        except Exception:  # a failing cache shows again, and is reported, in load_refs
            return False

    def parse_revisions(self, repo: _Repository) -> list[tuple[str, _Loaded]]:
        """read_manifest of each revision of `repo` not parsed yet in this process."""
        parsed = []
        for h in repo.revisions:
            if h not in self.loaded and self.claim(h):
                parsed.append((h, self.read_manifest(h, repo.name)))
        return parsed

    def claim(self, h: str) -> bool:
        """Whether this thread is the first here to parse manifest `h` (paced threads
        share repositories' manifests too: each is parsed, and reported, once)."""
        with self.parsing:
            if h in self.parsed:
                return False
            self.parsed.add(h)
            return True

    def prefetch(self) -> None:
        """Read every entry of the reference cache now (while a forked child scans
        repositories), for load_refs: a repeated mark wants nearly all of them."""
        get_all = getattr(self.cache, "get_all", None)
        if get_all is None:
            return
        try:
            entries = get_all(intern=self.interner)
        except Exception as exc:  # a cache failure costs time, not safety
            self.error(REFERENCE_CACHE, "", None, f"reference cache: {exc}", blocking=False)
            return
        self.prefetched = {d.hex: refs for d, refs in entries.items()}

    def adopt(self, errors: list[ScanError]) -> None:
        """Errors a forked child reported (see apart), but those this process
        reported too. Both may parse one manifest shared by their repositories, each
        naming its own repository: what the error is about (its kind, its path and
        message) says whether it is the same, and a one-process mark reports it once."""
        if not errors:
            return
        known = {_about(e) for e in self.errors}
        for e in errors:
            if _about(e) not in known:
                known.add(_about(e))
                self.errors.append(e)
        self.blocked |= any(e.blocking for e in errors)

    @contextlib.contextmanager
    def apart(self) -> Iterator[list[ScanError]]:
        """For work done in a forked child: no progress (the parent reports), and
        the errors reported inside collected apart (into the list yielded, on
        exit), for the parent to adopt."""
        apart: list[ScanError] = []
        first = len(self.errors)
        self.progress = None
        try:
            yield apart
        finally:
            apart += self.errors[first:]

    def scan_repository(self, repo: _Repository) -> _Repository:
        """Revisions, tags, layer links and uploads of one repository."""
        if paths.MANIFESTS_DIR in repo.markers:
            self.scan_revisions(repo)
            self.scan_tags(repo)
        if paths.LAYERS_DIR in repo.markers:
            self.scan_layers(repo)
        if paths.UPLOADS_DIR in repo.markers:
            uploads = self.list_dirs(paths.uploads_dir(repo.name), repo.name, blocking=False)
            if repo.valid:
                repo.uploads = uploads or []
        return repo

    def scan_revisions(self, repo: _Repository) -> None:
        name = repo.name
        for algorithm in self.repo_dirs(paths.manifest_revisions_dir(name), repo):
            folder = paths.manifest_revisions_dir(name, algorithm)
            length = ALGORITHMS.get(algorithm)
            if length is None:
                self.invalid(folder, name, f"revisions of algorithm {algorithm!r}", True)
                continue
            for hex_ in self.repo_dirs(folder, repo, typed=False):
                if not is_lower_hex(hex_, length):
                    self.invalid(f"{folder}/{hex_}", name, f"revision folder {hex_!r}", True)
                    continue
                self.read_revision(repo, self.interner.canon(hex_))

    def read_revision(self, repo: _Repository, hex_: str) -> None:
        path = paths.manifest_revision_link(repo.name, self.digest(hex_))
        target = self.read_link(path, repo)
        if target is _GONE:
            return  # a deleted manifest leaves its folder without link
        if target is None:
            repo.revisions[hex_] = True  # corrupt: keep what an intact link would
        elif target != hex_:
            self.error(
                LINK_MISMATCH,
                path,
                repo.name,
                f"revision link in folder {hex_} holds {self.digest(target)}: both are kept",
                blocking=False,
            )
            repo.revisions[hex_] = True
            repo.extra_roots.append(target)
        else:
            repo.revisions[hex_] = False

    def scan_tags(self, repo: _Repository) -> None:
        name = repo.name
        for tag in self.repo_dirs(paths.tags_dir(name), repo, typed=False):
            target = self.read_link(paths.tag_current_link(name, tag), repo)
            if target is _GONE:
                continue  # no current/link: the tag is not there (Go skips it too)
            repo.tags += 1
            if target is None:
                repo.uncertain = True  # which manifest it tags is unknown
            else:
                repo.tagged.add(self.interner.canon(target))  # type: ignore[arg-type]

    def read_link(self, path: str, repo: _Repository) -> str | _Gone | None:
        """The hex of the digest a link holds; _GONE if there is no link; None
        if it is corrupt or unreadable (reported)."""
        try:
            content = self.driver.get_content(path, MAX_LINK_SIZE + 1)
            if not content:
                # The Go filesystem driver rewrites a link in place (truncate, then
                # write): a tag being moved reads empty for an instant. Once more.
                time.sleep(_EMPTY_LINK_RETRY_SECONDS)
                content = self.driver.get_content(path, MAX_LINK_SIZE + 1)
        except PathNotFound:
            return _GONE
        except Exception as exc:
            self.error(UNREADABLE, path, repo.name, f"cannot read {path}: {exc}", blocking=True)
            repo.uncertain = True
            return None
        # Fast paths for a well-formed link (most name a digest already seen: the
        # revision folder it sits in, a tagged revision); parse_link judges the rest.
        algorithm, _, hex_ = content.decode("latin-1").partition(":")
        known = self.interner.get(hex_)
        if known is not None and known.algorithm == algorithm:
            return known.hex
        length = ALGORITHMS.get(algorithm)
        if length is not None and is_lower_hex(hex_, length):
            return hex_
        try:
            d = parse_link(path, content)
        except InvalidLink as exc:
            self.error(CORRUPT_LINK, path, repo.name, str(exc), blocking=False)
            return None
        # parse_link accepts surrounding whitespace (a newline), which Go's reader
        # refuses: keep what it names, and say so.
        self.error(
            NONCANONICAL_LINK,
            path,
            repo.name,
            f"link holds {content[:80]!r}, not the bare digest: read as {d}",
            blocking=False,
        )
        return self.interner.setdefault(d.hex, d).hex

    def scan_layers(self, repo: _Repository) -> None:
        name = repo.name
        for algorithm in self.repo_dirs(paths.layers_dir(name), repo):
            folder = paths.layers_dir(name, algorithm)
            length = ALGORITHMS.get(algorithm)
            if length is None:
                self.invalid(folder, name, f"layer links of algorithm {algorithm!r}")
                continue
            names = self.repo_dirs(folder, repo, typed=False)
            if not _all_hex(names, length):
                names = self.valid_names(names, length, folder, name, "layer link")
            repo.layers.extend(map(self.interner.canon, names))

    # --- manifests -------------------------------------------------------------

    def wanted_manifests(self, repos: list[_Repository]) -> list[str]:
        owner = self.owner
        for repo in repos:
            for group in (repo.revisions, repo.tagged, repo.extra_roots):
                for hex_ in group:
                    owner.setdefault(hex_, repo.name)
        return list(owner)

    def load_refs(self, hexes: list[str]) -> None:
        """Fill self.loaded for `hexes`: from the cache, else read and parse. What
        was parsed since the last call (here, or along the scan) goes to the cache."""
        loaded = self.loaded
        todo = [h for h in hexes if h not in loaded]
        if todo:
            if self.prefetched is not None:
                prefetched, self.prefetched = self.prefetched, None
                cached = {h: r for h in todo if (r := prefetched.get(h)) is not None}
            else:
                got = self.cache_get([self.digest(h) for h in todo])
                cached = {d.hex: refs for d, refs in got.items()}
            if cached:
                for h, refs in cached.items():
                    # The listing stands for an existence check; a blob not listed
                    # (written since, or read through an overlay) is checked directly.
                    if self.is_listed(h) or self.blob_exists(self.digest(h)):
                        loaded[h] = refs
                self.stats.manifests_cached += len(cached)
                todo = [h for h in todo if h not in loaded]
            self.read_manifests(todo)
            self.fresh += todo
        fresh, self.fresh = self.fresh, []
        parsed = {h: r for h in fresh if isinstance(r := loaded[h], ManifestRefs)}
        self.stats.manifests_parsed += len(parsed)
        if parsed and self.cache is not None:
            self.cache_put({self.digest(h): r for h, r in parsed.items()})

    def read_manifests(self, hexes: list[str]) -> None:
        """read_manifest of each into self.loaded, a batch at a time."""
        loaded = self.loaded
        for start in range(0, len(hexes), _BATCH):
            batch = hexes[start : start + _BATCH]
            outcomes = self.pool_map(self.read_manifest, batch, chunk=16)
            for h, outcome in zip(batch, outcomes, strict=True):
                loaded[h] = outcome
            self.report("manifests", min(start + _BATCH, len(hexes)), len(hexes))

    def read_manifest(self, hex_: str, repository: str | None = None) -> _Loaded:
        d = self.digest(hex_)
        path = paths.blob_data(d)
        repository = repository or self.owner.get(hex_)
        try:
            content = self.read_bounded(path)
        except PathNotFound:
            return MISSING
        except Exception as exc:
            self.error(
                UNREADABLE, path, repository, f"cannot read manifest {d}: {exc}", blocking=True
            )
            return UNPARSEABLE
        try:
            return self.parse(d, content)
        except InvalidManifest as exc:
            self.error(
                UNPARSEABLE_MANIFEST,
                path,
                repository,
                f"manifest {d} cannot be parsed, blob deletion is blocked: {exc}",
                blocking=True,
            )
            return UNPARSEABLE

    def parse(self, d: Digest, content: bytes) -> ManifestRefs:
        """What manifest blob `d` references; InvalidManifest if its content is not
        that digest's or cannot be parsed."""
        # An oversize manifest is read only to the limit, so its digest cannot
        # match: the parser refuses it for its size instead.
        too_large = len(content) > manifests.MAX_MANIFEST_SIZE
        if not too_large and _HASHES[d.algorithm](content).hexdigest() != d.hex:
            raise InvalidManifest("its content does not match its digest (corrupt blob)")
        return manifests.references(content, intern=self.interner)

    def read_bounded(self, path: str) -> bytes:
        """A manifest's bytes, at most one more than the largest one we parse: a
        hostile link can name a multi-GB layer as a manifest."""
        return self.driver.get_content(path, manifests.MAX_MANIFEST_SIZE + 1)

    def refs_for(self, hex_: str) -> ManifestRefs | None:
        """References of a manifest the closure reached (loaded on demand)."""
        outcome = self.loaded.get(hex_)
        if outcome is None:
            self.load_refs([hex_])
            outcome = self.loaded[hex_]
        return outcome if isinstance(outcome, ManifestRefs) else None

    def is_manifest(self, hex_: str) -> bool:
        """Whether a blob a manifest of unknown type references is a manifest, whose
        references are then followed too: one already read, or a blob that parses as
        one (an index's child whose revision link was deleted, say). A blob that does
        not is an ordinary one, not an error: such references are as likely layers."""
        if hex_ in self.loaded:
            return True
        if hex_ in self.not_manifests or not self.is_listed(hex_):
            return False
        self.not_manifests.add(hex_)  # until it parses: each blob is read once
        d = self.digest(hex_)
        path = paths.blob_data(d)
        try:
            # A manifest is a JSON object: a layer is told apart by its first bytes.
            head = self.driver.get_content(path, _SNIFF_BYTES).lstrip()
            if head and not head.startswith(b"{"):
                return False
            refs = self.parse(d, self.read_bounded(path))
        except (PathNotFound, InvalidManifest):  # corrupt too: read as a blob, kept as one
            return False
        except Exception as exc:  # unreadable: what it references cannot be known
            self.error(UNREADABLE, path, None, f"cannot read {d}: {exc}", blocking=True)
            return False
        self.not_manifests.discard(hex_)
        self.loaded[hex_] = refs
        return True

    def is_listed(self, hex_: str) -> bool:
        hexes = self.blob_hexes
        i = bisect.bisect_left(hexes, hex_)
        return i < len(hexes) and hexes[i] == hex_

    def blob_exists(self, d: Digest) -> bool:
        try:
            self.driver.stat(paths.blob_data(d))
        except Exception:  # missing, or unsure: then it is read, and judged there
            return False
        return True

    def cache_get(self, digests: list[Digest]) -> dict[Digest, ManifestRefs]:
        if self.cache is None:
            return {}
        try:
            return self.cache.get_many(digests, intern=self.interner)
        except Exception as exc:  # a cache failure costs time, not safety
            self.error(REFERENCE_CACHE, "", None, f"reference cache: {exc}", blocking=False)
            return {}

    def cache_put(self, parsed: dict[Digest, ManifestRefs]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put_many(parsed)
        except Exception as exc:
            self.error(REFERENCE_CACHE, "", None, f"reference cache: {exc}", blocking=False)

    # --- keeping -----------------------------------------------------------------

    def keep(
        self, repos: list[_Repository]
    ) -> tuple[list[ManifestEntry], list[tuple[str, Digest]], list[str]]:
        """Per repository: which manifests are kept; and every kept digest."""
        entries: list[ManifestEntry] = []
        to_delete: list[tuple[str, Digest]] = []
        kept_all: set[str] = set()
        reported: set[str] = set()
        loaded = self.loaded
        for repo in repos:
            self.report_manifest_errors(repo, reported)
            kept = self.kept_in(repo)
            kept_all |= kept
            for h in repo.revisions:
                d = self.digest(h)
                is_kept = h in kept
                entries.append(ManifestEntry(repo.name, d, h in repo.tagged, is_kept))
                if self.delete_untagged and not is_kept and not isinstance(loaded[h], _Missing):
                    to_delete.append((repo.name, d))
        self.stats.revisions = len(entries)
        self.stats.manifests_kept = sum(1 for e in entries if e.kept)
        return entries, to_delete, list(kept_all)

    def kept_in(self, repo: _Repository) -> set[str]:
        loaded = self.loaded

        def present(h: str) -> bool:
            return not isinstance(loaded.get(h, MISSING), _Missing)

        revisions = [h for h in repo.revisions if present(h)]
        extra = [h for h in repo.extra_roots if present(h)]
        for h in repo.tagged:
            if h not in repo.revisions and present(h):
                self.error(
                    TAG_WITHOUT_REVISION,
                    paths.tags_dir(repo.name),
                    repo.name,
                    f"a tag points at {self.digest(h)}, which has no revision link: kept",
                    blocking=False,
                    # What a manifest DELETE leaves for an instant (the registry
                    # removes the revision link before the tags): not a failure.
                    warning=True,
                )
                extra.append(h)
            elif h not in repo.revisions:
                self.error(
                    TAG_WITHOUT_MANIFEST,
                    paths.tags_dir(repo.name),
                    repo.name,
                    f"a tag points at {self.digest(h)}, which is neither a revision nor a "
                    "stored manifest: it tags nothing",
                    blocking=False,
                )
        uncertain = repo.uncertain or any(isinstance(loaded[h], _Unparseable) for h in revisions)
        if not self.delete_untagged or uncertain or not repo.valid:
            return set(revisions).union(extra)
        roots = [h for h in revisions if repo.revisions[h] or h in repo.tagged] + extra
        referrers: dict[str, list[str]] = {}
        for h in revisions:
            refs = loaded[h]
            if isinstance(refs, ManifestRefs) and refs.subject is not None:
                referrers.setdefault(refs.subject.hex, []).append(h)
        kept = set(roots)
        work = list(roots)
        while work:
            h = work.pop()
            refs = self.refs_for(h)
            reached = [d.hex for d in refs.referenced()] if refs is not None else []
            reached += referrers.get(h, ())
            for r in reached:
                if r not in kept and r in repo.revisions and present(r):
                    kept.add(r)
                    work.append(r)
        return kept

    def report_manifest_errors(self, repo: _Repository, reported: set[str]) -> None:
        for h in repo.revisions:
            outcome = self.loaded[h]
            if isinstance(outcome, _Missing):
                d = self.digest(h)
                self.error(
                    MISSING_MANIFEST_BLOB,
                    paths.manifest_revision_link(repo.name, d),
                    repo.name,
                    f"revision {d} of {repo.name} has no manifest blob: not a root",
                    blocking=False,
                )
            elif isinstance(outcome, ManifestRefs) and h not in reported:
                reported.add(h)
                self.report_manifest_oddities(repo, h, outcome)

    def report_manifest_oddities(self, repo: _Repository, h: str, outcome: ManifestRefs) -> None:
        d = self.digest(h)
        if outcome.kind == "unknown":
            self.error(
                UNKNOWN_MEDIA_TYPE,
                paths.blob_data(d),
                repo.name,
                f"manifest {d} is of unknown media type {outcome.media_type!r}: every "
                "digest found in it is kept",
                blocking=False,
            )
        if outcome.unknown_algorithms:
            self.error(
                UNKNOWN_ALGORITHM,
                paths.blob_data(d),
                repo.name,
                f"manifest {d} references digests of unsupported algorithms, whose "
                f"blobs are never deleted: {', '.join(outcome.unknown_algorithms[:5])}",
                blocking=False,
            )

    # --- the result ----------------------------------------------------------------

    def result(
        self,
        started_at: datetime,
        repos: list[_Repository],
        entries: list[ManifestEntry],
        to_delete: list[tuple[str, Digest]],
        marked: set[str],
        unreferenced: list[Digest],
    ) -> MarkResult:
        # Only the links of digests the mark does not keep: the sweep needs no others
        # (90% fewer entries, 4 MiB at 100,000 blobs). Most digests are linked from one
        # repository: a str then, a list beyond.
        layer_links: dict[str, str | list[str]] = {}
        uploads: list[tuple[str, str]] = []
        stats = self.stats
        for repo in repos:
            name = repo.name
            for h in repo.layers:
                if h in marked:
                    continue
                links = layer_links.setdefault(h, name)
                if links is not name:
                    if isinstance(links, str):
                        layer_links[h] = [links, name]
                    else:
                        links.append(name)
            uploads.extend((name, uuid) for uuid in repo.uploads)
            stats.tags += repo.tags
            stats.layer_links += len(repo.layers)
            repo.layers = []
        stats.blobs, stats.marked = len(self.blob_hexes), len(marked)
        stats.unreferenced, stats.uploads = len(unreferenced), len(uploads)
        stats.errors = len(self.errors)
        refs = {h: r for h, r in self.loaded.items() if isinstance(r, ManifestRefs)}
        return MarkResult(
            started_at=started_at,
            repositories=[r.name for r in repos],
            manifests=entries,
            untagged_to_delete=to_delete,
            marked=DigestSet(marked, self.interner),
            all_blobs=DigestList(self.blob_hexes, self.interner),
            unreferenced=unreferenced,
            layer_links=DigestMap(layer_links, self.interner),
            uploads=uploads,
            # Threads report in any order: sorted, a report reads the same each run.
            errors=sorted(self.errors, key=lambda e: (e.path, e.kind, e.message)),
            blob_deletion_blocked=self.blocked,
            stats=stats,
            _refs=refs,
        )


def _expand(
    roots: Iterable[str],
    refs_of: Callable[[str], ManifestRefs | None],
    is_manifest: Callable[[str], bool],
    marked: set[str],
) -> set[str]:
    """Mark `roots` (manifest hexes) and everything they reference, following
    children; a manifest of unknown type may reference manifests anywhere."""
    expanded: set[str] = set()
    stack = list(roots)
    while stack:
        h = stack.pop()
        if h in expanded:
            continue
        expanded.add(h)
        marked.add(h)
        refs = refs_of(h)
        if refs is None:
            continue
        marked.update(map(_hex_attr, refs.blobs))
        if refs.children:
            children = list(map(_hex_attr, refs.children))
            marked.update(children)
            stack.extend(children)
        if refs.kind == "unknown":
            stack.extend(
                b for b in map(_hex_attr, refs.blobs) if b not in expanded and is_manifest(b)
            )
    return marked
