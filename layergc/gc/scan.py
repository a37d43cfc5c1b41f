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
  read (a corrupt tag link, an unparseable manifest) keeps every revision.
- Marked blobs are global: every kept manifest marks itself, its blobs and its
  children by digest, and a child's own references are marked too, whichever
  repository it sits in.
- Blob folders are listed, never stat'ed; a name that is not a valid digest,
  or of an unsupported algorithm, is reported and never offered for deletion.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, TypeVar

from layergc.digest import ALGORITHMS, Digest
from layergc.driver.base import StorageDriver
from layergc.errors import InvalidLink, InvalidManifest, PathNotFound
from layergc.names import is_valid_repository_name
from layergc.storage import manifests, paths
from layergc.storage.links import parse_link
from layergc.storage.manifests import ManifestRefs

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")

Progress = Callable[[str, int, int | None], None]

# Error kinds; those in BLOCKING stop blob deletion for the run.
UNREADABLE = "unreadable"  # a folder or file under repositories/ that could not be read
INVALID_REPOSITORY_NAME = "invalid-repository-name"
INVALID_NAME = "invalid-name"  # a folder name that is not what the layout allows there
CORRUPT_LINK = "corrupt-link"
LINK_MISMATCH = "link-mismatch"
MISSING_MANIFEST_BLOB = "missing-manifest-blob"
UNPARSEABLE_MANIFEST = "unparseable-manifest"
TAG_WITHOUT_REVISION = "tag-without-revision"
UNKNOWN_ALGORITHM = "unknown-algorithm"
BLOB_LISTING = "blob-listing"
REFERENCE_CACHE = "reference-cache"


@dataclass(frozen=True, slots=True)
class ScanError:
    kind: str
    path: str
    repository: str | None
    message: str
    blocking: bool = False  # True when it stopped blob deletion for the run


class ManifestEntry(NamedTuple):
    repository: str
    digest: Digest
    tagged: bool
    kept: bool


class ReferenceCache(Protocol):
    """Remembers what a manifest digest references (immutable, so never stale)."""

    def get_many(self, digests: Iterable[Digest]) -> dict[Digest, ManifestRefs]: ...

    def put_many(self, refs: Mapping[Digest, ManifestRefs]) -> None: ...


