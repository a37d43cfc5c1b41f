"""An S3 StorageDriver (boto3), laid out like the Go registry's `s3` driver.

Keys: a driver path `/docker/registry/v2/x` is the key
`<rootdirectory without surrounding slashes>/docker/registry/v2/x` (no leading
slash when rootdirectory is empty), exactly as distribution's s3-aws driver
computes it, so both read and clean the same bucket. Folders are implied by
key prefixes; an empty folder does not exist.

Writers buffer `chunksize` bytes and send each full buffer as a part of a
multipart upload, started at the first part. `close`, like `commit`, turns
what was written into the object (the conformance suite holds every driver to
a closed file being visible with its size; Go's driver instead leaves closed
data in the upload, invisible until commit). `writer(path, append=True)`:
- goes on from an upload in progress for the key when there is one (Go's
  uploads, or a layergc writer that died before `close`): ListMultipartUploads,
  ListParts, and the sum of the parts is the size. S3 refuses a part under
  5 MiB unless it is the last, so when that upload ends in a smaller part, the
  first write completes it into the object and goes on from the object, as
  Go's writer does;
- else goes on from the object: its first write copies it server-side into a
  new upload (UploadPartCopy), or, under 5 MiB, reads it back into the buffer.
So layergc resumes its own uploads and the Go registry's; the Go registry
resumes layergc's only while a layergc writer is open (after `close` there is
an object, and Go's writer looks for an upload). Final keys are Go's.

Choices where S3 differs from a filesystem (the conformance suite allows them):
- a file being written shows its state as of the last `close` until the next;
- folders have no time of their own: `stat` and `walk` give a folder the
  modification time of the first object listed under it;
- a file and a folder may share a path (keys `a/b` and `a/b/c`); the checks a
  filesystem makes for "file below a file" are not made (they would cost
  requests on every write), stat reports the file, list reports the path once;
- `walk` streams one flat listing, a page (1,000 keys) at a time: depth first,
  parents before children, siblings in key order (`a-b` before `a/`, since `-`
  sorts before `/`); what is deleted during the walk may still be reported if
  it was on a page already fetched.

`list_tree` is the bulk read of the garbage collector: every object below a
folder, with size, time and ETag, from flat listings of key ranges run in
parallel. It starts with one page; when that page is truncated it splits the
rest of the key space at folder boundaries (a delimiter listing gives them),
into as many ranges as the first page's density says are needed for about a
page each, and splits again any range that turns out bigger. So a tree of N
keys costs about N/1000 listings plus a few delimiter listings, in a few round
trips rather than N/1000 sequential ones.
"""

from __future__ import annotations

import bisect
import collections
import io
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import botocore.exceptions
import botocore.utils
import urllib3.exceptions

