"""Races and failures of the delete protocol. First, two races that tests/test_online.py
found against the Go registry, each replayed here deterministically (in memory, the
racing client's writes made from the blob-cache clear or the re-check's crash point).

1. The re-check (step 3) reads manifests in quarantine. A client pushed an image
   whose manifest blob a sweep had just found unreferenced; its revision link
   landed after the mark, while the manifest blob sat in quarantine. The re-check
   reads manifests through QuarantineOverlay (then with a reader on every driver
   but a local one read serially, now with get_content everywhere), and the
   overlay's reader did not look in the quarantine: the revision counted as "no
   manifest blob: not a root", and the sweep deleted the manifest, its config and
   its layers under a live tag.
2. The delete (step 4) keeps the layer links of a blob uploaded again. A client,
   told during the settle that a quarantined layer was unknown, uploaded it again
   (data back in the blob store, a new layer link) and pushed its manifest just
   after the re-check. Step 4 deleted the "links made meanwhile" to the blob it
   was deleting, the new upload's link among them: the image's repository lost
   its link, and the registry answered 404 for the layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from layergc.digest import Digest
from layergc.driver.inmemory import InMemoryDriver
from layergc.errors import StorageDriverError
from layergc.gc.db import open_index
from layergc.gc.quarantine import Quarantine, QuarantineOverlay
from layergc.gc.sweep import KEPT, SweepOptions
from layergc.storage import paths
from tests.test_sweep import Store, actions, sweep


@pytest.fixture
def store() -> Store:
    return Store()  # the in-memory driver, read through the overlay by the re-check


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Any]:
    idx = open_index(f"sqlite:///{tmp_path}/index.db")
    yield idx
    idx.close()


class RevisionDuringSettle:
    """A blob cache whose first clear is the moment a client's manifest PUT lands:
    it links a revision (and a tag) to a manifest whose blob is in quarantine."""

    def __init__(self, store: Store, repo: str, manifest: Digest) -> None:
        self.store, self.repo, self.manifest = store, repo, manifest
        self.linked = False

    def forget(self, digests: Iterable[str]) -> int:
        if not self.linked:
            assert not self.store.has_blob(self.manifest)  # already quarantined
            link = str(self.manifest).encode()
            driver = self.store.driver
            driver.put_content(paths.manifest_revision_link(self.repo, self.manifest), link)
            driver.put_content(paths.tag_current_link(self.repo, "again"), link)
            self.linked = True
        return 0


def test_recheck_keeps_a_quarantined_manifest_a_new_revision_names(
    store: Store, index: Any
) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    layer = store.layer("a")
    manifest = store.manifest("a", [layer])
    store.driver.delete(paths.manifest_revision_dir("a", manifest))  # DELETE of the manifest
    race = RevisionDuringSettle(store, "a", manifest)

    report = sweep(store, index, blob_cache=race)

    assert race.linked
    # The manifest, its config and its layer: every candidate went back.
    kept = actions(report.blobs)
    assert len(kept) == 3 and set(kept.values()) == {KEPT}, kept
    assert str(manifest) in kept and str(layer) in kept
    assert all(store.has_blob(Digest.parse(d)) for d in kept)
    assert report.errors == []


def test_overlay_reader_finds_a_quarantined_blob(store: Store) -> None:
    digest = store.layer("a", 64)
    data = store.driver.get_content(paths.blob_data(digest))
    quarantine = Quarantine(store.driver, 1)
    quarantine.hold(paths.blob_dir(digest))
    overlay = QuarantineOverlay(store.driver, quarantine)
    with overlay.reader(paths.blob_data(digest)) as f:
        assert f.read() == data
    with overlay.reader(paths.blob_data(digest), 10) as f:
        assert f.read() == data[10:]


def upload(store: Store, repo: str, data: bytes) -> Digest:
    writer = store.registry.repository(repo).layers().upload()
    writer.write(data)
    return writer.finish(str(Digest.of(data))).digest


class UploadDuringSettle:
    """A blob cache whose first clear is the moment a client, told the blob is unknown,
    uploads it again into another repository (data back in the blob store, a new link)."""

    def __init__(self, store: Store, repo: str, data: bytes) -> None:
        self.store, self.repo, self.data = store, repo, data
        self.uploaded: Digest | None = None

    def forget(self, digests: Iterable[str]) -> int:
        if self.uploaded is None:
            self.uploaded = upload(self.store, self.repo, self.data)
        return 0


def test_a_blob_uploaded_again_keeps_its_new_layer_link(
    store: Store, index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    data = b"a layer that is garbage, then pushed again" * 50
    layer = upload(store, "a", data)  # unreferenced: garbage
    race = UploadDuringSettle(store, "b", data)
    pushed: list[Digest] = []

    def manifest_after_recheck(step: str) -> None:
        # The client's manifest PUT lands after the re-check read the revisions: the
        # registry accepts it, the blob and b's link being there.
        if step == "recheck" and not pushed:
            pushed.append(store.manifest("b", [layer], tag="v1"))

    monkeypatch.setattr("layergc.gc.sweep.crash_point", manifest_after_recheck)

    sweep(store, index, blob_cache=race)

    assert race.uploaded == layer and pushed
    assert store.has_blob(layer)  # the new upload's data stays: only the old copy went
    # b:v1 needs `layer` through b's link; without it the registry answers 404.
    assert store.driver.exists(paths.layer_link("b", layer))


class DanglingLinkDuringSettle:
    """A blob cache whose first clear is the moment an upload that found the blob still
    in the blob store (so did not move its own data in) links it into another
    repository: a link to a blob that is about to go."""

    def __init__(self, store: Store, repo: str, digest: Digest) -> None:
        self.store, self.repo, self.digest = store, repo, digest
        self.linked = False

    def forget(self, digests: Iterable[str]) -> int:
        if not self.linked:
            link = paths.layer_link(self.repo, self.digest)
            self.store.driver.put_content(link, str(self.digest).encode())
            self.linked = True
        return 0


def test_a_link_made_meanwhile_to_a_blob_that_goes_goes_too(store: Store, index: Any) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    layer = upload(store, "a", b"garbage" * 100)

    report = sweep(store, index, blob_cache=DanglingLinkDuringSettle(store, "b", layer))

    assert actions(report.blobs) == {str(layer): "deleted"}
    assert not store.has_blob(layer)
    assert not store.driver.exists(paths.layer_link_dir("b", layer))
    assert not store.driver.exists(paths.layer_link_dir("a", layer))


class _Killed(BaseException):
    """The process dies here (not an Exception: nothing in the sweep catches it)."""


class _DiesOnExists(InMemoryDriver):
    """Dies at its first `exists` of one path (the moment _drop_new_links looks)."""

    def __init__(self) -> None:
        super().__init__()
        self.dies_at: str | None = None

    def exists(self, path: str) -> bool:
        if path == self.dies_at:
            self.dies_at = None
            raise _Killed(path)
        return super().exists(path)


def test_a_crash_while_new_links_are_judged_loses_no_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As test_a_blob_uploaded_again_keeps_its_new_layer_link, killed at the check
    of the blob's data: the re-upload's link was never deleted, so nothing that the
    image pushed after the re-check needs is lost."""
    store = Store(_DiesOnExists())
    store.manifest("a", [store.layer("a")], tag="v1")
    data = b"a layer that is garbage, then pushed again" * 50
    layer = upload(store, "a", data)
    pushed: list[Digest] = []

    def manifest_after_recheck(step: str) -> None:
        if step == "recheck" and not pushed:
            pushed.append(store.manifest("b", [layer], tag="v1"))
            store.driver.dies_at = paths.blob_data(layer)  # type: ignore[attr-defined]

    monkeypatch.setattr("layergc.gc.sweep.crash_point", manifest_after_recheck)
    index = open_index(f"sqlite:///{tmp_path}/index.db")
    try:
        with pytest.raises(_Killed):
            sweep(store, index, blob_cache=UploadDuringSettle(store, "b", data))
        monkeypatch.setattr("layergc.gc.sweep.crash_point", lambda step: None)
        sweep(store, index)  # the next run restores what the dead one left
    finally:
        index.close()
    assert store.driver.exists(paths.layer_link("b", layer))
    store.registry.repository("b").layers().fetch(str(layer)).close()


