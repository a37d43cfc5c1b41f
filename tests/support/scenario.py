"""A registry storage root filled through the real Go registry, with known garbage.

`build_gc_scenario` pushes real images with skopeo and makes raw HTTP calls, then
records what a collector must keep and what it may delete. The expected sets
are derived from how the scenario was built, not from any collector's output;
tests/test_harness.py checks them against `docker-registry garbage-collect`.

What is in it (layers are seeded, so digests repeat from run to run):

    library/base:latest   OCI image A = [base, a]
    library/base@R        OCI artifact R (artifactType, empty `{}` config, one
                          signature layer) whose `subject` is A; untagged
    team/app/api:v1       Docker schema2 B = [base, b], then retagged to schema2
                          C = [base, c]: B stays as an untagged revision and
                          only the tag's index/ history still names it
    team/app/api          E = [e] pushed as :tmp, then its manifest DELETEd;
                          an orphan blob (uploaded, never referenced);
                          uploads: stale (PATCHed), stale (POST only), fresh
    org/team:stable       OCI index of 3 platforms (amd64, arm64, ppc64le),
                          each [base, <arch>], `skopeo copy --all`
    org/team:list         the same index pushed `--all --format v2s2`: a Docker
                          manifest list whose children differ from the OCI ones
                          but share their configs and layers
    org/team              a blob pushed, then DELETEd over HTTP (its layer link
                          goes, its data stays); a fresh upload (two PATCHes)
    org/team/r1:1.0       OCI image D = [base, a] (a shared with library/base);
                          F = [base, a] pushed as :f, then its manifest DELETEd
    scratch/pending       no image at all: only a stale upload (a repository
                          the Go registry does not see, having no `_layers`)

Garbage without `--delete-untagged` (what Go's dry run lists too): the orphan,
the DELETEd blob, E's manifest, config and layer, F's manifest and config (its
layers stay: D uses them). With `--delete-untagged` layergc adds B's manifest,
config and layer `b`; the Go registry 2.8 also deletes R (untagged referrer) and
the revisions of the six children of the two multi-arch tags, and hence R's blobs
and the per-platform configs and layers (the children's manifest blobs
themselves survive, as the tagged index marks them as blobs): the known way it
breaks multi-arch images.

Stale uploads have `startedat` rewritten 10 days back on disk, in the Go
registry's format; fresh ones are as the registry wrote them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support import images
from tests.support.goregistry import GoRegistry, RegistryHTTPError
from tests.support.images import OCI_EMPTY, OCI_MANIFEST, Image, OCILayout

STALE_AGE = timedelta(days=10)
GO_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # Go's time.RFC3339 for a UTC second-precision time
ARTIFACT_TYPE = "application/vnd.example.signature.v1"
SIGNATURE_MEDIA_TYPE = "application/vnd.example.signature.v1+bin"

RepoDigest = tuple[str, str]


@dataclass(frozen=True)
class ExpectedPull:
    repo: str
    ref: str  # a tag, or a digest for untagged content that must survive
    all: bool = False  # pull every platform of a multi-arch image


@dataclass(frozen=True)
class Scenario:
    root: Path  # the storage rootdirectory
    pulls: tuple[ExpectedPull, ...]  # must pull back and verify after any safe sweep
    tags: dict[RepoDigest, str]  # (repo, tag) -> manifest digest
    repositories: frozenset[str]  # every repository folder, upload-only ones included
    garbage: frozenset[str]  # blobs unreferenced without --delete-untagged
    orphans: frozenset[str]  # blobs uploaded but never referenced (subset of garbage)
    deleted_manifests: frozenset[RepoDigest]  # DELETEd over HTTP
    retag_lost: frozenset[str]  # blobs only the retagged-away manifest B used
    untagged_manifests: frozenset[RepoDigest]  # layergc --delete-untagged removes these
    untagged_garbage: frozenset[str]  # layergc --delete-untagged: blobs to delete
    go_untagged_manifests: frozenset[RepoDigest]  # Go 2.8 --delete-untagged lists these
    go_untagged_garbage: frozenset[str]  # Go 2.8 --delete-untagged: blobs it lists
    multiarch_children: frozenset[RepoDigest]  # manifests under the two multi-arch tags
    referrers: tuple[tuple[str, str, str], ...]  # (repo, referrer digest, subject digest)
    stale_uploads: frozenset[RepoDigest]  # (repo, uuid), startedat 10 days back
    fresh_uploads: frozenset[RepoDigest]
    notes: tuple[str, ...] = field(default=())

    @property
    def v2(self) -> Path:
        return self.root / "docker" / "registry" / "v2"

    def upload_dir(self, repo: str, uuid: str) -> Path:
        return self.v2 / "repositories" / repo / "_uploads" / uuid

    def copy_to(self, dest: Path) -> Scenario:
        """Copy the storage root (times kept) and return the scenario over the copy."""
        shutil.copytree(self.root, dest, symlinks=True)
        return replace(self, root=Path(dest))


def failed_pulls(registry: GoRegistry, scenario: Scenario) -> list[ExpectedPull]:
    """The expected pulls that no longer pull back whole through `registry`."""
    return [
        p for p in scenario.pulls if not images.pull_and_verify(registry, p.repo, p.ref, all=p.all)
    ]


def format_started_at(when: datetime) -> str:
    return when.astimezone(UTC).strftime(GO_TIME_FORMAT)


def age_upload(root: Path, repo: str, uuid: str, age: timedelta = STALE_AGE) -> None:
    """Move an upload's `startedat` back by `age`, as if started that long ago."""
    path = root / "docker/registry/v2/repositories" / repo / "_uploads" / uuid / "startedat"
    if not path.is_file():
        raise FileNotFoundError(f"no startedat for upload {uuid} in {repo}: {path}")
    path.write_text(format_started_at(datetime.now(UTC) - age))


