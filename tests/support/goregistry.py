"""Drive the real Go registry (Debian's `docker-registry`) from tests.

`GoRegistry` writes a config.yml, runs `docker-registry serve` on 127.0.0.1 and a
free port, and offers the few HTTP calls tests need beyond skopeo (manifest
deletes, raw blob uploads, partial uploads). `garbage_collect` runs the Go
collector and parses what it would delete.

What Debian's build is (`docker-registry --version`: github.com/docker/distribution
2.8.2+ds1, built with go1.19.8), as found by running it (tests/test_harness.py
checks most of this):

- OCI image manifests and OCI indexes are accepted (PUT) and served byte for
  byte; Docker schema2 manifests and manifest lists too. `skopeo copy --all` of an
  OCI index works, and so does `--all --format v2s2`, which stores a Docker
  manifest list whose children are converted (new digests, same configs and
  layers).
- DELETE of a manifest by digest answers 202 when `storage.delete.enabled` is
  true (405 otherwise); it removes the revision `link` file only (the empty
  revision folder stays) and every tag folder whose `current/link` named it.
  DELETE by tag answers 400 DIGEST_INVALID. DELETE of a blob removes only the
  repository's layer `link` file (its folder and the blob data stay).
- No referrers API: `GET /v2/<name>/referrers/<digest>` is 404. An OCI image
  manifest with a `subject` (and an `artifactType`, an empty `{}` config of type
  `application/vnd.oci.empty.v1+json`, a layer of a custom type) is accepted:
  2.8 ignores unknown fields, checks only that the referenced blobs exist,
  stores the bytes as sent and serves them back unchanged; no `OCI-Subject`
  header. A manifest of type `application/vnd.oci.artifact.manifest.v1+json` is
  refused (400 MANIFEST_INVALID: it falls back to schema1 parsing, "missing
  signature key").
- `garbage-collect` prints to stdout, one line per event: the repository name on a
  line of its own, `<repo>: marking manifest <digest> ` (trailing space),
  `<repo>: marking blob <digest>`, `manifest eligible for deletion: <digest>`
  (only with `--delete-untagged`; printed right after its repository's name
  line), then `N blobs marked, N blobs and N manifests eligible for deletion`
  and one `blob eligible for deletion: <digest>` line per blob, in random (Go
  map) order. It sees a repository only where a `_layers` folder exists (a
  repository holding only `_uploads` is not listed).
- `--delete-untagged` drops every manifest no tag's `current/link` names: an OCI
  referrer, and the children of a tagged multi-arch index or manifest list. The
  children's manifest blobs survive (the tagged index marks them as blobs) but
  their configs and layers are deleted, so the multi-arch image no longer pulls:
  the known 2.8 bug. Plain mode keeps every revision, tagged or not.
- Uploads: `POST` creates `_uploads/<uuid>/startedat`, an empty `data` and
  `hashstates/sha256/0`; each `PATCH` appends and writes
  `hashstates/sha256/<offset>`, and answers a new `Location`. Its `_state` token
  is base64url(HMAC-SHA256(http.secret, json) + json); so this harness fixes the
  secret (with the default random one, checked: a PATCH after a restart is 404
  BLOB_UPLOAD_INVALID), and `resume_location` can mint a Location for an upload
  another program started.
- With no `http.secret` it warns on every start; with `uploadpurging` left on it
  purges old uploads by itself after a random delay, so tests turn it off.
- S3: with `AWS_CA_BUNDLE` set (to any file, even a valid bundle) the s3 driver
  panics at start ("LoadCustomCABundleError ... HTTPClient's transport
  unsupported type"), so it is removed from the environment. Blob GET/HEAD
  answer 307 to the bucket unless `storage.redirect.disable` is true, which
  this harness sets so that clients need to reach only the registry.
- Redis cache: keys `blobs::<digest>` (hash), `repository::<name>::blobs` (set of
  digests) and `repository::<name>::blobs::<digest>` (hash), in `redis.db`. The
  harness empties that database at a registry's first start (see flush_redis).
- There is no log-file option: stdout/stderr go to `<workdir>/registry.log`; the
  access log is turned off and the level is warn. With `log_requests` the level is
  info and the format JSON: one `response completed` line per request (method,
  URI, status, duration, user agent, a nanosecond `time` taken when it ended),
  a request log to correlate with what storage showed (the Apache-style access
  log says the same to the second only, so it stays off).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
import yaml

from tests.support.components import REDIS_HOST, REDIS_PORT, free_port, port_open

BINARY = "docker-registry"
CacheKind = Literal["inmemory", "redis"]

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ]
)


class RegistryError(RuntimeError):
    """The registry process failed, or answered an HTTP call unexpectedly."""


class RegistryHTTPError(RegistryError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass(frozen=True)
class Upload:
    """A partial upload: its uuid and the Location to send the next request to."""

    repo: str
    uuid: str
    location: str  # absolute URL; changes after every PATCH


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True)
class GCResult:
    """What `docker-registry garbage-collect` reported."""

    blobs: frozenset[str]  # digests eligible for deletion
    manifests: frozenset[tuple[str, str]]  # (repository, digest) eligible for deletion
    repositories: tuple[str, ...]  # the repositories it walked, in order
    marked: int  # its "N blobs marked" figure
    output: str = field(repr=False)


def registry_env() -> dict[str, str]:
    """The environment for the Go registry: no AWS_CA_BUNDLE, no REGISTRY_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    # The s3 driver refuses to start when this names a bundle it cannot use.
    env.pop("AWS_CA_BUNDLE", None)
    return env