class _FailsFirstLinkPurge(InMemoryDriver):
    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def delete(self, path: str) -> None:
        if self.armed and path.startswith("/layergc/quarantine/") and "/_layers/" in path:
            self.armed = False
            raise StorageDriverError(f"injected: delete {path}")
        super().delete(path)


def test_a_failed_delete_is_left_in_quarantine_and_put_back(index: Any) -> None:
    """A delete that fails is reported "failed": the blob must then not be deleted
    anyway with the quarantine folder (the report, the index and the audit log would
    lie); it stays in quarantine, and the next run puts it back."""
    store = Store(_FailsFirstLinkPurge())
    store.manifest("team/app", [store.layer("team/app")], tag="v1")
    orphan = store.layer("team/app")

    report = sweep(store, index)

    assert actions(report.blobs)[str(orphan)] == "failed"
    assert report.bytes_reclaimed == 0
    assert [e["kind"] for e in report.errors] == ["delete-failed"]
    assert index.candidates("blob", [str(orphan)])[str(orphan)].state == "pending"
    assert not index.deletions(report.run_id)
    second = sweep(store, index, SweepOptions(grace=timedelta(hours=24), settle=timedelta(0)))
    assert any("restored" in w for w in second.warnings)
    assert store.has_blob(orphan)
    assert store.driver.exists(paths.layer_link("team/app", orphan))