def _index_children(registry: GoRegistry, repo: str, tag: str) -> set[RepoDigest]:
    index = json.loads(registry.get_manifest(repo, tag).content)
    return {(repo, m["digest"]) for m in index["manifests"]}


def _children_blobs(registry: GoRegistry, children: set[RepoDigest]) -> set[str]:
    """Config and layer digests of the given image manifests, read back from the registry."""
    out: set[str] = set()
    for repo, digest in children:
        m = json.loads(registry.get_manifest(repo, digest).content)
        out.add(m["config"]["digest"])
        out.update(layer["digest"] for layer in m["layers"])
    return out


def build_gc_scenario(registry: GoRegistry, workdir: Path) -> Scenario:
    """Fill `registry` (running, filesystem storage) with the scenario; see the module doc."""
    if registry.root is None:
        raise ValueError("the scenario rewrites startedat on disk: use filesystem storage")
    started = time.monotonic()
    lay = OCILayout(Path(workdir) / "layout")
    base = lay.layer(100, 96 << 10)
    la, lb, lc, le = (
        lay.layer(seed, size << 10) for seed, size in ((101, 8), (102, 12), (103, 12), (104, 8))
    )
    a = lay.image([base, la], seed=1)
    b = lay.image([base, lb], seed=2)
    c = lay.image([base, lc], seed=3)
    d = lay.image([base, la], seed=4)
    e = lay.image([le], seed=5)
    f = lay.image([base, la], seed=6)
    arches = ("amd64", "arm64", "ppc64le")
    platforms = [
        lay.image([base, lay.layer(110 + i, 6 << 10)], seed=10 + i, arch=arch)
        for i, arch in enumerate(arches)
    ]
    multi = lay.index(platforms)
    for name, target in (
        ("a", a),
        ("b", b),
        ("c", c),
        ("d", d),
        ("e", e),
        ("f", f),
        ("multi", multi),
    ):
        lay.tag(name, target)

    def push(name: str, repo: str, ref: str, fmt: images.Format = "oci", all: bool = False) -> str:
        return images.push(registry, lay.path, name, repo, ref, fmt=fmt, all=all)

    notes: list[str] = []
    tags: dict[RepoDigest, str] = {}
    tags["library/base", "latest"] = push("a", "library/base", "latest")
    b_digest = push("b", "team/app/api", "v1", fmt="v2s2")
    tags["team/app/api", "v1"] = push("c", "team/app/api", "v1", fmt="v2s2")  # the retag
    e_digest = push("e", "team/app/api", "tmp")
    tags["org/team", "stable"] = push("multi", "org/team", "stable", all=True)
    tags["org/team", "list"] = push("multi", "org/team", "list", fmt="v2s2", all=True)
    tags["org/team/r1", "1.0"] = push("d", "org/team/r1", "1.0")
    f_digest = push("f", "org/team/r1", "f")

    deleted = {("team/app/api", e_digest), ("org/team/r1", f_digest)}
    for repo, digest in deleted:
        registry.delete_manifest(repo, digest)

    orphan = registry.push_blob("team/app/api", b"never referenced\n" * 200)
    unlinked = registry.push_blob("org/team", b"pushed, then DELETEd over HTTP\n" * 100)
    registry.delete_blob("org/team", unlinked)

    referrers, referrer_blobs = _push_referrer(
        registry, "library/base", a, tags["library/base", "latest"], notes
    )

    stale, fresh = _make_uploads(registry)
    for repo, uuid in stale:
        age_upload(registry.root, repo, uuid)

    children = _index_children(registry, "org/team", "stable") | _index_children(
        registry, "org/team", "list"
    )
    children_blobs = _children_blobs(registry, children) - {base.digest}

    garbage = {orphan, unlinked, e_digest, *e.blobs, f_digest, f.config.digest}
    retag_lost = {b_digest, b.config.digest, lb.digest}
    untagged = {("team/app/api", b_digest)}
    go_untagged_manifests = untagged | children | {(repo, dg) for repo, dg, _ in referrers}
    notes.append(f"built in {time.monotonic() - started:.1f}s")
    return Scenario(
        root=registry.root,
        pulls=(
            ExpectedPull("library/base", "latest"),
            ExpectedPull("team/app/api", "v1"),
            ExpectedPull("org/team", "stable", all=True),
            ExpectedPull("org/team", "list", all=True),
            ExpectedPull("org/team/r1", "1.0"),
            *(ExpectedPull(repo, digest) for repo, digest, _ in referrers),
        ),
        tags=tags,
        repositories=frozenset(
            {"library/base", "team/app/api", "org/team", "org/team/r1", "scratch/pending"}
        ),
        garbage=frozenset(garbage),
        orphans=frozenset({orphan, unlinked}),
        deleted_manifests=frozenset(deleted),
        retag_lost=frozenset(retag_lost),
        untagged_manifests=frozenset(untagged),
        untagged_garbage=frozenset(garbage | retag_lost),
        go_untagged_manifests=frozenset(go_untagged_manifests),
        go_untagged_garbage=frozenset(garbage | retag_lost | referrer_blobs | children_blobs),
        multiarch_children=frozenset(children),
        referrers=tuple(referrers),
        stale_uploads=frozenset(stale),
        fresh_uploads=frozenset(fresh),
        notes=tuple(notes),
    )


