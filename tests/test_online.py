"""Online safety: `layergc serve` sweeps a storage root while the Go registry takes
pushes (issue 6, "Online: sweeping while the registry takes pushes").

Each variant starts `docker-registry serve` over a temporary root and `layergc
serve` on the same root as a subprocess (2 s interval, 3 s grace, 1 s settle,
20 s upload timeout, SQLite index, /metrics), then two workers push for
PUSH_SECONDS with skopeo (tests/support/pushers.py: new images sharing layers,
retags, manifest deletes over HTTP, abandoned uploads, re-pushes of images whose
blobs a sweep collected), while a probe runs the deterministic break sequence
(push X, delete it, wait for a sweep to collect all of it, push X again, pull)
and `BreakMonitor` reads storage every second. When the pushes stop, the daemon
collects the rest (a sweep that finds no garbage), is stopped with SIGTERM (it
must exit 0), and one `layergc sweep` with the same settings confirms. Then:

- every tag the workers' model says must exist names the expected manifest and
  pulls back and verifies (all platforms of an index), and so does every
  untagged revision, by digest; failed pulls must be 0;
- storage, read directly (not through layergc, `read_storage`): every revision
  of every repository finds every blob it references in the blob store, linked
  in its repository (the Go registry serves a repository only what it links),
  and no blob is garbage any more (all of it is older than the grace window by
  then); and the monitor never saw it otherwise during the run, so a broken
  image that a later push healed is caught too;
- no abandoned upload older than the upload timeout is left, and sweeps purged
  some while the pushes went on;
- the registry forgets what layergc deleted: HEAD of every deleted blob that was
  not pushed again is 404 in every repository, and (Redis) no cache key names a
  blob missing from storage;
- the daemon's sweeps report no error but the one a concurrent manifest DELETE
  rightly causes (BENIGN_ONLINE_ERRORS), and its /metrics agree with its index.

Variants: (a) the registry's Redis blob cache, layergc clearing exactly the
deleted digests' keys (it reads the redis section from the registry's
config.yml); (b) the in-memory cache, with `--after-delete-command` restarting
the registry (tests/support/restart_registry.py: the hook asks the test, which
owns the registry process, to restart it, and waits for the new one to answer);
(c) the Redis cache with invalidation turned off (LAYERGC_UNSAFE_NO_CACHE_INVALIDATION=1,
layergc/gc/run.py): the probe's image must come out broken, and the pull and the
storage checks must say so, proving they catch what a careless collector does.
These runs found two races in the protocol, now fixed and replayed
deterministically in tests/test_recheck.py.

The window between the last verification and the delete
---------------------------------------------------------
layergc's last verification is step (3) of the delete protocol, the re-check
(layergc/gc/sweep.py, module docstring); the delete is step (4). Nothing is
checked between them, and a push can arrive then. It cannot use a doomed blob
unnoticed, because of what step (1) did before the re-check: the blob left the
blob store (into layergc's quarantine) and the registry forgot it (Redis keys
cleared, or the registry restarted). From then on the registry itself answers
"blob unknown":

- a client that asks (HEAD) after (1) is told the blob is missing and uploads it
  again; the upload lands in the blob store and links the blob in its
  repository. (4) deletes the quarantined copy, and the layer links written to
  the doomed blob meanwhile only while the blob store lacks it: once it is back,
  every link (4) took away is written back, since a manifest pushed just after
  the re-check may need it;
- a client that asked before (1) and skipped the upload then PUTs its manifest:
  the registry checks every referenced blob at that PUT, against storage (its
  cache has no entry any more), and refuses it with BLOB_UNKNOWN. The push
  fails where the client sees it, and pushing again uploads the blob. In these
  runs that shows as skopeo retries, never as a broken image.

What is left is one HTTP request, a manifest PUT whose blob check ran before
(1) (or read a cache entry that a request started before (1) wrote back after
the first clear) and whose revision link is written after the re-check read the
revisions. With the in-memory cache the restart ends every such request. With
Redis the settle waits `--settle`, clears the keys again and waits again, so
that request would have to spend longer than the settle between its check and
its write: the settle is the bound, configurable for slow storage.

A manifest pushed again between the mark and (1)
-------------------------------------------------
The mark saw no revision naming it, so its blob is doomed and held from (1)
until the re-check puts it back, a settle later. Meanwhile the registry does not
find the manifest: GET answers 404, and so does DELETE, which stats the blob
before it removes the revision link and so leaves the link in place. A client
that takes that 404 for "deleted" keeps a revision it meant to delete; the
workers once did, and deleting an index's children after it left a live index
whose children had no revision (a monitor sighting, healed by the next push of
the index). The workers now judge a DELETE's 404 by storage (pushers.Client.delete):
the link still there, they send it again; the figures count these.

Logs: the registry logs every request (JSON, `registry/registry.log`), the
workers every push and DELETE (`ops.log`), layergc its runs (`serve.log`; the
runs' reports are in `index.db`), all in UTC; the paths are printed first, and a
sighting's failure message carries what the clients and the registry did to the
images concerned (`trail`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from layergc.digest import Digest
from layergc.gc.run import UNSAFE_NO_CACHE_INVALIDATION
from layergc.storage import paths
from tests.support import images
from tests.support.components import free_port, require_binary, require_redis
from tests.support.files import fs_path
from tests.support.goregistry import GoRegistry, RegistryHTTPError
from tests.support.pushers import (
    Client,
    OpLog,
    ProbeResult,
    Stats,
    Worker,
    build_pool,
    build_probe_image,
    on_disk,
    probe,
    run_workers,
    utc_now,
)
from tests.support.restart_registry import RestartServer
from tests.support.serve import spawn_serve

pytestmark = [pytest.mark.slow, pytest.mark.interop]

PUSH_SECONDS = 45
WORKERS = 2
INTERVAL, GRACE, SETTLE, UPLOAD_TIMEOUT = 2, 3, 1, 20  # seconds
REDIS_DB = 11  # a database of its own: test_interop_gc uses 3, test_blobcache 7
PROBE_REPO = "online/probe"
SERVE_STOP_TIMEOUT = 40
SWEEP_TIMEOUT = 120

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# What a sweep may rightly report while the registry takes deletes: Go's manifest DELETE
# removes the revision link first and the tags naming it after, so a mark in between
# sees a tag without a revision (and keeps its manifest). A registry restart between
# the two steps (variant b) leaves that tag for good. Nothing else is expected.
BENIGN_ONLINE_ERRORS = frozenset({"tag-without-revision"})


def benign(error: dict[str, Any]) -> bool:
    """BENIGN_ONLINE_ERRORS, or a tag link read while the Go registry rewrote it:
    its filesystem driver writes by truncating the file first (no atomic rename),
    so a concurrent mark can read a tag's current/link empty. That tag is only
    being moved, and its manifest is kept anyway (every revision is a root)."""
    if error["kind"] in BENIGN_ONLINE_ERRORS:
        return True
    path = str(error.get("path") or "")
    return (
        error["kind"] == "corrupt-link"
        and "/_manifests/tags/" in path
        and path.endswith("/current/link")
        and str(error.get("message", "")).endswith("empty")
    )


# --- reading layergc's index (read-only, beside the running daemon) ------------------------


class IndexReader:
    """What the daemon recorded: runs and deleted blobs, from its SQLite index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._deleted: set[str] = set()
        self._read_at = 0.0

    def _query(self, sql: str) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the daemon has not migrated it yet
                return []
            raise
        finally:
            conn.close()

    def deleted_blobs(self) -> set[str]:
        with self._lock:
            if time.monotonic() - self._read_at > 0.5:
                rows = self._query("SELECT key FROM layergc_deletions WHERE kind = 'blob'")
                self._deleted = {row["key"] for row in rows}
                self._read_at = time.monotonic()
            return set(self._deleted)

    def collected(self, digests: Iterable[str]) -> bool:
        """Whether a sweep recorded every one of `digests` as deleted."""
        return set(digests) <= self.deleted_blobs()

    def sweeps(self) -> list[sqlite3.Row]:
        return self._query(
            "SELECT id, status, blobs_found, blobs_deleted, bytes_reclaimed, uploads_deleted, "
            "errors, report "
            "FROM layergc_runs WHERE mode = 'sweep' ORDER BY id"
        )


