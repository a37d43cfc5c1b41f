"""`layergc sweep` against the Go registry on S3 (issue 5, "Interop"), and the
S3-only parts of a sweep: the listing snapshot and aborting multipart uploads.

The Go registry's `s3` driver and layergc share one moto bucket (under a
rootdirectory). Images arrive with skopeo; a few HTTP calls make the garbage:

    library/base:latest   OCI image A = [base, a]
    team/app:v1           Docker schema2 B = [base, b], retagged to C = [base, c]
                          (B stays an untagged revision: kept without
                          --delete-untagged)
    team/app              E = [e] pushed as :tmp, then its manifest DELETEd;
                          an orphan blob; uploads: one PATCHed by Go (its data
                          in a multipart upload in progress), one POST only,
                          one a layergc writer left open (a multipart upload
                          and no data object), all three with `startedat`
                          written 10 days back through the S3 driver; and a
                          fresh PATCHed one
    org/multi:stable      an OCI index of two platforms (`skopeo copy --all`)

Garbage (what Go's dry run lists too): the orphan, E's manifest, config and
layer `e`. The scenario is built once per module; the real sweep runs last.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from layergc.digest import Digest
from layergc.driver.s3 import S3Driver
from layergc.gc import scan, snapshot, treegen
from layergc.gc.db import open_index
from layergc.gc.sweep import DELETED, KEPT
from layergc.storage import paths
from tests.support.components import require_binary
from tests.support.goregistry import GoRegistry
from tests.support.images import OCILayout, pull_and_verify, push
from tests.support.s3server import MotoServer, make_s3_driver
from tests.test_sweep import PushDuringSettle, Store, actions, sweep

pytest_plugins = ["tests.conftest_s3"]

pytestmark = [pytest.mark.s3, pytest.mark.interop]

ROOT = "/registry"
STALE_AGE = timedelta(days=10)
SWEEP_TIMEOUT = 120
PART = 64 << 10  # parts of the layergc writer left open (the test server's minimum)


@dataclass(frozen=True)
class S3Scenario:
    server: MotoServer
    bucket: str
    registry: GoRegistry
    driver: S3Driver
    tags: dict[tuple[str, str], str]  # (repo, tag) -> digest
    pulls: tuple[tuple[str, str, bool], ...]  # (repo, ref, all platforms)
    garbage: frozenset[str]
    stale_uploads: frozenset[tuple[str, str]]
    fresh_uploads: frozenset[tuple[str, str]]
    go_upload: tuple[str, str]  # stale, PATCHed by Go: a multipart upload in progress
    open_upload: tuple[str, str]  # stale, a layergc writer left open

    def key(self, driver_path: str) -> str:
        return self.driver.key_for(driver_path)

    def multipart_uploads(self, repo: str, uuid: str) -> list[str]:
        """Keys of the multipart uploads in progress under an upload's folder."""
        prefix = self.key(paths.upload_dir(repo, uuid)) + "/"
        response = self.server.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in response.get("Uploads", [])]

    def keys(self, driver_path: str) -> list[str]:
        prefix = self.key(driver_path) + "/"
        pages = self.server.client().get_paginator("list_objects_v2")
        return [
            o["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        ]


def go_started_at(when: datetime) -> bytes:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()


@pytest.fixture(scope="module")
def s3_scenario(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Scenario]:
    require_binary("docker-registry")
    require_binary("skopeo")
    work = tmp_path_factory.mktemp("s3-scenario")
    bucket = moto_server.create_bucket()
    config = moto_server.registry_storage_config(bucket, ROOT)
    driver = make_s3_driver(moto_server, bucket, rootdirectory=ROOT)
    registry = GoRegistry(None, s3=config, workdir=work / "registry")
    try:
        with registry:
            yield build(moto_server, bucket, registry, driver, work)
    finally:
        driver.close()
        moto_server.drop_bucket(bucket)


def build(
    server: MotoServer, bucket: str, registry: GoRegistry, driver: S3Driver, work: Path
) -> S3Scenario:
    lay = OCILayout(work / "layout")
    base = lay.layer(300, 48 << 10)
    la, lb, lc, le = (lay.layer(seed, 8 << 10) for seed in (301, 302, 303, 304))
    images = {
        "a": lay.image([base, la], seed=31),
        "b": lay.image([base, lb], seed=32),
        "c": lay.image([base, lc], seed=33),
        "e": lay.image([le], seed=35),
    }
    platforms = [
        lay.image([base, lay.layer(310 + i, 4 << 10)], seed=40 + i, arch=arch)
        for i, arch in enumerate(("amd64", "arm64"))
    ]
    for name, target in (*images.items(), ("multi", lay.index(platforms))):
        lay.tag(name, target)

    tags = {
        ("library/base", "latest"): push(registry, lay.path, "a", "library/base", "latest"),
    }
    push(registry, lay.path, "b", "team/app", "v1", fmt="v2s2")
    tags["team/app", "v1"] = push(registry, lay.path, "c", "team/app", "v1", fmt="v2s2")
    e_digest = push(registry, lay.path, "e", "team/app", "tmp")
    registry.delete_manifest("team/app", e_digest)
    tags["org/multi", "stable"] = push(registry, lay.path, "multi", "org/multi", "stable", all=True)
    orphan = registry.push_blob("team/app", b"pushed, never referenced\n" * 64)

    # Uploads. Go's PATCH leaves its data in a multipart upload until the PUT.
    go_upload = registry.patch_upload(registry.start_upload("team/app"), b"g" * (96 << 10))
    posted = registry.start_upload("team/app")
    fresh = registry.patch_upload(registry.start_upload("org/multi"), b"f" * 4096)
    # A layergc writer that died: a part sent, never closed (no data object).
    open_uuid = "0b7e6a4c-1c1f-4d8e-9c39-4a4f0f1e2d3c"
    small_parts = make_s3_driver(
        server, bucket, rootdirectory=ROOT, chunksize=PART, min_part_size=PART
    )
    writer = small_parts.writer(paths.upload_data("team/app", open_uuid))
    writer.write(b"w" * (PART + 1))
    small_parts.close()  # the writer is dropped as is: its upload stays in progress
    stale = {("team/app", go_upload.uuid), ("team/app", posted.uuid), ("team/app", open_uuid)}
    long_ago = go_started_at(datetime.now(UTC) - STALE_AGE)
    for repo, uuid in stale:
        driver.put_content(paths.upload_started_at(repo, uuid), long_ago)

    garbage = {orphan, e_digest, *(str(d.digest) for d in (images["e"].config, le))}
    return S3Scenario(
        server=server,
        bucket=bucket,
        registry=registry,
        driver=driver,
        tags=tags,
        pulls=(
            ("library/base", "latest", False),
            ("team/app", "v1", False),
            ("org/multi", "stable", True),
        ),
        garbage=frozenset(garbage),
        stale_uploads=frozenset(stale),
        fresh_uploads=frozenset({("org/multi", fresh.uuid)}),
        go_upload=("team/app", go_upload.uuid),
        open_upload=("team/app", open_uuid),
    )


def layergc_sweep(workdir: Path, config: Path, *args: str) -> dict[str, Any]:
    """`layergc sweep --registry-config CONFIG --json ARGS`; its report (exit status 0)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "layergc.cli", "sweep", "--registry-config", str(config)]
    cmd += ["--db", f"sqlite:///{workdir / 'index.db'}", "--json", "--grace", "0s"]
    cmd += ["--settle", "0s", *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=workdir, timeout=SWEEP_TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report["errors"] == [], report["errors"]
    return report


def items(report: dict[str, Any], kind: str, action: str | None = None) -> set[Any]:
    keys = ("digest",) if kind == "blobs" else ("repository", "uuid")
    found = {
        tuple(i[k] for k in keys) for i in report[kind] if action is None or i["action"] == action
    }
    return {k[0] for k in found} if kind == "blobs" else found


# --- against the Go registry -------------------------------------------------------------------


def test_dry_run_agrees_with_go_on_s3(s3_scenario: S3Scenario, tmp_path: Path) -> None:
    sc = s3_scenario
    go = sc.registry.garbage_collect()
    mark = sc.server.log_mark()
    report = layergc_sweep(tmp_path, sc.registry.config_path, "--dry-run")
    writes = {
        op: n
        for op, n in sc.server.request_counts(since=mark, bucket=sc.bucket).items()
        if op not in ("ListObjectsV2", "GetObject", "HeadObject")
    }

    assert items(report, "blobs", "would-delete") == set(go.blobs) == sc.garbage
    assert items(report, "blobs") == sc.garbage  # nothing deferred at --grace 0s
    assert report["manifests"] == [] and go.manifests == set()
    assert items(report, "uploads", "would-delete") == items(report, "uploads") == sc.stale_uploads
    assert report["blobs_marked"] == go.marked
    assert report["repositories"] == len(go.repositories) == 3
    assert writes == {}  # a dry run only reads
    # The S3 read path: one listing snapshot, no per-candidate HEAD.
    assert report["seconds"]["listing"] > 0
    # The leftovers the purge will have to abort are there.
    assert sc.multipart_uploads(*sc.go_upload)
    assert sc.multipart_uploads(*sc.open_upload)


def test_sweep_deletes_aborts_multipart_uploads_and_every_tag_pulls(
    s3_scenario: S3Scenario, tmp_path: Path
) -> None:
    sc = s3_scenario
    fresh_multipart = {u: sc.multipart_uploads(*u) for u in sc.fresh_uploads}
    assert all(fresh_multipart.values())

    report = layergc_sweep(tmp_path / "sweep", sc.registry.config_path)

    assert items(report, "blobs", "deleted") == items(report, "blobs") == sc.garbage
    assert items(report, "uploads", "deleted") == items(report, "uploads") == sc.stale_uploads
    for digest in sc.garbage:
        d = Digest.parse(digest)
        assert sc.keys(paths.blob_dir(d)) == []
        assert sc.keys(paths.layer_link_dir("team/app", d)) == []
        assert sc.registry.head_blob("team/app", digest) is None
    for repo, uuid in sc.stale_uploads:
        assert sc.keys(paths.upload_dir(repo, uuid)) == []
        assert sc.multipart_uploads(repo, uuid) == []  # aborted, not only unlisted
    for upload, keys in fresh_multipart.items():
        assert sc.multipart_uploads(*upload) == keys  # left alone
        assert sc.keys(paths.upload_dir(*upload))
    assert sc.keys(paths.QUARANTINE) == []

    for repo, ref, all_platforms in sc.pulls:
        assert pull_and_verify(sc.registry, repo, ref, all=all_platforms), (repo, ref)
    go = sc.registry.garbage_collect()
    assert (go.blobs, go.manifests) == (set(), set())
    again = layergc_sweep(tmp_path / "again", sc.registry.config_path, "--dry-run")
    assert (again["blobs"], again["manifests"], again["uploads"]) == ([], [], [])


# --- the listing snapshot ----------------------------------------------------------------------


class _PoolWriter:
    """Enough of a driver for treegen: puts on a pool (the pool's exit waits)."""

    name = "s3-pool"

    def __init__(self, driver: S3Driver, pool: ThreadPoolExecutor) -> None:
        self.driver, self.pool = driver, pool

    def put_content(self, path: str, content: bytes) -> None:
        self.pool.submit(self.driver.put_content, path, content)


def test_snapshot_mark_matches_the_plain_mark_with_fewer_requests(
    moto_server: MotoServer, s3_bucket: str
) -> None:
    """A generated tree with several listing pages per root (list_max 25): the
    mark through the snapshot finds exactly what the folder-by-folder mark finds,
    reads no link, and its listings run as parallel key ranges."""
    driver = make_s3_driver(moto_server, s3_bucket, list_max=25)
    loader = make_s3_driver(moto_server, s3_bucket)
    with ThreadPoolExecutor(8) as pool:
        summary = treegen.generate(_PoolWriter(loader, pool), 120, seed=5, uploads=6)  # type: ignore[arg-type]
    loader.close()

    plain = scan.mark(driver)
    plain_requests = driver.requests_total
    driver.reset_request_count()
    view = snapshot.take(driver)
    listed = driver.request_count
    fast = scan.mark(view)

    assert set(fast.unreferenced) == set(plain.unreferenced) == summary.garbage
    assert set(fast.marked) == set(plain.marked)
    assert sorted(fast.uploads) == sorted(plain.uploads)
    assert dict(fast.layer_links) == dict(plain.layer_links)
    assert fast.errors == plain.errors == []
    assert view.links_read == 0  # type: ignore[attr-defined]
    assert view.links_from_listing == len(summary.manifests) + sum(  # type: ignore[attr-defined]
        1 for _, _, tagged in summary.manifests if tagged
    )
    # Every object once, a few hundred keys per page, plus the folders it cut at.
    objects = view.objects  # type: ignore[attr-defined]
    assert objects == summary.files
    assert set(listed) == {"ListObjectsV2"}
    assert listed["ListObjectsV2"] <= objects / 25 * 1.6 + 8
    # Manifests are the only reads left; the plain mark also lists every folder.
    assert driver.request_count["GetObject"] == len(summary.manifests)
    assert driver.requests_total < plain_requests / 3
    driver.close()


def test_list_tree_returns_every_object_once(moto_server: MotoServer, s3_bucket: str) -> None:
    """Uneven folders (one big, many small, files between folders): whatever the
    cuts, every key comes back exactly once, with its size and ETag."""
    driver = make_s3_driver(moto_server, s3_bucket, rootdirectory="/t", list_max=7)
    written = {}
    for i in range(40):
        written[f"/a/big/{i:03d}"] = b"x" * i
    for i in range(12):
        written[f"/a/s{i:02d}/f"] = b"y"
        written[f"/a/s{i:02d}-file"] = b"z" * 2
    written["/a/zz"] = b"last"
    written["/b/outside"] = b"not below /a"
    loader = make_s3_driver(moto_server, s3_bucket, rootdirectory="/t")
    for path, content in written.items():
        loader.put_content(path, content)
    loader.close()

    objects = list(driver.list_tree("/a"))
    paths_seen = [o.path for o in objects]
    assert sorted(paths_seen) == sorted(p for p in written if p.startswith("/a/"))
    assert len(paths_seen) == len(set(paths_seen))
    assert {o.path: o.size for o in objects} == {
        p: len(c) for p, c in written.items() if p.startswith("/a/")
    }
    assert all(len(o.etag) == 32 for o in objects)
    assert list(driver.list_tree("/nothing")) == []
    driver.close()


# --- the delete protocol on S3: bulk moves and batched deletes -----------------------------------


@pytest.fixture
def s3_store(moto_server: MotoServer, s3_bucket: str) -> Iterator[Store]:
    driver = make_s3_driver(moto_server, s3_bucket, rootdirectory=ROOT)
    yield Store(driver)
    driver.close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Any]:
    idx = open_index(f"sqlite:///{tmp_path}/index.db")
    yield idx
    idx.close()


def test_sweep_on_s3_moves_and_deletes_in_batches(s3_store: Store, index: Any) -> None:
    """Orphans linked from two repositories go with every link; the quarantine is
    one copy per file and a few DeleteObjects, not a listing per folder."""
    store = s3_store
    kept = store.layer("a")
    store.manifest("a", [kept], tag="v1")
    orphans = [store.layer("a") for _ in range(12)]
    for d in orphans[:4]:  # the same content in b: a second layer link
        data = store.registry.repository("a").layers().fetch(str(d)).read()
        upload = store.registry.repository("b").layers().upload()
        upload.write(data)
        upload.finish(str(d))
    driver = store.driver
    assert isinstance(driver, S3Driver)
    driver.reset_request_count()

    report = sweep(store, index)
    ops = driver.request_count

    assert report.errors == []
    assert actions(report.blobs) == {str(d): DELETED for d in orphans}
    for d in orphans:
        assert not store.has_blob(d)
        for repo in ("a", "b"):
            assert not driver.exists(paths.layer_link_dir(repo, d))
    assert store.has_blob(kept) and driver.exists(paths.layer_link("a", kept))
    assert not driver.exists(paths.QUARANTINE)
    files = len(orphans) + len(orphans) + 4  # data, a link, 4 links in b
    assert ops["CopyObject"] == files
    assert ops["DeleteObjects"] <= 2 + 3  # the moves' sources; links, then folders
    assert ops["HeadObject"] == 0  # sizes and times come from the listing


def test_recheck_on_s3_restores_what_a_racing_push_needs(s3_store: Store, index: Any) -> None:
    store = s3_store
    store.manifest("a", [store.layer("a")], tag="v1")
    orphan, other = store.layer("a"), store.layer("a")
    race = PushDuringSettle(store, "a", orphan)

    report = sweep(store, index, blob_cache=race)

    assert actions(report.blobs) == {str(orphan): KEPT, str(other): DELETED}
    assert store.has_blob(orphan) and store.driver.exists(paths.layer_link("a", orphan))
    assert not store.has_blob(other)
    assert race.pushed is not None
    assert not store.driver.exists(paths.QUARANTINE)


def test_move_files_copies_first_and_reports_missing_sources(
    moto_server: MotoServer, s3_bucket: str
) -> None:
    driver = make_s3_driver(moto_server, s3_bucket, delete_max=2)
    for name in ("a", "b", "c"):
        driver.put_content(f"/src/{name}/data", name.encode() * 3)
    driver.reset_request_count()

    moved = driver.move_files(
        [
            ("/src/a/data", "/dst/a/data", 3),
            ("/src/gone/data", "/dst/gone/data", 5),
            ("/src/b/data", "/dst/b/data", None),  # size unknown: a HEAD first
            ("/src/c/data", "/dst/c/data", 3),
        ]
    )
    ops = driver.request_count

    assert moved == [True, False, True, True]
    assert not driver.exists("/src")
    assert [driver.get_content(f"/dst/{n}/data") for n in "abc"] == [b"aaa", b"bbb", b"ccc"]
    assert ops["CopyObject"] == 4 and ops["HeadObject"] == 1
    assert ops["DeleteObjects"] == 2  # three sources, two keys a batch
    assert driver.delete_files(["/dst/a/data", "/dst/b/data", "/dst/nothing"]) == 3
    assert driver.list("/dst") == ["/dst/c"]
    driver.close()