def _binary() -> str:
    path = shutil.which(BINARY)
    if path is None:
        raise RegistryError(f"{BINARY} is not installed")
    return path


# Output lines of `garbage-collect` (distribution 2.8 registry/storage/garbagecollect.go).
_BLOB_RE = re.compile(r"^blob eligible for deletion: (\S+)$")
_MANIFEST_RE = re.compile(r"^manifest eligible for deletion: (\S+)$")
_SUMMARY_RE = re.compile(r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible")
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


def parse_gc_output(output: str) -> GCResult:
    blobs: set[str] = set()
    manifests: set[tuple[str, str]] = set()
    repos: list[str] = []
    marked = -1
    for raw in output.splitlines():
        line = raw.strip()
        if m := _BLOB_RE.match(line):
            blobs.add(m.group(1))
        elif m := _MANIFEST_RE.match(line):
            if not repos:
                raise RegistryError(f"manifest line before any repository: {line!r}")
            manifests.add((repos[-1], m.group(1)))
        elif m := _SUMMARY_RE.match(line):
            marked = int(m.group(1))
        elif _REPO_RE.match(line):
            repos.append(line)
    if marked < 0:
        raise RegistryError(f"garbage-collect printed no summary line:\n{output}")
    return GCResult(frozenset(blobs), frozenset(manifests), tuple(repos), marked, output)


def garbage_collect(
    config_path: Path, dry_run: bool = True, delete_untagged: bool = False, timeout: float = 120
) -> GCResult:
    """Run `docker-registry garbage-collect` on `config_path` and parse its report."""
    cmd = [_binary(), "garbage-collect"]
    if dry_run:
        cmd.append("--dry-run")
    if delete_untagged:
        cmd.append("--delete-untagged")
    cmd.append(str(config_path))
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=registry_env(), timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RegistryError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
    return parse_gc_output(proc.stdout)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class GoRegistry:
    """A `docker-registry serve` process over a filesystem root or an S3 bucket.

    Use as a context manager, or call start()/stop(). restart() keeps the port,
    the config and the HTTP secret, so URLs and upload locations stay valid.
    `s3` is the `storage.s3` mapping, written as given (bucket, region,
    regionendpoint, accesskey, secretkey, rootdirectory, ...); `extra` is merged
    into the top level of the config last. `log_requests`: every request is logged
    into registry.log (see the module doc).
    """

    def __init__(
        self,
        root: Path | None,
        *,
        cache: CacheKind | None = None,
        redis_addr: str | None = None,
        redis_db: int = 0,
        flush_redis: bool = True,
        s3: dict[str, Any] | None = None,
        delete_enabled: bool = True,
        workdir: Path | None = None,
        extra: dict[str, Any] | None = None,
        start_timeout: float = 15.0,
        log_requests: bool = False,
    ) -> None:
        if (root is None) == (s3 is None):
            raise ValueError("give exactly one of root (filesystem) and s3")
        self.root = Path(root) if root is not None else None
        self.cache = cache
        self.redis_addr = redis_addr or (f"{REDIS_HOST}:{REDIS_PORT}" if cache == "redis" else None)
        self.redis_db = redis_db
        self._flush_redis = flush_redis and cache == "redis"
        self.s3 = s3
        self.delete_enabled = delete_enabled
        self.extra = extra or {}
        self.start_timeout = start_timeout
        self.log_requests = log_requests
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="goregistry-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self.port = free_port()
        self._secret = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self.write_config()

    # --- configuration -------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def v2(self) -> Path:
        """`<rootdirectory>/docker/registry/v2` of a filesystem-backed registry."""
        if self.root is None:
            raise ValueError("this registry stores on S3, not on a local root")
        return self.root / "docker" / "registry" / "v2"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def config(self) -> dict[str, Any]:
        storage: dict[str, Any] = {}
        if self.s3 is not None:
            storage["s3"] = dict(self.s3)
        else:
            assert self.root is not None
            storage["filesystem"] = {"rootdirectory": str(self.root)}
        storage["delete"] = {"enabled": self.delete_enabled}
        storage["maintenance"] = {"uploadpurging": {"enabled": False}}
        # Serve blobs through the registry, not by a 307 to S3: clients need only it.
        storage["redirect"] = {"disable": True}
        if self.cache:
            storage["cache"] = {"blobdescriptor": self.cache}
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": storage,
            "http": {"addr": self.host, "secret": self._secret},
        }
        if self.log_requests:
            cfg["log"].update(level="info", formatter="json")
        if self.redis_addr:
            cfg["redis"] = {"addr": self.redis_addr, "db": self.redis_db}
        cfg.update(self.extra)
        return cfg

    def write_config(self) -> Path:
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    # --- process -------------------------------------------------------------

    def start(self) -> GoRegistry:
        if self.running:
            return self
        if self._flush_redis:
            self._flush_redis = False  # first start only: restarts keep the cache
            self.flush_redis()
        for attempt in range(3):
            # The first start may pick another port if the free one was taken
            # meanwhile; later starts keep theirs, so URLs and Locations stay valid.
            if not self._started and port_open("127.0.0.1", self.port, 0.2):
                self.port = free_port()
            self.write_config()
            self._spawn()
            try:
                self._wait_ready()
                break
            except RegistryError as exc:
                if self._started or attempt == 2 or "address already in use" not in str(exc):
                    raise
        self._started = True
        return self

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [_binary(), "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=registry_env(),
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RegistryError(f"docker-registry exited {code} on start:\n{self.log_tail()}")
            try:
                if self.request("GET", "/v2/", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RegistryError(f"docker-registry did not answer on {self.url}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # this PID only: never by name
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush_redis(self) -> None:
        """Empty the cache's Redis database.

        Test images have seeded, hence repeated, digests and repository names: a
        `blobs::<digest>` key left by an earlier test would make this registry
        answer "exists" for a blob its storage lacks (and accept manifests
        needing it). So a fresh registry starts with an empty cache.
        """
        assert self.redis_addr is not None
        host, _, port = self.redis_addr.rpartition(":")
        client = redis.Redis(host=host, port=int(port), db=self.redis_db)
        try:
            client.flushdb()
        finally:
            client.close()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> GoRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def garbage_collect(self, dry_run: bool = True, delete_untagged: bool = False) -> GCResult:
        return garbage_collect(self.config_path, dry_run=dry_run, delete_untagged=delete_untagged)

    # --- HTTP ----------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        """One request on a fresh connection; `path_or_url` may be an absolute Location."""
        parts = urllib.parse.urlsplit(path_or_url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = http.client.HTTPConnection(self.host, timeout=timeout)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def _expect(self, method: str, path: str, statuses: tuple[int, ...], **kw: Any) -> Response:
        resp = self.request(method, path, **kw)
        if resp.status not in statuses:
            raise RegistryHTTPError(method, path, resp.status, resp.body)
        return resp

    def get_manifest(self, repo: str, ref: str, accept: str = MANIFEST_ACCEPT) -> Manifest:
        resp = self._expect(
            "GET", f"/v2/{repo}/manifests/{ref}", (200,), headers={"Accept": accept}
        )
        return Manifest(
            resp.headers.get("docker-content-digest", sha256_digest(resp.body)),
            resp.headers.get("content-type", ""),
            resp.body,
        )

    def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest `ref` resolves to, or None when the registry does not know it."""
        resp = self.request(
            "HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
        )
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RegistryHTTPError("HEAD", f"/v2/{repo}/manifests/{ref}", resp.status, resp.body)
        return resp.headers["docker-content-digest"]

    def put_manifest(self, repo: str, ref: str, content: bytes, media_type: str) -> str:
        resp = self._expect(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            (201,),
            body=content,
            headers={"Content-Type": media_type},
        )
        return resp.headers["docker-content-digest"]

    def delete_manifest(self, repo: str, digest: str) -> None:
        self._expect("DELETE", f"/v2/{repo}/manifests/{digest}", (202,))

    def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size as the registry reports it, or None when it answers 404."""
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RegistryHTTPError("HEAD", f"/v2/{repo}/blobs/{digest}", resp.status, resp.body)
        return int(resp.headers["content-length"])

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self._expect("GET", f"/v2/{repo}/blobs/{digest}", (200,)).body

    def delete_blob(self, repo: str, digest: str) -> None:
        self._expect("DELETE", f"/v2/{repo}/blobs/{digest}", (202,))

    def start_upload(self, repo: str) -> Upload:
        resp = self._expect("POST", f"/v2/{repo}/blobs/uploads/", (202,), body=b"")
        return Upload(repo, resp.headers["docker-upload-uuid"], self._location(resp))

    def upload_offset(self, upload: Upload) -> int:
        """How many bytes the registry holds for `upload` (GET on its Location)."""
        resp = self._expect("GET", upload.location, (204,))
        return int(resp.headers["range"].rpartition("-")[2]) + 1

    def resume_location(self, repo: str, uuid: str, offset: int) -> Upload:
        """A Location the registry accepts for an upload it did not start (layergc's).

        The `_state` query parameter is what distribution's hmac.go packs:
        base64url(HMAC-SHA256(secret, json) + json) of {Name, UUID, Offset, StartedAt}.
        On PATCH/PUT the registry checks the MAC, that Name and UUID match the
        URL, and that Offset equals the size of `_uploads/<uuid>/data`; StartedAt
        is not checked (it reads `startedat` from storage).
        """
        state = json.dumps(
            {"Name": repo, "UUID": uuid, "Offset": offset, "StartedAt": "0001-01-01T00:00:00Z"},
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(self._secret.encode(), state, hashlib.sha256).digest()
        token = base64.urlsafe_b64encode(mac + state).decode()
        query = urllib.parse.urlencode({"_state": token})
        return Upload(repo, uuid, f"{self.url}/v2/{repo}/blobs/uploads/{uuid}?{query}")

    def patch_upload(self, upload: Upload, data: bytes) -> Upload:
        """Append `data`; returns the upload with its new Location (new `_state`)."""
        resp = self._expect(
            "PATCH",
            upload.location,
            (202,),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return Upload(upload.repo, upload.uuid, self._location(resp))

    def finish_upload(self, upload: Upload, digest: str, data: bytes = b"") -> str:
        sep = "&" if "?" in upload.location else "?"
        resp = self._expect(
            "PUT",
            f"{upload.location}{sep}digest={urllib.parse.quote(digest)}",
            (201,),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return resp.headers["docker-content-digest"]

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload (POST, then one PUT with the whole body); returns the digest."""
        return self.finish_upload(self.start_upload(repo), sha256_digest(data), data)

    def tags(self, repo: str) -> list[str]:
        resp = self.request("GET", f"/v2/{repo}/tags/list")
        if resp.status == 404:
            return []
        if resp.status != 200:
            raise RegistryHTTPError("GET", f"/v2/{repo}/tags/list", resp.status, resp.body)
        return sorted(json.loads(resp.body).get("tags") or [])

    def _location(self, resp: Response) -> str:
        loc = resp.headers["location"]
        return loc if "://" in loc else f"{self.url}{loc}"