# --- storage, read directly ----------------------------------------------------------------


@dataclass(frozen=True)
class StorageView:
    blobs: frozenset[str]  # digests with data in the blob store
    held: frozenset[str]  # digests with data in layergc's quarantine (mid-sweep)
    referenced: frozenset[str]  # what every revision of every repository needs
    unlinked: frozenset[str]  # "repo@digest": a revision in repo needs it, repo has no link
    revisions: int

    @property
    def garbage(self) -> frozenset[str]:
        return self.blobs - self.referenced

    @property
    def missing(self) -> frozenset[str]:
        """Referenced, in neither the blob store nor the quarantine: a broken image."""
        return self.referenced - self.blobs - self.held

    @property
    def broken(self) -> frozenset[str]:
        """Everything that breaks a pull: missing blobs, and blobs a repository's
        revision needs that the repository does not link (the registry answers 404)."""
        return self.missing | self.unlinked


def _names(folder: Path) -> list[str]:
    """The entries of `folder`; none if it is gone (the registry and layergc move,
    delete and create folders while this reads)."""
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _links(folder: Path) -> set[str]:
    """The digests linked in `<folder>/sha256/<hex>/link` (layer or revision links)."""
    sha256 = folder / "sha256"
    return {f"sha256:{h}" for h in _names(sha256) if (sha256 / h / "link").is_file()}


