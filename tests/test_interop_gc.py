"""`layergc sweep` against the real Go registry (issue 3, "Proven against the real registry").

Every test works on a private copy of the session's scenario (tests/support/
scenario.py: a root filled by `docker-registry serve` and skopeo) and runs
layergc as a user does, `python -m layergc.cli sweep ... --json`, in a
subprocess. The Go registry's own collector (`docker-registry garbage-collect
--dry-run`) is the reference: layergc must find exactly what it finds, except
where Go 2.8 is wrong (the children of a tagged multi-arch image and a kept
referrer under `--delete-untagged`; blobs of a repository without `_layers`),
and then the difference is derived here from the manifests on disk, not taken
from either collector.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from layergc.digest import Digest
from layergc.storage import paths
from tests.support.components import require_redis
from tests.support.files import fs_path
from tests.support.goregistry import GCResult, GoRegistry
from tests.support.images import OCILayout, pull_and_verify, push
from tests.support.scenario import Scenario, failed_pulls

pytestmark = pytest.mark.interop

SWEEP_TIMEOUT = 120
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
REDIS_DB = 3  # not the harness's default database, which other tests flush


@dataclass(frozen=True)
class SweepRun:
    returncode: int
    report: dict[str, Any] | None
    stderr: str

    def _items(self, kind: str, action: str | None) -> list[dict[str, Any]]:
        assert self.report is not None, self.stderr
        return [i for i in self.report[kind] if action is None or i["action"] == action]

    def blobs(self, action: str | None = None) -> set[str]:
        return {i["digest"] for i in self._items("blobs", action)}

    def manifests(self, action: str | None = None) -> set[tuple[str, str]]:
        return {(i["repository"], i["digest"]) for i in self._items("manifests", action)}

    def uploads(self, action: str | None = None) -> set[tuple[str, str]]:
        return {(i["repository"], i["uuid"]) for i in self._items("uploads", action)}


def layergc_sweep(workdir: Path, *args: str) -> SweepRun:
    """`layergc sweep --json ARGS` with its index in `workdir`; never raises on exit status."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "layergc.cli",
        "sweep",
        "--db",
        f"sqlite:///{workdir / 'index.db'}",
        "--json",
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=workdir, timeout=SWEEP_TIMEOUT, check=False
    )
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    return SweepRun(proc.returncode, report, proc.stderr)


def dry_run(scenario: Scenario, workdir: Path, *args: str) -> SweepRun:
    run = layergc_sweep(
        workdir, "--root", str(scenario.root), "--dry-run", "--grace", "0s", "--settle", "0s", *args
    )
    assert run.returncode == 0, run.stderr
    return run


def go_collector(scenario: Scenario, tmp_path: Path) -> GoRegistry:
    """A Go registry config over the scenario copy, not started (garbage-collect needs none)."""
    return GoRegistry(scenario.root, workdir=tmp_path / "go-gc")


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def manifest(scenario: Scenario, digest: str) -> dict[str, Any]:
    data = fs_path(scenario.root, paths.blob_data(Digest.parse(digest))).read_bytes()
    return json.loads(data)  # type: ignore[no-any-return]


def references(scenario: Scenario, digests: Iterable[str]) -> set[str]:
    """What the manifests reference directly, read from their blobs: an image's
    config and layers, an index's children (Go 2.8's mark goes no deeper)."""
    out: set[str] = set()
    for digest in digests:
        m = manifest(scenario, digest)
        if "manifests" in m:
            out.update(c["digest"] for c in m["manifests"])
        else:
            out.add(m["config"]["digest"])
            out.update(layer["digest"] for layer in m["layers"])
    return out


def go_only_untagged_garbage(scenario: Scenario) -> set[str]:
    """Blobs Go 2.8's --delete-untagged deletes that layergc keeps: what the dropped
    children of tagged indexes and the kept referrer reference (and the referrer
    itself), minus what the tags keep in Go's own mark."""
    tagged = set(scenario.tags.values())
    go_kept = tagged | references(scenario, tagged)
    referrers = {digest for _repo, digest, _subject in scenario.referrers}
    children = {digest for _repo, digest in scenario.multiarch_children}
    dropped = referrers | references(scenario, children | referrers)
    return dropped - go_kept


