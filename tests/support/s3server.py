"""A moto_server S3 endpoint on 127.0.0.1 for tests and benchmarks.

`MotoServer` starts `moto_server` as a subprocess on a free port, waits until it
answers, and stops it by the PID it started (its own process group, because the
pyenv shim may fork before the real server runs). Its stderr is the werkzeug
request log, one line per HTTP request from any client (layergc, boto3, the Go
registry), which `requests()` parses so that tests and benchmarks can count
what was really sent:

    with MotoServer() as server:
        bucket = server.create_bucket()
        driver = make_s3_driver(server, bucket, rootdirectory="/root")
        mark = server.log_mark()
        ...
        ops = server.request_counts(since=mark, bucket=bucket)  # Counter by operation

`registry_storage_config(bucket)` is the `storage.s3` section for a Go registry
config (and for `S3Driver.from_registry_config`); `plain_http_env()` is the
environment for a subprocess that talks to the server (dummy credentials, no
AWS_CA_BUNDLE, which Go's SDK refuses to start with).

moto keeps everything in memory: drop buckets you no longer need
(`drop_bucket`), especially after large objects. Each request costs it a few
milliseconds (more on a busy machine), and listings slow down as a bucket grows.

moto enforces S3's 5 MiB minimum for every multipart part but the last, read
from S3_UPLOAD_PART_MIN_SIZE when the server starts; `min_part_size` lowers it
(moto accepts down to 1 byte) so tests can use small parts. It does not page
ListMultipartUploads (every upload comes in one answer).
"""

from __future__ import annotations

import collections
import ctypes
import importlib.util
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from layergc.driver.s3 import S3Driver
from tests.support.components import free_port, require_binary

ACCESS_KEY = "layergc-test"
SECRET_KEY = "layergc-test-secret"
REGION = "us-east-1"
S3_MIN_PART_SIZE = 5 << 20
# For tests: moto checks S3's part minimum at CompleteMultipartUpload; a test
# server lowers it so multipart uploads of several parts stay small and fast.
TEST_MIN_PART_SIZE = 64 << 10
TEST_CHUNK_SIZE = 1 << 20

# werkzeug: 127.0.0.1 - - [29/Nov/2026 07:33:31] "GET /bkt?uploads&prefix=m HTTP/1.1" 200 -
_LOG_LINE = re.compile(
    r'^\S+ - - \[[^\]]*\] "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
)

_bucket_serial = itertools.count(1)


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    bucket: str
    key: str
    query: dict[str, list[str]]
    status: int

    @property
    def operation(self) -> str:
        """The S3 operation, as far as method, path and query tell it apart.

        A copy (CopyObject, UploadPartCopy) differs from its plain form only by a
        header the log does not show, so it counts as PutObject / UploadPart."""
        q, m = self.query, self.method
        if not self.key:
            if m == "GET":
                if "uploads" in q:
                    return "ListMultipartUploads"
                return "ListObjectsV2" if q.get("list-type") == ["2"] else "ListObjects"
            if m == "POST" and "delete" in q:
                return "DeleteObjects"
            return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(
                m, f"{m} bucket"
            )
        if m == "POST":
            return "CreateMultipartUpload" if "uploads" in q else "CompleteMultipartUpload"
        if m == "PUT":
            return "UploadPart" if "partNumber" in q else "PutObject"
        if m == "GET":
            return "ListParts" if "uploadId" in q else "GetObject"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return "HeadObject" if m == "HEAD" else f"{m} object"


def parse_log_line(line: str) -> LoggedRequest | None:
    """One werkzeug access-log line (path-style addressing), or None for other lines."""
    match = _LOG_LINE.match(line)
    if match is None:
        return None
    parts = urlsplit(match["target"])
    if parts.path.startswith("/moto-api"):
        return None
    bucket, _, key = parts.path.lstrip("/").partition("/")
    return LoggedRequest(
        method=match["method"],
        bucket=bucket,
        key=key,
        query=parse_qs(parts.query, keep_blank_values=True),
        status=int(match["status"]),
    )


def _die_with_parent() -> None:
    """Run in the child before exec: SIGTERM it when the thread that started it
    ends (Linux prctl PR_SET_PDEATHSIG), so a test run that is killed leaves no
    server behind. Start servers from a long-lived thread (the main one)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() is the only way out


def plain_http_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a subprocess that talks plain HTTP to the server.

    With AWS_CA_BUNDLE set, the Go registry's s3 driver fails at start
    (LoadCustomCABundleError, whatever the bundle), so it is removed; dummy
    credentials are set."""
    env = dict(os.environ if base is None else base)
    env.pop("AWS_CA_BUNDLE", None)
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
    )
    return env


