"""The push workload of the online test (tests/test_online.py), and the break probe.

`build_pool` writes one OCI layout (tests/support/images.OCILayout) of small
images that share layers: three base layers shared by everything, eight middle
layers shared by a few images each, one layer and one config unique to each
image, and a few two-platform OCI indexes. Seeded, so the digests are known
before anything is pushed.

`Worker` is one pushing thread. Each worker owns its repositories, so it keeps
an exact model of what each of its tags must point at and which revisions are
live; the image pool is shared by all workers, so blobs are shared across
repositories and workers, and one worker's delete makes garbage of blobs that
another may be pushing again right then. Its operations, picked at random
(seeded):

- push: a pool image to a free tag (a new image sharing layers with others);
- retag: a different image to an existing tag (the old revision stays, untagged);
- delete: `DELETE /v2/<repo>/manifests/<digest>` of a live revision (an index
  with its children), which removes its tags and makes its unique blobs garbage
  (see `Client.delete` for the 404 a sweep can cause);
- abandon: an upload started (POST) and PATCHed, never finished;
- re-push: an image deleted earlier whose blobs a sweep has collected since
  (layergc's index lists them as deleted and they are gone from storage), pushed
  again: the registry must answer "blob unknown" so that skopeo uploads them.

A push that fails (the registry restarting under the in-memory variant's hook,
or a manifest refused because a blob it checked went away meanwhile) is retried
as a client would; every retry is counted. `probe` runs the deterministic
sequence that breaks an image when the registry's blob cache is not cleared.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from layergc.digest import Digest
from layergc.storage import paths
from tests.support import images
from tests.support.files import fs_path
from tests.support.goregistry import GoRegistry, RegistryHTTPError
from tests.support.images import OCILayout, SkopeoError

T = TypeVar("T")

TAGS = tuple(f"t{i}" for i in range(5))  # few tags per repository: retags are frequent
PUSH_ATTEMPTS = 6
HTTP_ATTEMPTS = 8
# How long a manifest DELETE may keep answering 404 while the revision link stays
# (Client.delete): a sweep holds a blob for its settle (twice --settle) and re-check,
# seconds in these tests; longer means the manifest's blob is really lost.
HELD_SECONDS = 30
Collected = Callable[[Iterable[str]], bool]


@dataclass(frozen=True)
class PoolImage:
    """A pushable image of the pool: an image manifest, or an index of two."""

    name: str  # its name in the layout (`oci:<layout>:<name>`)
    digest: str  # the top-level manifest
    children: tuple[str, ...]  # an index's image manifests
    configs: frozenset[str]  # unique to this image: gone from storage means collected
    blobs: frozenset[str]  # configs and layers

    @property
    def multi(self) -> bool:
        return bool(self.children)

    @property
    def manifests(self) -> tuple[str, ...]:
        return (self.digest, *self.children)


def _pool_image(name: str, target: images.Image | images.Index) -> PoolImage:
    if isinstance(target, images.Index):
        return PoolImage(
            name,
            target.index.digest,
            tuple(i.manifest.digest for i in target.images),
            frozenset(i.config.digest for i in target.images),
            target.blobs,
        )
    return PoolImage(
        name, target.manifest.digest, (), frozenset([target.config.digest]), target.blobs
    )


def build_pool(path: Path, n_images: int = 36, n_indexes: int = 4) -> list[PoolImage]:
    lay = OCILayout(path)
    bases = [lay.layer(7000 + i, 48 << 10) for i in range(3)]
    middles = [lay.layer(7100 + i, 16 << 10) for i in range(8)]
    pool: list[PoolImage] = []
    for i in range(n_images):
        layers = [bases[i % 3], lay.layer(7200 + i, 8 << 10)]
        if i % 4:  # three images in four also share a middle layer
            layers.insert(1, middles[(i * 5) % 8])
        image = lay.image(layers, seed=7200 + i)
        lay.tag(f"img-{i}", image)
        pool.append(_pool_image(f"img-{i}", image))
    for j in range(n_indexes):
        platforms = [
            lay.image(
                [bases[j % 3], lay.layer(7300 + 2 * j + k, 6 << 10)],
                seed=7300 + 2 * j + k,
                arch=arch,
            )
            for k, arch in enumerate(("amd64", "arm64"))
        ]
        index = lay.index(platforms)
        lay.tag(f"idx-{j}", index)
        pool.append(_pool_image(f"idx-{j}", index))
    return pool


def build_probe_image(path: Path) -> PoolImage:
    """An image sharing no blob with the pool: deleting it makes all of it garbage."""
    lay = OCILayout(path)
    image = lay.image([lay.layer(7900, 24 << 10), lay.layer(7901, 8 << 10)], seed=7900)
    lay.tag("probe", image)
    return _pool_image("probe", image)


def on_disk(root: Path, digest: str) -> bool:
    """Whether the blob's data is in the blob store (not in layergc's quarantine)."""
    return fs_path(root, paths.blob_data(Digest.parse(digest))).is_file()


@dataclass
class Stats:
    pushes: int = 0  # skopeo pushes that succeeded
    new_tags: int = 0
    retags: int = 0
    repushes: int = 0  # pushes of an image whose blobs a sweep had collected
    deletes: int = 0  # manifest revisions deleted over HTTP (index children included)
    deletes_held: int = 0  # DELETEs answered 404 while the link stayed, sent again (delete)
    uploads_abandoned: int = 0
    push_retries: int = 0
    push_failures: int = 0  # pushes that failed every attempt (the model asked the registry)
    http_retries: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Stats) -> None:
        for name, value in vars(other).items():
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        self.errors.extend(other.errors)


def utc_now() -> str:
    """The time as the registry's and layergc's JSON logs write it (UTC, ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class OpLog:
    """What the clients did and when: one JSON line per skopeo push or manifest
    DELETE (start and end in UTC, thread, operation, repository, image, digests, how
    it ended), to set beside the registry's request log, layergc's log and the
    storage monitor's sightings when a run fails. Without a path it records nothing."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()

    @contextmanager
    def record(self, op: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Times the block; the caller may add fields (an outcome) to the yielded dict."""
        entry = {"start": utc_now(), "who": threading.current_thread().name, "op": op, **fields}
        try:
            yield entry
        except BaseException as exc:
            entry.setdefault("error", f"{type(exc).__name__}: {str(exc)[-300:]}")
            raise
        finally:
            entry["end"] = utc_now()
            if self.path is not None:
                with self._lock, self.path.open("a") as out:
                    out.write(json.dumps(entry, default=str) + "\n")


class Client:
    """skopeo pushes and HTTP calls with a client's retries, counted in `stats`."""

    def __init__(
        self,
        registry: GoRegistry,
        layout: Path,
        *,
        root: Path,
        stats: Stats | None = None,
        oplog: OpLog | None = None,
    ) -> None:
        self.registry = registry
        self.layout = layout
        self.root = root  # the registry's storage root, read to judge a DELETE's 404
        self.stats = stats or Stats()
        self.oplog = oplog or OpLog()

    def http(self, call: Callable[[], T], *, entry: dict[str, Any] | None = None) -> T:
        """`call`, retried on connection errors and 5xx. Failed attempts are listed in
        `entry` (an OpLog record)."""
        failures = entry.setdefault("failures", []) if entry is not None else []
        for attempt in range(HTTP_ATTEMPTS):
            try:
                return call()
            except RegistryHTTPError as exc:
                failures.append(exc.status)
                if exc.status < 500:
                    raise
            except OSError as exc:
                failures.append(type(exc).__name__)
            self.stats.http_retries += 1
            time.sleep(0.25 * (attempt + 1))
        return call()

    def push(self, image: PoolImage, repo: str, tag: str) -> bool:
        """Push `image` to `repo:tag`; True when the tag now names it."""
        last: Exception | None = None
        for attempt in range(PUSH_ATTEMPTS):
            if attempt:
                self.stats.push_retries += 1
                time.sleep(0.3 * attempt)
            with self.oplog.record(
                "push", repo=repo, tag=tag, image=image.name, digests=image.manifests
            ) as entry:
                try:
                    digest = images.push(
                        self.registry, self.layout, image.name, repo, tag, all=image.multi
                    )
                except SkopeoError as exc:
                    entry["error"] = str(exc)[-300:]
                    last = exc
                    continue
            assert digest == image.digest, f"pushed {image.name}, stored {digest}"
            self.stats.pushes += 1
            return True
        self.stats.push_failures += 1
        self.stats.errors.append(f"push {image.name} to {repo}:{tag} failed: {last}")
        return False

    def delete(self, repo: str, image: PoolImage) -> None:
        # The index first: its children stay referenced until it is gone.
        for digest in image.manifests:
            with self.oplog.record("delete", repo=repo, image=image.name, digest=digest) as e:
                self._delete_manifest(repo, digest, e)
            self.stats.deletes += 1

    def _delete_manifest(self, repo: str, digest: str, entry: dict[str, Any]) -> None:
        """DELETE until the revision link is gone; storage, not the answer, says when.

        Go 2.8's manifest DELETE stats the manifest's blob before it removes the
        link (linkedBlobStore.Delete), and when the blob is not found it answers
        404 MANIFEST_UNKNOWN and leaves the link in place. A sweep makes that
        happen: a manifest pushed again between its mark and its step (1) has its
        blob moved into the quarantine (the mark saw no revision naming it) and its
        cache entry cleared, until the re-check puts it back seconds later. Taking
        that 404 for "deleted" left the revision live behind the model's back; for
        an index, whose children were then deleted, a live index with children that
        have no revision (the storage monitor saw one for 3 s, until the next push
        of the index). A 404 with the link gone is a DELETE done (an earlier
        attempt, cut short by a registry restart, did it)."""
        link = fs_path(self.root, paths.manifest_revision_link(repo, Digest.parse(digest)))
        deadline = time.monotonic() + HELD_SECONDS
        while True:
            try:
                self.http(lambda: self.registry.delete_manifest(repo, digest), entry=entry)
                return
            except RegistryHTTPError as exc:
                if exc.status != 404:
                    raise
            if not link.is_file():
                entry["outcome"] = "404, the revision link is gone"
                return
            self.stats.deletes_held += 1
            assert time.monotonic() < deadline, (
                f"DELETE {repo}@{digest}: 404 for {HELD_SECONDS}s while its revision link stays"
            )
            time.sleep(0.25)


@dataclass
class RepoModel:
    name: str
    tags: dict[str, PoolImage] = field(default_factory=dict)
    revisions: dict[str, PoolImage] = field(default_factory=dict)  # live, by top digest


@dataclass(frozen=True)
class Upload:
    repo: str
    uuid: str
    started: float  # time.time() just before the POST


class Worker(Client):
    """One pushing thread over its own repositories; see the module doc."""

    OPERATIONS = ("push", "retag", "delete", "abandon", "repush")
    WEIGHTS = (30, 20, 22, 8, 20)
    MAX_REVISIONS = 8  # per repository: beyond this, delete rather than push

    def __init__(
        self,
        registry: GoRegistry,
        layout: Path,
        pool: list[PoolImage],
        repos: Iterable[str],
        *,
        seed: int,
        root: Path,
        collected: Collected,
        oplog: OpLog | None = None,
    ) -> None:
        super().__init__(registry, layout, root=root, oplog=oplog)
        self.pool = pool
        self.repos = [RepoModel(name) for name in repos]
        self.rng = random.Random(seed)
        self.collected = collected
        self.deleted: list[tuple[str, PoolImage]] = []  # (repo, image), oldest first
        self.uploads: list[Upload] = []
        self.failure: BaseException | None = None

    # --- the loop ------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                (operation,) = self.rng.choices(self.OPERATIONS, self.WEIGHTS)
                getattr(self, f"_{operation}")(self.rng.choice(self.repos))
        except BaseException as exc:  # re-raised by the test after join
            self.failure = exc
            stop.set()

    def _push_to(self, repo: RepoModel, image: PoolImage, tag: str) -> bool:
        """Push and update the model; True when the tag now names `image`."""
        previous = repo.tags.get(tag)
        pushed = self.push(image, repo.name, tag)
        if not pushed:  # every attempt failed: the registry says where the tag stands
            head = self.http(lambda: self.registry.head_manifest(repo.name, tag))
            pushed = head == image.digest
            if head is None:
                repo.tags.pop(tag, None)
            elif not pushed:
                assert previous is not None and head == previous.digest, (repo.name, tag, head)
        if pushed:
            repo.tags[tag] = image
            repo.revisions[image.digest] = image
            if previous is None:
                self.stats.new_tags += 1
            elif previous != image:
                self.stats.retags += 1
        return pushed

    def _push(self, repo: RepoModel) -> None:
        if len(repo.revisions) >= self.MAX_REVISIONS:
            self._delete(repo)
            return
        free = [t for t in TAGS if t not in repo.tags]
        fresh = [i for i in self.pool if i.digest not in repo.revisions]
        if not free:
            self._retag(repo)
            return
        self._push_to(repo, self.rng.choice(fresh), self.rng.choice(free))

    def _retag(self, repo: RepoModel) -> None:
        if not repo.tags:
            self._push(repo)
            return
        tag = self.rng.choice(sorted(repo.tags))
        current = repo.tags[tag]
        self._push_to(repo, self.rng.choice([i for i in self.pool if i != current]), tag)

    def _delete(self, repo: RepoModel) -> None:
        if not repo.revisions:
            self._push(repo)
            return
        image = repo.revisions.pop(self.rng.choice(sorted(repo.revisions)))
        self.delete(repo.name, image)
        for tag in [t for t, i in repo.tags.items() if i == image]:
            del repo.tags[tag]
        self.deleted.append((repo.name, image))

    def _abandon(self, repo: RepoModel) -> None:
        started = time.time()
        upload = self.http(lambda: self.registry.start_upload(repo.name))
        self.uploads.append(Upload(repo.name, upload.uuid, started))
        self.stats.uploads_abandoned += 1
        data = self.rng.randbytes(self.rng.randint(1, 8) << 10)
        try:
            self.registry.patch_upload(upload, data)
        except (OSError, RegistryHTTPError):
            pass  # abandoned with less data: the registry restarted under us

    def _repush(self, repo: RepoModel) -> None:
        for n, (name, image) in enumerate(self.deleted):
            if name != repo.name or image.digest in repo.revisions:
                continue
            if any(on_disk(self.root, d) for d in image.configs):
                continue  # not collected yet (or pushed again by another worker)
            if not self.collected(image.configs):
                continue
            del self.deleted[n]
            free = [t for t in TAGS if t not in repo.tags]
            tag = self.rng.choice(free or sorted(repo.tags))
            if self._push_to(repo, image, tag):
                self.stats.repushes += 1
            return
        self._push(repo)

    # --- what must survive -------------------------------------------------------------

    def expected_tags(self) -> dict[tuple[str, str], PoolImage]:
        return {(r.name, tag): image for r in self.repos for tag, image in r.tags.items()}

    def live_revisions(self) -> set[tuple[str, PoolImage]]:
        return {(r.name, image) for r in self.repos for image in r.revisions.values()}


def run_workers(workers: list[Worker], seconds: float, stop: threading.Event) -> Stats:
    """Run the workers for `seconds` (or until `stop`); re-raise the first failure."""
    threads = [
        threading.Thread(target=w.run, args=(stop,), name=f"pusher-{n}", daemon=True)
        for n, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=180)
        assert not t.is_alive(), f"{t.name} did not stop"
    for w in workers:
        if w.failure is not None:
            raise w.failure
    total = Stats()
    for w in workers:
        total.add(w.stats)
    return total


# --- the break probe ---------------------------------------------------------------------


@dataclass
class ProbeResult:
    collected_after: float  # seconds from the manifest delete to the collection
    stale: list[str]  # blobs collected, still answered 200 by the registry
    missing_after_repush: list[str]  # blobs absent from storage after the re-push
    pulled: bool  # the re-pushed image pulls back and verifies

    def as_dict(self) -> dict[str, Any]:
        return {
            "collected_after_s": round(self.collected_after, 1),
            "stale_heads": len(self.stale),
            "missing_after_repush": len(self.missing_after_repush),
            "pulled": self.pulled,
        }


def probe(
    client: Client,
    image: PoolImage,
    repo: str,
    *,
    root: Path,
    collected: Collected,
    timeout: float = 60,
) -> ProbeResult:
    """Push `image`, delete its manifest, wait for a sweep to collect all of it,
    push it again with skopeo, pull it.

    With the registry's blob cache cleared by layergc, the registry answers "blob
    unknown" after the collection, skopeo uploads every blob again, and the pull
    verifies. Without, the cache still says the blobs exist: skopeo skips them,
    the manifest is accepted, and the pull fails.
    """
    registry = client.registry
    assert client.push(image, repo, "probe")
    for digest in image.blobs:  # the cache knows them (as any pull would make it)
        assert client.http(lambda d=digest: registry.head_blob(repo, d)) is not None
    client.delete(repo, image)
    started = time.monotonic()
    everything = image.blobs | set(image.manifests)
    while not (collected(everything) and not any(on_disk(root, d) for d in everything)):
        assert time.monotonic() - started < timeout, f"no sweep collected {image.name}"
        time.sleep(0.2)
    collected_after = time.monotonic() - started
    stale = [d for d in sorted(image.blobs) if client.http(lambda d=d: registry.head_blob(repo, d))]
    assert client.push(image, repo, "probe")
    missing = [d for d in sorted(image.blobs) if not on_disk(root, d)]
    return ProbeResult(collected_after, stale, missing, pull_with_retries(registry, repo, "probe"))


def pull_with_retries(registry: GoRegistry, repo: str, ref: str, attempts: int = 3) -> bool:
    """A pull, tried again as a client would when it meets a registry restart (the
    in-memory variant restarts it during sweeps). A broken image fails every time."""
    for attempt in range(attempts):
        if attempt:
            time.sleep(1.0)
        if images.pull_and_verify(registry, repo, ref):
            return True
    return False
