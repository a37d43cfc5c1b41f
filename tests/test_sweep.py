"""The sweep's decisions and its delete protocol, on the in-memory driver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.driver.inmemory import InMemoryDriver
from layergc.errors import StorageDriverError
from layergc.gc.db import open_index
from layergc.gc.sweep import (
    DEFERRED,
    DELETED,
    FAILED,
    KEPT,
    PURGE_UPLOADS,
    WOULD_DELETE,
    Report,
    Sweeper,
    SweepOptions,
)
from layergc.storage import paths
from layergc.storage.registry import Registry

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
NOW_OPTS = SweepOptions(grace=timedelta(0), settle=timedelta(0))


class Store:
    """A small registry built through the layer service, for sweeping."""

    def __init__(self, driver: StorageDriver | None = None) -> None:
        self.driver = driver or InMemoryDriver()
        self.registry = Registry(self.driver)
        self._n = 0

    def layer(self, repo: str, size: int = 100) -> Digest:
        self._n += 1
        data = (f"layer-{self._n}-".encode() * size)[:size]
        upload = self.registry.repository(repo).layers().upload()
        upload.write(data)
        return upload.finish(str(Digest.of(data))).digest

    def manifest(
        self, repo: str, layers: list[Digest], tag: str | None = None, config_size: int = 30
    ) -> Digest:
        config = self.layer(repo, config_size)
        body = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/json", "digest": str(config), "size": 1},
            "layers": [
                {"mediaType": "application/tar", "digest": str(d), "size": 1} for d in layers
            ],
        }
        return self.put(repo, body, tag)

    def index(self, repo: str, children: list[Digest], tag: str | None = None) -> Digest:
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": str(d), "size": 1} for d in children
            ],
        }
        return self.put(repo, body, tag)

    def put(self, repo: str, body: dict[str, Any] | bytes, tag: str | None = None) -> Digest:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        repository = self.registry.repository(repo)
        digest = repository.manifests().put(content)
        if tag:
            repository.tags().tag(tag, digest)
        return digest

    def has_blob(self, digest: Digest) -> bool:
        return self.driver.exists(paths.blob_data(digest))

    def files(self) -> set[str]:
        return {i.path for i in self.driver.walk("/") if not i.is_dir}


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def index(tmp_path: Path) -> Any:
    idx = open_index(f"sqlite:///{tmp_path}/index.db")
    yield idx
    idx.close()


def sweep(store: Store, index: Any, options: SweepOptions = NOW_OPTS, **kw: Any) -> Report:
    return Sweeper(store.driver, index, options, **kw).run()


def actions(items: Iterable[dict[str, Any]], key: str = "digest") -> dict[str, str]:
    return {item[key]: item["action"] for item in items}


def test_dry_run_reports_garbage_and_deletes_nothing(store: Store, index: Any) -> None:
    kept = [store.layer("team/app"), store.layer("team/app")]
    store.manifest("team/app", kept, tag="v1")
    orphan = store.layer("team/app")
    before = store.files()

    report = sweep(store, index, SweepOptions(dry_run=True, grace=timedelta(0)))

    assert report.status == "succeeded"
    assert actions(report.blobs) == {str(orphan): WOULD_DELETE}
    assert report.bytes_reclaimable == 100 and report.bytes_reclaimed == 0
    assert report.top_repositories == [{"repository": "team/app", "bytes": 100}]
    assert store.files() == before


def test_sweep_deletes_blob_folder_and_every_layer_link(store: Store, index: Any) -> None:
    shared = store.layer("a")
    store.manifest("a", [shared], tag="v1")
    orphan = store.layer("a")
    store.registry.repository("b").layers().upload().close()  # b exists
    # the same orphan content pushed to b: one blob, two layer links
    data = store.registry.repository("a").layers().fetch(str(orphan)).read()
    up = store.registry.repository("b").layers().upload()
    up.write(data)
    up.finish(str(orphan))

    report = sweep(store, index)

    assert actions(report.blobs) == {str(orphan): DELETED}
    assert not store.has_blob(orphan)
    for repo in ("a", "b"):
        assert not store.driver.exists(paths.layer_link_dir(repo, orphan))
    assert store.has_blob(shared)
    assert store.registry.repository("a").layers().exists(str(shared))
    assert report.bytes_reclaimed == 100
    [deletion] = [d for d in index.deletions(report.run_id) if d.kind == "blob"]
    assert (deletion.key, deletion.size) == (str(orphan), 100)
    assert not any(i for i in store.driver.walk("/") if "quarantine/" in i.path)


def test_tag_left_by_a_manifest_delete_is_a_warning_not_an_error(store: Store, index: Any) -> None:
    """A manifest DELETE removes the revision link before the tags: a sweep in between
    sees a tag without revision. It keeps the manifest and still succeeds."""
    layers = [store.layer("team/app")]
    d = store.manifest("team/app", layers, tag="v1")
    store.driver.delete(paths.manifest_revision_link("team/app", d))

    report = sweep(store, index, SweepOptions(dry_run=True, grace=timedelta(0)))

    assert report.status == "succeeded" and report.errors == []
    assert [w for w in report.warnings if w.startswith("tag-without-revision: ")]
    assert actions(report.blobs) == {}  # the manifest and its layer are kept


def test_grace_defers_until_seen_long_enough(store: Store, index: Any) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    orphan = store.layer("a")
    options = SweepOptions(grace=timedelta(hours=1), settle=timedelta(0))

    first = sweep(store, index, options)
    second = sweep(store, index, options)

    assert actions(first.blobs) == {str(orphan): DEFERRED}
    assert actions(second.blobs) == {str(orphan): DEFERRED}
    assert store.has_blob(orphan)
    [candidate] = index.pending_candidates()
    assert candidate.key == str(orphan)
    assert candidate.first_seen_unreferenced <= datetime.now(UTC)


def test_second_run_finds_the_same_and_deletes_nothing_new(store: Store, index: Any) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    store.layer("a")
    dry = SweepOptions(dry_run=True, grace=timedelta(0))
    first, second = sweep(store, index, dry), sweep(store, index, dry)
    assert first.blobs == second.blobs
    real = sweep(store, index)
    again = sweep(store, index)
    assert [b["action"] for b in real.blobs] == [DELETED]
    assert again.blobs == [] and again.bytes_reclaimed == 0


def test_unparseable_manifest_blocks_blob_deletion(store: Store, index: Any) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    orphan = store.layer("a")
    bad = store.put("a", b"{not json")

    report = sweep(store, index)

    assert report.status == "failed" and report.blob_deletion_blocked
    assert actions(report.blobs) == {str(orphan): DEFERRED}
    assert store.has_blob(orphan)
    assert any(str(bad.hex) in (e.get("path") or "") for e in report.errors)


def test_multi_arch_children_are_kept_with_delete_untagged(store: Store, index: Any) -> None:
    amd = store.manifest("multi", [store.layer("multi")])
    arm = store.manifest("multi", [store.layer("multi")])
    store.index("multi", [amd, arm], tag="latest")
    old = store.manifest("multi", [store.layer("multi")])  # untagged, unreferenced
    options = SweepOptions(delete_untagged=True, grace=timedelta(0), settle=timedelta(0))

    report = sweep(store, index, options)

    assert actions(report.manifests) == {str(old): DELETED}
    assert not store.driver.exists(paths.manifest_revision_dir("multi", old))
    assert not store.has_blob(old)
    for child in (amd, arm):
        assert store.has_blob(child)
        assert store.driver.exists(paths.manifest_revision_link("multi", child))


def test_untagged_manifest_within_grace_keeps_its_blobs(store: Store, index: Any) -> None:
    layer = store.layer("a")
    untagged = store.manifest("a", [layer])
    options = SweepOptions(delete_untagged=True, grace=timedelta(hours=1), settle=timedelta(0))

    report = sweep(store, index, options)

    assert actions(report.manifests) == {str(untagged): DEFERRED}
    assert report.blobs == []  # its blobs are not even candidates yet
    assert store.has_blob(layer) and store.has_blob(untagged)


class PushDuringSettle:
    """A blob cache whose first clear is the moment a racing client pushes a
    manifest needing a quarantined blob (it saw the blob before the move)."""

    def __init__(self, store: Store, repo: str, needed: Digest) -> None:
        self.store, self.repo, self.needed = store, repo, needed
        self.calls: list[set[str]] = []
        self.pushed: Digest | None = None

    def forget(self, digests: Iterable[str]) -> int:
        self.calls.append(set(digests))
        if self.pushed is None:
            assert not self.store.has_blob(self.needed)  # already quarantined
            self.pushed = self.store.manifest(self.repo, [self.needed], tag="raced")
        return 0


def test_recheck_restores_a_blob_that_a_racing_push_needs(store: Store, index: Any) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    orphan = store.layer("a")
    other = store.layer("a")
    race = PushDuringSettle(store, "a", orphan)

    report = sweep(store, index, blob_cache=race)

    assert actions(report.blobs) == {str(orphan): KEPT, str(other): DELETED}
    assert store.has_blob(orphan)
    assert store.driver.exists(paths.layer_link("a", orphan))
    assert not store.has_blob(other)
    assert race.calls[0] == {str(orphan), str(other)}
    assert race.calls[-1] == {str(other)}  # the final clear names only what went
    assert race.pushed is not None
    assert {c.key: c.state for c in index.candidates("blob", [str(orphan)]).values()} == {
        str(orphan): "referenced"
    }


def test_failed_hook_restores_the_whole_quarantine(store: Store, index: Any) -> None:
    store.manifest("a", [store.layer("a")], tag="v1")
    orphan = store.layer("a")
    before = store.files()
    statuses: list[int | None] = []
    options = SweepOptions(
        grace=timedelta(0), settle=timedelta(0), after_delete_command="sh -c 'exit 3'"
    )

    report = sweep(store, index, options, hook_observer=statuses.append)

    assert statuses == [3]
    assert report.status == "failed"
    assert actions(report.blobs) == {str(orphan): FAILED}
    assert store.files() == before


def test_hook_runs_once_and_the_delete_proceeds(store: Store, index: Any) -> None:
    store.layer("a")
    statuses: list[int | None] = []
    options = SweepOptions(grace=timedelta(0), settle=timedelta(0), after_delete_command="true")
    report = sweep(store, index, options, hook_observer=statuses.append)
    assert statuses == [0]
    assert [b["action"] for b in report.blobs] == [DELETED]


def test_inmemory_registry_cache_without_hook_warns(store: Store, index: Any) -> None:
    store.layer("a")
    options = SweepOptions(grace=timedelta(0), settle=timedelta(0), registry_cache="inmemory")
    report = sweep(store, index, options)
    assert any("restart" in w for w in report.warnings)


def test_leftover_quarantine_of_a_crashed_run_is_restored(store: Store, index: Any) -> None:
    layer = store.layer("a")
    store.manifest("a", [layer], tag="v1")
    # a crashed run had moved a kept blob and its link into its quarantine
    for unit in (paths.blob_dir(layer), paths.layer_link_dir("a", layer)):
        store.driver.move(unit, paths.quarantined(41, unit))

    report = sweep(store, index, SweepOptions(grace=timedelta(hours=1), settle=timedelta(0)))

    assert store.has_blob(layer) and store.driver.exists(paths.layer_link("a", layer))
    assert any("restored" in w for w in report.warnings)
    assert report.blobs == []


def test_stop_before_the_delete_rolls_back(store: Store, index: Any) -> None:
    store.layer("a")
    before = store.files()
    stop = threading.Event()

    class StopWhenQuarantined:
        def forget(self, digests: Iterable[str]) -> int:
            stop.set()
            return 0

    report = sweep(store, index, blob_cache=StopWhenQuarantined(), stop=stop)

    assert report.status == "interrupted"
    assert store.files() == before
    assert index.run(report.run_id).status == "interrupted"
    # Put back for the next run, not a failure.
    assert [b["action"] for b in report.blobs] == ["deferred"]


def test_stale_uploads_are_purged_and_fresh_ones_kept(store: Store, index: Any) -> None:
    layers = store.registry.repository("a").layers()
    stale, fresh, broken = layers.upload(), layers.upload(), layers.upload()
    for u in (stale, fresh, broken):
        u.write(b"partial")
        u.close()
    store.driver.put_content(
        paths.upload_started_at("a", stale.uuid),
        (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ").encode(),
    )
    store.driver.put_content(paths.upload_started_at("a", broken.uuid), b"yesterday")

    report = Sweeper(store.driver, index, NOW_OPTS).run(PURGE_UPLOADS)

    assert actions(report.uploads, "uuid") == {stale.uuid: DELETED}
    assert [u["size"] for u in report.uploads] == [7]
    assert not store.driver.exists(paths.upload_dir("a", stale.uuid))
    assert store.driver.exists(paths.upload_dir("a", fresh.uuid))
    assert store.driver.exists(paths.upload_dir("a", broken.uuid))
    assert any(broken.uuid in w and "startedat" in w for w in report.warnings)
    assert report.blobs == []  # purge-uploads mode leaves blobs alone


# --- what the decision stats -----------------------------------------------------------


class CountingStats(InMemoryDriver):
    """An in-memory driver that records every path stat'ed, and fails the stat of
    `failing`."""

    def __init__(self) -> None:
        super().__init__()
        self.stated: list[str] = []
        self.failing = ""

    def stat(self, path: str) -> Any:
        self.stated.append(path)
        if path == self.failing:
            raise StorageDriverError(f"injected: {path}")
        return super().stat(path)


def test_only_what_may_be_deleted_is_stated(index: Any) -> None:
    """A blob's size is stat'ed once, when first seen; its data and layer links
    again only once its grace is over; at a zero grace every link is checked."""
    store = Store(CountingStats())
    driver = store.driver
    assert isinstance(driver, CountingStats)
    store.manifest("team/app", [store.layer("team/app")], tag="v1")
    orphan = store.layer("team/app", size=77)
    data, link = paths.blob_data(orphan), paths.layer_link("team/app", orphan)
    day = SweepOptions(dry_run=True, grace=timedelta(hours=24))

    driver.stated.clear()  # (the uploads stat'ed too)
    first = sweep(store, index, day)
    assert actions(first.blobs) == {str(orphan): DEFERRED}
    assert driver.stated.count(data) == 1 and link not in driver.stated

    driver.stated.clear()
    again = sweep(store, index, day)
    assert again.blobs == first.blobs  # the size from the index: {"size": 77, ...}
    assert first.blobs[0]["size"] == 77
    assert data not in driver.stated and link not in driver.stated

    driver.stated.clear()
    now = sweep(store, index, SweepOptions(dry_run=True, grace=timedelta(0)))
    assert actions(now.blobs) == {str(orphan): WOULD_DELETE}
    assert driver.stated.count(data) == 1 and driver.stated.count(link) == 1


def test_a_blob_seen_first_at_zero_grace_is_stated_once_with_its_links(index: Any) -> None:
    store = Store(CountingStats())
    driver = store.driver
    assert isinstance(driver, CountingStats)
    orphan = store.layer("team/app")
    driver.stated.clear()
    report = sweep(store, index, SweepOptions(dry_run=True, grace=timedelta(0)))
    assert actions(report.blobs) == {str(orphan): WOULD_DELETE}
    assert driver.stated.count(paths.blob_data(orphan)) == 1
    assert driver.stated.count(paths.layer_link("team/app", orphan)) == 1


def test_a_blob_that_cannot_be_stated_is_tried_and_reported_once(index: Any) -> None:
    driver = CountingStats()
    store = Store(driver)
    orphan = store.layer("team/app")
    driver.failing = paths.blob_data(orphan)
    driver.stated.clear()
    report = sweep(store, index, SweepOptions(dry_run=True, grace=timedelta(0)))
    assert report.blobs == []  # left alone
    assert driver.stated.count(paths.blob_data(orphan)) == 1
    assert [e["kind"] for e in report.errors] == ["stat-failed"]


def test_a_due_blob_without_a_recorded_size_is_judged_by_its_links_too(index: Any) -> None:
    """A candidate past its grace whose size the index lacks is stat'ed for its size,
    then with its links: when a link cannot be stat'ed, the blob is left alone."""
    driver = CountingStats()
    store = Store(driver)
    orphan = store.layer("team/app")
    run_id = index.start_run(mode="sweep", dry_run=True)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    index.observe_unreferenced(run_id, "blob", [(str(orphan), None, None)], an_hour_ago)
    index.finish_run(run_id, status="succeeded")
    time.sleep(0.01)  # the data is then older than the grace below
    driver.failing = paths.layer_link("team/app", orphan)
    report = sweep(store, index, SweepOptions(dry_run=True, grace=timedelta(milliseconds=1)))
    assert report.blobs == []  # left alone
    assert [e["kind"] for e in report.errors] == ["stat-failed"]