def _blob_files(blobs_dir: Path) -> dict[str, Path]:
    sha256 = blobs_dir / "sha256"
    return {
        f"sha256:{hex_}": sha256 / prefix / hex_ / "data"
        for prefix in _names(sha256)
        for hex_ in _names(sha256 / prefix)
        if (sha256 / prefix / hex_ / "data").is_file()
    }


def _repositories(repositories: Path) -> list[str]:
    """Every repository name (a folder holding `_manifests`) under `repositories`."""
    names = []
    for top, dirs, _files in os.walk(repositories):  # os.walk skips what vanishes
        if "_manifests" in dirs:
            names.append(str(Path(top).relative_to(repositories)))
        dirs[:] = [d for d in dirs if not d.startswith("_")]  # not into a repository's own
    return names


def _tag_targets(repository: Path) -> set[str]:
    tags = repository / "_manifests" / "tags"
    targets = set()
    for tag in _names(tags):
        try:
            targets.add((tags / tag / "current" / "link").read_text())
        except FileNotFoundError:
            pass
    return targets


def _needs(manifest: dict[str, Any]) -> list[str]:
    """The config and layers of an image manifest (an index has neither)."""
    needs = [manifest["config"]["digest"]] if "config" in manifest else []
    return needs + [layer["digest"] for layer in manifest.get("layers", ())]


def read_storage(root: Path) -> StorageView:
    """The mark, done here from the files (no layergc code): every revision link of
    every repository (and every tag, as layergc keeps what a tag names), the
    manifests they name, what those reference, and whether the repository links it
    (the Go registry serves a repository only what it links).

    Safe to call while the registry and layergc write: a file that goes away while
    it is read counts as missing, which `BreakMonitor` confirms before it believes.
    Blobs and links in layergc's quarantine count as there: a sweep is moving them,
    and puts back whatever a revision needs.
    """
    v2 = root / "docker" / "registry" / "v2"
    quarantine = root / "layergc" / "quarantine"
    trees = [v2] + [quarantine / run / "docker" / "registry" / "v2" for run in _names(quarantine)]
    blobs = _blob_files(v2 / "blobs")
    held: dict[str, Path] = {}
    for tree in trees[1:]:
        held.update(_blob_files(tree / "blobs"))
    parsed: dict[str, dict[str, Any] | None] = {}

    def manifest(digest: str) -> dict[str, Any] | None:
        if digest not in parsed:
            try:
                parsed[digest] = json.loads((blobs.get(digest) or held[digest]).read_bytes())
            except (KeyError, FileNotFoundError):
                parsed[digest] = None  # counted as missing
        return parsed[digest]

    referenced: set[str] = set()
    unlinked: set[str] = set()
    revisions = 0
    for repo in _repositories(v2 / "repositories"):
        live = _links(v2 / "repositories" / repo / "_manifests" / "revisions")
        # A tag whose revision a manifest DELETE removed, the tag itself not yet (or,
        # the registry restarted in between, never): layergc keeps what it names.
        for target in _tag_targets(v2 / "repositories" / repo) - live:
            if (m := manifest(target)) is not None:
                referenced.add(target)
                referenced.update(_needs(m))
        layers: set[str] = set()
        for tree in trees:
            layers |= _links(tree / "repositories" / repo / "_layers")
        revisions += len(live)
        todo = list(live)
        seen: set[str] = set()
        while todo:
            digest = todo.pop()
            if digest in seen:
                continue
            seen.add(digest)
            referenced.add(digest)
            m = manifest(digest)
            if m is None:
                continue
            children = [child["digest"] for child in m.get("manifests", ())]
            todo += children
            unlinked.update(f"{repo}@{c} (no revision)" for c in children if c not in live)
            needs = _needs(m)
            referenced.update(needs)
            unlinked.update(f"{repo}@{d}" for d in needs if d not in layers)
    return StorageView(
        frozenset(blobs), frozenset(held), frozenset(referenced), frozenset(unlinked), revisions
    )