class _Unreadable(InMemoryDriver):
    def __init__(self) -> None:
        super().__init__()
        self.unreadable: str | None = None

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        if path == self.unreadable:
            raise StorageDriverError("injected: EIO")
        return super().get_content(path, limit)


def test_a_blocked_mark_starts_no_grace(index: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blobs of a manifest a mark could not read look unreferenced to it: their
    grace must not start then, or they could go as soon as the manifest is deleted."""
    store = Store(_Unreadable())
    layer = store.layer("a")
    image = store.manifest("a", [layer], tag="v1")
    options = SweepOptions(grace=timedelta(hours=24), settle=timedelta(0))
    start = datetime.now(UTC)
    monkeypatch.setattr("layergc.gc.sweep._now", lambda: start)
    store.driver.unreadable = paths.blob_data(image)  # type: ignore[attr-defined]
    blocked = sweep(store, index, options)
    assert blocked.blob_deletion_blocked
    store.driver.unreadable = None  # type: ignore[attr-defined]
    store.driver.delete(paths.manifest_revision_dir("a", image))
    store.driver.delete(paths.tag_dir("a", "v1"))
    monkeypatch.setattr("layergc.gc.sweep._now", lambda: start + timedelta(hours=25))

    report = sweep(store, index, options)

    assert actions(report.blobs)[str(layer)] == "deferred"
    assert store.has_blob(layer)


def test_a_deferred_index_keeps_its_children_revisions(
    index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--delete-untagged: an untagged child old enough to go stays while an untagged
    index naming it is still inside its grace (deleting it would break the index)."""
    store = Store()
    store.manifest("multi", [store.layer("multi")], tag="keep")
    child = store.manifest("multi", [store.layer("multi")])
    options = SweepOptions(delete_untagged=True, grace=timedelta(hours=1), settle=timedelta(0))
    start = datetime.now(UTC)
    monkeypatch.setattr("layergc.gc.sweep._now", lambda: start + timedelta(hours=2))
    sweep(store, index, options)  # the child's grace starts
    assert store.driver.exists(paths.manifest_revision_link("multi", child))
    parent = store.index("multi", [child])  # pushed by digest, to be tagged soon
    monkeypatch.setattr("layergc.gc.sweep._now", lambda: start + timedelta(hours=4))

    report = sweep(store, index, options)

    assert actions(report.manifests) == {str(child): "deferred", str(parent): "deferred"}
    assert store.driver.exists(paths.manifest_revision_link("multi", child))


class _FailsRevisionPurge(InMemoryDriver):
    def delete(self, path: str) -> None:
        if path.startswith("/layergc/quarantine/") and "/_manifests/revisions/" in path:
            raise StorageDriverError(f"injected: delete {path}")
        super().delete(path)


def test_a_manifest_whose_delete_failed_keeps_its_blobs(index: Any) -> None:
    """--delete-untagged: a manifest left in quarantine by a failed delete comes back
    with the next run, so its own blob and what it references must not go meanwhile
    (a revision without its manifest blob is a broken image)."""
    store = Store(_FailsRevisionPurge())
    store.manifest("a", [store.layer("a")], tag="v1")
    layer = store.layer("a")
    untagged = store.manifest("a", [layer])
    options = SweepOptions(delete_untagged=True, grace=timedelta(0), settle=timedelta(0))

    report = sweep(store, index, options)

    assert actions(report.manifests) == {str(untagged): "failed"}
    assert actions(report.blobs)[str(untagged)] == "kept"
    assert store.has_blob(untagged) and store.has_blob(layer)
    store.driver.__class__ = InMemoryDriver  # the storage mends
    second = sweep(store, index, SweepOptions(grace=timedelta(hours=24), settle=timedelta(0)))
    assert any("restored" in w for w in second.warnings)
    assert not [e for e in second.errors if e["kind"] == "missing-manifest-blob"]
    assert store.driver.exists(paths.manifest_revision_link("a", untagged))
