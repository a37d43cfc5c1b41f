"""The layer service over every driver: the Go registry's tests and what lies beyond them."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.driver.filesystem import FilesystemDriver
from layergc.driver.inmemory import InMemoryDriver
from layergc.errors import (
    DigestMismatch,
    InvalidDigest,
    InvalidRepositoryName,
    InvalidTag,
    LayerUploadUnknown,
    UnknownLayer,
    UnknownManifest,
    UnknownTag,
)
from layergc.gc.uploads import parse_rfc3339 as parse_started_at
from layergc.storage import Registry, hashstate, paths
from layergc.storage.layers import LayerService
from layergc.storage.upload import format_started_at
from tests.support.recording import RecordingDriver

REPO_ROOT = Path(__file__).resolve().parent.parent
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


pytest_plugins = ["tests.conftest_s3"]


@pytest.fixture(params=["inmemory", "filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "inmemory":
        return InMemoryDriver()
    if request.param == "s3":
        return request.getfixturevalue("s3_driver")
    return FilesystemDriver(tmp_path / "root")


@pytest.fixture
def layers(driver: StorageDriver) -> LayerService:
    return Registry(driver).repository("foo/bar").layers()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_files(driver: StorageDriver, repo: str, uuid: str) -> set[str]:
    base = paths.upload_dir(repo, uuid)
    return {info.path[len(base) :] for info in driver.walk(base) if not info.is_dir}


def blob_files(driver: StorageDriver) -> list[str]:
    if not driver.exists(paths.BLOBS):
        return []
    return [i.path for i in driver.walk(paths.BLOBS) if not i.is_dir]


# --- the Go registry's own tests (layer_test.go) --------------------------------------


def test_cancelled_upload_is_unknown(layers: LayerService) -> None:
    upload = layers.upload()
    upload.cancel()
    with pytest.raises(LayerUploadUnknown):
        layers.resume(upload.uuid)
    assert not layers.driver.exists(paths.upload_dir("foo/bar", upload.uuid))


def test_simple_upload_resume_finish_fetch(layers: LayerService) -> None:
    data = os.urandom(300_000)
    digest = sha256(data)
    upload = layers.upload()
    assert upload.write(data[:100_000]) == 100_000
    upload.write(data[100_000:])
    assert upload.seek(0, io.SEEK_CUR) == len(data)
    assert upload.tell() == len(data)
    upload.close()

    upload = layers.resume(upload.uuid)
    assert upload.tell() == len(data)
    layer = upload.finish(digest)
    assert str(layer.digest) == digest
    assert layer.length == len(data)

    with pytest.raises(LayerUploadUnknown):
        layers.resume(upload.uuid)
    assert layers.exists(digest)

    fetched = layers.fetch(digest)
    assert fetched.length == len(data)
    first = fetched.read()
    assert first == data
    assert sha256(first) == digest
    assert fetched.seek(0) == 0
    assert fetched.read() == data

    with pytest.raises(UnknownLayer):
        layers.fetch(sha256(b"never pushed"))
    assert not layers.exists(sha256(b"never pushed"))


def test_zero_length_layer(layers: LayerService) -> None:
    upload = layers.upload()
    upload.close()
    layer = layers.resume(upload.uuid).finish(EMPTY_SHA256)
    assert str(layer.digest) == EMPTY_SHA256
    assert layers.exists(EMPTY_SHA256)
    fetched = layers.fetch(EMPTY_SHA256)
    assert fetched.length == 0
    assert fetched.read() == b""
    assert layers.driver.get_content(paths.blob_data(Digest.parse(EMPTY_SHA256))) == b""
    # Also straight away, without a close and resume.
    assert layers.upload().finish(EMPTY_SHA256).length == 0


# --- beyond them -----------------------------------------------------------------------


def test_wrong_digest_leaves_the_upload_intact_and_resumable(layers: LayerService) -> None:
    data = os.urandom(70_000)
    upload = layers.upload()
    upload.write(data[:50_000])
    with pytest.raises(DigestMismatch) as caught:
        upload.finish(sha256(b"something else"))
    assert caught.value.actual == sha256(data[:50_000])
    assert upload_files(layers.driver, "foo/bar", upload.uuid) == {
        "/startedat",
        "/data",
        "/hashstates/sha256/0",
        "/hashstates/sha256/50000",
    }
    assert not layers.exists(sha256(data[:50_000]))
    assert blob_files(layers.driver) == []

    upload = layers.resume(upload.uuid)
    assert upload.tell() == 50_000
    assert upload.rehashed_bytes == 0
    upload.write(data[50_000:])
    assert layers.fetch(upload.finish(sha256(data)).digest).read() == data


def test_finish_again_after_a_mismatch_on_the_same_object(layers: LayerService) -> None:
    upload = layers.upload()
    upload.write(b"abc")
    with pytest.raises(DigestMismatch):
        upload.finish(sha256(b"abd"))
    assert upload.finish(sha256(b"abc")).read() == b"abc"


def test_same_content_in_two_repositories_is_stored_once(driver: StorageDriver) -> None:
    registry = Registry(driver)
    data = os.urandom(50_000)
    digest = Digest.parse(sha256(data))
    for name in ("team/a", "team/b"):
        upload = registry.repository(name).layers().upload()
        upload.write(data)
        upload.finish(digest)
        assert not driver.exists(paths.upload_dir(name, upload.uuid))
    assert blob_files(driver) == [paths.blob_data(digest)]
    assert driver.get_content(paths.blob_data(digest)) == data
    for name in ("team/a", "team/b"):
        assert driver.get_content(paths.layer_link(name, digest)) == str(digest).encode()
        assert registry.repository(name).layers().fetch(digest).read() == data
    assert not registry.repository("team/c").layers().exists(digest)


def test_concurrent_uploads_of_the_same_content(driver: StorageDriver) -> None:
    registry = Registry(driver)
    data = os.urandom(1 << 20)
    digest = sha256(data)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def push(i: int) -> None:
        try:
            upload = registry.repository(f"team/r{i % 3}").layers().upload()
            for off in range(0, len(data), 64 << 10):
                upload.write(data[off : off + (64 << 10)])
            barrier.wait()
            upload.finish(digest)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert blob_files(driver) == [paths.blob_data(Digest.parse(digest))]
    for i in range(3):
        layers = registry.repository(f"team/r{i}").layers()
        assert layers.fetch(digest).read() == data
        uploads = paths.uploads_dir(f"team/r{i}")
        assert not driver.exists(uploads) or driver.list(uploads) == []


def test_startedat_is_written_as_the_go_registry_writes_it(layers: LayerService) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    upload = layers.upload()
    raw = layers.driver.get_content(paths.upload_started_at("foo/bar", upload.uuid))
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw), raw
    when = parse_started_at(raw.decode())
    assert before <= when <= datetime.now(UTC)
    assert upload.started_at == when
    assert upload.started_at.tzinfo is not None
    upload.close()
    assert layers.resume(upload.uuid).started_at == when


def test_startedat_parses_any_rfc3339() -> None:
    expected = datetime(2026, 11, 19, 5, 34, 45, tzinfo=UTC)
    assert parse_started_at("2026-11-19T05:34:45Z") == expected
    assert parse_started_at("2026-11-19T07:34:45+02:00") == expected
    nanos = parse_started_at("2026-11-19T05:34:45.123456789Z")
    assert nanos - expected == timedelta(microseconds=123456)
    assert format_started_at(expected) == "2026-11-19T05:34:45Z"
    with pytest.raises(ValueError):
        parse_started_at("2026-11-19 05:34:45")  # no zone


HOSTILE_NAMES = ["../x", "Foo", "/abs", "a//b", "a/../b", "a/./b", "", "x" * 256, "a/", "_layers"]
HOSTILE_DIGESTS = [
    "sha256:../../etc",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "md5:" + "a" * 32,
    "sha512:" + "a" * 64,
    "sha256",
    "../../etc/passwd",
    "sha256:" + "a" * 62 + "/x",
]


def test_hostile_names_and_digests_are_refused_before_any_storage_call(
    driver: StorageDriver,
) -> None:
    recorder = RecordingDriver(driver)
    registry = Registry(recorder)
    for name in HOSTILE_NAMES:
        with pytest.raises(InvalidRepositoryName):
            registry.repository(name)
    layers = registry.repository("foo/bar").layers()
    upload = layers.upload()
    upload.write(b"x")
    recorder.reset()
    for digest in HOSTILE_DIGESTS:
        for call in (layers.exists, layers.fetch, upload.finish):
            with pytest.raises(InvalidDigest):
                call(digest)
        with pytest.raises(InvalidDigest):
            registry.repository("foo/bar").tags().tag("latest", digest)
    for uuid in ("../../x", "..", ".", "a/b", "", "x\0"):
        with pytest.raises(LayerUploadUnknown):
            layers.resume(uuid)
    for tag in ("../x", "-x", "a/b", ""):
        with pytest.raises(InvalidTag):
            registry.repository("foo/bar").tags().get(tag)
    assert recorder.calls == []
    # And the upload is unharmed.
    assert upload.finish(sha256(b"x")).read() == b"x"


# --- persisted hash states -------------------------------------------------------------


def test_hash_states_in_go_format_at_start_and_on_close(layers: LayerService) -> None:
    driver = layers.driver
    upload = layers.upload()
    state0 = driver.get_content(paths.upload_hashstate("foo/bar", upload.uuid, "sha256", 0))
    assert state0 == hashstate.new("sha256").marshal()
    assert len(state0) == 108
    data = os.urandom(12_345)
    upload.write(data)
    upload.close()
    state = driver.get_content(paths.upload_hashstate("foo/bar", upload.uuid, "sha256", 12_345))
    assert state == hashstate.new("sha256", data).marshal()
    assert upload_files(driver, "foo/bar", upload.uuid) == {
        "/startedat",
        "/data",
        "/hashstates/sha256/0",
        "/hashstates/sha256/12345",
    }


def test_resume_does_not_read_the_data(driver: StorageDriver) -> None:
    data = os.urandom(200_000)
    upload = Registry(driver).repository("foo/bar").layers().upload()
    upload.write(data[:120_000])
    upload.close()

    recorder = RecordingDriver(driver)  # a fresh registry: nothing cached in memory
    layers = Registry(recorder).repository("foo/bar").layers()
    resumed = layers.resume(upload.uuid)
    resumed.write(data[120_000:])
    resumed.finish(sha256(data))
    assert resumed.rehashed_bytes == 0
    assert recorder.reads_of(paths.upload_data("foo/bar", upload.uuid)) == []


def test_missing_hash_state_is_rebuilt_from_the_data(layers: LayerService) -> None:
    data = os.urandom(90_000)
    upload = layers.upload()
    upload.write(data[:60_000])
    upload.close()
    layers.driver.delete(f"{paths.upload_dir('foo/bar', upload.uuid)}/hashstates")
    resumed = layers.resume(upload.uuid)
    assert resumed.rehashed_bytes == 60_000
    resumed.write(data[60_000:])
    resumed.close()
    # The rebuilt state was saved: the next resume reads nothing.
    again = layers.resume(upload.uuid)
    assert again.rehashed_bytes == 0
    assert again.finish(sha256(data)).read() == data


def test_only_the_gap_after_the_last_state_is_rehashed(layers: LayerService) -> None:
    data = os.urandom(100_000)
    upload = layers.upload(state_interval=30_000)
    for off in range(0, len(data), 10_000):
        upload.write(data[off : off + 10_000])
    upload.close()
    offsets = sorted(
        int(p.rsplit("/", 1)[1])
        for p in layers.driver.list(paths.upload_hashstates_dir("foo/bar", upload.uuid, "sha256"))
    )
    assert offsets == [0, 30_000, 60_000, 90_000, 100_000]
    layers.driver.delete(paths.upload_hashstate("foo/bar", upload.uuid, "sha256", 100_000))
    resumed = layers.resume(upload.uuid)
    assert resumed.rehashed_bytes == 10_000
    assert resumed.finish(sha256(data)).length == len(data)


def test_states_beyond_the_data_are_dropped(layers: LayerService) -> None:
    """A crash can lose data a state already covered: that state must not be reused."""
    upload = layers.upload()
    upload.write(b"a" * 1000)
    upload.close()
    stale = paths.upload_hashstate("foo/bar", upload.uuid, "sha256", 5000)
    layers.driver.put_content(stale, hashstate.new("sha256", b"b" * 5000).marshal())
    resumed = layers.resume(upload.uuid)
    assert resumed.rehashed_bytes == 0
    assert not layers.driver.exists(stale)
    resumed.write(b"c" * 4000)
    assert resumed.finish(sha256(b"a" * 1000 + b"c" * 4000)).length == 5000


def test_corrupt_hash_state_falls_back_to_the_data(layers: LayerService) -> None:
    upload = layers.upload()
    upload.write(b"z" * 5000)
    upload.close()
    path = paths.upload_hashstate("foo/bar", upload.uuid, "sha256", 5000)
    layers.driver.put_content(path, b"garbage")
    resumed = layers.resume(upload.uuid)
    assert resumed.rehashed_bytes == 5000
    assert resumed.finish(sha256(b"z" * 5000)).length == 5000


# Go 1.19's sha256 MarshalBinary after the first 100 bytes of GO_DATA (see test_hashstate.py).
GO_DATA = b"The quick brown fox jumps over the lazy dog. " * 8
GO_STATE_100 = bytes.fromhex(
    "736861035c000cae8ed219528a344222c75adb617a8c8794fcbcdaa085995fa1325753fc"
    "206a756d7073206f76657220746865206c617a7920646f672e2054686520717569636b20"
    + "00" * 28
    + "0000000000000064"
)


def test_resume_an_upload_laid_out_by_the_go_registry(driver: StorageDriver) -> None:
    uuid = "6f1e5a5e-2d3c-4b8a-9c7e-0d1f2a3b4c5d"
    repo = "library/go"
    driver.put_content(paths.upload_started_at(repo, uuid), b"2026-11-19T05:34:45Z")
    driver.put_content(paths.upload_data(repo, uuid), GO_DATA[:100])
    driver.put_content(paths.upload_hashstate(repo, uuid, "sha256", 0), GO_VECTOR_0)
    driver.put_content(paths.upload_hashstate(repo, uuid, "sha256", 100), GO_STATE_100)
    recorder = RecordingDriver(driver)
    layers = Registry(recorder).repository(repo).layers()
    upload = layers.resume(uuid)
    assert upload.started_at == datetime(2026, 11, 19, 5, 34, 45, tzinfo=UTC)
    assert upload.tell() == 100
    upload.write(GO_DATA[100:])
    layer = upload.finish(sha256(GO_DATA))
    assert upload.rehashed_bytes == 0
    assert recorder.reads_of(paths.upload_data(repo, uuid)) == []
    assert layer.read() == GO_DATA


def test_resume_an_upload_with_only_startedat(driver: StorageDriver) -> None:
    """The Go registry on S3 has no data object before the first PATCH."""
    uuid = "0b3c1d2e-aaaa-4bbb-8ccc-0123456789ab"
    driver.put_content(paths.upload_started_at("foo/bar", uuid), b"2026-11-19T05:34:45.5+01:00")
    layers = Registry(driver).repository("foo/bar").layers()
    upload = layers.resume(uuid)
    assert upload.tell() == 0
    assert upload.started_at == datetime(2026, 11, 19, 4, 34, 45, 500000, tzinfo=UTC)
    upload.write(b"first bytes")
    assert upload.finish(sha256(b"first bytes")).read() == b"first bytes"


GO_VECTOR_0 = bytes.fromhex(
    "736861036a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19" + "00" * 72
)


def test_resume_in_a_new_process_does_not_read_the_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = os.urandom(3 << 20)
    layers = Registry(FilesystemDriver(root)).repository("foo/bar").layers()
    upload = layers.upload()
    upload.write(data[: 2 << 20])
    upload.close()
    script = textwrap.dedent(
        f"""
        import hashlib, sys
        from layergc.driver.filesystem import FilesystemDriver
        from layergc.storage import Registry, paths
        from tests.support.recording import RecordingDriver
        rec = RecordingDriver(FilesystemDriver({str(root)!r}))
        layers = Registry(rec).repository("foo/bar").layers()
        up = layers.resume({upload.uuid!r})
        rest = sys.stdin.buffer.read()
        up.write(rest)
        up.finish(sys.argv[1])
        print(up.rehashed_bytes, len(rec.reads_of(paths.upload_data("foo/bar", {upload.uuid!r}))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, sha256(data)],
        input=data[2 << 20 :],
        capture_output=True,
        cwd=REPO_ROOT,
        check=True,
    ).stdout.split()
    assert out == [b"0", b"0"]
    assert layers.fetch(sha256(data)).read() == data