class MotoServer:
    """`moto_server -H 127.0.0.1 -p <free port>` for the life of the context."""

    def __init__(
        self,
        *,
        min_part_size: int = S3_MIN_PART_SIZE,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary or require_binary("moto_server")
        self.min_part_size = min_part_size
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> MotoServer:
        if self._proc is not None:
            return self
        self.port = free_port()
        self._logdir = tempfile.TemporaryDirectory(prefix="layergc-moto-")
        self.log_path = Path(self._logdir.name) / "requests.log"
        env = plain_http_env()
        env.update(
            PYTHONUNBUFFERED="1",
            S3_UPLOAD_PART_MIN_SIZE=str(self.min_part_size),
            # moto keeps objects up to this size in memory and spools the rest to
            # disk; by default it follows the part minimum, which would spool
            # nearly every object once that minimum is lowered.
            MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(16 << 20),
        )
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [*self._command(), "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid = self._proc.pid
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self) -> list[str]:
        """The server in this interpreter when moto is importable here: the
        `moto_server` found on PATH may be a shim (pyenv) that forks, and then
        neither our PID nor the parent-death signal reaches the real server."""
        if importlib.util.find_spec("moto.server") is not None:
            return [sys.executable, "-c", "from moto.server import main; main()"]
        return [self.binary]

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise TimeoutError(f"moto_server did not answer within {self.startup_timeout}s")

    def stop(self) -> None:
        self._client = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # The process group we created with start_new_session: our PID's group.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients and buckets -----------------------------------------------------

    def client(self) -> Any:
        """A raw boto3 S3 client for this server (path-style, dummy credentials),
        made once: clients are thread-safe and slow to create."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}, max_pool_connections=20),
            )
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"layergc-test-{os.getpid()}-{next(_bucket_serial)}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Abort its multipart uploads, delete every object and the bucket."""
        s3 = self.client()
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(
                    Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=name)

    def registry_storage_config(self, bucket: str, rootdirectory: str = "") -> dict[str, Any]:
        """The `storage.s3` section a Go registry config (and layergc) needs for it."""
        config: dict[str, Any] = {
            "bucket": bucket,
            "region": REGION,
            "regionendpoint": self.endpoint_url,
            "accesskey": ACCESS_KEY,
            "secretkey": SECRET_KEY,
            "secure": False,
            "v4auth": True,
        }
        if rootdirectory:
            config["rootdirectory"] = rootdirectory
        return config

    # --- the request log -----------------------------------------------------------

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_mark(self) -> int:
        """A position in the request log; pass it as `since` to see only later requests."""
        if self.log_path is None or not self.log_path.exists():
            return 0
        return self.log_path.stat().st_size

    def requests(self, since: int = 0, bucket: str | None = None) -> Iterator[LoggedRequest]:
        """The requests logged after `since` (werkzeug logs each one as its
        response starts, so a request the client has an answer to is logged)."""
        if self.log_path is None:
            return
        self._wait_for_quiet_log()
        with open(self.log_path, "rb") as log:
            log.seek(since)
            for raw in log:
                request = parse_log_line(raw.decode(errors="replace"))
                if request is not None and (bucket is None or request.bucket == bucket):
                    yield request

    def _wait_for_quiet_log(self, quiet: float = 0.3, limit: float = 5.0) -> None:
        """Wait until the log stops growing: the server writes a line after the
        client may already hold its answer, and a loaded machine delays it."""
        assert self.log_path is not None
        deadline = time.monotonic() + limit
        size = -1
        while time.monotonic() < deadline:
            current = self.log_path.stat().st_size if self.log_path.exists() else 0
            if current == size:
                return
            size = current
            time.sleep(quiet)

    def request_counts(self, since: int = 0, bucket: str | None = None) -> collections.Counter[str]:
        return collections.Counter(r.operation for r in self.requests(since, bucket))


def make_s3_driver(server: MotoServer, bucket: str, **overrides: Any) -> S3Driver:
    """An S3Driver for `bucket` on `server`, configured from the Go registry
    config section (`registry_storage_config`), with test-sized parts unless
    overridden (`rootdirectory` and any S3Driver keyword)."""
    settings: dict[str, Any] = {
        "chunksize": TEST_CHUNK_SIZE,
        "min_part_size": min(server.min_part_size, TEST_MIN_PART_SIZE),
        "multipartcopychunksize": TEST_CHUNK_SIZE,
    }
    settings.update(overrides)
    rootdirectory = settings.pop("rootdirectory", "")
    return S3Driver.from_registry_config(
        server.registry_storage_config(bucket, rootdirectory), **settings
    )
