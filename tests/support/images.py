"""Build real container images without a daemon, and move them with skopeo.

`OCILayout` writes an OCI image layout in Python (gzip'd tar layers of seeded
random bytes, config JSON, manifests, indexes, `index.json`, `oci-layout`): the
same seed always gives the same bytes, hence the same digests, so a test can
predict what a push stores. Format conversion is skopeo's job: `push(...,
fmt="v2s2")` stores Docker schema2 (and, with `all=True`, a Docker manifest list).

skopeo runs hermetic: HOME and XDG_DATA_HOME point at a temporary folder and
`_CONTAINERS_ROOTLESS_UID` is set to a non-zero uid, so that running as root it
keeps its blob-info cache there instead of /var/lib/containers (with a uid of
0 it would still pick /var/lib); a policy file accepting everything is passed
explicitly. Each call gets a fresh folder unless `home` is given, so no call
learns from an earlier one (no cross-repository mount attempts, no cached
"this registry has that blob") unless a test asks for it.

skopeo 1.9 notes: converting a layout's OCI manifest to v2s2 keeps the layer and
config blobs byte-identical (only the manifest changes), so a v2s2 push shares
blobs with an OCI push of the same image. `--all --format v2s2` converts an OCI
index into a Docker manifest list. A pull verifies every blob's digest as it
copies; pulling into a `dir:` folder keeps manifests exactly as served (an
`oci:` destination accepts only OCI manifests and converts).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
EMPTY_JSON = b"{}"

Format = Literal["oci", "v2s2"]


class HasHost(Protocol):
    @property
    def host(self) -> str: ...


class SkopeoError(RuntimeError):
    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo exited {returncode}: {' '.join(cmd)}\n{stderr}")
        self.returncode = returncode
        self.stderr = stderr


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True)
class Image:
    """An image manifest and the blobs it references, as written to the layout."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    manifest_bytes: bytes

    @property
    def blobs(self) -> frozenset[str]:
        """Config and layer digests (the manifest's own digest excluded: formats change it)."""
        return frozenset([self.config.digest, *(d.digest for d in self.layers)])


@dataclass(frozen=True)
class Index:
    index: Descriptor
    images: tuple[Image, ...]
    index_bytes: bytes

    @property
    def manifest(self) -> Descriptor:
        return self.index

    @property
    def blobs(self) -> frozenset[str]:
        return frozenset().union(*(i.blobs for i in self.images))


def make_layer(seed: int, size: int) -> tuple[bytes, str]:
    """A deterministic gzip'd tar holding `size` random bytes; returns (blob, diff_id)."""
    payload = random.Random(seed).randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/layer-{seed}.bin")
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), sha256(raw)