class DictReferenceCache:
    """The in-process ReferenceCache: pass one instance to successive marks."""

    def __init__(self) -> None:
        self.entries: dict[Digest, ManifestRefs] = {}

    def get_many(self, digests: Iterable[Digest]) -> dict[Digest, ManifestRefs]:
        entries = self.entries
        return {d: entries[d] for d in digests if d in entries}

    def put_many(self, refs: Mapping[Digest, ManifestRefs]) -> None:
        self.entries.update(refs)


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
    marked: set[Digest]
    all_blobs: list[Digest]
    unreferenced: list[Digest]  # all_blobs that are not marked, in listing order
    layer_links: dict[Digest, list[str]]  # digest -> repositories that link it
    uploads: list[tuple[str, str]]  # (repository, uuid)
    errors: list[ScanError]
    blob_deletion_blocked: bool
    stats: MarkStats
    refs: dict[Digest, ManifestRefs] = field(default_factory=dict, repr=False)

    def closure(self, manifests: Iterable[Digest]) -> set[Digest]:
        """Every digest that keeping `manifests` keeps: themselves, their blobs,
        their children and, recursively, what the children reference."""
        return _expand(manifests, self.refs.get, set())


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

    `workers` > 1 reads repositories and manifests from a thread pool: it pays
    on stores with per-request latency (S3); on a local disk the GIL makes a
    single thread fastest. The default picks by driver.
    """
    if workers is None:
        workers = 1 if driver.name in _LOCAL_DRIVERS else 16
    return _Marker(driver, delete_untagged, reference_cache, progress, workers).run()


_LOCAL_DRIVERS = frozenset({"filesystem", "inmemory"})
# Manifests read per batch: bounds memory (content is dropped once parsed).
_BATCH = 512


# --- per-repository state ------------------------------------------------------


@dataclass(slots=True)
class _Repository:
    name: str
    markers: frozenset[str]
    valid: bool
    # Revision digest -> True when it must be kept whatever the tags say.
    revisions: dict[Digest, bool] = field(default_factory=dict)
    tagged: set[Digest] = field(default_factory=set)
    extra_roots: list[Digest] = field(default_factory=list)
    uncertain: bool = False  # something unreadable: keep every revision
    layers: list[Digest] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    tags: int = 0


class _Missing:
    """Sentinel: the manifest blob does not exist."""


class _Unparseable:
    """Sentinel: the manifest blob exists but cannot be parsed."""


MISSING = _Missing()
UNPARSEABLE = _Unparseable()
_Loaded = ManifestRefs | _Missing | _Unparseable


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
        self.errors: list[ScanError] = []
        self.blocked = False
        self.stats = MarkStats()
        # One Digest object per hex string (the hex length tells the algorithm
        # apart): saves memory and makes set lookups hit on identity.
        self.intern: dict[str, Digest] = {}
        self.loaded: dict[Digest, _Loaded] = {}
        self.all_blobs: list[Digest] = []
        self.listed_blobs: set[Digest] | None = None
        self.owner: dict[Digest, str] = {}  # a repository holding each manifest, for reports

    # --- errors & plumbing -------------------------------------------------------

    def error(
        self, kind: str, path: str, repository: str | None, message: str, *, blocking: bool
    ) -> None:
        self.errors.append(ScanError(kind, path, repository, message, blocking))
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
        self, path: str, repository: str | None, *, blocking: bool = True
    ) -> list[str] | None:
        """Names of the sub-folders of `path`; [] if it is gone; None (reported)
        if it cannot be read."""
        try:
            return [name for name, is_dir in self.driver.list_entries(path) if is_dir]
        except PathNotFound:
            return []  # never there, or removed while we look (a concurrent delete)
        except Exception as exc:  # any failure is reported, never fatal
            kind = UNREADABLE if blocking else BLOB_LISTING
            self.error(kind, path, repository, f"cannot list {path}: {exc}", blocking=blocking)
            return None

    def digest(self, algorithm: str, hex_: str) -> Digest | None:
        """The Digest for a folder name, or None when the name is not one."""
        d = self.intern.get(hex_)
        if d is not None and d.algorithm == algorithm:
            return d
        length = ALGORITHMS.get(algorithm)
        if length is None or len(hex_) != length or hex_.strip("0123456789abcdef"):
            return None
        d = self.intern[hex_] = Digest(algorithm, hex_)
        return d

    def pool_map(self, fn: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
        if self.workers == 1 or len(items) < 2:
            return map(fn, items)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return iter(list(pool.map(fn, items)))

    def timed(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.stats.seconds[phase] = round(now - since, 4)
        return now

    # --- the phases ------------------------------------------------------------

    def run(self) -> MarkResult:
        started_at = datetime.now(UTC)
        t = time.perf_counter()
        all_blobs = self.all_blobs = self.list_blobs()
        t = self.timed("blobs", t)
        repos = self.find_repositories()
        t = self.timed("repositories", t)
        for done, _repo in enumerate(self.pool_map(self.scan_repository, repos), 1):
            if done % 200 == 0:
                self.report("repositories", done, len(repos))
        self.report("repositories", len(repos), len(repos))
        t = self.timed("links", t)
        self.load_refs(self.wanted_manifests(repos))
        t = self.timed("manifests", t)
        entries, to_delete, kept = self.keep(repos)
        marked = _expand(kept, self.refs_for, set())
        unreferenced = [d for d in all_blobs if d not in marked]
        self.timed("closure", t)
        return self.result(started_at, repos, entries, to_delete, marked, all_blobs, unreferenced)

    def list_blobs(self) -> list[Digest]:
        """Every blob folder `blobs/<alg>/<xx>/<hex>`, by name alone."""
        blobs: list[Digest] = []
        algorithms = self.list_dirs(paths.BLOBS, None, blocking=False) or []
        for algorithm in sorted(algorithms):
            base = paths.blob_algorithm_dir(algorithm)
            if algorithm not in ALGORITHMS:
                self.error(
                    INVALID_NAME,
                    base,
                    None,
                    f"blob folder of unsupported algorithm {algorithm!r}: never deleted",
                    blocking=False,
                )
                continue
            prefixes = self.list_dirs(base, None, blocking=False) or []
            for i, prefix in enumerate(sorted(prefixes)):
                folder = f"{base}/{prefix}"
                for name in self.list_dirs(folder, None, blocking=False) or []:
                    d = self.digest(algorithm, name)
                    if d is None or name[:2] != prefix:
                        self.error(
                            INVALID_NAME,
                            f"{folder}/{name}",
                            None,
                            f"blob folder {name!r} is not a {algorithm} digest of prefix "
                            f"{prefix!r}: never deleted",
                            blocking=False,
                        )
                        continue
                    blobs.append(d)
                if i % 32 == 31:
                    self.report("blobs", len(blobs), None)
        self.report("blobs", len(blobs), len(blobs))
        return blobs

    def find_repositories(self) -> list[_Repository]:
        """Every folder under repositories/ that holds a marker folder, sorted."""
        found: list[_Repository] = []
        stack: list[str] = [""]
        while stack:
            name = stack.pop()
            path = f"{paths.REPOSITORIES}/{name}" if name else paths.REPOSITORIES
            folders = self.list_dirs(path, name or None)
            if folders is None:
                continue  # reported, blocking: a repository may hide below
            markers = frozenset(f for f in folders if f in paths.REPOSITORY_MARKERS)
            if markers:
                if not name:
                    self.error(
                        INVALID_REPOSITORY_NAME,
                        path,
                        None,
                        "repository folders directly in repositories/ (no name): not read",
                        blocking=True,
                    )
                else:
                    found.append(self.repository(name, path, markers))
            stack.extend(f"{name}/{f}" if name else f for f in folders if f not in markers)
        found.sort(key=lambda r: r.name)
        self.stats.repositories = len(found)
        return found

    def repository(self, name: str, path: str, markers: frozenset[str]) -> _Repository:
        valid = is_valid_repository_name(name)
        if not valid:
            self.error(
                INVALID_REPOSITORY_NAME,
                path,
                name,
                f"repository folder {name!r} breaks the repository-name grammar: "
                "all of its manifests are kept, nothing in it is deleted",
                blocking=False,
            )
        return _Repository(name, markers, valid)

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
        algorithms = self.list_dirs(paths.manifest_revisions_dir(name), name)
        for algorithm in algorithms or []:
            folder = paths.manifest_revisions_dir(name, algorithm)
            if algorithm not in ALGORITHMS:
                self.error(
                    INVALID_NAME,
                    folder,
                    name,
                    f"manifest revisions of unsupported algorithm {algorithm!r} cannot be read",
                    blocking=True,
                )
                continue
            for hex_ in self.list_dirs(folder, name) or []:
                d = self.digest(algorithm, hex_)
                if d is None:
                    self.error(
                        INVALID_NAME,
                        f"{folder}/{hex_}",
                        name,
                        f"revision folder {hex_!r} is not a {algorithm} digest",
                        blocking=True,
                    )
                    continue
                self.read_revision(repo, d)

    def read_revision(self, repo: _Repository, d: Digest) -> None:
        path = paths.manifest_revision_link(repo.name, d)
        target = self.read_link(path, repo)
        if target is _GONE:
            return  # a deleted manifest leaves its folder without link
        if target is None:
            repo.revisions[d] = True  # corrupt: keep what an intact link would
            return
        assert isinstance(target, Digest)
        if target is not d and target != d:
            self.error(
                LINK_MISMATCH,
                path,
                repo.name,
                f"revision link in folder {d} holds {target}: both are kept",
                blocking=False,
            )
            repo.revisions[d] = True
            repo.extra_roots.append(target)
            return
        repo.revisions[d] = False

    def scan_tags(self, repo: _Repository) -> None:
        name = repo.name
        for tag in self.list_dirs(paths.tags_dir(name), name) or []:
            target = self.read_link(paths.tag_current_link(name, tag), repo)
            if target is _GONE:
                continue  # no current/link: the tag is not there (Go skips it too)
            repo.tags += 1
            if target is None:
                repo.uncertain = True  # we cannot tell which manifest it tags
                continue
            assert isinstance(target, Digest)
            repo.tagged.add(target)

    def read_link(self, path: str, repo: _Repository) -> Digest | _Gone | None:
        """The digest a link holds; _GONE if missing; None if unreadable (reported)."""
        try:
            content = self.driver.get_content(path)
        except PathNotFound:
            return _GONE
        except Exception as exc:
            self.error(UNREADABLE, path, repo.name, f"cannot read {path}: {exc}", blocking=True)
            repo.uncertain = True
            return None
        try:
            d = parse_link(path, content)
        except InvalidLink as exc:
            self.error(CORRUPT_LINK, path, repo.name, str(exc), blocking=False)
            return None
        known = self.intern.get(d.hex)
        if known is not None and known.algorithm == d.algorithm:
            return known
        self.intern[d.hex] = d
        return d

    def scan_layers(self, repo: _Repository) -> None:
        name = repo.name
        for algorithm in self.list_dirs(paths.layers_dir(name), name) or []:
            folder = paths.layers_dir(name, algorithm)
            if algorithm not in ALGORITHMS:
                self.error(
                    INVALID_NAME,
                    folder,
                    name,
                    f"layer links of unsupported algorithm {algorithm!r}: ignored",
                    blocking=False,
                )
                continue
            for hex_ in self.list_dirs(folder, name) or []:
                d = self.digest(algorithm, hex_)
                if d is None:
                    self.error(
                        INVALID_NAME,
                        f"{folder}/{hex_}",
                        name,
                        f"layer link folder {hex_!r} is not a {algorithm} digest: ignored",
                        blocking=False,
                    )
                    continue
                repo.layers.append(d)

    # --- manifests -------------------------------------------------------------

    def wanted_manifests(self, repos: list[_Repository]) -> list[Digest]:
        owner = self.owner
        for repo in repos:
            for group in (repo.revisions, repo.tagged, repo.extra_roots):
                for d in group:
                    owner.setdefault(d, repo.name)
        return list(owner)

    def load_refs(self, digests: list[Digest]) -> None:
        """Fill self.loaded for `digests`: from the cache, else read and parse."""
        todo = [d for d in digests if d not in self.loaded]
        if not todo:
            return
        cached = self.cache_get(todo)
        if cached:
            listed = self.blob_set()
            for d, refs in cached.items():
                # The listing stands for an existence check; a blob not listed
                # (pushed since, or read through an overlay) is checked directly.
                if d in listed or self.blob_exists(d):
                    self.loaded[d] = refs
            self.stats.manifests_cached += len(cached)
        todo = [d for d in todo if d not in self.loaded]
        parsed: dict[Digest, ManifestRefs] = {}
        for start in range(0, len(todo), _BATCH):
            batch = todo[start : start + _BATCH]
            for d, outcome in zip(batch, self.pool_map(self.read_manifest, batch), strict=True):
                self.loaded[d] = outcome
                if isinstance(outcome, ManifestRefs):
                    parsed[d] = outcome
            self.report("manifests", min(start + _BATCH, len(todo)), len(todo))
        self.stats.manifests_parsed += len(parsed)
        if parsed:
            self.cache_put(parsed)

    def read_manifest(self, d: Digest) -> _Loaded:
        path = paths.blob_data(d)
        try:
            content = self.driver.get_content(path)
        except PathNotFound:
            return MISSING
        except Exception as exc:
            self.error(
                UNREADABLE,
                path,
                self.owner.get(d),
                f"cannot read manifest {d}: {exc}",
                blocking=True,
            )
            return UNPARSEABLE
        try:
            if hashlib.new(d.algorithm, content).hexdigest() != d.hex:
                raise InvalidManifest("content does not match its digest (corrupt blob)")
            return manifests.references(content, intern=self.intern)
        except InvalidManifest as exc:
            self.error(
                UNPARSEABLE_MANIFEST,
                path,
                self.owner.get(d),
                f"manifest {d} cannot be parsed, blob deletion is blocked: {exc}",
                blocking=True,
            )
            return UNPARSEABLE

    def refs_for(self, d: Digest) -> ManifestRefs | None:
        """References of a manifest the closure reached (loaded on demand)."""
        outcome = self.loaded.get(d)
        if outcome is None:
            self.load_refs([d])
            outcome = self.loaded[d]
        return outcome if isinstance(outcome, ManifestRefs) else None

    def blob_set(self) -> set[Digest]:
        if self.listed_blobs is None:
            self.listed_blobs = set(self.all_blobs)
        return self.listed_blobs

    def blob_exists(self, d: Digest) -> bool:
        try:
            self.driver.stat(paths.blob_data(d))
        except PathNotFound:
            return False
        except Exception:  # unsure: read it, and report there
            return False
        return True

    def cache_get(self, digests: list[Digest]) -> dict[Digest, ManifestRefs]:
        if self.cache is None:
            return {}
        try:
            return self.cache.get_many(digests)
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
    ) -> tuple[list[ManifestEntry], list[tuple[str, Digest]], list[Digest]]:
        """Per repository: which manifests are kept; globally: the kept digests."""
        entries: list[ManifestEntry] = []
        to_delete: list[tuple[str, Digest]] = []
        kept_all: dict[Digest, None] = {}
        reported: set[Digest] = set()
        for repo in repos:
            self.report_manifest_errors(repo, reported)
            kept = self.kept_in(repo)
            kept_all.update(dict.fromkeys(kept))
            for d in repo.revisions:
                present = isinstance(self.loaded.get(d), ManifestRefs | _Unparseable)
                is_kept = d in kept
                entries.append(ManifestEntry(repo.name, d, d in repo.tagged, is_kept))
                if self.delete_untagged and present and not is_kept:
                    to_delete.append((repo.name, d))
        self.stats.revisions = len(entries)
        self.stats.manifests_kept = sum(1 for e in entries if e.kept)
        return entries, to_delete, list(kept_all)

    def kept_in(self, repo: _Repository) -> set[Digest]:
        loaded = self.loaded

        def present(d: Digest) -> bool:
            return not isinstance(loaded.get(d, MISSING), _Missing)

        revisions = [d for d in repo.revisions if present(d)]
        extra = [d for d in repo.extra_roots if present(d)]
        for d in repo.tagged:
            if d not in repo.revisions and present(d):
                self.error(
                    TAG_WITHOUT_REVISION,
                    paths.manifests_dir(repo.name),
                    repo.name,
                    f"a tag points at {d}, which has no revision link: kept",
                    blocking=False,
                )
                extra.append(d)
        uncertain = repo.uncertain or any(isinstance(loaded[d], _Unparseable) for d in revisions)
        if not self.delete_untagged or uncertain or not repo.valid:
            return set(revisions) | set(extra)
        roots = [d for d in revisions if repo.revisions[d] or d in repo.tagged] + extra
        referrers: dict[Digest, list[Digest]] = {}
        for d in revisions:
            refs = loaded[d]
            if isinstance(refs, ManifestRefs) and refs.subject is not None:
                referrers.setdefault(refs.subject, []).append(d)
        kept = set(roots)
        work = list(roots)
        while work:
            d = work.pop()
            refs = self.refs_for(d)
            reached = list(refs.referenced()) if refs is not None else []
            reached += referrers.get(d, ())
            for r in reached:
                if r not in kept and r in repo.revisions and present(r):
                    kept.add(r)
                    work.append(r)
        return kept

    def report_manifest_errors(self, repo: _Repository, reported: set[Digest]) -> None:
        for d in repo.revisions:
            outcome = self.loaded.get(d)
            if isinstance(outcome, _Missing):
                self.error(
                    MISSING_MANIFEST_BLOB,
                    paths.manifest_revision_link(repo.name, d),
                    repo.name,
                    f"revision {d} of {repo.name} has no manifest blob: not a root",
                    blocking=False,
                )
            elif isinstance(outcome, ManifestRefs) and outcome.unknown_algorithms:
                if d in reported:
                    continue
                reported.add(d)
                self.error(
                    UNKNOWN_ALGORITHM,
                    paths.blob_data(d),
                    repo.name,
                    f"manifest {d} references digests of unsupported algorithms "
                    f"(never deleted): {', '.join(outcome.unknown_algorithms[:5])}",
                    blocking=False,
                )

    # --- the result ----------------------------------------------------------------

    def result(
        self,
        started_at: datetime,
        repos: list[_Repository],
        entries: list[ManifestEntry],
        to_delete: list[tuple[str, Digest]],
        marked: set[Digest],
        all_blobs: list[Digest],
        unreferenced: list[Digest],
    ) -> MarkResult:
        layer_links: dict[Digest, list[str]] = {}
        uploads: list[tuple[str, str]] = []
        for repo in repos:
            for d in repo.layers:
                links = layer_links.get(d)
                if links is None:
                    layer_links[d] = [repo.name]
                else:
                    links.append(repo.name)
            uploads.extend((repo.name, uuid) for uuid in repo.uploads)
            self.stats.tags += repo.tags
            self.stats.layer_links += len(repo.layers)
        stats = self.stats
        stats.blobs, stats.marked = len(all_blobs), len(marked)
        stats.unreferenced, stats.uploads = len(unreferenced), len(uploads)
        stats.errors = len(self.errors)
        refs = {d: r for d, r in self.loaded.items() if isinstance(r, ManifestRefs)}
        return MarkResult(
            started_at=started_at,
            repositories=[r.name for r in repos],
            manifests=entries,
            untagged_to_delete=to_delete,
            marked=marked,
            all_blobs=all_blobs,
            unreferenced=unreferenced,
            layer_links=layer_links,
            uploads=uploads,
            errors=self.errors,
            blob_deletion_blocked=self.blocked,
            stats=stats,
            refs=refs,
        )


class _Gone:
    """Sentinel: the link file does not exist."""


_GONE = _Gone()


def _expand(
    roots: Iterable[Digest], refs_of: Callable[[Digest], ManifestRefs | None], marked: set[Digest]
) -> set[Digest]:
    """Mark `roots` and everything they reference, following children."""
    expanded: set[Digest] = set()
    stack = list(roots)
    add = marked.add
    while stack:
        d = stack.pop()
        if d in expanded:
            continue
        expanded.add(d)
        add(d)
        refs = refs_of(d)
        if refs is None:
            continue
        marked.update(refs.blobs)
        marked.update(refs.children)
        stack.extend(refs.children)
    return marked