class BreakMonitor:
    """Reads storage every second while the pushes go on: a blob some revision needs
    that is in neither the blob store nor the quarantine is a broken image, even if
    a later push heals it before the final pulls. A sighting counts once a second
    reading, half a second later, agrees (a move can fall between two listings).
    Each is kept as (seconds since the start, UTC time as the logs write it, what
    was broken), to be matched with the clients', the registry's and layergc's logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scans = 0
        self.sightings: list[tuple[float, str, list[str]]] = []
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="break-monitor", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> BreakMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.failure is not None:
            raise AssertionError("the storage monitor failed") from self.failure

    def _run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # raised in the test by __exit__
            self.failure = exc

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self.scans += 1
            suspects = read_storage(self.root).broken
            if suspects and not self._stop.wait(0.5):
                lost = suspects & read_storage(self.root).broken
                if lost:
                    at = round(time.monotonic() - self._started, 1)
                    self.sightings.append((at, utc_now(), sorted(lost)))


# --- the daemon --------------------------------------------------------------------------


@dataclass
class Env:
    """A Go registry and the layergc settings and index that go with it."""

    tmp: Path
    registry: GoRegistry
    hook: str | None = None
    unsafe: bool = False
    restarts: RestartServer | None = None
    index: IndexReader = field(init=False)

    def __post_init__(self) -> None:
        self.index = IndexReader(self.tmp / "index.db")

    @property
    def root(self) -> Path:
        assert self.registry.root is not None
        return self.registry.root

    def args(self) -> list[str]:
        """The storage and deletion settings `serve` and the final `sweep` share."""
        args = [
            "--registry-config",
            str(self.registry.config_path),
            "--db",
            f"sqlite:///{self.index.path}",
            "--grace",
            f"{GRACE}s",
            "--settle",
            f"{SETTLE}s",
            "--upload-timeout",
            f"{UPLOAD_TIMEOUT}s",
        ]
        if self.hook:
            args += ["--after-delete-command", self.hook]
        return args

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop(UNSAFE_NO_CACHE_INVALIDATION, None)
        if self.unsafe:
            env[UNSAFE_NO_CACHE_INVALIDATION] = "1"
        return env


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def metrics(self) -> Samples:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return 0


@contextmanager
def layergc_serve(env: Env) -> Iterator[Daemon]:
    """`layergc serve` as a subprocess; the caller stops it (`stop_serve`)."""
    port = free_port()
    log = env.tmp / "serve.log"
    args = [*env.args(), "--interval", f"{INTERVAL}s"]
    proc = spawn_serve(args, port=port, log=log, cwd=env.tmp, env=env.environ(), append=False)
    daemon = Daemon(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while _healthz(port) != 200:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{daemon.log_tail()}"
            assert time.monotonic() < deadline, f"serve not healthy:\n{daemon.log_tail()}"
            time.sleep(0.1)
        yield daemon
    finally:
        if proc.poll() is None:  # the test failed before stop_serve: this PID only
            proc.kill()
            proc.wait(10)


def stop_serve(daemon: Daemon) -> float:
    """SIGTERM; the daemon must exit 0. Returns how long it took."""
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(SERVE_STOP_TIMEOUT)
    assert code == 0, f"serve exited {code} on SIGTERM:\n{daemon.log_tail()}"
    return time.monotonic() - started


def clean(status: str, errors: str | list[dict[str, Any]]) -> bool:
    """A run that went to its end reporting nothing but BENIGN_ONLINE_ERRORS."""
    found = json.loads(errors) if isinstance(errors, str) else errors
    return status in ("succeeded", "failed") and all(benign(e) for e in found)


def last_run_id(env: Env) -> int:
    return max((r["id"] for r in env.index.sweeps()), default=0)


def wait_until_collected(env: Env, after: int, timeout: float = 45) -> sqlite3.Row:
    """The first sweep started after run `after` that found no garbage blob at all.

    With the pushes stopped, all garbage is older than the grace window within a
    sweep or two, so this is every such blob collected by the daemon itself.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in env.index.sweeps():
            if row["id"] > after and clean(row["status"], row["errors"]) and not row["blobs_found"]:
                return row
        time.sleep(0.2)
    left = [
        (r["id"], r["status"], json.loads(r["report"] or "{}").get("blobs", [])[:5])
        for r in env.index.sweeps()[-3:]
    ]
    raise AssertionError(f"garbage still found {timeout}s after the pushes stopped: {left}")


def metrics_snapshot(env: Env, daemon: Daemon) -> tuple[Samples, list[sqlite3.Row]]:
    """/metrics and the index's runs at one moment: no run in flight or ending between."""
    for _ in range(100):
        before = [tuple(r) for r in env.index.sweeps()]
        samples = daemon.metrics()
        after = env.index.sweeps()
        if before == [tuple(r) for r in after] and all(r["status"] != "running" for r in after):
            return samples, after
        time.sleep(0.1)
    raise AssertionError("no quiet moment between sweeps to read /metrics")