from layergc.driver.base import FileInfo, FileWriter, StorageDriver, seek_target, validate_path
from layergc.errors import (
    ConfigError,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    StorageDriverError,
)

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 << 20  # S3: every part but the last is at least this big
MAX_PART_SIZE = 5 << 30  # S3: a part, and a single CopyObject, is at most this big
MAX_PARTS = 10_000
DEFAULT_CHUNK_SIZE = 2 * MIN_PART_SIZE  # Go's defaultChunkSize
DEFAULT_MULTIPART_COPY_CHUNK_SIZE = 32 << 20  # Go's defaults
DEFAULT_MULTIPART_COPY_THRESHOLD = 32 << 20
LIST_MAX = 1000  # S3's cap on keys per listing page
DELETE_MAX = 1000  # S3's cap on keys per DeleteObjects
DEFAULT_MAX_POOL = 32
# Pages a list_tree has in flight: each holds a parsed page (~1 MiB in botocore)
# until it is consumed, and a few round trips of 8 pages list 100,000 keys.
DEFAULT_LIST_PARALLEL = 8
_CONTINUE_PAGES = 2  # a range expected to hold at most this many pages more goes on

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
_READ_RETRIES = 3
# What a response body raises when its connection breaks mid-object.
_STREAM_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    urllib3.exceptions.HTTPError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class _Part:
    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object from a listing: its driver path, size, time and ETag (unquoted)."""

    path: str
    size: int
    mod_time: datetime
    etag: str


@dataclass(frozen=True, slots=True)
class _KeyRange:
    """Keys of a listing prefix after `after` (exclusive) and before `stop`."""

    after: str | None
    stop: str | None
    max_keys: int
    more: bool = False  # the rest of a range that held more than its estimate
    # Keys expected from `after` on, when the density of the listing so far says
    # (a range cut from a page that went past at least one whole sub-folder).
    estimate: float | None = None


def _range_prefix(prefix: str, key_range: _KeyRange) -> str:
    """The longest prefix every key of `key_range` below `prefix` has: what its
    bounds share (a key between two bounds starts with their common prefix).
    The same page on S3; a smaller sort on servers that sort what matches the
    prefix for each page (moto)."""
    if key_range.after is None or key_range.stop is None:
        return prefix
    after, stop = key_range.after, key_range.stop
    shared = 0
    for a, b in zip(after, stop, strict=False):  # up to the shorter one
        if a != b:
            break
        shared += 1
    common = after[:shared]  # characters, not path components: `app-00` is a prefix
    return common if len(common) > len(prefix) and common.startswith(prefix) else prefix


def _error_code(exc: BaseException | None) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


_session: Any = None
_session_lock = threading.Lock()


def _shared_session() -> Any:
    """One boto3 session for every driver (call with _session_lock held): a
    session loads the S3 service model, a tenth of a second, and caches it."""
    global _session
    if _session is None:
        import boto3

        _session = boto3.session.Session()
        # botocore parses every timestamp with dateutil: three quarters of the
        # client's time on a listing page. Listings carry ISO 8601 times.
        factory = _session._session.get_component("response_parser_factory")
        factory.set_parser_defaults(timestamp_parser=_parse_timestamp)
    return _session


def _parse_timestamp(value: Any) -> datetime:
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return botocore.utils.parse_timestamp(value)  # type: ignore[no-any-return]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class S3Driver(StorageDriver):
    """A bucket, or a `rootdirectory` inside it, as a StorageDriver.

    `min_part_size` is S3's part minimum; lower it only for an endpoint that
    accepts smaller parts (moto_server with S3_UPLOAD_PART_MIN_SIZE), so tests
    can exercise multipart uploads with small data. `list_max` and
    `delete_max` cap keys per listing page and per DeleteObjects call.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        region: str = "us-east-1",
        regionendpoint: str | None = None,
        rootdirectory: str = "",
        accesskey: str | None = None,
        secretkey: str | None = None,
        secure: bool = True,
        chunksize: int = DEFAULT_CHUNK_SIZE,
        max_pool: int = DEFAULT_MAX_POOL,
        *,
        sessiontoken: str | None = None,
        skipverify: bool = False,
        encrypt: bool = False,
        keyid: str | None = None,
        storageclass: str | None = None,
        objectacl: str | None = None,
        useragent: str | None = None,
        multipartcopychunksize: int = DEFAULT_MULTIPART_COPY_CHUNK_SIZE,
        multipartcopythresholdsize: int = DEFAULT_MULTIPART_COPY_THRESHOLD,
        min_part_size: int = MIN_PART_SIZE,
        list_max: int = LIST_MAX,
        delete_max: int = DELETE_MAX,
        list_parallel: int = DEFAULT_LIST_PARALLEL,
        retry_mode: str = "standard",
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        from botocore.config import Config

        if not bucket:
            raise ConfigError("s3: no bucket given")
        if not 1 <= min_part_size <= MAX_PART_SIZE:
            raise ConfigError(f"s3: min_part_size {min_part_size} out of range")
        if not min_part_size <= chunksize <= MAX_PART_SIZE:
            raise ConfigError(
                f"s3: chunksize {chunksize} must be between {min_part_size} and {MAX_PART_SIZE}"
            )
        if not min_part_size <= multipartcopychunksize <= MAX_PART_SIZE:
            raise ConfigError(f"s3: multipartcopychunksize {multipartcopychunksize} out of range")
        if not 0 <= multipartcopythresholdsize <= MAX_PART_SIZE:
            raise ConfigError(
                f"s3: multipartcopythresholdsize {multipartcopythresholdsize} out of range"
            )
        if not 1 <= list_max <= LIST_MAX or not 1 <= delete_max <= DELETE_MAX:
            raise ConfigError("s3: list_max and delete_max must be between 1 and 1000")
        if max_pool < 1 or list_parallel < 1:
            raise ConfigError("s3: max_pool and list_parallel must be at least 1")
        if retry_mode not in ("standard", "adaptive", "legacy"):
            raise ConfigError(f"s3: unknown retry mode {retry_mode!r}")

        self.bucket = bucket
        self.region = region
        self.rootdirectory = rootdirectory
        self.chunksize = chunksize
        self.min_part_size = min_part_size
        self.max_pool = max_pool
        self.list_parallel = min(list_parallel, max_pool)
        self.list_max = list_max
        self.delete_max = delete_max
        self.multipart_copy_chunk_size = multipartcopychunksize
        self.multipart_copy_threshold = multipartcopythresholdsize
        root = rootdirectory.strip("/")
        self._root_prefix = f"{root}/" if root else ""

        endpoint_url = None
        if regionendpoint:
            # Go's SDK adds the scheme from `secure`; boto3 wants it spelled out.
            scheme = "https" if secure else "http"
            endpoint_url = (
                regionendpoint if "://" in regionendpoint else f"{scheme}://{regionendpoint}"
            )
        self.endpoint_url = endpoint_url

        config = Config(
            region_name=region,
            # Custom endpoints (MinIO, Ceph, moto) rarely serve virtual hosts; Go
            # forces path style for them too.
            s3={"addressing_style": "path" if regionendpoint else "auto"},
            # Attempts in all, the first included (botocore's `max_attempts` counts retries).
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            max_pool_connections=max(max_pool, 10),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent_extra=useragent,
        )
        credentials: dict[str, str] = {}
        if accesskey and secretkey:
            credentials = {"aws_access_key_id": accesskey, "aws_secret_access_key": secretkey}
            if sessiontoken:
                credentials["aws_session_token"] = sessiontoken
        # Without keys: boto3's chain (environment, shared files, instance role), as Go.
        with _session_lock:
            self.client: Any = _shared_session().client(
                "s3",
                endpoint_url=endpoint_url,
                use_ssl=secure,
                verify=False if skipverify else None,
                config=config,
                **credentials,
            )
        self.retry_mode = retry_mode
        self.max_attempts = max_attempts

        self._write_args: dict[str, str] = {"ContentType": "application/octet-stream"}
        if encrypt:
            self._write_args["ServerSideEncryption"] = "aws:kms" if keyid else "AES256"
            if keyid:
                self._write_args["SSEKMSKeyId"] = keyid
        if storageclass and storageclass.upper() != "NONE":
            self._write_args["StorageClass"] = storageclass
        if objectacl:
            self._write_args["ACL"] = objectacl

        self._counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        # Every HTTP attempt (retries included), as the endpoint sees them.
        self.client.meta.events.register("before-send.s3", self._count_request)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # --- configuration -------------------------------------------------------------

    @classmethod
    def from_registry_config(cls, params: Mapping[str, Any], **overrides: Any) -> S3Driver:
        """A driver from the `storage.s3` section of a Go registry config.yml.

        Values are checked as distribution's FromParameters checks them (strings
        are accepted for booleans and sizes); keys layergc has no use for
        (loglevel, v4auth: true, ...) are ignored. `overrides` are constructor
        keyword arguments that win over the config (tests, benchmarks)."""
        bucket = _param_str(params, "bucket")
        region = _param_str(params, "region")
        if not bucket:
            raise ConfigError("s3: no bucket parameter provided")
        if not region:
            raise ConfigError("s3: no region parameter provided")
        if not _param_bool(params, "v4auth", True):
            raise ConfigError("s3: v4auth: false (signature version 2) is not supported")
        kwargs: dict[str, Any] = {
            "bucket": bucket,
            "region": region,
            "regionendpoint": _param_str(params, "regionendpoint") or None,
            "rootdirectory": _param_str(params, "rootdirectory"),
            "accesskey": _param_str(params, "accesskey") or None,
            "secretkey": _param_str(params, "secretkey") or None,
            "sessiontoken": _param_str(params, "sessiontoken") or None,
            "secure": _param_bool(params, "secure", True),
            "skipverify": _param_bool(params, "skipverify", False),
            "encrypt": _param_bool(params, "encrypt", False),
            "keyid": _param_str(params, "keyid") or None,
            "storageclass": _param_str(params, "storageclass") or None,
            "objectacl": _param_str(params, "objectacl") or None,
            "useragent": _param_str(params, "useragent") or None,
            "chunksize": _param_int(
                params, "chunksize", DEFAULT_CHUNK_SIZE, MIN_PART_SIZE, MAX_PART_SIZE
            ),
            "multipartcopychunksize": _param_int(
                params,
                "multipartcopychunksize",
                DEFAULT_MULTIPART_COPY_CHUNK_SIZE,
                MIN_PART_SIZE,
                MAX_PART_SIZE,
            ),
            "multipartcopythresholdsize": _param_int(
                params,
                "multipartcopythresholdsize",
                DEFAULT_MULTIPART_COPY_THRESHOLD,
                0,
                MAX_PART_SIZE,
            ),
            # Go's bound on parallel part copies; here it bounds every parallel step.
            "max_pool": _param_int(
                params, "multipartcopymaxconcurrency", DEFAULT_MAX_POOL, 1, 1000
            ),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # --- keys ----------------------------------------------------------------------

    def key_for(self, path: str) -> str:
        """The S3 key of a driver path (Go's S3BucketKey)."""
        validate_path(path)
        return self._key(path)

    def _key(self, path: str) -> str:
        return self._root_prefix + path[1:]

    def _folder_prefix(self, path: str) -> str:
        return self._root_prefix if path == "/" else self._key(path) + "/"

    def _path(self, key: str) -> str:
        return "/" + key[len(self._root_prefix) :]

    # --- request accounting ------------------------------------------------------------

    def _count_request(self, event_name: str = "", **_: Any) -> None:
        # A before-send handler must return None, or botocore skips the request.
        operation = event_name.rsplit(".", 1)[-1]
        with self._counts_lock:
            self._counts[operation] += 1

    @property
    def request_count(self) -> collections.Counter[str]:
        """HTTP requests sent so far, by S3 operation (a copy)."""
        with self._counts_lock:
            return collections.Counter(self._counts)

    @property
    def requests_total(self) -> int:
        with self._counts_lock:
            return sum(self._counts.values())

    def reset_request_count(self) -> None:
        with self._counts_lock:
            self._counts.clear()

    # --- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _errors(self, path: str, operation: str) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND:
                raise PathNotFound(path) from exc
            raise StorageDriverError(f"s3 {operation} {path!r}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageDriverError(f"s3 {operation} {path!r}: {exc}") from exc

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_pool, thread_name_prefix="layergc-s3")
            return self._pool

    def _parallel(self, tasks: Iterable[Callable[[], Any]]) -> list[Any]:
        """Run `tasks` on the pool and return their results in order.

        At most `max_pool` are submitted at a time, so a long stream of tasks
        (one per listing page, say) holds bounded memory; after a failure no
        more are submitted and the first error is raised once the running ones
        finish. Tasks must not themselves wait on the pool."""
        pool = self._executor()
        slots = threading.BoundedSemaphore(self.max_pool)
        failed = threading.Event()

        def done(future: Future[Any]) -> None:
            if future.exception() is not None:
                failed.set()
            slots.release()

        futures: list[Future[Any]] = []
        try:
            for task in tasks:  # may list as it goes, and fail
                slots.acquire()
                if failed.is_set():
                    slots.release()
                    break
                future = pool.submit(task)
                future.add_done_callback(done)
                futures.append(future)
        finally:
            wait(futures)
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    def _head(self, path: str) -> dict[str, Any] | None:
        """HeadObject of a file, or None when no object has that key."""
        try:
            with self._errors(path, "HeadObject"):
                return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(path)))
        except PathNotFound:
            return None

    def _list_pages(
        self, prefix: str, delimiter: str | None, path: str
    ) -> Iterator[dict[str, Any]]:
        """ListObjectsV2 pages of `prefix`, following continuation tokens."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.list_max}
        if delimiter:
            args["Delimiter"] = delimiter
        while True:
            with self._errors(path, "ListObjectsV2"):
                page = self.client.list_objects_v2(**args)
            yield page
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def _list_level(self, path: str) -> Iterator[tuple[str, bool]]:
        """(name, is_dir) of each direct child of folder `path`, from one
        delimiter listing: CommonPrefixes are folders, Contents files."""
        prefix = self._folder_prefix(path)
        for page in self._list_pages(prefix, "/", path):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix) : -1]
                if name:  # `a//b` keys have an empty component: not a valid path
                    yield name, True
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name:  # the folder marker object `prefix` itself, made by some tools
                    yield name, False

    def _iter_keys(self, prefix: str, path: str) -> Iterator[dict[str, Any]]:
        for page in self._list_pages(prefix, None, path):
            yield from page.get("Contents", [])

    def _subtree_keys(self, path: str) -> Iterator[dict[str, Any]]:
        """Objects at `path` or below it, from one flat listing of the key.

        Sibling keys that share the prefix (`a/b-x`, `a/b.y` before `a/b/`) are
        skipped; the listing stops once it is past `a/b/`."""
        key = self._key(path)
        below = key + "/"
        for obj in self._iter_keys(key, path):
            k = obj["Key"]
            if k == key or k.startswith(below):
                yield obj
            elif k > below:
                return

    # --- the contract ---------------------------------------------------------------------

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        validate_path(path)
        if limit is not None:
            # Through a reader, which reopens a stream broken mid-object (a manifest
            # of megabytes is read this way); closing it early drops the connection
            # rather than download the rest.
            with self.reader(path) as f:
                return f.read(limit)
        with self._errors(path, "GetObject"):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(path))
            with response["Body"] as body:
                return bytes(body.read())

    def put_content(self, path: str, content: bytes) -> None:
        validate_path(path)
        with self._errors(path, "PutObject"):
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(path), Body=bytes(content), **self._write_args
            )

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        validate_path(path)
        if offset < 0:
            raise InvalidOffset(path, offset)
        raw = _S3Reader(self, path, offset)
        raw.open_at_start()
        return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[return-value]

    def writer(self, path: str, append: bool = False) -> FileWriter:
        validate_path(path)
        key = self._key(path)
        uploads = self._key_uploads(path, key)
        if not append:
            # Left-over uploads would be taken for this file's newer content by a
            # later append: end them.
            self._abort_each(path, key, uploads)
            return _S3Writer(self, path, fresh=True)
        # Newest first: an upload in progress (Go keeps a file there until its
        # commit; a layergc writer that died before `close` left one) is ahead of
        # the object the last `close` made, since it was started from it.
        while uploads:
            upload_id = uploads.pop()
            parts = self._list_parts(path, key, upload_id)
            if parts:
                self._abort_each(path, key, uploads)
                return _S3Writer(self, path, upload_id=upload_id, parts=parts)
            self._abort_upload(path, key, upload_id)  # no part: nothing to go on from
        head = self._head(path)
        if head is not None:
            return _S3Writer(self, path, base=int(head["ContentLength"]))
        return _S3Writer(self, path, fresh=True)

    def stat(self, path: str) -> FileInfo:
        validate_path(path, allow_root=True)
        if path != "/":
            head = self._head(path)
            if head is not None:
                return FileInfo(path, int(head["ContentLength"]), _utc(head["LastModified"]), False)
        with self._errors(path, "ListObjectsV2"):
            page = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._folder_prefix(path), MaxKeys=1
            )
        contents = page.get("Contents", [])
        if contents:
            return FileInfo(path, 0, _utc(contents[0]["LastModified"]), True)
        if path == "/":
            return FileInfo(path, 0, datetime.now(UTC), True)
        raise PathNotFound(path)

    def list(self, path: str) -> list[str]:
        validate_path(path, allow_root=True)
        base = "" if path == "/" else path
        children = {f"{base}/{name}" for name, _ in self._list_level(path)}
        if not children and path != "/":
            raise PathNotFound(path)
        return sorted(children)

    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        validate_path(path, allow_root=True)
        entries: dict[str, bool] = {}
        for name, is_dir in self._list_level(path):
            # A file and a folder of one name: report the folder, it holds more.
            entries[name] = entries.get(name, False) or is_dir
        if not entries and path != "/":
            raise PathNotFound(path)
        return sorted(entries.items())

    def move(self, source: str, dest: str) -> None:
        validate_path(source)
        validate_path(dest)
        if dest.startswith(source + "/"):
            raise InvalidPath(dest, f"cannot move {source!r} into itself")
        if source == dest:
            self.stat(source)
            return
        head = self._head(source)
        if head is not None:
            # S3 has no rename: a server-side copy, then the delete.
            self._copy(source, dest, int(head["ContentLength"]), parallel=True)
            with self._errors(source, "DeleteObject"):
                self.client.delete_object(Bucket=self.bucket, Key=self._key(source))
            return
        self._move_folder(source, dest)

    def _move_folder(self, source: str, dest: str) -> None:
        src_prefix = self._folder_prefix(source)
        objects = [
            (self._path(o["Key"]), int(o["Size"])) for o in self._iter_keys(src_prefix, source)
        ]
        if not objects:
            raise PathNotFound(source)
        # `dest` is replaced: what is there and not overwritten goes.
        stale = {o["Key"] for o in self._subtree_keys(dest)}
        moves = [(src, dest + src[len(source) :], size) for src, size in objects]
        stale.difference_update(self._key(target) for _, target, _ in moves)
        # Copy everything before deleting anything: a failure leaves the source whole.
        self._parallel(
            (lambda s=src, t=target, n=size: self._copy(s, t, n, parallel=False))
            for src, target, size in moves
        )
        self._delete_keys(source, iter(sorted(stale)))
        self._delete_keys(source, (self._key(src) for src, _ in objects))

    def _copy(self, source: str, dest: str, size: int, *, parallel: bool) -> None:
        copy_source = {"Bucket": self.bucket, "Key": self._key(source)}
        if size <= self.multipart_copy_threshold:
            with self._errors(source, "CopyObject"):
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(dest),
                    CopySource=copy_source,
                    **self._write_args,
                )
            return
        # Large objects: a multipart copy (required above 5 GiB, faster above a few MiB).
        upload_id = self._create_upload(dest)
        step = self.multipart_copy_chunk_size
        ranges = [
            (n + 1, start, min(start + step, size) - 1)
            for n, start in enumerate(range(0, size, step))
        ]

        def copy_part(number: int, first: int, last: int) -> _Part:
            with self._errors(source, "UploadPartCopy"):
                response = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=self._key(dest),
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={first}-{last}",
                )
            return _Part(number, response["CopyPartResult"]["ETag"], last - first + 1)

        try:
            if parallel:
                parts = self._parallel((lambda r=r: copy_part(*r)) for r in ranges)
            else:
                parts = [copy_part(*r) for r in ranges]
            self._complete_upload(dest, upload_id, parts)
        except BaseException:
            self._abort_upload(dest, self._key(dest), upload_id)
            raise

    def delete(self, path: str) -> None:
        validate_path(path)
        if not self._delete_keys(path, (o["Key"] for o in self._subtree_keys(path))):
            raise PathNotFound(path)

    def _delete_keys(self, path: str, keys: Iterator[str]) -> int:
        """DeleteObjects in batches of `delete_max`, sent while listing goes on,
        up to `max_pool` at once. Returns how many keys were deleted."""
        total = 0

        def batches() -> Iterator[list[str]]:
            nonlocal total
            batch: list[str] = []
            for key in keys:
                batch.append(key)
                total += 1
                if len(batch) == self.delete_max:
                    yield batch
                    batch = []
            if batch:
                yield batch

        self._parallel((lambda b=b: self._delete_batch(path, b)) for b in batches())
        return total

    def move_files(self, moves: Sequence[tuple[str, str, int | None]]) -> list[bool]:
        """Move many files: `(source, dest, size or None)` each, `dest` replaced.

        Server-side copies run on the pool, then the sources go in DeleteObjects
        batches, so a failure before that leaves every source in place. Returns,
        per move, whether its source was there. `size` (known from a listing)
        saves a HEAD and chooses a single or multipart copy."""
        for source, dest, _ in moves:
            validate_path(source)
            validate_path(dest)

        def copy(source: str, dest: str, size: int | None) -> bool:
            if size is None:
                head = self._head(source)
                if head is None:
                    return False
                size = int(head["ContentLength"])
            try:
                self._copy(source, dest, size, parallel=False)
            except PathNotFound:
                return False
            return True

        copied = self._parallel((lambda m=m: copy(*m)) for m in moves)
        self._delete_keys("/", (self._key(m[0]) for m, ok in zip(moves, copied, strict=True) if ok))
        return copied

    def delete_files(self, files: Iterable[str]) -> int:
        """Delete files (not folders) by path, in DeleteObjects batches run on the
        pool; a missing file is no error. Returns how many paths were given."""
        return self._delete_keys("/", (self._key(validate_path(f)) for f in files))

    def _delete_batch(self, path: str, keys: list[str]) -> None:
        with self._errors(path, "DeleteObjects"):
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        errors = response.get("Errors", [])
        if errors:
            sample = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:5])
            raise StorageDriverError(
                f"s3 DeleteObjects {path!r}: {len(errors)} of {len(keys)} failed ({sample})"
            )

    def list_tree(self, path: str) -> Iterator[ObjectInfo]:
        """Every object at or below folder `path` (`/` for the root), in no
        particular order; nothing when there is none.

        Ranges of keys are listed in parallel on the driver's pool, at most
        `list_parallel` at once (see the module docstring). An object written or
        deleted during the listing may or may not be reported."""
        validate_path(path, allow_root=True)
        prefix = self._folder_prefix(path)
        children: dict[str, list[str]] = {}
        pool = self._executor()
        queue: collections.deque[_KeyRange] = collections.deque(
            [_KeyRange(None, None, self.list_max)]
        )
        running: set[Future[tuple[list[dict[str, Any]], list[_KeyRange]]]] = set()
        try:
            while queue or running:
                while queue and len(running) < self.list_parallel:
                    key_range = queue.popleft()
                    running.add(pool.submit(self._list_range, path, prefix, key_range, children))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    objects, more = future.result()
                    queue.extend(more)
                    for obj in objects:
                        yield ObjectInfo(
                            self._path(obj["Key"]),
                            int(obj["Size"]),
                            _utc(obj["LastModified"]),
                            str(obj.get("ETag", "")).strip('"'),
                        )
        finally:
            wait(running)  # nothing left running on the pool when we return or raise

    def _list_range(
        self, path: str, prefix: str, key_range: _KeyRange, children: dict[str, list[str]]
    ) -> tuple[list[dict[str, Any]], list[_KeyRange]]:
        """One page of `key_range`; and the ranges left to list when it goes on."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": _range_prefix(prefix, key_range),
            "MaxKeys": key_range.max_keys,
        }
        if key_range.after is not None:
            args["StartAfter"] = key_range.after
        with self._errors(path, "ListObjectsV2"):
            page = self.client.list_objects_v2(**args)
        contents = page.get("Contents", [])
        stop = key_range.stop
        inside = contents if stop is None else [o for o in contents if o["Key"] < stop]
        if not inside or len(inside) < len(contents) or not page.get("IsTruncated"):
            return inside, []
        keys = [o["Key"] for o in inside]
        return inside, self._split(path, prefix, key_range, keys, children)

    def _page_size(self, estimate: int) -> int:
        """MaxKeys for a range expected to hold `estimate` keys: a little more, so
        that an estimate a bit short still ends in one request."""
        return min(self.list_max, math.ceil(estimate * 1.15) + 16)

    def _split(
        self,
        path: str,
        prefix: str,
        key_range: _KeyRange,
        keys: list[str],
        children: dict[str, list[str]],
    ) -> list[_KeyRange]:
        """The rest of `key_range` after a page that ended at `keys[-1]`, cut at
        folder boundaries into about a page's worth of keys each.

        The boundaries are the sub-folders of the shallowest folder that has
        some between the last key and the range's end; the density is what the
        page held per sub-folder it went past."""
        last = keys[-1]
        if key_range.estimate is not None:
            left = key_range.estimate - len(keys)
            if 0 < left <= _CONTINUE_PAGES * self.list_max:
                # A page or two more as expected: go on rather than list the
                # sub-folders to cut it (a request, and ranges of part pages).
                return [_KeyRange(last, key_range.stop, self._page_size(left), estimate=left)]
        folder = prefix
        while True:
            kids = self._children(path, folder, children)
            low = bisect.bisect_right(kids, last)
            high = len(kids) if key_range.stop is None else bisect.bisect_left(kids, key_range.stop)
            points = kids[low:high]
            if points:
                break
            # The rest of the range lies in the sub-folder holding the last key.
            head, slash, _ = last[len(folder) :].partition("/")
            child = f"{folder}{head}/"
            if not slash or 2 * (len(keys) - bisect.bisect_left(keys, child)) < len(keys):
                # A file, or a folder that held little of this page: one more page
                # ends it as likely as a listing of its sub-folders would.
                return [self._rest(last, key_range)]
            folder = child
        start = key_range.after if key_range.after is not None else folder
        # Sub-folders the page went into: all done but the one holding `last`.
        begun = low - bisect.bisect_right(kids, start)
        in_folder = len(keys) - bisect.bisect_left(keys, folder)
        per_gap = in_folder / max(begun - 0.5, 0.5)
        gaps = len(points) + 1  # (last, p0), (p0, p1), ..., (p_n, stop)
        rest = per_gap * (gaps - 0.5)
        # Ranges of about 80% of a page, so that most end within their first one.
        parts = max(1, min(gaps, math.ceil(rest / (0.85 * self.list_max))))
        # Group i of the gaps starts at gap (i * gaps) // parts, which follows that point.
        firsts = sorted({(i * gaps) // parts for i in range(parts)})
        ranges: list[_KeyRange] = []
        for first, end in zip(firsts, [*firsts[1:], gaps], strict=True):
            # Each range's page from its own gaps (groups differ by one gap, and
            # the first gap is the rest of a sub-folder begun), with a margin.
            estimate = per_gap * (end - first - (0.5 if first == 0 else 0))
            ranges.append(
                _KeyRange(
                    last if first == 0 else points[first - 1],
                    key_range.stop if end == gaps else points[end - 1],
                    self._page_size(estimate),
                    estimate=estimate if begun > 0 else None,
                )
            )
        return ranges

    def _rest(self, last: str, key_range: _KeyRange) -> _KeyRange:
        """What follows `last` in a range no cut can split: a range that went past
        its estimate is most likely nearly done, so a small page first (a full
        one would mostly bring keys past its end), then doubling."""
        if not key_range.more and key_range.max_keys < self.list_max:
            size = max(32, key_range.max_keys // 4)
        else:
            size = min(self.list_max, 2 * key_range.max_keys)
        return _KeyRange(last, key_range.stop, size, more=True)

    def _children(self, path: str, folder: str, cache: dict[str, list[str]]) -> list[str]:
        """The sub-folder prefixes of key prefix `folder`, sorted (cached per listing)."""
        kids = cache.get(folder)
        if kids is None:
            found: list[str] = []
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": folder,
                "Delimiter": "/",
                "MaxKeys": LIST_MAX,  # folders, not objects: whatever list_max is
            }
            while True:
                with self._errors(path, "ListObjectsV2"):
                    page = self.client.list_objects_v2(**args)
                found.extend(common["Prefix"] for common in page.get("CommonPrefixes", []))
                if not page.get("IsTruncated"):
                    break
                args["ContinuationToken"] = page["NextContinuationToken"]
            kids = cache[folder] = sorted(found)
        return kids

    def walk(self, path: str) -> Iterator[FileInfo]:
        validate_path(path, allow_root=True)
        prefix = self._folder_prefix(path)
        objects = self._iter_keys(prefix, path)
        # List the first page now, so a missing folder fails at the call like the others.
        first = next(objects, None)
        if first is None:
            if path == "/":
                return iter(())
            raise PathNotFound(path)
        return self._walk_from(path, prefix, first, objects)

    def _walk_from(
        self, path: str, prefix: str, first: dict[str, Any], rest: Iterator[dict[str, Any]]
    ) -> Iterator[FileInfo]:
        base = "" if path == "/" else path
        # A folder's keys are contiguous in key order, so the chain of folders
        # holding the previous key says which folders were already reported.
        chain: list[str] = []
        for obj in _chain_one(first, rest):
            relative = obj["Key"][len(prefix) :]
            names = relative.split("/")
            is_marker = names[-1] == ""  # `a/b/`: a folder marker, no file
            if is_marker:
                names.pop()
            if not names or "" in names:
                continue
            folders = names if is_marker else names[:-1]
            mod_time = _utc(obj["LastModified"])
            while chain and not relative.startswith(chain[-1] + "/"):
                chain.pop()
            for depth in range(len(chain), len(folders)):
                folder = "/".join(folders[: depth + 1])
                chain.append(folder)
                yield FileInfo(f"{base}/{folder}", 0, mod_time, True)
            if not is_marker:
                yield FileInfo(f"{base}/{relative}", int(obj["Size"]), mod_time, False)

    # --- multipart uploads -------------------------------------------------------------------

    def _create_upload(self, path: str) -> str:
        with self._errors(path, "CreateMultipartUpload"):
            response = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._key(path), **self._write_args
            )
        return str(response["UploadId"])

    def _complete_upload(self, path: str, upload_id: str, parts: list[_Part]) -> None:
        with self._errors(path, "CompleteMultipartUpload"):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(path),
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {"ETag": p.etag, "PartNumber": p.number}
                        for p in sorted(parts, key=lambda p: p.number)
                    ]
                },
            )

    def _abort_upload(self, path: str, key: str, upload_id: str) -> bool:
        """Abort one upload; False when it was already gone."""
        try:
            with self._errors(path, "AbortMultipartUpload"):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except PathNotFound:
            return False
        return True

    def _uploads(self, path: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Every multipart upload in progress whose key starts with `prefix`."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            with self._errors(path, "ListMultipartUploads"):
                page = self.client.list_multipart_uploads(**args)
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            args["KeyMarker"] = page["NextKeyMarker"]
            args["UploadIdMarker"] = page["NextUploadIdMarker"]

    def _key_uploads(self, path: str, key: str) -> list[str]:
        """The uploads in progress for exactly `key`, oldest first (S3's order)."""
        return [str(u["UploadId"]) for u in self._uploads(path, key) if u["Key"] == key]

    def _list_parts(self, path: str, key: str, upload_id: str) -> list[_Part]:
        parts: list[_Part] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            with self._errors(path, "ListParts"):
                page = self.client.list_parts(**args)
            parts.extend(
                _Part(int(p["PartNumber"]), str(p["ETag"]), int(p["Size"]))
                for p in page.get("Parts", [])
            )
            if not page.get("IsTruncated"):
                break
            args["PartNumberMarker"] = page["NextPartNumberMarker"]
        parts.sort(key=lambda p: p.number)
        return parts

    def _abort_each(self, path: str, key: str, upload_ids: list[str]) -> None:
        for upload_id in upload_ids:
            self._abort_upload(path, key, upload_id)

    def abort_multipart_uploads(self, path: str) -> int:
        """Abort every multipart upload in progress at or below driver path
        `path` (`/` for the whole root); returns how many were aborted.

        The Go registry leaves them behind when an upload is purged: S3 lists
        no object for them, yet stores (and bills) their parts."""
        validate_path(path, allow_root=True)
        if path == "/":
            prefix = below = self._root_prefix
        else:
            prefix = self._key(path)
            below = prefix + "/"
        doomed = [
            (str(u["Key"]), str(u["UploadId"]))
            for u in self._uploads(path, prefix)
            if u["Key"] == prefix or str(u["Key"]).startswith(below)
        ]
        aborted = self._parallel(
            (lambda k=k, u=u: self._abort_upload(path, k, u)) for k, u in doomed
        )
        count = sum(1 for a in aborted if a)
        if count:
            log.info(
                "aborted multipart uploads",
                extra={"path": path, "bucket": self.bucket, "aborted": count},
            )
        return count

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.client.close()


def _chain_one(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


class _S3Writer(FileWriter):
    """A file being written: a buffer, and a multipart upload once a part is sent.

    `close` and `commit` both make the object (PutObject when everything fits
    in the buffer, else the last part and CompleteMultipartUpload), so a closed
    file is visible and has its size, as on a filesystem. A writer that goes on
    from a committed object (`base`) takes it in at its first write: copied
    server-side as the first parts, or, under S3's part minimum, read back into
    the buffer. A writer that goes on from an upload in progress (`parts`)
    whose last part is under the minimum first completes it into the object
    and goes on from that, as Go's writer does."""

    def __init__(
        self,
        driver: S3Driver,
        path: str,
        *,
        upload_id: str | None = None,
        parts: Iterable[_Part] = (),
        base: int = 0,
        fresh: bool = False,
    ) -> None:
        self._driver = driver
        self._path = path
        self._key = driver._key(path)
        self._upload_id = upload_id
        self._parts = list(parts)
        self._base = base
        self._buffer = bytearray()
        self._size = base + sum(p.size for p in self._parts)
        # A new writer truncates: closing it makes the file, even empty.
        self._dirty = fresh
        self._fold = bool(self._parts) and self._parts[-1].size < driver.min_part_size
        self._state = "open"

    # --- FileWriter ------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        self._check_open()
        if not data:
            return 0
        if self._fold:
            self._fold_upload()
        if self._base:
            self._take_base()
        self._dirty = True
        self._buffer += data
        self._size += len(data)
        chunk = self._driver.chunksize
        sent = 0
        try:
            while len(self._buffer) - sent >= chunk:
                self._send_part(bytes(self._buffer[sent : sent + chunk]))
                sent += chunk
        finally:
            del self._buffer[:sent]
        return len(data)

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        # Idempotent (unlike Go's) so that `with` after commit or cancel works.
        if self._state != "open":
            return
        if self._dirty:
            self._finish()
        self._state = "closed"

    def cancel(self) -> None:
        self._check_open()
        self._state = "cancelled"
        if self._upload_id is not None:
            self._driver._abort_upload(self._path, self._key, self._upload_id)
        # The file is gone after a cancel, including what earlier writers closed.
        with self._driver._errors(self._path, "DeleteObject"):
            self._driver.client.delete_object(Bucket=self._driver.bucket, Key=self._key)

    def commit(self) -> None:
        self._check_open()
        if self._dirty or self._upload_id is not None:
            self._finish()
        self._state = "committed"

    # --- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageDriverError(f"writer for {self._path!r} already {self._state}")

    def _finish(self) -> None:
        """Make the object from the upload and the buffer."""
        driver = self._driver
        if self._upload_id is None:
            driver.put_content(self._path, self._buffer)
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            try:
                driver._complete_upload(self._path, self._upload_id, self._parts)
            except StorageDriverError:
                # As Go: an upload S3 refused to complete is not worth keeping.
                driver._abort_upload(self._path, self._key, self._upload_id)
                self._upload_id = None
                raise
        self._buffer.clear()
        self._upload_id = None
        self._parts = []
        self._dirty = False

    def _ensure_upload(self) -> str:
        if self._upload_id is None:
            self._upload_id = self._driver._create_upload(self._path)
        return self._upload_id

    def _send_part(self, body: bytes) -> None:
        upload_id = self._ensure_upload()
        number = self._parts[-1].number + 1 if self._parts else 1
        if number > MAX_PARTS:
            raise StorageDriverError(
                f"{self._path!r}: more than {MAX_PARTS} parts; raise chunksize"
            )
        driver = self._driver
        with driver._errors(self._path, "UploadPart"):
            response = driver.client.upload_part(
                Bucket=driver.bucket,
                Key=self._key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
        self._parts.append(_Part(number, str(response["ETag"]), len(body)))

    def _fold_upload(self) -> None:
        """Complete the upload in progress into the object and go on from that
        (S3 accepts a small part only as the last one)."""
        assert self._upload_id is not None
        self._driver._complete_upload(self._path, self._upload_id, self._parts)
        self._upload_id = None
        self._parts = []
        self._fold = False
        self._base = self._size

    def _take_base(self) -> None:
        """Start the upload with the committed object this writer goes on from."""
        driver = self._driver
        size, self._base = self._base, 0
        if size < driver.min_part_size:
            with driver._errors(self._path, "GetObject"):
                response = driver.client.get_object(Bucket=driver.bucket, Key=self._key)
                with response["Body"] as body:
                    self._buffer[:0] = body.read()
            return
        upload_id = self._ensure_upload()
        count = -(-size // MAX_PART_SIZE)  # each part at most 5 GiB, all alike
        step = -(-size // count)
        for number, first in enumerate(range(0, size, step), start=1):
            last = min(first + step, size) - 1
            with driver._errors(self._path, "UploadPartCopy"):
                response = driver.client.upload_part_copy(
                    Bucket=driver.bucket,
                    Key=self._key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": driver.bucket, "Key": self._key},
                    CopySourceRange=f"bytes={first}-{last}",
                )
            etag = str(response["CopyPartResult"]["ETag"])
            self._parts.append(_Part(number, etag, last - first + 1))


class _S3Reader(io.RawIOBase):
    """A seekable stream over ranged GETs: one GET streams from the position;
    a seek drops it and the next read opens another. A connection that breaks
    mid-object is reopened where it stopped, pinned to the object's ETag so a
    replaced object is never spliced into the old one."""

    def __init__(self, driver: S3Driver, path: str, offset: int) -> None:
        super().__init__()
        self._driver = driver
        self._path = path
        self._key = driver._key(path)
        self._pos = offset
        self._size = -1
        self._etag: str | None = None
        self._body: Any = None

    def open_at_start(self) -> None:
        """Open at the initial offset, raising PathNotFound / InvalidOffset now."""
        try:
            self._open()
        except StorageDriverError as exc:
            if _error_code(exc.__cause__) != "InvalidRange":
                raise
            # At or past the end (or an empty object, which no range fits).
            head = self._driver._head(self._path)
            if head is None:
                raise PathNotFound(self._path) from None
            self._size = int(head["ContentLength"])
            self._etag = str(head["ETag"])
            if self._pos > self._size:
                raise InvalidOffset(self._path, self._pos) from None

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self._driver.bucket, "Key": self._key}
        if self._pos:
            args["Range"] = f"bytes={self._pos}-"
        if self._etag:
            args["IfMatch"] = self._etag
        try:
            with self._driver._errors(self._path, "GetObject"):
                response = self._driver.client.get_object(**args)
        except StorageDriverError as exc:
            if _error_code(exc.__cause__) == "PreconditionFailed":
                raise StorageDriverError(f"{self._path!r} changed while being read") from exc
            raise
        self._body = response["Body"]
        self._etag = str(response["ETag"])
        content_range = response.get("ContentRange")  # "bytes 2-4/5"
        if content_range:
            self._size = int(content_range.rsplit("/", 1)[1])
        else:
            self._size = self._pos + int(response["ContentLength"])

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = seek_target(self._pos, self._size, offset, whence)
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed reader")
        want = len(buffer)
        if want == 0 or self._pos >= self._size:
            return 0
        attempt = 0
        while True:
            if self._body is None:
                self._open()  # botocore has retried the request itself
            try:
                data = self._body.read(want)
            except _STREAM_ERRORS as exc:
                data, error = b"", exc
            else:
                error = None
            if data:
                break
            # The connection broke, or ended before the object did.
            self._drop_body()
            attempt += 1
            if attempt > _READ_RETRIES:
                raise StorageDriverError(
                    f"{self._path!r}: read failed at offset {self._pos}: {error or 'early end'}"
                ) from error
            log.warning(
                "s3 read interrupted, reopening",
                extra={"path": self._path, "offset": self._pos, "error": str(error)},
            )
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        # RawIOBase reads in 8 KiB steps; the body can hand over large blocks.
        out = bytearray()
        while True:
            block = self.read(8 << 20)
            if not block:
                return bytes(out)
            out += block

    def close(self) -> None:
        self._drop_body()
        super().close()


# --- Go config values --------------------------------------------------------------------


def _param_str(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    return "" if value is None else str(value)


def _param_bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        # Go's strconv.ParseBool
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value in ("0", "f", "F", "FALSE", "false", "False"):
            return False
    raise ConfigError(f"s3: the {name} parameter should be a boolean")


def _param_int(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ConfigError(f"s3: the {name} parameter should be a number: {value!r}")
    if not low <= number <= high:
        raise ConfigError(f"s3: the {name} parameter must be between {low} and {high}: {number}")
    return number
