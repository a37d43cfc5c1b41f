"""The layer service against the real Go registry (issue 2, "Interop with the real registry").

Both implementations work on one storage root: what one writes, the other reads,
serves or finishes. An upload crosses over in both directions without its data
being read again; each such test proves it twice: layergc's own accounting
(no read of the upload's data, `rehashed_bytes == 0`), and by overwriting the
bytes already written with same-length garbage before the other side finishes.
Only a hasher restored from the stored hash state still yields the digest of
the original content; a re-read would hash the garbage. A control with the
state removed shows that the other side does fall back to reading the data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from layergc.digest import Digest
from layergc.driver.filesystem import FilesystemDriver
from layergc.errors import DigestMismatch, LayerUploadUnknown
from layergc.storage import Registry, paths
from layergc.storage.layers import LayerService
from tests.support import images
from tests.support.files import fs_path
from tests.support.goregistry import GoRegistry, RegistryHTTPError, sha256_digest
from tests.support.images import Image, Index, OCILayout, pull, pull_and_verify, push
from tests.support.recording import RecordingDriver

pytestmark = pytest.mark.interop

REPO = "team/app"


def layers_of(root: Path, repo: str = REPO) -> LayerService:
    return Registry(FilesystemDriver(root)).repository(repo).layers()


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def tamper(path: Path) -> None:
    """Replace a file's bytes with different bytes of the same length."""
    good = path.read_bytes()
    path.write_bytes(bytes(b ^ 0x5A for b in good))
    assert path.stat().st_size == len(good)