# --- other algorithms ------------------------------------------------------------------


def test_sha512_tracked_from_the_start(layers: LayerService) -> None:
    data = os.urandom(40_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    upload = layers.upload(algorithms=["sha512"])
    upload.write(data[:10_000])
    upload.close()
    assert layers.driver.exists(paths.upload_hashstate("foo/bar", upload.uuid, "sha512", 10_000))
    upload = layers.resume(upload.uuid)
    upload.write(data[10_000:])
    layer = upload.finish(digest)
    assert upload.rehashed_bytes == 0
    assert layers.driver.exists(paths.blob_data(Digest.parse(digest)))
    assert layers.fetch(digest).read() == data
    assert layer.length == len(data)


def test_untracked_algorithm_rehashes_the_data(layers: LayerService) -> None:
    data = os.urandom(20_000)
    upload = layers.upload()
    upload.write(data)
    with pytest.raises(DigestMismatch):
        upload.finish("sha384:" + "0" * 96)
    layer = upload.finish("sha384:" + hashlib.sha384(data).hexdigest())
    assert upload.rehashed_bytes == 2 * len(data)
    assert layer.read() == data


# --- file-object behaviour ---------------------------------------------------------------


def test_upload_is_append_only(layers: LayerService) -> None:
    upload = layers.upload()
    upload.write(bytearray(b"hello"))
    upload.write(memoryview(b" world"))
    assert upload.seek(0, io.SEEK_END) == 11
    assert upload.seek(11) == 11
    with pytest.raises(io.UnsupportedOperation):
        upload.seek(0)
    upload.close()
    with pytest.raises(ValueError):
        upload.write(b"more")
    assert upload.finish(sha256(b"hello world")).read() == b"hello world"
    with pytest.raises(LayerUploadUnknown):
        upload.finish(sha256(b"hello world"))
    with pytest.raises(LayerUploadUnknown):
        upload.cancel()


def test_upload_as_a_context_manager_closes_for_resume(layers: LayerService) -> None:
    with layers.upload() as upload:
        upload.write(b"x" * 100)
    assert upload.closed
    assert layers.resume(upload.uuid).tell() == 100


def test_layer_is_a_seekable_reader(layers: LayerService) -> None:
    data = bytes(range(256)) * 400
    upload = layers.upload()
    upload.write(data)
    digest = upload.finish(sha256(data)).digest
    layer = layers.fetch(digest)
    assert layer.readable() and layer.seekable()
    assert layer.read(10) == data[:10]
    assert layer.tell() == 10
    assert layer.seek(-5, io.SEEK_END) == len(data) - 5
    assert layer.read() == data[-5:]
    assert layer.read() == b""
    layer.seek(1000)
    buf = bytearray(24)
    assert layer.readinto(buf) == 24
    assert bytes(buf) == data[1000:1024]
    layer.seek(7, io.SEEK_CUR)
    assert layer.read(3) == data[1031:1034]
    layer.seek(len(data) + 10)
    assert layer.read() == b""
    with io.BufferedReader(layers.fetch(digest), buffer_size=4096) as buffered:
        assert buffered.read() == data
    layer.close()
    with pytest.raises(ValueError):
        layer.read()


# --- manifests and tags --------------------------------------------------------------


def test_manifest_put_and_tags(driver: StorageDriver) -> None:
    registry = Registry(driver)
    repo = registry.repository("team/app")
    manifest = b'{"schemaVersion": 2, "layers": []}'
    digest = repo.manifests().put(manifest)
    assert str(digest) == sha256(manifest)
    assert driver.get_content(paths.blob_data(digest)) == manifest
    assert driver.get_content(paths.manifest_revision_link("team/app", digest)) == (
        str(digest).encode()
    )
    assert repo.manifests().get(digest) == manifest
    assert repo.manifests().exists(str(digest))

    repo.tags().tag("v1", digest)
    assert repo.tags().get("v1") == digest
    assert driver.get_content(paths.tag_current_link("team/app", "v1")) == str(digest).encode()
    assert driver.exists(paths.tag_index_link("team/app", "v1", digest))
    assert repo.tags().all() == ["v1"]

    other = repo.manifests().put(b'{"schemaVersion": 2}')
    repo.tags().tag("v1", other)
    assert repo.tags().get("v1") == other
    assert driver.exists(paths.tag_index_link("team/app", "v1", digest))  # history kept

    with pytest.raises(UnknownTag):
        repo.tags().get("v2")
    with pytest.raises(UnknownManifest):
        repo.tags().tag("v2", sha256(b"not a manifest here"))
    with pytest.raises(UnknownManifest):
        registry.repository("team/other").manifests().get(digest)
    repo.tags().untag("v1")
    assert repo.tags().all() == []

    # The same manifest in a second repository: one blob, two revision links.
    registry.repository("team/b").manifests().put(manifest)
    assert driver.exists(paths.manifest_revision_link("team/b", digest))