def layergc_sweep(env: Env) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "layergc.cli", "sweep", *env.args(), "--json"],
        cwd=env.tmp,
        capture_output=True,
        text=True,
        env=env.environ(),
        timeout=SWEEP_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


# --- environments ------------------------------------------------------------------------


def redis_client() -> redis.Redis:
    host, port = require_redis()
    return redis.Redis(host=host, port=port, db=REDIS_DB, decode_responses=True)


@contextmanager
def environment(tmp: Path, cache: str, *, unsafe: bool = False) -> Iterator[Env]:
    require_binary("docker-registry")
    require_binary("skopeo")
    client = redis_client() if cache == "redis" else None
    registry = GoRegistry(
        tmp / "root",
        cache="redis" if cache == "redis" else "inmemory",
        redis_db=REDIS_DB,
        workdir=tmp / "registry",
        log_requests=True,
    )
    env = Env(tmp, registry, unsafe=unsafe)
    try:
        with registry:  # the first start empties the Redis database
            if cache == "redis":
                yield env
            else:
                with RestartServer(registry.restart) as server:
                    env.hook, env.restarts = server.command(), server
                    yield env
    finally:
        if client is not None:
            client.flushdb()  # leave nothing for other tests
            client.close()


# --- checks ------------------------------------------------------------------------------


def stale_cache_keys(client: redis.Redis, root: Path) -> list[str]:
    """Redis keys naming a blob that storage does not have."""
    stale = []
    for key in client.scan_iter(match="*", count=1000):
        if key.startswith("blobs::"):
            digests = [key.removeprefix("blobs::")]
        elif key.endswith("::blobs"):
            digests = list(client.smembers(key))
        else:
            digests = [key.rsplit("::blobs::", 1)[-1]]
        stale += [f"{key} -> {d}" for d in digests if not on_disk(root, d)]
    return stale