def push_blob_with_layergc(layers: LayerService, data: bytes) -> Digest:
    """Write `data` as a layer through layergc, in two writes across a resume."""
    upload = layers.upload()
    upload.write(data[: len(data) // 2])
    upload.close()
    upload = layers.resume(upload.uuid)
    upload.write(data[len(data) // 2 :])
    return upload.finish(sha256_digest(data)).digest


def write_image_with_layergc(root: Path, repo: str, layout: OCILayout, image: Image) -> Digest:
    """Store an image's blobs and manifest (a revision) through layergc; no tag."""
    registry = Registry(FilesystemDriver(root))
    repository = registry.repository(repo)
    for desc in (image.config, *image.layers):
        blob = (layout.path / "blobs/sha256" / desc.digest.split(":", 1)[1]).read_bytes()
        assert str(push_blob_with_layergc(repository.layers(), blob)) == desc.digest
    return repository.manifests().put(image.manifest_bytes)


# --- what the Go registry writes, layergc reads ----------------------------------------------


def test_blob_pushed_through_go_is_fetched_by_layergc(go_registry: GoRegistry) -> None:
    data = random_bytes(1, 300_001)
    monolithic = go_registry.push_blob(REPO, data)
    chunked_data = random_bytes(2, 70_000)
    upload = go_registry.start_upload(REPO)
    for start in range(0, len(chunked_data), 25_000):
        upload = go_registry.patch_upload(upload, chunked_data[start : start + 25_000])
    chunked = go_registry.finish_upload(upload, sha256_digest(chunked_data))
    empty = go_registry.push_blob(REPO, b"")

    layers = layers_of(go_registry.root)  # type: ignore[arg-type]
    for digest, content in ((monolithic, data), (chunked, chunked_data), (empty, b"")):
        assert layers.exists(digest)
        layer = layers.fetch(digest)
        assert (str(layer.digest), layer.length) == (digest, len(content))
        assert layer.read() == content
        layer.seek(len(content) // 3)
        assert layer.read() == content[len(content) // 3 :]
    # A layer exists in a repository only through that repository's link.
    assert not layers_of(go_registry.root, "other/repo").exists(monolithic)  # type: ignore[arg-type]
    assert not layers.exists(sha256_digest(b"never pushed"))


def test_image_pushed_by_skopeo_is_fetched_by_layergc(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str
) -> None:
    image = oci_layout.image([oci_layout.layer(5, 20_000), oci_layout.layer(6, 3_000)], seed=5)
    oci_layout.tag("img", image)
    digest = push(go_registry, oci_layout.path, "img", REPO, "v1")

    repository = Registry(FilesystemDriver(go_registry.root)).repository(REPO)  # type: ignore[arg-type]
    for desc in (image.config, *image.layers):
        on_disk = (oci_layout.path / "blobs/sha256" / desc.digest.split(":", 1)[1]).read_bytes()
        layer = repository.layers().fetch(desc.digest)
        assert layer.length == desc.size and layer.read() == on_disk
    assert repository.tags().get("v1") == Digest.parse(digest)
    assert repository.manifests().get(digest) == image.manifest_bytes


# --- what layergc writes, the Go registry serves ---------------------------------------------


def test_image_written_by_layergc_pulls_through_go(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str
) -> None:
    root = go_registry.root
    assert root is not None
    image = oci_layout.image([oci_layout.layer(7, 40_000), oci_layout.layer(8, 1_000)], seed=7)
    digest = write_image_with_layergc(root, REPO, oci_layout, image)
    assert str(digest) == image.manifest.digest
    Registry(FilesystemDriver(root)).repository(REPO).tags().tag("v1", digest)

    served = go_registry.get_manifest(REPO, "v1")
    assert (served.digest, served.media_type) == (str(digest), images.OCI_MANIFEST)
    assert served.content == image.manifest_bytes
    assert go_registry.tags(REPO) == ["v1"]
    for desc in image.layers:
        assert go_registry.head_blob(REPO, desc.digest) == desc.size
    assert pull(go_registry, REPO, "v1") == image.manifest_bytes  # skopeo verifies every blob
    assert pull_and_verify(go_registry, REPO, str(digest))
    # Go's own collector finds the layout whole: nothing unreferenced.
    assert go_registry.garbage_collect().blobs == set()


def test_multiarch_index_written_by_layergc_pulls_through_go(
    go_registry: GoRegistry, oci_layout: OCILayout, skopeo: str
) -> None:
    root = go_registry.root
    assert root is not None
    base = oci_layout.layer(20, 10_000)
    platforms = [
        oci_layout.image([base, oci_layout.layer(21 + i, 2_000)], seed=20 + i, arch=arch)
        for i, arch in enumerate(("amd64", "arm64"))
    ]
    index: Index = oci_layout.index(platforms)
    repository = Registry(FilesystemDriver(root)).repository("org/multi")
    for platform in platforms:
        write_image_with_layergc(root, "org/multi", oci_layout, platform)
    index_digest = repository.manifests().put(index.index_bytes)
    repository.tags().tag("latest", index_digest)

    assert go_registry.get_manifest("org/multi", "latest").media_type == images.OCI_INDEX
    assert pull_and_verify(go_registry, "org/multi", "latest", all=True)
    assert go_registry.garbage_collect().blobs == set()


def test_layer_finished_by_layergc_is_served_by_go(go_registry: GoRegistry) -> None:
    data = random_bytes(3, 123_457)
    digest = push_blob_with_layergc(layers_of(go_registry.root), data)  # type: ignore[arg-type]
    assert go_registry.head_blob(REPO, str(digest)) == len(data)
    assert go_registry.get_blob(REPO, str(digest)) == data


# --- uploads crossing over: Go starts, layergc finishes ------------------------------------------


def go_partial_upload(registry: GoRegistry, chunks: list[bytes]) -> str:
    upload = registry.start_upload(REPO)
    for chunk in chunks:
        upload = registry.patch_upload(upload, chunk)
    return upload.uuid


def test_go_upload_resumed_and_finished_by_layergc_without_reading(
    go_registry: GoRegistry,
) -> None:
    root = go_registry.root
    assert root is not None
    head = [random_bytes(4, 50_001), random_bytes(5, 30_003)]  # odd sizes: partial blocks
    rest = random_bytes(6, 20_000)
    content = b"".join(head) + rest
    uuid = go_partial_upload(go_registry, head)
    data_path = paths.upload_data(REPO, uuid)
    # Go left a state at the data's size; layergc must load it.
    assert fs_path(
        root, paths.upload_hashstate(REPO, uuid, "sha256", len(content) - len(rest))
    ).is_file()

    driver = RecordingDriver(FilesystemDriver(root))
    layers = Registry(driver).repository(REPO).layers()
    upload = layers.resume(uuid)
    assert upload.tell() == len(content) - len(rest)
    upload.write(rest)
    layer = upload.finish(sha256_digest(content))
    assert upload.rehashed_bytes == 0
    assert driver.reads_of(data_path) == []
    assert str(layer.digest) == sha256_digest(content)
    with pytest.raises(LayerUploadUnknown):
        layers.resume(uuid)
    assert not fs_path(root, paths.upload_dir(REPO, uuid)).exists()
    # Go serves what layergc finished.
    assert go_registry.get_blob(REPO, sha256_digest(content)) == content


def test_go_upload_finished_by_layergc_uses_go_hash_state_not_data(
    go_registry: GoRegistry,
) -> None:
    root = go_registry.root
    assert root is not None
    head, rest = random_bytes(7, 65_537), random_bytes(8, 999)
    uuid = go_partial_upload(go_registry, [head])
    tamper(fs_path(root, paths.upload_data(REPO, uuid)))

    upload = layers_of(root).resume(uuid)
    upload.write(rest)
    # Only Go's hash state knows the original bytes: a re-read would hash the garbage.
    layer = upload.finish(sha256_digest(head + rest))
    assert upload.rehashed_bytes == 0
    assert str(layer.digest) == sha256_digest(head + rest)


def test_go_upload_without_state_is_rehashed_by_layergc(go_registry: GoRegistry) -> None:
    """The control: with Go's state removed, layergc reads the data, so the tamper shows."""
    root = go_registry.root
    assert root is not None
    head = random_bytes(9, 40_000)
    uuid = go_partial_upload(go_registry, [head])
    fs_path(root, paths.upload_hashstate(REPO, uuid, "sha256", len(head))).unlink()
    tamper(fs_path(root, paths.upload_data(REPO, uuid)))

    upload = layers_of(root).resume(uuid)
    assert upload.rehashed_bytes == len(head)
    with pytest.raises(DigestMismatch):
        upload.finish(sha256_digest(head))


# --- uploads crossing over: layergc starts, Go finishes ---------------------------------------


def layergc_partial_upload(root: Path, data: bytes) -> str:
    upload = layers_of(root).upload()
    upload.write(data)
    upload.close()  # persists the hash state at the data's size
    return upload.uuid


def test_layergc_upload_resumed_and_finished_by_go(go_registry: GoRegistry) -> None:
    root = go_registry.root
    assert root is not None
    head, middle, tail = random_bytes(10, 100_003), random_bytes(11, 7_001), random_bytes(12, 501)
    content = head + middle + tail
    uuid = layergc_partial_upload(root, head)

    upload = go_registry.resume_location(REPO, uuid, len(head))
    assert go_registry.upload_offset(upload) == len(head)
    upload = go_registry.patch_upload(upload, middle)
    digest = go_registry.finish_upload(upload, sha256_digest(content), tail)
    assert digest == sha256_digest(content)
    assert go_registry.get_blob(REPO, digest) == content
    assert not fs_path(root, paths.upload_dir(REPO, uuid)).exists()
    layer = layers_of(root).fetch(digest)
    assert layer.read() == content


def test_go_finishes_layergc_upload_from_layergc_hash_state(go_registry: GoRegistry) -> None:
    """PATCH then PUT over tampered data: Go accepts the original digest only from our state."""
    root = go_registry.root
    assert root is not None
    head, rest = random_bytes(13, 81_919), random_bytes(14, 4_097)
    uuid = layergc_partial_upload(root, head)
    tamper(fs_path(root, paths.upload_data(REPO, uuid)))

    upload = go_registry.patch_upload(go_registry.resume_location(REPO, uuid, len(head)), rest)
    digest = go_registry.finish_upload(upload, sha256_digest(head + rest))
    assert digest == sha256_digest(head + rest)


def test_go_put_only_finishes_layergc_upload_from_layergc_hash_state(
    go_registry: GoRegistry,
) -> None:
    """No PATCH: the PUT alone must load the state layergc left on close."""
    root = go_registry.root
    assert root is not None
    data = random_bytes(15, 33_333)
    uuid = layergc_partial_upload(root, data)
    tamper(fs_path(root, paths.upload_data(REPO, uuid)))

    upload = go_registry.resume_location(REPO, uuid, len(data))
    assert go_registry.finish_upload(upload, sha256_digest(data)) == sha256_digest(data)


def test_go_rehashes_layergc_upload_without_state(go_registry: GoRegistry) -> None:
    """The control: with layergc's state removed Go reads the data, so the tamper shows
    (and without tampering it still verifies: the fallback works)."""
    root = go_registry.root
    assert root is not None
    for tampered in (False, True):
        data = random_bytes(16 + tampered, 20_000)
        uuid = layergc_partial_upload(root, data)
        fs_path(root, paths.upload_hashstate(REPO, uuid, "sha256", len(data))).unlink()
        if tampered:
            tamper(fs_path(root, paths.upload_data(REPO, uuid)))
        upload = go_registry.resume_location(REPO, uuid, len(data))
        if not tampered:
            assert go_registry.finish_upload(upload, sha256_digest(data)) == sha256_digest(data)
            continue
        with pytest.raises(RegistryHTTPError) as refused:
            go_registry.finish_upload(upload, sha256_digest(data))
        assert refused.value.status == 400
        assert json.loads(refused.value.body)["errors"][0]["code"] == "DIGEST_INVALID"