# --- dry runs against Go's dry runs ------------------------------------------------------------


def test_dry_run_lists_what_go_lists(scenario: Scenario, tmp_path: Path) -> None:
    before = tree(scenario.root)
    go = go_collector(scenario, tmp_path).garbage_collect()
    run = dry_run(scenario, tmp_path / "lg")
    report = run.report
    assert report is not None

    assert run.blobs("would-delete") == go.blobs == scenario.garbage
    assert run.blobs() == run.blobs("would-delete")  # nothing deferred at --grace 0s
    assert run.manifests() == set() == go.manifests
    assert run.uploads("would-delete") == scenario.stale_uploads
    assert run.uploads() == scenario.stale_uploads  # fresh uploads are not listed
    assert report["errors"] == [] and report["dry_run"] is True
    # layergc also sees the upload-only repository Go does not
    assert report["repositories"] == len(scenario.repositories) == len(go.repositories) + 1
    assert report["blobs_marked"] == go.marked
    sizes = {i["digest"]: i["size"] for i in report["blobs"]}
    for digest in scenario.garbage:
        assert (
            sizes[digest]
            == fs_path(scenario.root, paths.blob_data(Digest.parse(digest))).stat().st_size
        )
    assert tree(scenario.root) == before  # a dry run writes nothing under the root

    again = dry_run(scenario, tmp_path / "lg")  # same index: the same candidates again
    assert again.blobs("would-delete") == scenario.garbage
    assert again.uploads("would-delete") == scenario.stale_uploads
    assert again.report is not None and again.report["run_id"] == report["run_id"] + 1


def test_delete_untagged_dry_run_differs_from_go_only_where_go_breaks_images(
    scenario: Scenario, tmp_path: Path
) -> None:
    go = go_collector(scenario, tmp_path).garbage_collect(delete_untagged=True)
    run = dry_run(scenario, tmp_path / "lg", "--delete-untagged")

    assert run.manifests("would-delete") == scenario.untagged_manifests  # B, retagged away
    assert run.blobs("would-delete") == scenario.untagged_garbage
    assert run.uploads("would-delete") == scenario.stale_uploads
    # Go drops the children of both tagged multi-arch images and the referrer...
    referrers = {(repo, digest) for repo, digest, _subject in scenario.referrers}
    assert go.manifests - run.manifests() == scenario.multiarch_children | referrers
    assert run.manifests() <= go.manifests
    # ...and so deletes their configs and layers; layergc keeps them.
    extra = go_only_untagged_garbage(scenario)
    assert extra, "the scenario must hold blobs only Go deletes"
    assert go.blobs - run.blobs() == extra
    assert run.blobs() <= go.blobs
    children = {digest for _repo, digest in scenario.multiarch_children}
    assert not (run.blobs() & (children | references(scenario, children)))