def failed_pulls(registry: GoRegistry, wanted: list[tuple[str, str, bool]]) -> list[str]:
    """(repo, ref, all) that do not pull back whole; pulled a few at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        ok = list(pool.map(lambda w: images.pull_and_verify(registry, *w[:2], all=w[2]), wanted))
    return [f"{repo}:{ref}" for (repo, ref, _), good in zip(wanted, ok, strict=True) if not good]


def counter(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@dataclass
class Figures:
    variant: str
    stats: Stats
    probe: ProbeResult
    monitor: BreakMonitor
    sweeps: int = 0
    sweeps_deleting: int = 0
    blobs_deleted: int = 0
    bytes_reclaimed: int = 0
    kept_by_recheck: int = 0
    uploads_purged_online: int = 0
    restarts: int = 0
    benign_reports: int = 0
    dangling_tags: int = 0
    pulls: int = 0
    failed_pulls: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def count_sweeps(self, runs: list[sqlite3.Row], online: list[sqlite3.Row]) -> None:
        """From the index: every sweep in `runs`, those of the daemon in `online`."""
        self.sweeps = len(runs)
        self.benign_reports = sum(
            1 for r in runs for e in json.loads(r["errors"] or "[]") if benign(e)
        )
        self.sweeps_deleting = sum(1 for r in runs if r["blobs_deleted"])
        self.blobs_deleted = sum(r["blobs_deleted"] for r in runs)
        self.bytes_reclaimed = sum(r["bytes_reclaimed"] for r in runs)
        self.uploads_purged_online = sum(r["uploads_deleted"] for r in online)
        self.kept_by_recheck = sum(
            1
            for r in runs
            for b in json.loads(r["report"] or "{}").get("blobs", [])
            if b["action"] == "kept"
        )

    def line(self) -> str:
        s = self.stats
        return (
            f"[online {self.variant}] pushes {s.pushes} (new tags {s.new_tags}, retags "
            f"{s.retags}, re-pushes of collected images {s.repushes}), manifest deletes "
            f"{s.deletes} (sent again after a 404 while a sweep held the manifest "
            f"{s.deletes_held}), abandoned uploads {s.uploads_abandoned}, push retries "
            f"{s.push_retries}, push failures {s.push_failures}; sweeps {self.sweeps} "
            f"({self.sweeps_deleting} deleting; tag-without-revision reports "
            f"{self.benign_reports}), blobs deleted {self.blobs_deleted}, bytes "
            f"reclaimed {self.bytes_reclaimed}, blobs put back by the re-check "
            f"{self.kept_by_recheck}, uploads purged while pushing "
            f"{self.uploads_purged_online}, registry restarts {self.restarts} (tags left "
            f"naming no revision {self.dangling_tags}); probe "
            f"{self.probe.as_dict()}; storage readings {self.monitor.scans}, broken images "
            f"seen {len(self.monitor.sightings)}; pulls {self.pulls}, failed pulls "
            f"{len(self.failed_pulls)}; seconds {self.seconds}"
        )


def trail(ops: Path, registry_log: Path, broken: Iterable[str], limit: int = 60) -> str:
    """For a failure message: what the clients (`ops`, an OpLog) and the registry
    (its request log) did in the repositories of `broken` ("repo@digest ..." items)
    to the images holding those digests, in time order (UTC, as in serve.log)."""
    broken = list(broken)
    repos = {item.split("@")[0] for item in broken}
    digests = {m for item in broken for m in re.findall(r"sha256:[0-9a-f]{64}", item)}
    records = [json.loads(line) for line in ops.read_text().splitlines()] if ops.exists() else []
    records = [r for r in records if r["repo"] in repos]
    images = {r["image"] for r in records if digests & {r.get("digest"), *r.get("digests", ())}}
    records = [r for r in records if r["image"] in images]
    digests |= {d for r in records for d in r.get("digests", ())}
    events = [(r["start"], f"client {json.dumps(r)}") for r in records]
    with registry_log.open(errors="replace") as log:
        for line in log:
            if "http.request.uri" not in line or not any(d in line for d in digests):
                continue
            req = json.loads(line)
            if req["http.request.uri"].split("/manifests/")[0].removeprefix("/v2/") in repos:
                request = f"{req['http.request.method']} {req['http.request.uri']}"
                events.append((req["time"], f"registry {request} {req['http.response.status']}"))
    return "\n".join(f"{when} {what}" for when, what in sorted(events)[-limit:])


def what_must_pull(workers: list[Worker]) -> list[tuple[str, str, bool]]:
    """(repo, ref, all): every tag the workers' model keeps, then every untagged live
    revision by digest (without --delete-untagged those are kept too)."""
    tagged: set[tuple[str, str]] = set()
    wanted: list[tuple[str, str, bool]] = []
    for (repo, tag), image in sorted(
        (item for w in workers for item in w.expected_tags().items()), key=lambda i: i[0]
    ):
        tagged.add((repo, image.digest))
        wanted.append((repo, tag, image.multi))
    for repo, image in sorted(
        (r for w in workers for r in w.live_revisions()), key=lambda r: (r[0], r[1].name)
    ):
        if (repo, image.digest) not in tagged:
            wanted.append((repo, image.digest, image.multi))
    return wanted


def still_answered(
    reg: GoRegistry, repos: list[str], digests: Iterable[str], root: Path
) -> list[str]:
    """Deleted blobs (not pushed again) that the registry still says it has."""
    return [
        f"{repo}@{d}"
        for d in sorted(digests)
        if not on_disk(root, d)
        for repo in repos
        if reg.head_blob(repo, d) is not None
    ]


# --- the online runs -------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("cache", ["redis", "inmemory"])
def test_sweeping_while_the_registry_takes_pushes(tmp_path: Path, cache: str) -> None:
    t0 = time.monotonic()
    seconds: dict[str, float] = {}
    pool = build_pool(tmp_path / "layout")
    probe_image = build_probe_image(tmp_path / "probe-layout")
    with environment(tmp_path, cache) as env, layergc_serve(env) as daemon:
        reg = env.registry
        seconds["setup"] = time.monotonic() - t0
        ops_log = tmp_path / "ops.log"
        oplog = OpLog(ops_log)
        print(f"[online {cache}] logs: {ops_log}, {reg.log_path}, {daemon.log}")
        workers = [
            Worker(
                reg,
                tmp_path / "layout",
                pool,
                (f"online/w{n}/app", f"online/w{n}/web"),
                seed=1000 + n,
                root=env.root,
                collected=env.index.collected,
                oplog=oplog,
            )
            for n in range(WORKERS)
        ]
        prober = Client(reg, tmp_path / "probe-layout", root=env.root, oplog=oplog)
        probed: list[ProbeResult] = []
        probe_thread = threading.Thread(
            target=lambda: probed.append(
                probe(prober, probe_image, PROBE_REPO, root=env.root, collected=env.index.collected)
            ),
            name="probe",
            daemon=True,
        )
        with BreakMonitor(env.root) as monitor:
            probe_thread.start()
            stats = run_workers(workers, PUSH_SECONDS, threading.Event())
            probe_thread.join(timeout=60)
            assert probed, "the probe did not finish (its error is in the test log)"
            stats.add(prober.stats)
            seconds["pushing"] = time.monotonic() - t0 - seconds["setup"]

            # The pushes have stopped: the daemon collects the rest, then SIGTERM.
            t_quiet = time.monotonic()
            wait_until_collected(env, after=last_run_id(env))
        samples, online = metrics_snapshot(env, daemon)
        restarts_online = len(env.restarts.restarts) if env.restarts else 0
        seconds["collect_rest"] = time.monotonic() - t_quiet
        seconds["serve_stop"] = stop_serve(daemon)
        t_final = time.monotonic()
        final_started = time.time()
        report = layergc_sweep(env)
        seconds["final_sweep"] = time.monotonic() - t_final

        figures = Figures(cache, stats, probed[0], monitor)
        figures.count_sweeps(env.index.sweeps(), online)
        figures.restarts = len(env.restarts.restarts) if env.restarts else 0

        # What must have survived, through the registry.
        t_verify = time.monotonic()
        expected = {k: v for w in workers for k, v in w.expected_tags().items()}
        wrong_tags = [
            (repo, tag, image.name)
            for (repo, tag), image in sorted(expected.items())
            if reg.head_manifest(repo, tag) != image.digest
        ]
        tag_lists = {m.name: (reg.tags(m.name), sorted(m.tags)) for w in workers for m in w.repos}
        # A restart between the two steps of a manifest DELETE leaves a tag naming no
        # revision (BENIGN_ONLINE_ERRORS): listed, resolving nowhere. Not layergc's.
        dangling = {
            (repo, t)
            for repo, (have, want) in tag_lists.items()
            for t in set(have) - set(want)
            if reg.head_manifest(repo, t) is None
        }
        figures.dangling_tags = len(dangling)
        wanted = [*what_must_pull(workers), (PROBE_REPO, "probe", False)]
        figures.pulls = len(wanted)
        figures.failed_pulls = failed_pulls(reg, wanted)
        # Storage, read directly; what the registry still remembers.
        view = read_storage(env.root)
        repos = [m.name for w in workers for m in w.repos] + [PROBE_REPO]
        remembered = still_answered(reg, repos, env.index.deleted_blobs(), env.root)
        stale_keys = stale_cache_keys(redis_client(), env.root) if cache == "redis" else []
        old_uploads_left = [
            u
            for w in workers
            for u in w.uploads
            if u.started < final_started - UPLOAD_TIMEOUT - 2
            and (reg.v2 / "repositories" / u.repo / "_uploads" / u.uuid).exists()
        ]
        quarantine = env.root / "layergc" / "quarantine"
        seconds["verify"] = time.monotonic() - t_verify
        seconds["total"] = time.monotonic() - t0
        figures.seconds = {k: round(v, 1) for k, v in seconds.items()}
        print(figures.line())

        assert len(figures.failed_pulls) == 0, figures.failed_pulls
        assert monitor.sightings == [], (
            f"images broken while pushing: {monitor.sightings}\n"
            + trail(ops_log, reg.log_path, (i for *_, lost in monitor.sightings for i in lost))
        )
        assert wrong_tags == []
        for repo, (have, want) in tag_lists.items():
            assert sorted(set(have) - {t for r, t in dangling if r == repo}) == want, repo
        assert cache == "inmemory" or not dangling, dangling
        assert view.broken == set(), (
            f"revisions lack blobs or links: {sorted(view.broken)}\n"
            + trail(ops_log, reg.log_path, view.broken)
        )
        assert view.garbage == set(), f"garbage left: {sorted(view.garbage)}; final {report}"
        assert clean(report["status"], report["errors"]) and report["blobs"] == [], report
        assert remembered == [], f"the registry still answers for deleted blobs: {remembered}"
        assert stale_keys == [], f"Redis still names deleted blobs: {stale_keys[:20]}"
        assert old_uploads_left == [], old_uploads_left
        assert not quarantine.exists() or not any(quarantine.iterdir())
        # The probe: collected, forgotten by the registry, uploaded again, pulled.
        assert figures.probe.stale == [] and figures.probe.missing_after_repush == []
        assert figures.probe.pulled
        # The daemon ran cleanly, and its /metrics agree with its index.
        errors = [(r["id"], e) for r in online for e in json.loads(r["errors"])]
        assert [(n, e) for n, e in errors if not benign(e)] == []
        for outcome in ("succeeded", "failed"):
            runs = sum(1 for r in online if r["status"] == outcome)
            assert counter(samples, "layergc_runs_total", mode="sweep", outcome=outcome) == runs
        assert {r["status"] for r in online} <= {"succeeded", "failed"}
        assert counter(samples, "layergc_objects_deleted_total", kind="blob") == sum(
            r["blobs_deleted"] for r in online
        )
        if env.restarts is not None:
            assert env.restarts.errors == []
            hook_runs = counter(samples, "layergc_after_delete_hook_runs_total", status="0")
            assert hook_runs == restarts_online >= 2
        # Enough happened for the run to mean something.
        assert stats.pushes >= 40 and stats.deletes >= 10 and stats.retags >= 5, figures.line()
        assert stats.repushes >= 3, figures.line()
        assert stats.push_failures <= stats.pushes // 50, stats.errors
        assert figures.sweeps >= 8 and figures.blobs_deleted >= 20, figures.line()
        assert figures.uploads_purged_online >= 1, figures.line()


# --- the proof that the test can fail ---------------------------------------------------------


@pytest.mark.redis
def test_without_cache_invalidation_the_probe_breaks_an_image(tmp_path: Path) -> None:
    """(c): the deterministic probe of the online runs, with layergc told not to clear
    the registry's Redis cache: the registry keeps answering "exists" for the collected
    blobs, skopeo skips them, the manifest is accepted, and the image does not pull."""
    started = time.monotonic()
    probe_image = build_probe_image(tmp_path / "probe-layout")
    with (
        environment(tmp_path, "redis", unsafe=True) as env,
        layergc_serve(env) as daemon,
        BreakMonitor(env.root) as monitor,
    ):
        client = Client(env.registry, tmp_path / "probe-layout", root=env.root)
        result = probe(
            client, probe_image, PROBE_REPO, root=env.root, collected=env.index.collected
        )
        deadline = time.monotonic() + 10
        while not monitor.sightings and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_serve(daemon)
        view = read_storage(env.root)
        figures = Figures("unsafe-no-invalidation", client.stats, result, monitor)
        figures.count_sweeps(env.index.sweeps(), env.index.sweeps())
        figures.pulls, figures.failed_pulls = 1, [] if result.pulled else [f"{PROBE_REPO}:probe"]
        figures.seconds = {"total": round(time.monotonic() - started, 1)}
        print(figures.line())
        assert "UNSAFE" in daemon.log_tail(10**6)

    assert not result.pulled, "the broken image pulled: the test could not catch breakage"
    assert result.stale == sorted(probe_image.blobs)  # the cache still said "exists"
    assert result.missing_after_repush == sorted(probe_image.blobs)  # so skopeo skipped them
    # Even the manifest blob: the registry's Put asked the same stale cache and did not
    # write it, so storage holds a revision link to nothing, which the storage check sees.
    assert view.missing == {probe_image.digest}
    assert [lost for *_, lost in monitor.sightings][:1] == [[probe_image.digest]]
    assert len(figures.failed_pulls) == 1


# --- what the workers do when a sweep holds a manifest ------------------------------------------


def test_a_manifest_delete_refused_while_a_sweep_holds_its_blob_is_sent_again(
    tmp_path: Path,
) -> None:
    """The cause of a sighting in the Redis run (an index live, its child with no
    revision, for 3 s): a manifest pushed again between a sweep's mark and its step
    (1) has its blob held until the re-check, and meanwhile Go's manifest DELETE
    answers 404 and keeps the revision link. The workers took that for "deleted",
    went on to the children, and left the index live without them. Now they send
    the DELETE again until the link is gone (pushers.Client.delete)."""
    require_binary("docker-registry")
    require_binary("skopeo")
    index = next(i for i in build_pool(tmp_path / "layout") if i.multi)
    repo = "online/held"
    # No blob cache: the registry asks storage, as after layergc cleared the keys.
    with GoRegistry(tmp_path / "root", workdir=tmp_path / "registry") as reg:
        root = tmp_path / "root"
        client = Client(reg, tmp_path / "layout", root=root)
        assert client.push(index, repo, "t0")
        folder = paths.blob_dir(Digest.parse(index.digest))
        blob, held = (fs_path(root, p) for p in (folder, paths.quarantined(1, folder)))
        held.parent.mkdir(parents=True)
        blob.rename(held)  # layergc's step (1) on the index's blob

        with pytest.raises(RegistryHTTPError) as refused:
            reg.delete_manifest(repo, index.digest)
        assert refused.value.status == 404
        assert read_storage(root).revisions == 3  # the index's link stayed

        deleting = threading.Thread(target=client.delete, args=(repo, index), daemon=True)
        deleting.start()
        time.sleep(1.0)
        view = read_storage(root)
        assert deleting.is_alive() and view.revisions == 3 and view.broken == set()
        held.rename(blob)  # the re-check puts it back
        deleting.join(timeout=30)
        assert not deleting.is_alive()
        view = read_storage(root)
        assert (view.revisions, view.broken) == (0, frozenset())
        assert client.stats.deletes == 3 and client.stats.deletes_held >= 2