class OCILayout:
    """An OCI image layout on disk, written incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self._refs: dict[str, Descriptor] = {}
        self._diff_ids: dict[str, str] = {}
        self._write_index()

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256(data)
        blob = self.path / "blobs" / "sha256" / digest.split(":", 1)[1]
        if not blob.exists():
            blob.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def layer(self, seed: int, size: int = 16 << 10) -> Descriptor:
        data, diff_id = make_layer(seed, size)
        desc = self.add_blob(data, OCI_LAYER_GZIP)
        self._diff_ids[desc.digest] = diff_id
        return desc

    def image(
        self,
        layers: Sequence[Descriptor],
        *,
        seed: int,
        arch: str = "amd64",
        os_: str = "linux",
        variant: str | None = None,
    ) -> Image:
        """An image of `layers`; `seed` makes its config (hence manifest) unique."""
        config = {
            "created": "2026-01-01T00:00:00Z",
            "architecture": arch,
            "os": os_,
            "config": {"Env": [f"LAYERGC_TEST_SEED={seed}"], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [self._diff_ids[d.digest] for d in layers]},
            "history": [
                {"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"}
                for i in range(len(layers))
            ],
        }
        if variant:
            config["variant"] = variant
        config_desc = self.add_blob(canonical_json(config), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layers],
        }
        body = canonical_json(manifest)
        platform = {"architecture": arch, "os": os_}
        if variant:
            platform["variant"] = variant
        desc = self.add_blob(body, OCI_MANIFEST)
        desc = Descriptor(desc.media_type, desc.digest, desc.size, platform=platform)
        return Image(desc, config_desc, tuple(layers), body)

    def index(self, images: Sequence[Image]) -> Index:
        body = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [i.manifest.to_json() for i in images],
            }
        )
        return Index(self.add_blob(body, OCI_INDEX), tuple(images), body)

    def tag(self, name: str, target: Image | Index) -> None:
        """Name `target` in index.json (the `oci:<layout>:<name>` reference skopeo reads)."""
        d = target.manifest
        self._refs[name] = Descriptor(d.media_type, d.digest, d.size, annotations={REF_NAME: name})
        self._write_index()

    def _write_index(self) -> None:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [d.to_json() for d in self._refs.values()],
        }
        (self.path / "index.json").write_bytes(canonical_json(index))


# --- skopeo ------------------------------------------------------------------------

_POLICY = '{"default":[{"type":"insecureAcceptAnything"}]}'


def skopeo_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(home)
    env["XDG_DATA_HOME"] = str(home / ".local" / "share")
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["XDG_RUNTIME_DIR"] = str(home / "run")
    # Non-zero, so that containers/image treats us as rootless and keeps its
    # blob-info cache under XDG_DATA_HOME rather than /var/lib/containers.
    env["_CONTAINERS_ROOTLESS_UID"] = "1000"
    return env


def skopeo_copy(
    src: str, dst: str, *args: str, home: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`skopeo copy` with TLS verification off on both ends; raises SkopeoError on failure."""
    with tempfile.TemporaryDirectory(prefix="skopeo-home-") as tmp:
        base = Path(home) if home is not None else Path(tmp)
        (base / "run").mkdir(parents=True, exist_ok=True)
        policy = base / "policy.json"
        policy.write_text(_POLICY)
        cmd = [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            *args,
            src,
            dst,
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=skopeo_env(base), timeout=timeout, check=False
        )
    if proc.returncode != 0:
        raise SkopeoError(cmd, proc.returncode, proc.stderr)
    return proc


def _host(registry: HasHost | str) -> str:
    return registry if isinstance(registry, str) else registry.host


def docker_ref(registry: HasHost | str, repo: str, ref: str) -> str:
    sep = "@" if ":" in ref else ":"  # a digest has a colon; a tag cannot
    return f"docker://{_host(registry)}/{repo}{sep}{ref}"


def push(
    registry: HasHost | str,
    layout_path: Path,
    tag: str,
    repo: str,
    ref: str,
    fmt: Format = "oci",
    all: bool = False,
    home: Path | None = None,
) -> str:
    """Copy `oci:<layout_path>:<tag>` to `<repo>:<ref>`; returns the stored manifest's digest."""
    with tempfile.TemporaryDirectory(prefix="skopeo-digest-") as tmp:
        digestfile = Path(tmp) / "digest"
        args = ["--format", fmt, "--digestfile", str(digestfile)]
        if all:
            args.append("--all")
        skopeo_copy(f"oci:{layout_path}:{tag}", docker_ref(registry, repo, ref), *args, home=home)
        return digestfile.read_text().strip()


def pull(
    registry: HasHost | str, repo: str, ref: str, all: bool = False, dest: Path | None = None
) -> bytes:
    """Pull into a `dir:` folder (skopeo checks every blob's digest); raises SkopeoError.

    Returns the top-level manifest as stored. The folder is a temporary one unless
    `dest` is given.
    """
    with tempfile.TemporaryDirectory(prefix="skopeo-pull-") as tmp:
        target = Path(dest) if dest is not None else Path(tmp) / "image"
        args = ["--all"] if all else []
        skopeo_copy(docker_ref(registry, repo, ref), f"dir:{target}", *args)
        _check_dir(target)
        return (target / "manifest.json").read_bytes()


def pull_and_verify(registry: HasHost | str, repo: str, ref: str, all: bool = False) -> bool:
    """True when `repo:ref` pulls back whole and every digest verifies."""
    try:
        pull(registry, repo, ref, all=all)
    except (SkopeoError, AssertionError):
        return False
    return True


def _check_dir(folder: Path) -> None:
    """Re-check what skopeo wrote: every blob file matches the digest it is named after."""
    for f in folder.iterdir():
        name = f.name
        if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            assert sha256(f.read_bytes()) == f"sha256:{name}", f"blob {name} does not verify"
