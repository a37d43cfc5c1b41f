"""What only the S3 driver has: its key layout, multipart resumes across
processes, batched and parallel deletes, paginated listings, aborting stale
multipart uploads, retries, request counting, and interop with the Go
registry's s3 driver on the same bucket."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from layergc.digest import Digest
from layergc.driver.s3 import S3Driver
from layergc.errors import ConfigError, PathNotFound, StorageDriverError
from layergc.storage import paths
from tests.support.components import require_binary
from tests.support.s3server import (
    ACCESS_KEY,
    SECRET_KEY,
    TEST_MIN_PART_SIZE,
    MotoServer,
    make_s3_driver,
)

pytest_plugins = ["tests.conftest_s3"]

pytestmark = pytest.mark.s3

KiB = 1 << 10
MiB = 1 << 20
PART = TEST_MIN_PART_SIZE  # 64 KiB: parts of these tests are the test server's minimum


def data_of(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def raw_keys(server: MotoServer, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def raw_uploads(server: MotoServer, bucket: str) -> list[tuple[str, str]]:
    response = server.client().list_multipart_uploads(Bucket=bucket)
    return [(u["Key"], u["UploadId"]) for u in response.get("Uploads", [])]


@pytest.fixture
def small_parts(moto_server: MotoServer, s3_bucket: str) -> Iterator[S3Driver]:
    """Parts of 64 KiB, so multipart uploads of a few hundred KiB have several."""
    driver = make_s3_driver(moto_server, s3_bucket, chunksize=PART, min_part_size=PART)
    yield driver
    driver.close()


# --- configuration -----------------------------------------------------------------


def test_from_registry_config_reads_the_go_section() -> None:
    driver = S3Driver.from_registry_config(
        {
            "bucket": "registry",
            "region": "eu-west-1",
            "regionendpoint": "127.0.0.1:9000",
            "rootdirectory": "/docker-root/",
            "accesskey": "AK",
            "secretkey": "SK",
            "secure": "false",  # Go accepts strings for booleans and sizes
            "chunksize": str(8 * MiB),
            "multipartcopythresholdsize": 64 * MiB,
            "storageclass": "NONE",
            "v4auth": True,
            "loglevel": "debug",  # ignored, as by layergc generally
        }
    )
    assert driver.bucket == "registry"
    assert driver.endpoint_url == "http://127.0.0.1:9000"
    assert driver.chunksize == 8 * MiB
    assert driver.multipart_copy_threshold == 64 * MiB
    assert driver.key_for("/docker/registry/v2/blobs") == "docker-root/docker/registry/v2/blobs"
    config = driver.client.meta.config
    assert config.region_name == "eu-west-1"
    assert config.s3["addressing_style"] == "path"  # a custom endpoint: path style
    assert config.retries == {"mode": "standard", "total_max_attempts": 8}
    credentials = driver.client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("AK", "SK")
    assert "StorageClass" not in driver._write_args
    driver.close()


def test_aws_defaults_without_an_endpoint() -> None:
    driver = S3Driver("registry", region="us-west-2", retry_mode="adaptive", max_attempts=4)
    assert driver.endpoint_url is None
    assert driver.client.meta.config.s3["addressing_style"] == "auto"
    assert driver.client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 4}
    assert driver.client.meta.endpoint_url.startswith("https://")
    driver.close()


@pytest.mark.parametrize(
    "params",
    [
        {"region": "us-east-1"},
        {"bucket": "b"},
        {"bucket": "b", "region": "us-east-1", "chunksize": 1024},
        {"bucket": "b", "region": "us-east-1", "chunksize": "big"},
        {"bucket": "b", "region": "us-east-1", "secure": "yes"},
        {"bucket": "b", "region": "us-east-1", "v4auth": "false"},
    ],
    ids=["no-bucket", "no-region", "chunk-too-small", "chunk-nan", "bad-bool", "v2-auth"],
)
def test_from_registry_config_refuses_what_go_refuses(params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        S3Driver.from_registry_config(params)


# --- key layout -----------------------------------------------------------------------

DIGEST = Digest.of(b"a layer")


@pytest.mark.parametrize(
    ("rootdirectory", "prefix"),
    [("", ""), ("/", ""), ("/registry-root/", "registry-root/"), ("a/b", "a/b/")],
)
def test_keys_are_the_go_drivers(
    moto_server: MotoServer, s3_bucket: str, rootdirectory: str, prefix: str
) -> None:
    driver = make_s3_driver(moto_server, s3_bucket, rootdirectory=rootdirectory)
    driver.put_content(paths.blob_data(DIGEST), b"a layer")
    driver.put_content(paths.layer_link("team/app", DIGEST), str(DIGEST).encode())
    hex_ = DIGEST.hex
    assert sorted(raw_keys(moto_server, s3_bucket)) == [
        f"{prefix}docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data",
        f"{prefix}docker/registry/v2/repositories/team/app/_layers/sha256/{hex_}/link",
    ]
    # And what another writer (the Go registry) puts at those keys, the driver reads.
    other = Digest.of(b"other")
    moto_server.client().put_object(
        Bucket=s3_bucket, Key=prefix + paths.blob_data(other)[1:], Body=b"other"
    )
    assert driver.get_content(paths.blob_data(other)) == b"other"
    assert driver.list(paths.blob_algorithm_dir("sha256")) == sorted(
        paths.blob_dir(d).rsplit("/", 1)[0] for d in {DIGEST, other}
    )
    driver.close()


def test_a_rootdirectory_hides_the_rest_of_the_bucket(
    moto_server: MotoServer, s3_bucket: str
) -> None:
    moto_server.client().put_object(Bucket=s3_bucket, Key="elsewhere/file", Body=b"x")
    moto_server.client().put_object(Bucket=s3_bucket, Key="rootsibling", Body=b"x")
    driver = make_s3_driver(moto_server, s3_bucket, rootdirectory="root")
    assert driver.list("/") == []
    assert list(driver.walk("/")) == []
    driver.put_content("/a", b"1")
    assert driver.list("/") == ["/a"]
    assert [i.path for i in driver.walk("/")] == ["/a"]
    assert driver.abort_multipart_uploads("/") == 0
    driver.close()


def test_folder_markers_and_key_order_in_walk(moto_server: MotoServer, s3_bucket: str) -> None:
    """Objects named `dir/` (made by consoles and other tools) imply a folder
    and are not files; `-` and `.` sort before `/`, and walk still reports
    each folder once, before its children."""
    s3 = moto_server.client()
    for key in ("a/", "a/b-c", "a/b.d/e", "a/b/f", "a/b/g/", "a/b/g/h"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"" if key.endswith("/") else b"x")
    driver = make_s3_driver(moto_server, s3_bucket)
    walked = [(i.path, i.is_dir) for i in driver.walk("/")]
    assert sorted(walked) == sorted(
        [
            ("/a", True),
            ("/a/b-c", False),
            ("/a/b.d", True),
            ("/a/b.d/e", False),
            ("/a/b", True),
            ("/a/b/f", False),
            ("/a/b/g", True),
            ("/a/b/g/h", False),
        ]
    )
    assert len(walked) == len(set(walked))
    paths_ = [p for p, _ in walked]
    for index, path in enumerate(paths_):
        assert paths_.index(path.rsplit("/", 1)[0] or "/a") <= index
    assert driver.list("/a") == ["/a/b", "/a/b-c", "/a/b.d"]
    assert driver.list_entries("/a/b") == [("f", False), ("g", True)]
    driver.close()


# --- writers: multipart uploads resumed across processes ------------------------------


def test_a_closed_upload_resumes_in_another_process_by_server_side_copy(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    data = data_of(5 * PART + 100)
    first = small_parts
    with first.writer("/up/data") as writer:
        writer.write(data[: 3 * PART + 7])
    assert raw_uploads(moto_server, s3_bucket) == []  # close made the object
    assert first.stat("/up/data").size == 3 * PART + 7

    second = make_s3_driver(moto_server, s3_bucket, chunksize=PART, min_part_size=PART)
    writer = second.writer("/up/data", append=True)
    assert writer.size == 3 * PART + 7
    writer.write(data[writer.size :])
    writer.commit()
    assert second.get_content("/up/data") == data
    counts = second.request_count
    # What was there went over as one server-side part copy, not through us.
    assert counts["UploadPartCopy"] == 1
    assert counts["GetObject"] == 1  # the get_content above only
    assert raw_uploads(moto_server, s3_bucket) == []
    second.close()


def test_a_small_closed_upload_is_read_back(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    """Under S3's part minimum the object cannot be a part: it is read back."""
    with small_parts.writer("/up/data") as writer:
        writer.write(b"x" * 1000)
    second = make_s3_driver(moto_server, s3_bucket, chunksize=PART, min_part_size=PART)
    with second.writer("/up/data", append=True) as writer:
        assert writer.size == 1000
        writer.write(b"y" * (2 * PART))
    assert second.get_content("/up/data") == b"x" * 1000 + b"y" * (2 * PART)
    assert second.request_count["UploadPartCopy"] == 0
    second.close()


