"""Sweep: decide what is garbage after the mark, and delete it safely while the
registry keeps serving (DESIGN.md, "Garbage collection semantics").

The delete protocol, run once per sweep over every doomed object:

  (1) quarantine: each doomed blob folder, with its layer links (and, with
      --delete-untagged, each doomed manifest revision with its tag-index
      entries) moves to `/layergc/quarantine/<run>/`, recorded in the index
      first; then the registry is made to forget the blobs at once: their
      Redis keys are cleared, or the after-delete hook (a registry restart)
      runs. A failed hook restores the whole quarantine.
  (2) settle: wait until every request that saw a blob before the move has
      finished, clear the Redis keys again (such a request can write its
      answer back after the first clear), wait once more. A restart ends
      those requests itself, so with the hook the restart is the settle.
  (3) re-check: mark again, reading manifests from the quarantine too. Any
      quarantined object the new mark keeps (a manifest pushed or tagged
      meanwhile needs it) goes back.
  (4) delete what is left in the quarantine, with any layer link written to
      it meanwhile.

Why no push can slip through: from the end of (1) the registry answers "blob
unknown" for every doomed blob, so a client that needs one uploads it again
(and the upload lands in the blob store, not in the quarantine). A client
that saw the blob before (1) can only make it needed by writing a revision
link or a tag; the settle waits for such requests to finish, and (3) reads
every revision and tag after that, so the write is seen and the blob goes
back before (4) deletes anything. The window left is a request that takes
longer than the settle time between its blob check and its manifest write:
the settle is configurable (`settle`) for registries with slow clients.

A crash at any step leaves the quarantine on storage; the next run puts it
back before its own mark (quarantine.restore_leftovers), so nothing is ever
half-deleted and the next sweep redoes the work from scratch.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.errors import PathNotFound, StorageDriverError
from layergc.gc import pace, scan, snapshot
from layergc.gc.crashpoints import crash_point
from layergc.gc.quarantine import (
    Quarantine,
    QuarantineOverlay,
    restore_leftovers,
    settle_index,
)
from layergc.gc.uploads import UploadInfo, purge_upload, stale_uploads
from layergc.logs import bind_run
from layergc.storage import paths
from layergc.storage.links import write_link

log = logging.getLogger(__name__)

SWEEP = "sweep"
PURGE_UPLOADS = "purge-uploads"

DELETED = "deleted"
WOULD_DELETE = "would-delete"
DEFERRED = "deferred"
FAILED = "failed"
KEPT = "kept"  # quarantined, then restored by the re-check


class Interrupted(Exception):
    """The stop event was set: the run ends early, with nothing half-done."""


class BlobCache(Protocol):
    def forget(self, digests: Iterable[str]) -> int: ...


@dataclass(frozen=True, slots=True)
class SweepOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    grace: timedelta = timedelta(hours=24)
    upload_timeout: timedelta = timedelta(hours=168)
    settle: timedelta = timedelta(seconds=5)
    after_delete_command: str | None = None
    after_delete_timeout: timedelta = timedelta(seconds=120)
    # "inmemory" when the registry keeps its blob cache in its own memory.
    registry_cache: str | None = None
    workers: int = 8


@dataclass(slots=True)
class Doomed:
    """One object in the delete protocol: the folders that move together."""

    kind: str  # "blob" or "manifest"
    digest: Digest
    repository: str | None
    size: int
    units: list[str] = field(default_factory=list)
    held: bool = False
    # unit -> its files as listed (bulk moves on S3; empty: the unit moves itself)
    files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.digest) if self.repository is None else f"{self.repository}@{self.digest}"


@dataclass(slots=True)
class Report:
    run_id: int
    dry_run: bool
    started_at: datetime
    mode: str = SWEEP
    finished_at: datetime | None = None
    status: str = "running"
    repositories: int = 0
    manifests_marked: int = 0
    blobs_marked: int = 0
    blobs: list[dict[str, Any]] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    bytes_reclaimed: int = 0
    bytes_reclaimable: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    top_repositories: list[dict[str, Any]] = field(default_factory=list)
    blob_deletion_blocked: bool = False
    # Wall time per phase: listing (the S3 snapshot), the mark's own phases
    # (mark.<phase>), uploads, decide (candidates' checks), delete.
    seconds: dict[str, float] = field(default_factory=dict)

    def error(self, kind: str, message: str, path: str | None = None, **extra: Any) -> None:
        entry: dict[str, Any] = {"kind": kind, "message": message}
        if path is not None:
            entry["path"] = path
        entry.update(extra)
        self.errors.append(entry)
        log.error(message, extra={"kind": kind, "path": path})

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "repositories": self.repositories,
            "manifests_marked": self.manifests_marked,
            "blobs_marked": self.blobs_marked,
            "blobs": self.blobs,
            "manifests": self.manifests,
            "uploads": self.uploads,
            "bytes_reclaimed": self.bytes_reclaimed,
            "bytes_reclaimable": self.bytes_reclaimable,
            "blob_deletion_blocked": self.blob_deletion_blocked,
            "top_repositories": self.top_repositories,
            "seconds": self.seconds,
            "warnings": self.warnings,
            "errors": self.errors,
        }

    def counts(self) -> dict[str, int]:
        def count(items: list[dict[str, Any]], action: str | None = None) -> int:
            return sum(1 for i in items if action is None or i["action"] == action)

        return {
            "repositories": self.repositories,
            "manifests_marked": self.manifests_marked,
            "blobs_marked": self.blobs_marked,
            "blobs_found": count(self.blobs),
            "blobs_deleted": count(self.blobs, DELETED),
            "manifests_found": count(self.manifests),
            "manifests_deleted": count(self.manifests, DELETED),
            "uploads_found": count(self.uploads),
            "uploads_deleted": count(self.uploads, DELETED),
            "bytes_reclaimed": self.bytes_reclaimed,
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


class Sweeper:
    """One sweep (or stale-upload purge) over one storage driver and index."""

    def __init__(
        self,
        driver: StorageDriver,
        index: Any,
        options: SweepOptions,
        *,
        blob_cache: BlobCache | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
        hook_observer: Callable[[int | None], None] | None = None,
    ) -> None:
        self.driver = driver
        self.index = index
        self.options = options
        self.blob_cache = blob_cache
        self.stop = stop or threading.Event()
        self.progress = progress
        self.hook_observer = hook_observer
        # What the run reads storage through: a listing snapshot on S3 (see
        # gc/snapshot.py), the driver itself elsewhere. Never used to write.
        self.view: StorageDriver = driver
        # Objects move and go one at a time on a local disk; on remote storage,
        # where each costs round trips, this many at once.
        local = driver.name in scan.LOCAL_DRIVERS
        self.parallel = 1 if local else max(1, options.workers)
        # Stats once they wait (gc/pace.py): from a cold cache, 4 threads stat'ed a
        # 100,000-blob store's candidates in 0.92 to 1.02 s, 6 in 1.05 to 1.09, 8
        # and 16 in 1.12 to 1.16.
        self.stat_threads = 4 if local else max(1, options.workers)

    # --- the run -------------------------------------------------------------

    def run(self, mode: str = SWEEP) -> Report:
        opts = self.options
        run_id = self.index.start_run(
            mode=mode,
            dry_run=opts.dry_run,
            delete_untagged=opts.delete_untagged,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        report = Report(run_id=run_id, dry_run=opts.dry_run, started_at=_now(), mode=mode)
        # A run left "running" by a process that died (SIGKILL, power cut) is
        # recorded as interrupted; its quarantine is put back by _run.
        stale = self.index.mark_stale_running_runs()
        if stale:
            report.warnings.append(f"runs {stale} were interrupted: marked so in the index")
        try:
            with bind_run(run_id):
                self._run(report, mode)
            report.status = "failed" if report.errors else "succeeded"
        except Interrupted:
            report.status = "interrupted"
            report.warnings.append("stopped before the end; the next run picks up the rest")
        except Exception as exc:  # a run must always be recorded, whatever broke
            log.exception("sweep failed")
            report.error("run-failed", f"{type(exc).__name__}: {exc}")
            report.status = "failed"
        except BaseException:  # Ctrl-C, SystemExit: recorded as such, then on its way
            report.status = "interrupted"
            raise
        finally:
            report.finished_at = _now()
            self.index.finish_run(
                run_id,
                status=report.status,
                counts=report.counts(),
                errors=report.errors,
                report=report.as_json(),
            )
        return report

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted

    @contextmanager
    def _timed(self, report: Report, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            report.seconds[phase] = round(time.perf_counter() - started, 3)

    def _each(self, items: list[Any], fn: Callable[[Any], None], *, always: bool = False) -> None:
        """fn(item) for every item, `self.parallel` at a time; the first error is
        raised once every item has been tried. After a stop no more are started
        (Interrupted is raised), unless `always`: fn then sees the stop itself."""
        if self.parallel == 1 or len(items) < 2:
            for item in items:
                if not always:
                    self._check_stop()
                fn(item)
            return

        def guarded(item: Any) -> None:
            if always or not self.stop.is_set():
                fn(item)

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="layergc-sweep") as pool:
            futures = [pool.submit(guarded, item) for item in items]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise errors[0]
        if not always:
            self._check_stop()

    def _run(self, report: Report, mode: str) -> None:
        opts = self.options
        if not opts.dry_run:
            restored = restore_leftovers(self.driver)
            if restored:
                report.warnings.append(
                    f"restored {len(restored)} files left in quarantine by an earlier run"
                )
            settle_index(self.driver, self.index)
        self._check_stop()
        with self._timed(report, "listing"):
            self.view = snapshot.take(self.driver)
        mark = scan.mark(
            self.view,
            delete_untagged=opts.delete_untagged and mode == SWEEP,
            reference_cache=self._reference_cache(),
            progress=self.progress,
        )
        report.seconds.update({f"mark.{k}": v for k, v in mark.stats.seconds.items()})
        report.repositories = len(mark.repositories)
        report.manifests_marked = sum(1 for m in mark.manifests if m.kept)
        report.blobs_marked = len(mark.marked)
        for err in mark.errors:
            if err.warning:
                report.warnings.append(f"{err.kind}: {err.message} ({err.path})")
            else:
                report.error(err.kind, err.message, err.path, repository=err.repository)
        self._check_stop()

        now = _now()
        with self._timed(report, "uploads"):
            self._sweep_uploads(report, mark.uploads, now)
        if mode != SWEEP:
            return
        self._check_stop()
        with self._timed(report, "decide"), scan.gc_paused():
            doomed_manifests, kept_by_deferred = self._decide_manifests(report, mark, now)
            doomed_blobs = self._decide_blobs(report, mark, kept_by_deferred, now)
        if opts.dry_run or not (doomed_blobs or doomed_manifests):
            return
        with self._timed(report, "delete"):
            self._delete(report, mark, doomed_blobs + doomed_manifests)

    # --- uploads -------------------------------------------------------------

    def _sweep_uploads(self, report: Report, uploads: list[tuple[str, str]], now: datetime) -> None:
        stale, fresh, errors = self._inspect_uploads(uploads, now)
        for repository, uuid, message in errors:
            report.error("upload-unreadable", message, paths.upload_dir(repository, uuid))
        self.index.observe_unreferenced(
            report.run_id,
            "upload",
            [(f"{u.repository}/{u.uuid}", u.repository, u.size) for u in stale],
            now,
        )
        for info in stale + fresh:
            if info.warning:
                report.warnings.append(f"upload {info.repository}/{info.uuid}: {info.warning}")
        outcomes: dict[int, str] = {}

        def purge(i: int) -> None:
            info = stale[i]
            try:
                purge_upload(self.driver, info)
                crash_point("upload")
                outcomes[i] = DELETED
            except StorageDriverError as exc:
                outcomes[i] = FAILED
                report.error(
                    "upload-delete-failed", str(exc), paths.upload_dir(info.repository, info.uuid)
                )

        try:
            if self.options.dry_run:
                outcomes = dict.fromkeys(range(len(stale)), WOULD_DELETE)
            else:
                self._each(list(range(len(stale))), purge)
        finally:  # on a stop too: what was done is reported and recorded
            self._report_uploads(report, stale, outcomes)

    def _inspect_uploads(
        self, uploads: list[tuple[str, str]], now: datetime
    ) -> tuple[list[UploadInfo], list[UploadInfo], list[tuple[str, str, str]]]:
        """stale_uploads, over `self.parallel` slices at once (a read per upload)."""
        timeout = self.options.upload_timeout
        if self.parallel == 1 or len(uploads) < 2:
            return stale_uploads(self.view, uploads, timeout, now)
        step = -(-len(uploads) // self.parallel)
        slices = [uploads[i : i + step] for i in range(0, len(uploads), step)]
        with ThreadPoolExecutor(len(slices), thread_name_prefix="layergc-uploads") as pool:
            parts = list(pool.map(lambda s: stale_uploads(self.view, s, timeout, now), slices))
        return (
            [u for p in parts for u in p[0]],
            [u for p in parts for u in p[1]],
            [e for p in parts for e in p[2]],
        )

    def _report_uploads(
        self, report: Report, stale: list[UploadInfo], outcomes: dict[int, str]
    ) -> None:
        deleted: list[UploadInfo] = []
        for i, info in enumerate(stale):
            action = outcomes.get(i)
            if action is None:
                continue  # not reached before a stop
            if action == DELETED:
                deleted.append(info)
            report.uploads.append(
                {
                    "repository": info.repository,
                    "uuid": info.uuid,
                    "started_at": _iso(info.started_at),
                    "size": info.size,
                    "action": action,
                }
            )
        if deleted:
            report.bytes_reclaimed += sum(u.size for u in deleted)
            keys = [f"{u.repository}/{u.uuid}" for u in deleted]
            self.index.set_state("upload", keys, "deleted")
            self.index.record_deletions(
                report.run_id,
                [("upload", k, u.repository, u.size) for k, u in zip(keys, deleted, strict=True)],
            )

    # --- deciding ----------------------------------------------------------------

    def _old_enough(self, mod_time: datetime, now: datetime) -> bool:
        return now - mod_time >= self.options.grace

    def _decide_manifests(
        self, report: Report, mark: scan.MarkResult, now: datetime
    ) -> tuple[list[Doomed], set[Digest]]:
        """Untagged manifests to delete, and the blobs the deferred ones still need."""
        candidates = mark.untagged_to_delete
        # Observed even when there are none: a manifest tagged again is forgotten,
        # so that its grace starts over when it is untagged once more.
        first_seen = self._observe(
            report,
            mark,
            "manifest",
            [(f"{repo}@{digest}", repo, None) for repo, digest in candidates],
            now,
        )
        if not candidates:
            return [], set()
        decided: list[tuple[str, Digest, bool]] = []
        for repo, digest in candidates:
            key = f"{repo}@{digest}"
            # (A blocked mark observes nothing: then none is in first_seen, none due.)
            eligible = key in first_seen and self._old_enough(first_seen[key], now)
            if eligible:
                link_path = paths.manifest_revision_link(repo, digest)
                try:
                    eligible = self._old_enough(self.view.stat(link_path).mod_time, now)
                except PathNotFound:
                    eligible = False  # deleted meanwhile: nothing to do
                except StorageDriverError as exc:  # one object, not the run
                    eligible = False
                    report.error("stat-failed", f"cannot stat {link_path}: {exc}", link_path)
            decided.append((repo, digest, eligible))
        # A deferred index keeps its children whole, their revisions too: a child
        # deleted under a young index would break what the grace is there to keep.
        deferred = [digest for _, digest, eligible in decided if not eligible]
        kept = mark.closure(deferred) if deferred else set()
        doomed: list[Doomed] = []
        for repo, digest, eligible in decided:
            eligible = eligible and digest not in kept
            action = WOULD_DELETE if eligible else DEFERRED
            report.manifests.append({"repository": repo, "digest": str(digest), "action": action})
            if eligible:
                doomed.append(Doomed("manifest", digest, repo, 0))
        return doomed, kept

    def _observe(
        self,
        report: Report,
        mark: scan.MarkResult,
        kind: str,
        observed: list[tuple[str, str | None, int | None]],
        now: datetime,
    ) -> dict[str, datetime]:
        """Record this run's candidates of `kind` and forget the others: when each
        was first seen unreferenced. Not from a blocked mark: what it calls
        unreferenced includes what the manifests it could not read reference, and a
        grace counted from it would run while they were still needed (none is due)."""
        if mark.blob_deletion_blocked:
            return {}
        first_seen = self.index.observe_unreferenced(report.run_id, kind, observed, now)
        self.index.forget_absent(kind, report.run_id)
        return first_seen

    def _decide_blobs(
        self, report: Report, mark: scan.MarkResult, kept: set[Digest], now: datetime
    ) -> list[Doomed]:
        unreferenced = [d for d in mark.unreferenced if d not in kept]
        # Only what the decision needs is stat'ed. A blob's size is recorded the first
        # time it is seen (its digest names its content: the size never changes), and
        # its data and layer links are looked at (their age, and that they are plain
        # files) only once its grace in the index is over: at the default 24h grace a
        # repeated sweep stats nothing, and a first one only the new blobs' data.
        keys = {d: str(d) for d in unreferenced}
        # At a zero grace every candidate is due, and its stat gives its size.
        links = self.options.grace <= timedelta(0)
        sizes = {} if links else self.index.known_sizes("blob")
        unsized = [d for d, key in keys.items() if key not in sizes]
        infos = self._stat_blobs(unsized, mark.layer_links if links else {}, report)
        sizes.update((keys[d], size) for d, (size, _old) in infos.items())
        observed = [(key, None, sizes[key]) for key in keys.values() if key in sizes]
        first_seen = self._observe(report, mark, "blob", observed, now)
        if mark.blob_deletion_blocked:
            report.blob_deletion_blocked = True
            report.warnings.append(
                "blob deletion is blocked for this run: a manifest could not be parsed or "
                "something under repositories/ could not be read (see errors)"
            )
        # Past its grace in the index: deletable if its files are old enough too.
        ready: set[Digest] = (
            set()
            if mark.blob_deletion_blocked
            else {d for d, key in keys.items() if self._old_enough(first_seen.get(key, now), now)}
        )
        # At a zero grace the first stat looked at every candidate's links already.
        due = [] if links else [d for d in keys if d in ready]
        checked = {*unsized, *due}
        # A due blob's stat with its links is the one that counts: a blob both unsized
        # (no size recorded) and due keeps no data-only answer if its links fail.
        for d in due:
            infos.pop(d, None)
        infos.update(self._stat_blobs(due, mark.layer_links, report))
        doomed: list[Doomed] = []
        by_repository: dict[str, int] = defaultdict(int)
        for digest, key in keys.items():
            info = infos.get(digest)
            if info is None and digest in checked:
                continue  # vanished while we looked, or could not be stat'ed (reported)
            size = info[0] if info is not None else sizes[key]
            eligible = info is not None and info[1] and digest in ready
            action = WOULD_DELETE if eligible else DEFERRED
            report.blobs.append({"digest": key, "size": size, "action": action})
            report.bytes_reclaimable += size
            for repo in mark.layer_links.get(digest, ()):
                by_repository[repo] += size
            if eligible:
                doomed.append(Doomed("blob", digest, None, size))
        top = sorted(by_repository.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        report.top_repositories = [{"repository": r, "bytes": b} for r, b in top]
        return doomed

    def _stat_blobs(
        self,
        digests: list[Digest],
        layer_links: Mapping[Digest, list[str]],
        report: Report,
    ) -> dict[Digest, tuple[int, bool]]:
        """Size of each blob, and whether its data and every layer link to it in
        `layer_links` (none: its data alone) is older than the grace window. One
        that cannot be stat'ed (a storage error, a symlink) is reported and left
        alone."""
        if not digests:
            return {}
        now = _now()

        def one(digest: Digest) -> tuple[Digest, tuple[int, bool] | str | None]:
            path = paths.blob_data(digest)
            try:
                info = self.view.stat(path)
                old = self._old_enough(info.mod_time, now)
                for repo in layer_links.get(digest, ()):
                    if not old:
                        break
                    path = paths.layer_link(repo, digest)
                    try:
                        old = self._old_enough(self.view.stat(path).mod_time, now)
                    except PathNotFound:
                        continue
            except PathNotFound:
                return digest, None
            except StorageDriverError as exc:
                return digest, f"cannot stat {path}: {exc}"
            return digest, (info.size, old)

        def some(chunk: list[Digest]) -> list[tuple[Digest, tuple[int, bool] | str | None]]:
            return [one(digest) for digest in chunk]

        # Many stats per task: a future per stat cost as much CPU as the stat itself
        # on a warm local disk, while a cold disk or remote storage still gets up to
        # `stat_threads` requests in flight.
        size = max(1, min(256, len(digests) // (4 * self.stat_threads)))
        chunks = [digests[i : i + size] for i in range(0, len(digests), size)]
        results: dict[Digest, tuple[int, bool]] = {}

        def collect(part: list[tuple[Digest, tuple[int, bool] | str | None]]) -> None:
            for digest, value in part:
                if isinstance(value, str):
                    report.error("stat-failed", value, paths.blob_dir(digest))
                elif value is not None:
                    results[digest] = value

        # Answered from memory (a warm page cache, an S3 listing snapshot), threads
        # would only fight over the GIL (at 100,000 blobs, 8 threads took 3x the CPU
        # of one); waiting on a disk or the network, they overlap the waits: paced.
        # (A forked child, as the mark has, copied 17 MiB of this process's pages at
        # 100,000 blobs, at the run's peak of memory: see gc/split.py.)
        with pace.Pace(self.stat_threads, what="blob stats") as paced:
            for part in paced.map(some, chunks):
                collect(part)
        return results

    # --- the delete protocol ----------------------------------------------------

    def _units(self, doomed: Doomed, mark: scan.MarkResult) -> list[str]:
        if doomed.kind == "blob":
            return [paths.blob_dir(doomed.digest)] + [
                paths.layer_link_dir(repo, doomed.digest)
                for repo in mark.layer_links.get(doomed.digest, ())
            ]
        assert doomed.repository is not None
        repo, digest = doomed.repository, doomed.digest
        units = [paths.manifest_revision_dir(repo, digest)]
        try:
            tags = [t.rsplit("/", 1)[-1] for t in self.driver.list(paths.tags_dir(repo))]
        except PathNotFound:
            tags = []
        for tag in tags:
            entry = f"{paths.tag_index_dir(repo, tag)}/{digest.algorithm}/{digest.hex}"
            if self.driver.exists(entry):
                units.append(entry)
        return units

    def _delete(self, report: Report, mark: scan.MarkResult, doomed: list[Doomed]) -> None:
        quarantine = Quarantine(self.driver, report.run_id)
        for kind in ("blob", "manifest"):
            keys = [d.key for d in doomed if d.kind == kind]
            if keys:
                self.index.set_state(kind, keys, "quarantined", quarantine_path=quarantine.root)

        def units(item: Doomed) -> None:
            item.units = self._units(item, mark)

        def hold(item: Doomed) -> None:
            item.held = quarantine.hold(item.units[0])
            for unit in item.units[1:]:
                quarantine.hold(unit)
            crash_point("hold")

        try:
            self._each(doomed, units)
            # (1) quarantine
            with self._timed(report, "delete.quarantine"):
                if self._bulk():
                    self._hold_bulk(quarantine, doomed)
                else:
                    self._each(doomed, hold)
            crash_point("quarantined")
            blob_digests = [str(d.digest) for d in doomed if d.kind == "blob"]
            with self._timed(report, "delete.settle"):
                hook_ran = self._forget(blob_digests, report)
                # (2) settle
                if not hook_ran:
                    self._settle(blob_digests)
            crash_point("settle")
            # (3) re-check
            self._check_stop()
            with self._timed(report, "delete.recheck"):
                remark = scan.mark(
                    snapshot.take(QuarantineOverlay(self.driver, quarantine), self.driver),
                    delete_untagged=self.options.delete_untagged,
                    reference_cache=self._reference_cache(),
                )
            if remark.blob_deletion_blocked:
                for err in remark.errors:
                    if err.blocking:
                        report.error(err.kind, err.message, err.path, repository=err.repository)
                raise _Abort("the re-check could not read or parse everything (see errors)")
            needed = remark.marked
            kept_manifests = {(m.repository, m.digest) for m in remark.manifests if m.kept}
            crash_point("recheck")
        except Exception as exc:  # restore on anything, then decide how to report
            self._restore_all(quarantine, doomed, report, stopped=isinstance(exc, Interrupted))
            if isinstance(exc, _Abort | HookFailed | StorageDriverError):
                report.error("delete-aborted", f"{exc}; the quarantine was restored")
                return
            raise
        # (4) delete the rest
        with self._timed(report, "delete.finish"):
            self._finish(report, quarantine, doomed, needed, kept_manifests, remark, mark)

    def _bulk(self) -> bool:
        """Whether objects move and go in bulk: S3, where the snapshot knows
        every file of a unit, and a copy per file plus a DeleteObjects per 1,000
        replace a listing, a copy and a delete per folder."""
        return isinstance(self.view, snapshot.TreeSnapshot) and all(
            callable(getattr(self.driver, m, None)) for m in ("move_files", "delete_files")
        )

    def _hold_bulk(self, quarantine: Quarantine, doomed: list[Doomed]) -> None:
        """(1) on S3: every listed file of every unit copied into quarantine, then
        the originals deleted in batches (a failure before that leaves them all in
        place, and the quarantine is restored). A unit the snapshot has no file of
        (written since it was taken) moves by itself."""
        assert isinstance(self.view, snapshot.TreeSnapshot)
        moves: list[tuple[str, str, int]] = []
        for item in doomed:
            for unit in item.units:
                listed = self.view.files(unit)
                item.files[unit] = [path for path, _ in listed]
                moves.extend((path, quarantine.location(path), size) for path, size in listed)
        self._check_stop()
        moved = dict(
            zip(
                (m[0] for m in moves),
                self.driver.move_files(moves),  # type: ignore[attr-defined]
                strict=True,
            )
        )
        for item in doomed:
            first = item.units[0]
            item.held = any(moved[path] for path in item.files[first])
            for unit in item.units:
                if not item.files[unit]:
                    held = quarantine.hold(unit)
                    item.held = item.held or (held and unit == first)
            crash_point("hold")

    def _forget(self, digests: list[str], report: Report) -> bool:
        """Make the registry forget the quarantined blobs; True when the hook ran."""
        if self.blob_cache is not None and digests:
            self.blob_cache.forget(digests)
        command = self.options.after_delete_command
        if command:
            self._run_hook(command)
            return True
        if self.options.registry_cache == "inmemory" and digests:
            report.warnings.append(
                "the registry keeps its blob descriptor cache in memory: restart it (or set "
                "--after-delete-command) before it reports the deleted blobs as absent"
            )
        return False

    def _run_hook(self, command: str) -> None:
        timeout = self.options.after_delete_timeout.total_seconds()
        log.info("running after-delete command", extra={"command": command})
        try:
            done = subprocess.run(
                shlex.split(command), timeout=timeout, capture_output=True, check=False
            )
        except subprocess.TimeoutExpired:
            self._observe_hook(None)
            raise HookFailed(f"after-delete command timed out after {timeout:g}s") from None
        except OSError as exc:
            self._observe_hook(None)
            raise HookFailed(f"after-delete command could not start: {exc}") from None
        self._observe_hook(done.returncode)
        log.info("after-delete command finished", extra={"exit_status": done.returncode})
        if done.returncode != 0:
            stderr = done.stderr.decode("utf-8", "replace").strip()[-500:]
            raise HookFailed(f"after-delete command exited {done.returncode}: {stderr}")

    def _observe_hook(self, status: int | None) -> None:
        if self.hook_observer is not None:
            self.hook_observer(status)

    def _settle(self, digests: list[str]) -> None:
        wait = self.options.settle.total_seconds()
        if wait <= 0:
            return
        self.stop.wait(wait)
        if self.blob_cache is not None and digests:
            self.blob_cache.forget(digests)
            self.stop.wait(wait)

    def _restore_all(
        self, quarantine: Quarantine, doomed: list[Doomed], report: Report, *, stopped: bool
    ) -> None:
        """Put every doomed object back; the report says `deferred` after a stop (the
        next run deletes them), `failed` otherwise."""

        def restore(item: Doomed) -> None:
            for unit in item.units:
                self._restore(quarantine, unit, report)

        self._each(doomed, restore, always=True)
        self._close(quarantine, report)
        for kind in ("blob", "manifest"):
            keys = [d.key for d in doomed if d.kind == kind]
            if keys:
                self.index.set_state(kind, keys, "restored")
        for entry in report.blobs + report.manifests:
            if entry["action"] == WOULD_DELETE:
                # report.status is still "running" here: run() sets "interrupted" later.
                entry["action"] = DEFERRED if stopped else FAILED

    def _restore(self, quarantine: Quarantine, unit: str, report: Report) -> bool:
        """Put one unit back; a storage error leaves it in quarantine, where the
        next run finds it and puts it back first thing (restore_leftovers)."""
        try:
            quarantine.restore(unit)
        except StorageDriverError as exc:
            report.error(
                "restore-failed",
                f"{exc}{_LEFT_IN_QUARANTINE}",
                quarantine.location(unit),
            )
            return False
        return True

    def _close(self, quarantine: Quarantine, report: Report) -> None:
        """Remove this run's quarantine folder, unless something is still in it that
        a restore or a delete failed on (reported "failed"): the next run restores
        that, so the report, the index and the audit log stay true."""
        if any(e["kind"] in ("restore-failed", "delete-failed") for e in report.errors):
            return
        try:
            quarantine.close()
        except StorageDriverError as exc:
            report.error("quarantine-cleanup-failed", str(exc), quarantine.root)

    def _finish(
        self,
        report: Report,
        quarantine: Quarantine,
        doomed: list[Doomed],
        needed: set[Digest],
        kept_manifests: set[tuple[str, Digest]],
        remark: scan.MarkResult,
        mark: scan.MarkResult,
    ) -> None:
        actions: dict[tuple[str, str], str] = {}
        deleted: list[Doomed] = []
        batched: list[Doomed] = []  # purged together, per kind (on S3)

        # What manifests left in quarantine by a failed delete reference: they come
        # back with the next run, so that stays (blobs are decided after manifests).
        # The first mark read them; the re-check did not (they were in quarantine).
        held: set[Digest] = set()

        def failed(item: Doomed) -> None:
            actions[(item.kind, item.key)] = FAILED
            if item.kind == "manifest":
                held.update(mark.closure([item.digest]))

        def finish(item: Doomed) -> None:
            restore = (
                item.digest in needed or item.digest in held
                if item.kind == "blob"
                else (item.repository, item.digest) in kept_manifests or item.digest in needed
            )
            if restore or self.stop.is_set():
                if all([self._restore(quarantine, unit, report) for unit in item.units]):
                    actions[(item.kind, item.key)] = KEPT if restore else DEFERRED
                else:
                    failed(item)
                return
            try:
                if item.kind == "blob":
                    self._drop_new_links(item.digest, remark.layer_links.get(item.digest, ()))
                if all(item.files.get(unit) for unit in item.units):
                    batched.append(item)  # deleted below with the others of its kind
                    return
                for unit in item.units[1:] + item.units[:1]:
                    quarantine.purge(unit)
                actions[(item.kind, item.key)] = DELETED
                deleted.append(item)
                crash_point("purge")
            except StorageDriverError as exc:
                failed(item)
                report.error("delete-failed", f"{exc}{_LEFT_IN_QUARANTINE}", item.units[0])

        def purge_batched(items: list[Doomed]) -> None:
            """Links of all, then their primary folders, in DeleteObjects batches."""
            try:
                for first in (False, True):
                    self.driver.delete_files(  # type: ignore[attr-defined]
                        quarantine.location(f)
                        for d in items
                        for u in (d.units[:1] if first else d.units[1:])
                        for f in d.files[u]
                    )
            except StorageDriverError as exc:
                for d in items:
                    failed(d)
                report.error(
                    "delete-failed",
                    f"{exc} ({len(items)} objects){_LEFT_IN_QUARANTINE}",
                    quarantine.root,
                )
                return
            for d in items:
                actions[(d.kind, d.key)] = DELETED
                deleted.append(d)
                crash_point("purge")

        # Crash order: every manifest goes before the blobs (its own blob among
        # them), and an object's links before its primary folder. A run killed in
        # between then leaves, restored by the next run, a whole object that is
        # still garbage, never a revision link without its blob or a dangling link.
        for kind in ("manifest", "blob"):
            batched.clear()
            self._each([d for d in doomed if d.kind == kind], finish, always=True)
            if batched:
                purge_batched(list(batched))
        self._close(quarantine, report)
        blob_digests = [str(d.digest) for d in deleted if d.kind == "blob"]
        if self.blob_cache is not None and blob_digests:
            self.blob_cache.forget(blob_digests)
        for entry in report.blobs:
            entry["action"] = actions.get(("blob", entry["digest"]), entry["action"])
        for entry in report.manifests:
            key = f"{entry['repository']}@{entry['digest']}"
            entry["action"] = actions.get(("manifest", key), entry["action"])
        report.bytes_reclaimed += sum(d.size for d in deleted)
        # The audit log first: a crash before the rows leave "quarantined" is then
        # settled by the next run (settle_index) without a deletion logged twice.
        crash_point("index")
        self.index.record_deletions(
            report.run_id, [(d.kind, d.key, d.repository, d.size) for d in deleted]
        )
        for kind in ("blob", "manifest"):
            crash_point("index")
            by_state: dict[str, list[str]] = defaultdict(list)
            for item in doomed:
                if item.kind == kind:
                    action = actions[(kind, item.key)]
                    state = {DELETED: "deleted", KEPT: "referenced"}.get(action, "pending")
                    by_state[state].append(item.key)
            for state, keys in by_state.items():
                self.index.set_state(kind, keys, state)
        crash_point("index")
        if self.stop.is_set():
            raise Interrupted

    def _drop_new_links(self, digest: Digest, repositories: Iterable[str]) -> None:
        """Delete the layer links to a going blob that were written during the protocol
        (by uploads that found it still there: dangling once it goes), unless the blob
        was uploaded again meanwhile. Then a link may be that upload's, and a manifest
        pushed right after the re-check needs it. So the links are left alone when
        the blob is back before the deletes (a crash then cannot lose them), and
        written back when it is back after them (an upload landing in between)."""
        repositories = list(repositories)
        if not repositories or self.driver.exists(paths.blob_data(digest)):
            return
        dropped = []
        for repo in repositories:
            try:
                self.driver.delete(paths.layer_link_dir(repo, digest))
                dropped.append(repo)
            except PathNotFound:
                pass
        if dropped and self.driver.exists(paths.blob_data(digest)):
            for repo in dropped:
                write_link(self.driver, paths.layer_link(repo, digest), digest)

    def _reference_cache(self) -> Any:
        factory = getattr(self.index, "reference_cache", None)
        return factory() if factory is not None else None


_LEFT_IN_QUARANTINE = "; left in quarantine, the next run puts it back"


class HookFailed(Exception):
    """The after-delete command failed: the quarantine must be restored."""


class _Abort(Exception):
    """The re-check found something it cannot judge: restore and delete nothing."""