def test_repository_without_layers_folder_keeps_its_images(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Go 2.8 sees a repository only by `_layers`: it would delete a tagged image's blobs."""
    shutil.rmtree(fs_path(scenario.root, paths.layers_dir("org/team/r1")))
    d = scenario.tags["org/team/r1", "1.0"]
    go = go_collector(scenario, tmp_path).garbage_collect()
    run = dry_run(scenario, tmp_path / "lg")

    assert "org/team/r1" not in go.repositories
    # D's layers are shared with library/base:latest; its manifest and config are not.
    assert go.blobs - scenario.garbage == {d, manifest(scenario, d)["config"]["digest"]}
    assert run.blobs("would-delete") == scenario.garbage


def layer_links(scenario: Scenario, digests: Iterable[str]) -> set[tuple[str, str]]:
    """(repository, digest) for every layer link file to one of `digests`."""
    return {
        (repo, digest)
        for digest in digests
        for repo in scenario.repositories
        if fs_path(scenario.root, paths.layer_link(repo, Digest.parse(digest))).is_file()
    }


# --- real sweeps, then pulls and Go's verdict -------------------------------------------------


def assert_deleted(scenario: Scenario, run: SweepRun, expected: set[str]) -> None:
    assert run.blobs("deleted") == expected
    assert run.blobs() == expected  # nothing failed, deferred or kept
    for digest in expected:
        d = Digest.parse(digest)
        assert not fs_path(scenario.root, paths.blob_dir(d)).exists()
        for repo in scenario.repositories:
            assert not fs_path(scenario.root, paths.layer_link_dir(repo, d)).exists()
    assert run.uploads("deleted") == run.uploads() == scenario.stale_uploads
    for repo, uuid in scenario.stale_uploads:
        assert not scenario.upload_dir(repo, uuid).exists()
    for repo, uuid in scenario.fresh_uploads:
        assert (scenario.upload_dir(repo, uuid) / "data").is_file()
    quarantine = fs_path(scenario.root, paths.QUARANTINE)
    assert not quarantine.exists() or not any(quarantine.iterdir())
    report = run.report
    assert report is not None and report["errors"] == []
    assert report["bytes_reclaimed"] == sum(i["size"] for i in report["blobs"]) + sum(
        i["size"] for i in report["uploads"]
    )


def assert_nothing_left(scenario: Scenario, workdir: Path, *args: str) -> None:
    again = dry_run(scenario, workdir, *args)
    assert (again.blobs(), again.manifests(), again.uploads()) == (set(), set(), set())


@pytest.mark.parametrize("running", [True, False], ids=["registry-running", "registry-stopped"])
def test_sweep_keeps_every_tag_and_leaves_go_nothing(
    scenario: Scenario, tmp_path: Path, skopeo: str, running: bool
) -> None:
    reg = GoRegistry(scenario.root, cache="inmemory", workdir=tmp_path / "reg")
    lg = tmp_path / "lg"
    linked = layer_links(scenario, scenario.garbage)
    assert linked, "some garbage must be linked, so that Go answers for it"
    if running:
        with reg:
            for repo, digest in linked:  # Go's in-memory cache now knows them
                assert reg.head_blob(repo, digest) is not None
            run = layergc_sweep(
                lg, "--registry-config", str(reg.config_path), "--grace", "0s", "--settle", "0s"
            )
            assert run.returncode == 0, run.stderr
            assert run.report is not None
            # Go's in-memory cache cannot be reached: layergc says a restart is due...
            assert any("restart" in w for w in run.report["warnings"])
            # ...rightly: until then Go 2.8 still answers "exists" for deleted blobs.
            for repo, digest in linked:
                assert reg.head_blob(repo, digest) is not None
    else:
        run = layergc_sweep(lg, "--root", str(scenario.root), "--grace", "0s", "--settle", "0s")
        assert run.returncode == 0, run.stderr
    assert_deleted(scenario, run, set(scenario.garbage))
    assert run.manifests() == set()

    with reg:  # (re)started: the cache is empty
        assert failed_pulls(reg, scenario) == []
        for repo, digest in linked:
            assert reg.head_blob(repo, digest) is None
    go = reg.garbage_collect()
    assert (go.blobs, go.manifests) == (set(), set())
    assert_nothing_left(scenario, lg)


@pytest.mark.redis
def test_sweep_clears_go_redis_cache_while_it_serves(
    scenario: Scenario, tmp_path: Path, skopeo: str
) -> None:
    """With Go's Redis blob cache, the deleted blobs are unknown at once: no restart."""
    host, port = require_redis()
    client = redis.Redis(host=host, port=port, db=REDIS_DB)
    linked = layer_links(scenario, scenario.garbage)
    reg = GoRegistry(scenario.root, cache="redis", redis_db=REDIS_DB, workdir=tmp_path / "reg")
    try:
        with reg:
            for repo, digest in linked:
                assert reg.head_blob(repo, digest) is not None
                assert client.exists(f"blobs::{digest}")
                assert client.sismember(f"repository::{repo}::blobs", digest)
            run = layergc_sweep(
                tmp_path / "lg",
                "--registry-config",
                str(reg.config_path),
                "--grace",
                "0s",
                "--settle",
                "0s",
            )
            assert run.returncode == 0, run.stderr
            assert_deleted(scenario, run, set(scenario.garbage))
            for repo, digest in linked:
                assert reg.head_blob(repo, digest) is None
                assert not client.exists(f"blobs::{digest}")
                assert not client.exists(f"repository::{repo}::blobs::{digest}")
                assert not client.sismember(f"repository::{repo}::blobs", digest)
            assert failed_pulls(reg, scenario) == []
    finally:
        client.flushdb()  # leave nothing for later tests
        client.close()


def test_delete_untagged_sweep_keeps_multiarch_and_referrer(
    scenario: Scenario, tmp_path: Path, skopeo: str
) -> None:
    reg = GoRegistry(scenario.root, workdir=tmp_path / "reg")
    lg = tmp_path / "lg"
    with reg:  # no blob descriptor cache: nothing to restart
        run = layergc_sweep(
            lg,
            "--root",
            str(scenario.root),
            "--delete-untagged",
            "--grace",
            "0s",
            "--settle",
            "0s",
        )
        assert run.returncode == 0, run.stderr
        assert_deleted(scenario, run, set(scenario.untagged_garbage))
        assert run.manifests("deleted") == run.manifests() == scenario.untagged_manifests
        # B's revision goes with its entry in the tag's history (as Go's vacuum does)
        for repo, digest in scenario.untagged_manifests:
            d = Digest.parse(digest)
            assert not fs_path(scenario.root, paths.manifest_revision_dir(repo, d)).exists()
            assert not fs_path(
                scenario.root, f"{paths.tag_index_dir(repo, 'v1')}/sha256/{d.hex}"
            ).exists()
            assert reg.head_manifest(repo, digest) is None
        assert failed_pulls(reg, scenario) == []  # the referrer, by digest, too

    assert_nothing_left(scenario, lg, "--delete-untagged")
    plain = reg.garbage_collect()
    assert (plain.blobs, plain.manifests) == (set(), set())
    # Go's --delete-untagged still wants what only it considers garbage, and no more.
    go: GCResult = reg.garbage_collect(delete_untagged=True)
    referrers = {(repo, digest) for repo, digest, _subject in scenario.referrers}
    assert go.manifests == scenario.multiarch_children | referrers
    assert go.blobs == go_only_untagged_garbage(scenario)


def test_default_grace_defers_fresh_garbage_and_purges_stale_uploads(
    scenario: Scenario, tmp_path: Path
) -> None:
    """The scenario's garbage is minutes old: inside the default 24h grace, kept."""
    before = tree(scenario.root)
    run = layergc_sweep(tmp_path / "lg", "--root", str(scenario.root), "--settle", "0s")
    assert run.returncode == 0, run.stderr
    assert run.blobs("deferred") == run.blobs() == scenario.garbage
    assert run.uploads("deleted") == scenario.stale_uploads  # --upload-timeout, not --grace
    stale = {
        str(scenario.upload_dir(r, u).relative_to(scenario.root)) for r, u in scenario.stale_uploads
    }
    assert {p for p in before if not p.startswith(tuple(stale))} == set(tree(scenario.root))


def test_schema1_manifests_mark_their_fs_layers(
    tmp_path: Path, oci_layout: OCILayout, skopeo: str
) -> None:
    """Legacy signed schema1 (stored by Go without its signatures): fsLayers are marked."""
    layout = oci_layout
    pushed = {
        name: layout.image(
            [layout.layer(200 + 2 * i, 3_000), layout.layer(201 + 2 * i, 2_000)], seed=200 + i
        )
        for i, name in enumerate(("kept", "retagged", "current", "deleted"))
    }
    for name, image in pushed.items():
        layout.tag(name, image)
    reg = GoRegistry(
        tmp_path / "root",
        workdir=tmp_path / "reg",
        extra={"compatibility": {"schema1": {"enabled": True}}},
    )
    repo = "legacy/app"
    with reg:
        tagged = {push(reg, layout.path, "kept", repo, "v1", fmt="v2s1")}
        push(reg, layout.path, "retagged", repo, "v2", fmt="v2s1")
        tagged.add(push(reg, layout.path, "current", repo, "v2", fmt="v2s1"))
        reg.delete_manifest(repo, push(reg, layout.path, "deleted", repo, "tmp", fmt="v2s1"))
        assert reg.get_manifest(repo, "v1").media_type == SCHEMA1_SIGNED
    lost = {d.digest for d in pushed["deleted"].layers}
    untagged_lost = {d.digest for d in pushed["retagged"].layers}
    root = tmp_path / "root"
    for delete_untagged in (False, True):
        flags = ["--delete-untagged"] if delete_untagged else []
        go = reg.garbage_collect(delete_untagged=delete_untagged)
        run = layergc_sweep(
            tmp_path / f"lg{delete_untagged}",
            "--root",
            str(root),
            "--dry-run",
            "--grace",
            "0s",
            *flags,
        )
        assert run.returncode == 0, run.stderr
        assert run.blobs("would-delete") == go.blobs
        assert run.manifests("would-delete") == go.manifests
        assert lost < go.blobs
        assert (untagged_lost < go.blobs) == delete_untagged
    run = layergc_sweep(
        tmp_path / "lg",
        "--root",
        str(root),
        "--delete-untagged",
        "--grace",
        "0s",
        "--settle",
        "0s",
    )
    assert run.returncode == 0, run.stderr
    (retagged,) = run.manifests("deleted")  # the one revision v2 no longer names
    assert retagged[1] not in tagged
    assert lost | untagged_lost < run.blobs("deleted")
    with reg:
        for tag in ("v1", "v2"):
            assert pull_and_verify(reg, repo, tag)
    go = reg.garbage_collect(delete_untagged=True)
    assert (go.blobs, go.manifests) == (set(), set())


# --- exit status --------------------------------------------------------------------------------


def test_exit_status_on_bad_usage(scenario: Scenario, tmp_path: Path) -> None:
    bad_flag = layergc_sweep(tmp_path / "a", "--root", str(scenario.root), "--no-such-flag")
    assert (bad_flag.returncode, bad_flag.report) == (2, None)
    missing = layergc_sweep(tmp_path / "b", "--root", str(tmp_path / "nowhere"), "--dry-run")
    assert (missing.returncode, missing.report) == (2, None)
    assert "nowhere" in missing.stderr
    bad_duration = layergc_sweep(tmp_path / "c", "--root", str(scenario.root), "--grace", "1x")
    assert (bad_duration.returncode, bad_duration.report) == (2, None)


def test_exit_status_1_on_a_corrupt_link_and_the_scan_goes_on(
    scenario: Scenario, tmp_path: Path
) -> None:
    repo, a = "library/base", Digest.parse(scenario.tags["library/base", "latest"])
    link = fs_path(scenario.root, paths.manifest_revision_link(repo, a))
    link.write_bytes(b"sha256:not-a-digest")
    run = layergc_sweep(tmp_path / "lg", "--root", str(scenario.root), "--dry-run", "--grace", "0s")
    assert run.returncode == 1, run.stderr
    assert run.report is not None
    errors = run.report["errors"]
    assert [e["kind"] for e in errors] == ["corrupt-link"]
    assert errors[0]["path"] == paths.manifest_revision_link(repo, a)
    # one bad object never aborts the scan: the rest is judged as before
    assert run.blobs("would-delete") == scenario.garbage
    assert run.uploads("would-delete") == scenario.stale_uploads


def test_unparseable_manifest_blocks_blob_deletion_not_upload_purge(
    scenario: Scenario, tmp_path: Path
) -> None:
    c = Digest.parse(scenario.tags["team/app/api", "v1"])
    blob = fs_path(scenario.root, paths.blob_data(c))
    blob.write_bytes(b"{" + blob.read_bytes()[1:-1] + b"!")  # same size, broken JSON
    before = {d: fs_path(scenario.root, paths.blob_dir(Digest.parse(d))) for d in scenario.garbage}
    run = layergc_sweep(
        tmp_path / "lg", "--root", str(scenario.root), "--grace", "0s", "--settle", "0s"
    )
    assert run.returncode == 1, run.stderr
    assert run.report is not None and run.report["blob_deletion_blocked"] is True
    assert any(paths.blob_data(c) == e.get("path") for e in run.report["errors"])
    assert run.blobs("deleted") == run.blobs("would-delete") == set()
    assert scenario.garbage <= run.blobs("deferred")
    assert all(folder.is_dir() for folder in before.values())
    assert run.uploads("deleted") == scenario.stale_uploads