def test_a_writer_that_died_is_resumed_from_its_parts(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    data = data_of(4 * PART + 123, seed=1)
    writer = small_parts.writer("/up/data")
    writer.write(data[: 3 * PART + 500])  # three parts sent, 500 bytes buffered
    small_parts.close()
    del writer  # the process died: no close, no commit
    assert [k for k, _ in raw_uploads(moto_server, s3_bucket)] == ["up/data"]

    second = make_s3_driver(moto_server, s3_bucket, chunksize=PART, min_part_size=PART)
    writer = second.writer("/up/data", append=True)
    assert writer.size == 3 * PART  # what reached S3; the buffer died with the writer
    writer.write(data[writer.size :])
    writer.commit()
    assert second.get_content("/up/data") == data
    assert raw_uploads(moto_server, s3_bucket) == []
    second.close()


def go_style_upload(server: MotoServer, bucket: str, key: str, sizes: list[int]) -> bytes:
    """What the Go registry's s3 writer leaves after Close: an upload in
    progress whose parts hold the data (the last one possibly small)."""
    s3 = server.client()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    written = b""
    for number, size in enumerate(sizes, start=1):
        body = data_of(size, seed=number)
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        written += body
    return written


def test_go_upload_with_a_small_last_part_is_folded_then_continued(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    before = go_style_upload(moto_server, s3_bucket, "up/data", [2 * PART, 2 * PART, 10 * KiB])
    writer = small_parts.writer("/up/data", append=True)
    assert writer.size == len(before)
    writer.write(b"tail")
    writer.commit()
    assert small_parts.get_content("/up/data") == before + b"tail"
    counts = small_parts.request_count
    # As Go's writer: complete into the object, start again from it by a part copy.
    assert counts["CompleteMultipartUpload"] == 2
    assert counts["UploadPartCopy"] == 1
    assert raw_uploads(moto_server, s3_bucket) == []


def test_go_upload_with_full_parts_is_continued_in_place(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    before = go_style_upload(moto_server, s3_bucket, "up/data", [PART, 3 * PART // 2])
    writer = small_parts.writer("/up/data", append=True)
    assert writer.size == len(before)
    writer.write(b"tail")
    writer.close()
    assert small_parts.get_content("/up/data") == before + b"tail"
    assert small_parts.request_count["UploadPartCopy"] == 0
    assert small_parts.request_count["CompleteMultipartUpload"] == 1


def test_a_new_writer_ends_left_over_uploads(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    go_style_upload(moto_server, s3_bucket, "up/data", [PART, PART])
    with small_parts.writer("/up/data") as writer:
        writer.write(b"new")
    assert raw_uploads(moto_server, s3_bucket) == []
    with small_parts.writer("/up/data", append=True) as writer:
        assert writer.size == 3


def test_an_upload_without_parts_does_not_hide_the_object(
    moto_server: MotoServer, s3_bucket: str, small_parts: S3Driver
) -> None:
    small_parts.put_content("/up/data", b"abc")
    moto_server.client().create_multipart_upload(Bucket=s3_bucket, Key="up/data")
    with small_parts.writer("/up/data", append=True) as writer:
        assert writer.size == 3
        writer.write(b"d")
    assert small_parts.get_content("/up/data") == b"abcd"
    assert raw_uploads(moto_server, s3_bucket) == []


def test_small_files_take_one_put(small_parts: S3Driver) -> None:
    small_parts.reset_request_count()
    with small_parts.writer("/f") as writer:
        writer.write(b"x" * 100)
        writer.commit()
    assert small_parts.request_count == {"ListMultipartUploads": 1, "PutObject": 1}


def test_part_lists_are_paginated(small_parts: S3Driver) -> None:
    """moto answers ListParts and ListMultipartUploads in one page; S3 pages
    them by 1,000, so the paging is checked against canned answers."""
    client = small_parts.client
    key = "up/data"
    with Stubber(client) as stub:
        stub.add_response(
            "list_multipart_uploads",
            {
                "Uploads": [{"Key": key, "UploadId": "old"}],
                "IsTruncated": True,
                "NextKeyMarker": key,
                "NextUploadIdMarker": "old",
            },
            {"Bucket": small_parts.bucket, "Prefix": key},
        )
        stub.add_response(
            "list_multipart_uploads",
            {"Uploads": [{"Key": key, "UploadId": "new"}], "IsTruncated": False},
            {
                "Bucket": small_parts.bucket,
                "Prefix": key,
                "KeyMarker": key,
                "UploadIdMarker": "old",
            },
        )
        parts = [{"PartNumber": n, "ETag": f'"e{n}"', "Size": PART} for n in (1, 2, 3)]
        stub.add_response(
            "list_parts",
            {"Parts": parts[:2], "IsTruncated": True, "NextPartNumberMarker": 2},
            {"Bucket": small_parts.bucket, "Key": key, "UploadId": "new"},
        )
        stub.add_response(
            "list_parts",
            {"Parts": parts[2:], "IsTruncated": False},
            {"Bucket": small_parts.bucket, "Key": key, "UploadId": "new", "PartNumberMarker": 2},
        )
        # The older upload is superseded by the newer one, which is resumed.
        stub.add_response(
            "abort_multipart_upload",
            {},
            {"Bucket": small_parts.bucket, "Key": key, "UploadId": "old"},
        )
        writer = small_parts.writer("/up/data", append=True)
        stub.assert_no_pending_responses()
    assert writer.size == 3 * PART


# --- listing and deleting at scale -------------------------------------------------------


def test_more_than_a_thousand_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings follow S3's pages of 1,000 keys and deletes send 1,000 keys a
    call, while the listing goes on. A fake client stands in for a bucket of
    2,345 keys (a thousand puts to moto take half a minute on a busy
    machine); the small-page tests below run the same code against moto."""
    driver = S3Driver("bucket", regionendpoint="http://127.0.0.1:9", max_pool=4)
    keys = [f"many/f{i:05}" for i in range(2345)] + ["many0/other"]
    listed: list[dict[str, Any]] = []
    deleted: list[list[str]] = []
    lock = threading.Lock()

    def list_objects_v2(**args: Any) -> dict[str, Any]:
        listed.append(args)
        start = int(args.get("ContinuationToken", 0))
        page = [k for k in keys if k.startswith(args["Prefix"])][start : start + args["MaxKeys"]]
        more = start + len(page) < len([k for k in keys if k.startswith(args["Prefix"])])
        answer: dict[str, Any] = {"Contents": [{"Key": k} for k in page], "IsTruncated": more}
        if more:
            answer["NextContinuationToken"] = str(start + len(page))
        return answer

    def delete_objects(**args: Any) -> dict[str, Any]:
        assert args["Delete"]["Quiet"] is True
        with lock:
            deleted.append([o["Key"] for o in args["Delete"]["Objects"]])
        return {}

    monkeypatch.setattr(driver.client, "list_objects_v2", list_objects_v2)
    monkeypatch.setattr(driver.client, "delete_objects", delete_objects)
    driver.delete("/many")
    assert [a.get("ContinuationToken") for a in listed] == [None, "1000", "2000"]
    assert {a["MaxKeys"] for a in listed} == {1000}
    assert sorted(len(batch) for batch in deleted) == [345, 1000, 1000]
    assert sorted(k for batch in deleted for k in batch) == keys[:-1]  # not many0/
    driver.close()


def test_small_pages_and_parallel_delete_batches(moto_server: MotoServer, s3_bucket: str) -> None:
    driver = make_s3_driver(moto_server, s3_bucket, list_max=3, delete_max=4, max_pool=4)
    for i in range(10):
        driver.put_content(f"/d/f{i}", b"x")
    driver.put_content("/d-sibling/keep", b"x")

    driver.reset_request_count()
    assert len(driver.list("/d")) == 10
    assert driver.request_count["ListObjectsV2"] == 4  # pages of 3
    assert len(list(driver.walk("/d"))) == 10

    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow_delete(**_: Any) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.2)
        with lock:
            in_flight -= 1

    driver.client.meta.events.register("before-send.s3.DeleteObjects", slow_delete)
    driver.reset_request_count()
    driver.delete("/d")
    assert driver.request_count["DeleteObjects"] == 3  # 4 + 4 + 2 keys
    assert peak >= 2, "delete batches ran one at a time"
    assert driver.list("/") == ["/d-sibling"]
    driver.close()


def test_delete_stops_listing_past_the_subtree(moto_server: MotoServer, s3_bucket: str) -> None:
    driver = make_s3_driver(moto_server, s3_bucket, list_max=2)
    for name in ("a/b", "a/b-x", "a/b/c", "a/b/d", "a/c0", "a/c1", "a/c2", "a/c3", "a/c4"):
        driver.put_content("/" + name, b"x")
    driver.reset_request_count()
    driver.delete("/a/b")
    # Pages: [a/b, a/b-x], [a/b/c, a/b/d], then nothing more: a/c* are not listed.
    assert driver.request_count["ListObjectsV2"] <= 3
    assert sorted(raw_keys(moto_server, s3_bucket)) == [
        "a/b-x",
        "a/c0",
        "a/c1",
        "a/c2",
        "a/c3",
        "a/c4",
    ]
    driver.close()


def test_walk_fetches_pages_as_it_goes(moto_server: MotoServer, s3_bucket: str) -> None:
    """A walk is one flat listing fetched a page at a time: what is deleted
    before its page is fetched is not reported; what was on a page already
    fetched still is (acting on it finds it gone)."""
    driver = make_s3_driver(moto_server, s3_bucket, list_max=5)  # 20 keys: four pages
    for i in range(20):
        driver.put_content(f"/w/d{i:02}/f", b"x")
    seen = []
    for info in driver.walk("/w"):
        seen.append(info.path)
        if info.path == "/w/d00":
            for i in (3, 15):
                driver.delete(f"/w/d{i:02}")
    assert "/w/d03/f" in seen  # on the first page, fetched before the delete
    assert "/w/d15/f" not in seen  # on the fourth
    assert len([p for p in seen if p.endswith("/f")]) == 19
    with pytest.raises(PathNotFound):
        driver.stat("/w/d03/f")
    driver.close()


# --- multipart uploads left behind ----------------------------------------------------------


def test_abort_multipart_uploads(moto_server: MotoServer, s3_bucket: str) -> None:
    driver = make_s3_driver(moto_server, s3_bucket, rootdirectory="/root")
    s3 = moto_server.client()
    v2 = "root/docker/registry/v2/repositories/app/_uploads"
    keys = [f"{v2}/u1/data", f"{v2}/u1/data", f"{v2}/u1x/data", f"{v2}/u2/data", "root/other"]
    for key in keys:
        s3.create_multipart_upload(Bucket=s3_bucket, Key=key)
    s3.create_multipart_upload(Bucket=s3_bucket, Key="outside-root")
    uploads = paths.uploads_dir("app")

    assert driver.abort_multipart_uploads(paths.upload_dir("app", "u1")) == 2
    assert sorted(k for k, _ in raw_uploads(moto_server, s3_bucket)) == sorted(
        [*keys[2:], "outside-root"]
    )
    assert driver.abort_multipart_uploads(uploads) == 2
    assert driver.abort_multipart_uploads(uploads) == 0
    assert driver.abort_multipart_uploads("/") == 1  # root/other
    assert [k for k, _ in raw_uploads(moto_server, s3_bucket)] == ["outside-root"]
    driver.close()


# --- moves ------------------------------------------------------------------------------------


def test_large_move_is_a_multipart_copy(moto_server: MotoServer, s3_bucket: str) -> None:
    driver = make_s3_driver(
        moto_server,
        s3_bucket,
        min_part_size=PART,
        multipartcopythresholdsize=PART,
        multipartcopychunksize=PART,
    )
    data = data_of(3 * PART + 5)
    driver.put_content("/src", data)
    driver.reset_request_count()
    driver.move("/src", "/dst")
    assert driver.get_content("/dst") == data
    assert not driver.exists("/src")
    counts = driver.request_count
    assert counts["UploadPartCopy"] == 4
    assert counts["CompleteMultipartUpload"] == 1
    assert counts["CopyObject"] == 0
    driver.close()


def test_folder_move_copies_then_deletes_in_batches(
    moto_server: MotoServer, s3_bucket: str
) -> None:
    driver = make_s3_driver(moto_server, s3_bucket, delete_max=5)
    for i in range(12):
        driver.put_content(f"/blobs/ab/abc/f{i:02}", str(i).encode())
    driver.reset_request_count()
    driver.move("/blobs/ab/abc", "/quarantine/abc")
    counts = driver.request_count
    assert counts["CopyObject"] == 12
    assert counts["DeleteObjects"] == 3
    assert driver.get_content("/quarantine/abc/f07") == b"7"
    assert raw_keys(moto_server, s3_bucket) == [f"quarantine/abc/f{i:02}" for i in range(12)]
    driver.close()


# --- readers ------------------------------------------------------------------------------------


def test_reader_streams_ranges(moto_server: MotoServer, s3_bucket: str) -> None:
    """A reader is one GET from its offset, streamed; a seek outside what is
    buffered opens another ranged GET."""
    driver = make_s3_driver(moto_server, s3_bucket)
    data = data_of(4 * MiB)
    driver.put_content("/blob", data)
    gets_before = driver.request_count["GetObject"]
    with driver.reader("/blob", MiB) as stream:
        assert stream.read(10) == data[MiB : MiB + 10]
        assert stream.read(MiB) == data[MiB + 10 : 2 * MiB + 10]
        stream.seek(3 * MiB + 512 * KiB)  # past what was fetched: a new GET
        assert stream.read(10) == data[3 * MiB + 512 * KiB :][:10]
        stream.seek(0)
        assert stream.read(10) == data[:10]
        assert stream.tell() == 10
    # The driver's own count (botocore's request events), not the server log: the
    # log line of a streamed response cut short arrives late or not at all.
    assert driver.request_count["GetObject"] - gets_before == 3
    driver.close()


def test_reader_refuses_to_splice_a_replaced_object(
    moto_server: MotoServer, s3_bucket: str
) -> None:
    driver = make_s3_driver(moto_server, s3_bucket)
    driver.put_content("/blob", data_of(3 * MiB, seed=1))
    stream = driver.reader("/blob")
    assert stream.read(10) == data_of(3 * MiB, seed=1)[:10]
    stream.seek(2 * MiB)  # the next read opens another ranged GET
    driver.put_content("/blob", data_of(3 * MiB, seed=2))
    with pytest.raises(StorageDriverError, match="changed while being read"):
        stream.read(10)
    stream.close()
    driver.close()


# --- request counting ------------------------------------------------------------


# --- retries ----------------------------------------------------------------------


class FlakyS3(http.server.ThreadingHTTPServer):
    """Answers GETs with the queued error statuses first, then with `body`."""

    def __init__(self, failures: list[int], body: bytes) -> None:
        self.failures = list(failures)
        self.body = body
        self.requests = 0
        super().__init__(("127.0.0.1", 0), _FlakyHandler)


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyS3

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.server.failures:
            status = self.server.failures.pop(0)
            code = "SlowDown" if status == 503 else "InternalError"
            body = f"<Error><Code>{code}</Code><Message>try again</Message></Error>".encode()
            self.send_response(status)
        else:
            body = self.server.body
            self.send_response(200)
            self.send_header("ETag", '"0123"')
            self.send_header("Last-Modified", "Sun, 29 Nov 2026 07:00:00 GMT")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry at once: the test is about which errors are retried, not the wait."""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0)


@pytest.mark.parametrize("failures", [[500], [503, 503], [502, 500, 503]])
def test_5xx_and_throttling_are_retried(no_backoff: None, failures: list[int]) -> None:
    server = FlakyS3(failures, b"content")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        driver = S3Driver(
            "bucket",
            regionendpoint=f"127.0.0.1:{server.server_port}",
            secure=False,
            accesskey=ACCESS_KEY,
            secretkey=SECRET_KEY,
            max_attempts=4,
        )
        assert driver.get_content("/file") == b"content"
        assert server.requests == len(failures) + 1
        assert driver.request_count["GetObject"] == len(failures) + 1
        driver.close()
    finally:
        server.shutdown()
        server.server_close()


def test_retries_give_up_after_max_attempts(no_backoff: None) -> None:
    server = FlakyS3([503] * 10, b"content")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        driver = S3Driver(
            "bucket",
            regionendpoint=f"http://127.0.0.1:{server.server_port}",
            accesskey=ACCESS_KEY,
            secretkey=SECRET_KEY,
            max_attempts=3,
        )
        with pytest.raises(StorageDriverError, match="SlowDown"):
            driver.get_content("/file")
        assert server.requests == 3
        driver.close()
    finally:
        server.shutdown()
        server.server_close()


# --- the Go registry's s3 driver on the same bucket -----------------------------------------------


@pytest.mark.interop
def test_go_registry_and_layergc_share_a_bucket(
    moto_server: MotoServer, s3_bucket: str, tmp_path: Any
) -> None:
    require_binary("docker-registry")
    from tests.support.goregistry import GoRegistry, sha256_digest

    config = moto_server.registry_storage_config(s3_bucket, "/shared-root")
    driver = make_s3_driver(moto_server, s3_bucket, rootdirectory="/shared-root")
    with GoRegistry(None, s3=config, workdir=tmp_path / "registry") as registry:
        # Go writes, layergc reads: same keys.
        pushed = data_of(300 * KiB, seed=7)
        digest = Digest.parse(registry.push_blob("team/app", pushed))
        assert driver.get_content(paths.blob_data(digest)) == pushed
        assert driver.get_content(paths.layer_link("team/app", digest)) == str(digest).encode()

        # layergc writes, Go serves.
        ours = data_of(200 * KiB, seed=8)
        mine = Digest.parse(sha256_digest(ours))
        driver.put_content(paths.blob_data(mine), ours)
        driver.put_content(paths.layer_link("team/app", mine), str(mine).encode())
        assert registry.get_blob("team/app", str(mine)) == ours

        # An upload Go started and left (its data in a multipart upload, no
        # object yet) is continued by layergc from where Go stopped.
        upload = registry.start_upload("team/app")
        head = data_of(150 * KiB, seed=9)
        registry.patch_upload(upload, head)
        data_path = paths.upload_data("team/app", upload.uuid)
        writer = driver.writer(data_path, append=True)
        assert writer.size == len(head)
        writer.write(b"and the rest")
        writer.commit()
        assert driver.get_content(data_path) == head + b"and the rest"
    driver.close()
