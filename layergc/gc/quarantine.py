"""Step (1) of the delete protocol: moving doomed objects out of the registry's view.

A quarantined object keeps its path under `/layergc/quarantine/<run>/`, so the
quarantine is self-describing: a run that crashed leaves folders whose paths
say where they came from, and the next run can put every file back without
trusting anything but the tree itself (the index only adds what the run was).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, BinaryIO

from layergc.digest import Digest
from layergc.driver.base import FileInfo, FileWriter, StorageDriver
from layergc.errors import InvalidDigest, PathNotFound, StorageDriverError
from layergc.gc.crashpoints import crash_point
from layergc.storage import paths

log = logging.getLogger(__name__)


class Quarantine:
    """The quarantine of one run."""

    def __init__(self, driver: StorageDriver, run_id: int) -> None:
        self.driver = driver
        self.run_id = run_id
        self.root = paths.quarantine_dir(run_id)

    def location(self, path: str) -> str:
        return paths.quarantined(self.run_id, path)

    def hold(self, path: str) -> bool:
        """Move `path` into quarantine; False if it was already gone."""
        try:
            self.driver.move(path, self.location(path))
        except PathNotFound:
            return False
        return True

    def restore(self, path: str) -> None:
        """Put `path` back, unless the registry wrote it again meanwhile (keep the new one)."""
        held = self.location(path)
        if not self.driver.exists(held):
            return  # never held (it was gone), or already back
        if self.driver.exists(path):
            _delete_quietly(self.driver, held)
            return
        try:
            self.driver.move(held, path)
        except PathNotFound:
            pass

    def purge(self, path: str) -> None:
        """Delete the quarantined copy of `path` for good."""
        _delete_quietly(self.driver, self.location(path))

    def close(self) -> None:
        """Remove the (now empty) quarantine folder of this run."""
        _delete_quietly(self.driver, self.root)


def _delete_quietly(driver: StorageDriver, path: str) -> None:
    try:
        driver.delete(path)
    except PathNotFound:
        pass


def leftover_runs(driver: StorageDriver) -> list[int]:
    """Runs whose quarantine is still on storage (they crashed or were killed)."""
    try:
        names = [p.rsplit("/", 1)[-1] for p in driver.list(paths.QUARANTINE)]
    except PathNotFound:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def restore_leftovers(driver: StorageDriver) -> list[str]:
    """Put back every file of every leftover quarantine; returns the restored paths.

    Restoring is always safe: it returns storage to its state before the crashed
    run moved anything, and this run's own mark decides afresh what is garbage.
    """
    restored: list[str] = []
    for run_id in leftover_runs(driver):
        quarantine = Quarantine(driver, run_id)
        prefix = quarantine.root
        files = [info.path for info in driver.walk(prefix) if not info.is_dir]
        for held in files:
            original = held[len(prefix) :]
            if not original.startswith(paths.V2 + "/"):
                log.warning("unexpected file in quarantine left alone", extra={"path": held})
                continue
            if driver.exists(original):
                _delete_quietly(driver, held)
            else:
                try:
                    driver.move(held, original)
                    restored.append(original)
                except PathNotFound:
                    pass
            crash_point("leftover")
        quarantine.close()
        log.info(
            "restored quarantine of an interrupted run",
            extra={"quarantine_run": run_id, "files": len(restored)},
        )
    return restored


def settle_index(driver: StorageDriver, index: Any) -> tuple[int, int]:
    """After restore_leftovers: settle the index rows a crashed run left "quarantined".

    An object that is gone was deleted by that run before it died: its row says
    "deleted", and the audit log gets it under that run (unless the run wrote it
    there before dying). One that is back (restore_leftovers put it back) is
    "pending" again, with its grace period kept, and this run judges it afresh.
    Returns (deleted, pending).
    """
    gone: dict[str, list[str]] = defaultdict(list)
    back: dict[str, list[str]] = defaultdict(list)
    audit: dict[int, list[tuple[str, str, str | None, int | None]]] = defaultdict(list)
    for row in index.quarantined():
        try:
            if row.kind == "blob":
                path = paths.blob_data(Digest.parse(row.key))
            else:
                repository, _, digest = row.key.rpartition("@")
                path = paths.manifest_revision_link(repository, Digest.parse(digest))
            exists = driver.exists(path)
        except (InvalidDigest, StorageDriverError):
            continue  # unsure: a later run settles it
        (back if exists else gone)[row.kind].append(row.key)
        if not exists and row.last_run_id is not None:
            audit[row.last_run_id].append((row.kind, row.key, row.repository, row.size))
    for run_id, items in audit.items():
        done = {(d.kind, d.key) for d in index.deletions(run_id)}
        index.record_deletions(run_id, [i for i in items if (i[0], i[1]) not in done])
    for kind, keys in gone.items():
        index.set_state(kind, keys, "deleted")
    for kind, keys in back.items():
        index.set_state(kind, keys, "pending")
    return sum(map(len, gone.values())), sum(map(len, back.values()))


class QuarantineOverlay(StorageDriver):
    """A read view that finds blob data in the quarantine when it left the blob store.

    The re-check (step 3) must read manifests that were quarantined, since a new
    tag or index can point at a manifest whose blob is in quarantine right now.
    """

    name = "quarantine-overlay"

    def __init__(self, driver: StorageDriver, quarantine: Quarantine) -> None:
        self._driver = driver
        self._quarantine = quarantine

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        try:
            return self._driver.get_content(path, limit)
        except PathNotFound:
            if not path.startswith(paths.BLOBS + "/"):
                raise
            return self._driver.get_content(self._quarantine.location(path), limit)

    def put_content(self, path: str, content: bytes) -> None:
        raise PermissionError("the quarantine overlay is read-only")

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        # As get_content: a quarantined blob is still read, by whatever reads it.
        try:
            return self._driver.reader(path, offset)
        except PathNotFound:
            if not path.startswith(paths.BLOBS + "/"):
                raise
            return self._driver.reader(self._quarantine.location(path), offset)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        raise PermissionError("the quarantine overlay is read-only")

    def stat(self, path: str) -> FileInfo:
        try:
            return self._driver.stat(path)
        except PathNotFound:
            if not path.startswith(paths.BLOBS + "/"):
                raise
            return self._driver.stat(self._quarantine.location(path))

    def list(self, path: str) -> list[str]:
        return self._driver.list(path)

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        return self._driver.list_entries(path)  # type: ignore[attr-defined]

    def move(self, source: str, dest: str) -> None:
        raise PermissionError("the quarantine overlay is read-only")

    def delete(self, path: str) -> None:
        raise PermissionError("the quarantine overlay is read-only")

    def walk(self, path: str) -> Iterator[FileInfo]:
        return self._driver.walk(path)
