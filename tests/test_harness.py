"""Self-tests of the real-registry harness (tests/support/goregistry, images, scenario).

They prove that what other tests rely on is true of the real tools: pushes
round-trip, a pull really fails on a broken image, the scenario's expected
garbage is exactly what the Go registry's own collector finds, and partial
uploads sit on disk as the Go registry leaves them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tests.support import images
from tests.support.components import port_open, require_binary, require_redis
from tests.support.goregistry import GoRegistry, RegistryHTTPError, parse_gc_output, sha256_digest
from tests.support.images import OCILayout, pull, pull_and_verify, push
from tests.support.scenario import GO_TIME_FORMAT, Scenario, failed_pulls

pytestmark = pytest.mark.interop


def blob_data(v2: Path, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return v2 / "blobs/sha256" / hexpart[:2] / hexpart / "data"


def small_image(layout: OCILayout, seed: int = 1) -> images.Image:
    image = layout.image([layout.layer(seed, 4 << 10), layout.layer(seed + 1, 2 << 10)], seed=seed)
    layout.tag(f"img{seed}", image)
    return image


# --- images and skopeo -----------------------------------------------------------


def test_layers_are_deterministic_and_valid_oci(oci_layout: OCILayout, tmp_path: Path) -> None:
    again = OCILayout(tmp_path / "again")
    assert oci_layout.layer(7, 5000) == again.layer(7, 5000)
    assert oci_layout.layer(7, 5000) != oci_layout.layer(8, 5000)
    image = small_image(oci_layout, seed=3)
    assert image == small_image(again, seed=3)

    umoci = require_binary("umoci")
    ref = f"{oci_layout.path}:img3"
    stat = subprocess.run(
        [umoci, "stat", "--image", ref, "--json"], capture_output=True, check=True
    )
    assert len(json.loads(stat.stdout)["history"]) == 2
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--rootless", "--image", ref, str(bundle)],
        check=True,
        capture_output=True,
    )
    assert (bundle / "rootfs/data/layer-3.bin").stat().st_size == 4 << 10
    assert (bundle / "rootfs/data/layer-4.bin").stat().st_size == 2 << 10


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_push_pull_round_trip(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str, fmt: images.Format
) -> None:
    image = small_image(oci_layout)
    digest = push(go_registry, oci_layout.path, "img1", "team/app", "v1", fmt=fmt)

    served = go_registry.get_manifest("team/app", "v1")
    assert served.digest == digest == sha256_digest(served.content)
    expected_type = images.OCI_MANIFEST if fmt == "oci" else images.DOCKER_MANIFEST
    assert served.media_type == expected_type
    if fmt == "oci":
        assert served.content == image.manifest_bytes  # stored byte for byte
    # format conversion changes the manifest only: configs and layers are shared
    for layer in image.layers:
        assert go_registry.head_blob("team/app", layer.digest) == layer.size
    assert (
        go_registry.get_blob("team/app", image.config.digest)
        == (oci_layout.path / "blobs/sha256" / image.config.digest.split(":")[1]).read_bytes()
    )

    assert pull(go_registry, "team/app", "v1") == served.content
    assert pull_and_verify(go_registry, "team/app", digest)
    assert not pull_and_verify(go_registry, "team/app", "missing")


def test_multiarch_index_round_trip(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str
) -> None:
    base = oci_layout.layer(1, 4096)
    platforms = [
        oci_layout.image([base, oci_layout.layer(10 + i, 2048)], seed=10 + i, arch=arch)
        for i, arch in enumerate(["amd64", "arm64"])
    ]
    index = oci_layout.index(platforms)
    oci_layout.tag("multi", index)
    assert (
        push(go_registry, oci_layout.path, "multi", "org/multi", "oci", all=True)
        == index.index.digest
    )
    listed = push(go_registry, oci_layout.path, "multi", "org/multi", "list", fmt="v2s2", all=True)
    assert go_registry.get_manifest("org/multi", "list").media_type == images.DOCKER_LIST
    assert listed != index.index.digest
    for child in platforms:
        assert (
            go_registry.head_manifest("org/multi", child.manifest.digest) == child.manifest.digest
        )
    assert pull_and_verify(go_registry, "org/multi", "oci", all=True)
    assert pull_and_verify(go_registry, "org/multi", "list", all=True)


def test_pull_fails_on_corrupt_or_missing_blob(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str
) -> None:
    image = small_image(oci_layout)
    push(go_registry, oci_layout.path, "img1", "a/b", "v1")
    assert pull_and_verify(go_registry, "a/b", "v1")
    data = blob_data(go_registry.v2, image.layers[0].digest)
    good = data.read_bytes()
    data.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(images.SkopeoError, match=r"(?i)digest"):
        pull(go_registry, "a/b", "v1")
    data.unlink()
    assert not pull_and_verify(go_registry, "a/b", "v1")


def test_skopeo_keeps_its_cache_in_the_given_home(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str, tmp_path: Path
) -> None:
    small_image(oci_layout)
    home = tmp_path / "home"
    push(go_registry, oci_layout.path, "img1", "a/b", "v1", home=home)
    caches = list(home.rglob("blob-info-cache*"))
    assert caches and all(str(c).startswith(str(home / ".local/share")) for c in caches)


# --- the registry process and its HTTP API ---------------------------------------------


def test_uploads_chunked_resumed_across_restart_and_monolithic(go_registry: GoRegistry) -> None:
    upload = go_registry.start_upload("a/b")
    upload = go_registry.patch_upload(upload, b"hello ")
    pid = go_registry.pid
    go_registry.restart()
    assert go_registry.pid != pid and go_registry.running
    upload = go_registry.patch_upload(upload, b"world")  # the fixed secret keeps _state valid
    digest = go_registry.finish_upload(upload, sha256_digest(b"hello world"))
    assert digest == sha256_digest(b"hello world")
    assert go_registry.get_blob("a/b", digest) == b"hello world"
    assert go_registry.push_blob("a/b", b"") == sha256_digest(b"")
    assert go_registry.head_blob("a/b", sha256_digest(b"nope")) is None
    assert not (go_registry.v2 / "repositories/a/b/_uploads" / upload.uuid).exists()


def test_resume_location_continues_an_upload_from_its_uuid(go_registry: GoRegistry) -> None:
    started = go_registry.patch_upload(go_registry.start_upload("a/b"), b"12345")
    assert go_registry.upload_offset(started) == 5
    # as if only the uuid were known, as for an upload another program began
    upload = go_registry.resume_location("a/b", started.uuid, 5)
    upload = go_registry.patch_upload(upload, b"678")
    assert go_registry.upload_offset(upload) == 8
    wrong = go_registry.resume_location("a/b", started.uuid, 3)
    with pytest.raises(RegistryHTTPError):
        go_registry.patch_upload(wrong, b"x")
    digest = go_registry.finish_upload(
        go_registry.resume_location("a/b", started.uuid, 8), sha256_digest(b"12345678")
    )
    assert go_registry.get_blob("a/b", digest) == b"12345678"


def test_delete_manifest_leaves_empty_revision_folder(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str
) -> None:
    image = small_image(oci_layout)
    digest = push(go_registry, oci_layout.path, "img1", "a/b", "v1")
    with pytest.raises(RegistryHTTPError) as refused:
        go_registry.delete_manifest("a/b", "v1")  # by tag: refused
    assert refused.value.status == 400
    go_registry.delete_manifest("a/b", digest)
    assert go_registry.head_manifest("a/b", digest) is None
    assert go_registry.tags("a/b") == []
    revisions = go_registry.v2 / "repositories/a/b/_manifests/revisions/sha256"
    revision = revisions / digest.split(":")[1]
    assert revision.is_dir() and not any(revision.iterdir())
    assert blob_data(go_registry.v2, digest).exists()
    assert image.config.digest in go_registry.garbage_collect().blobs


def test_delete_disabled_answers_405(tmp_path: Path) -> None:
    require_binary("docker-registry")
    with GoRegistry(tmp_path / "root", delete_enabled=False) as reg:
        digest = reg.push_blob("a/b", b"x")
        assert reg.request("DELETE", f"/v2/a/b/blobs/{digest}").status == 405


def test_stop_ends_only_our_process(tmp_path: Path) -> None:
    require_binary("docker-registry")
    reg = GoRegistry(tmp_path / "root").start()
    pid = reg.pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    reg.stop()
    assert not reg.running and not port_open("127.0.0.1", reg.port)
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped


def test_first_start_moves_off_a_taken_port(tmp_path: Path) -> None:
    require_binary("docker-registry")
    reg = GoRegistry(tmp_path / "root")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", reg.port))
        squatter.listen()
        taken = reg.port
        with reg:
            assert reg.port != taken
            assert reg.request("GET", "/v2/").status == 200
            reg.restart()
            assert reg.request("GET", "/v2/").status == 200


def test_bad_config_raises_with_log(tmp_path: Path) -> None:
    require_binary("docker-registry")
    reg = GoRegistry(tmp_path / "root", extra={"storage": {"nosuchdriver": {}}})
    with pytest.raises(RuntimeError, match="exited"):
        reg.start()


@pytest.mark.redis
def test_redis_cache_writes_descriptor_keys(tmp_path: Path) -> None:
    require_binary("docker-registry")
    host, port = require_redis()
    client = redis.Redis(host=host, port=port, db=0)
    client.set("blobs::sha256:stale-from-an-earlier-test", "x")
    with GoRegistry(tmp_path / "root", cache="redis") as reg:
        assert client.get("blobs::sha256:stale-from-an-earlier-test") is None  # flushed
        digest = reg.push_blob("a/b", b"cached")
        assert reg.head_blob("a/b", digest) == 6
        assert client.exists(f"blobs::{digest}")
        assert client.sismember("repository::a/b::blobs", digest)
        assert client.exists(f"repository::a/b::blobs::{digest}")
        reg.restart()
        assert client.exists(f"blobs::{digest}")  # only the first start flushes
        reg.flush_redis()  # leave nothing behind for later tests
    client.close()


@pytest.mark.s3
def test_s3_storage_with_aws_ca_bundle_set(monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("docker-registry")
    from tests.support.s3server import MotoServer  # the S3 helpers' server

    with MotoServer() as moto:
        bucket = moto.create_bucket()
        # The registry's s3 driver panics on this variable; GoRegistry removes it.
        monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        with GoRegistry(None, s3=moto.registry_storage_config(bucket, "/r")) as reg:
            digest = reg.push_blob("a/b", b"on s3")
            assert reg.get_blob("a/b", digest) == b"on s3"  # served, not redirected
            assert reg.garbage_collect().blobs == {digest}
        listing = moto.client().list_objects_v2(Bucket=bucket)["Contents"]
    hexpart = digest.split(":")[1]
    assert f"r/docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data" in {
        o["Key"] for o in listing
    }


# --- garbage-collect output ----------------------------------------------------------------


def test_parse_gc_output() -> None:
    d = [f"sha256:{c * 64}" for c in "abcd"]
    out = (
        f"team/app\nmanifest eligible for deletion: {d[0]}\nteam/app: marking manifest {d[1]} \n"
        f"team/app: marking blob {d[2]}\norg/team/r1\nmanifest eligible for deletion: {d[3]}\n\n"
        f"2 blobs marked, 2 blobs and 2 manifests eligible for deletion\n"
        f"blob eligible for deletion: {d[0]}\nblob eligible for deletion: {d[3]}\n"
    )
    result = parse_gc_output(out)
    assert result.blobs == {d[0], d[3]}
    assert result.manifests == {("team/app", d[0]), ("org/team/r1", d[3])}
    assert result.repositories == ("team/app", "org/team/r1")
    assert result.marked == 2


# --- the scenario -------------------------------------------------------------------------


def gc_config(scenario: Scenario, tmp_path: Path) -> GoRegistry:
    """A registry config over the scenario copy, not started (garbage-collect needs none)."""
    return GoRegistry(scenario.root, workdir=tmp_path / "gc")


def test_scenario_dry_run_matches_go_collector(scenario: Scenario, tmp_path: Path) -> None:
    result = gc_config(scenario, tmp_path).garbage_collect()
    assert result.blobs == scenario.garbage
    assert scenario.orphans <= result.blobs
    assert result.manifests == set()
    assert not (scenario.retag_lost & result.blobs)  # B is untagged, still a revision
    # the Go registry sees only repositories holding _layers
    assert set(result.repositories) == scenario.repositories - {"scratch/pending"}


def test_scenario_delete_untagged_dry_run_matches_go_collector(
    scenario: Scenario, tmp_path: Path
) -> None:
    result = gc_config(scenario, tmp_path).garbage_collect(delete_untagged=True)
    assert scenario.retag_lost <= result.blobs
    assert result.blobs == scenario.go_untagged_garbage
    assert result.manifests == scenario.go_untagged_manifests
    # Go 2.8 would drop the children of tagged multi-arch images (the known bug)
    assert scenario.multiarch_children <= result.manifests
    assert scenario.untagged_manifests < result.manifests
    assert scenario.untagged_garbage < result.blobs


def test_scenario_uploads_on_disk(scenario: Scenario) -> None:
    now = datetime.now(UTC)
    for repo, uuid in scenario.stale_uploads | scenario.fresh_uploads:
        folder = scenario.upload_dir(repo, uuid)
        assert (folder / "data").is_file()
        started = datetime.strptime((folder / "startedat").read_text(), GO_TIME_FORMAT).replace(
            tzinfo=UTC
        )
        size = (folder / "data").stat().st_size
        assert (folder / f"hashstates/sha256/{size}").is_file()
        if (repo, uuid) in scenario.stale_uploads:
            assert timedelta(days=9) < now - started < timedelta(days=11)
        else:
            assert now - started < timedelta(hours=1)
    assert {r for r, _ in scenario.stale_uploads} >= {"team/app/api", "scratch/pending"}
    assert not (scenario.v2 / "repositories/scratch/pending/_layers").exists()


def test_scenario_pulls_back_and_shape(scenario: Scenario, tmp_path: Path, skopeo: str) -> None:
    with GoRegistry(scenario.root, workdir=tmp_path / "reg") as reg:
        for (repo, tag), digest in scenario.tags.items():
            assert reg.head_manifest(repo, tag) == digest
        for repo, digest in scenario.deleted_manifests:
            assert reg.head_manifest(repo, digest) is None
        for repo, digest, subject in scenario.referrers:
            assert (
                json.loads(reg.get_manifest(repo, digest).content)["subject"]["digest"] == subject
            )
        assert failed_pulls(reg, scenario) == []
    assert os.listdir(scenario.v2 / "repositories/org") == ["team"]
    assert (scenario.v2 / "repositories/org/team/_layers").is_dir()
    assert (scenario.v2 / "repositories/org/team/r1/_manifests").is_dir()


def test_go_gc_plain_keeps_every_pull_and_finishes(
    scenario: Scenario, tmp_path: Path, skopeo: str
) -> None:
    """The expected pulls survive a real Go collection without --delete-untagged."""
    with GoRegistry(scenario.root, workdir=tmp_path / "reg") as reg:
        reg.stop()  # the Go collector is safe only with the registry down
        assert reg.garbage_collect(dry_run=False).blobs == scenario.garbage
        assert reg.garbage_collect().blobs == set()
        reg.start()
        assert failed_pulls(reg, scenario) == []


def test_go_gc_delete_untagged_breaks_multiarch(
    scenario: Scenario, tmp_path: Path, skopeo: str
) -> None:
    """Go 2.8's --delete-untagged breaks tagged multi-arch images: pulls notice."""
    with GoRegistry(scenario.root, workdir=tmp_path / "reg") as reg:
        reg.stop()
        reg.garbage_collect(dry_run=False, delete_untagged=True)
        reg.start()
        failed = {(p.repo, p.ref) for p in failed_pulls(reg, scenario)}
    assert ("org/team", "stable") in failed and ("org/team", "list") in failed
    assert ("library/base", "latest") not in failed and ("team/app/api", "v1") not in failed