def _push_referrer(
    registry: GoRegistry, repo: str, subject: Image, subject_digest: str, notes: list[str]
) -> tuple[list[tuple[str, str, str]], set[str]]:
    """Push an OCI artifact whose `subject` is `subject_digest`; returns it and its blobs.

    distribution 2.8 has no referrers API and ignores `subject`, but stores the
    manifest as sent. If a registry refuses it, the scenario goes on without one.
    """
    config = registry.push_blob(repo, images.EMPTY_JSON)
    signature = registry.push_blob(repo, b"signature over " + subject_digest.encode())
    manifest = images.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": config, "size": len(images.EMPTY_JSON)},
            "layers": [
                {
                    "mediaType": SIGNATURE_MEDIA_TYPE,
                    "digest": signature,
                    "size": len(b"signature over ") + len(subject_digest),
                }
            ],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": subject_digest,
                "size": subject.manifest.size,
            },
        }
    )
    try:
        digest = registry.put_manifest(repo, images.sha256(manifest), manifest, OCI_MANIFEST)
    except RegistryHTTPError as exc:
        notes.append(f"referrer refused: {exc}")
        return [], set()
    referrers_api = registry.request("GET", f"/v2/{repo}/referrers/{subject_digest}").status
    notes.append(f"referrer accepted; GET /v2/{repo}/referrers/<subject> answers {referrers_api}")
    return [(repo, digest, subject_digest)], {digest, config, signature}


def _make_uploads(registry: GoRegistry) -> tuple[set[RepoDigest], set[RepoDigest]]:
    """Partial uploads left unfinished: (stale, fresh) as (repo, uuid)."""

    def partial(repo: str, *chunks: bytes) -> RepoDigest:
        upload = registry.start_upload(repo)
        for chunk in chunks:
            upload = registry.patch_upload(upload, chunk)
        return repo, upload.uuid

    stale = {
        partial("team/app/api", b"s" * 3000),
        partial("team/app/api"),  # POST only: empty data, hash state at offset 0
        partial("scratch/pending", b"p" * 1500),
    }
    fresh = {
        partial("team/app/api", b"f" * 2048),
        partial("org/team", b"1" * 1024, b"2" * 1024),
    }
    return stale, fresh
