"""Write a synthetic registry tree in the Go layout, for tests and benchmarks.

`generate(driver, blobs, seed)` writes exactly `blobs` blobs (each one's data
hashes to its digest) in repositories of about 50 blobs: image manifests
(Docker schema2 and OCI, some OCI ones without `mediaType`) of 3 to 8 layers
shared within the repository plus one base layer shared across repositories,
each with a config blob; 20% of the manifests untagged (some still in a tag's
`index/` history, as after a retag); an OCI index or Docker manifest list in
every tenth repository, tagged, over two untagged children; 10% orphan blobs
(half of them linked into a repository as a pushed but unreferenced layer);
and a few hundred uploads, some started long ago. Repository names nest, and
some repositories sit beside their own sub-repositories.

The returned TreeSummary says what a correct mark must find.

    python -m layergc.gc.treegen --root DIR --blobs N --seed S
"""

from __future__ import annotations

import json
import os
import random
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.storage import manifests as mt
from layergc.storage import paths

REPO_BLOBS = 50
UPLOAD_TIMEOUT = timedelta(hours=168)  # the sweep's default


@dataclass(slots=True)
class TreeSummary:
    blobs: int = 0
    repositories: list[str] = field(default_factory=list)
    # (repository, digest, tagged) for every manifest revision
    manifests: list[tuple[str, Digest, bool]] = field(default_factory=list)
    untagged: list[tuple[str, Digest]] = field(default_factory=list)
    # What a mark must leave unreferenced: without and with --delete-untagged.
    garbage: set[Digest] = field(default_factory=set)
    garbage_untagged: set[Digest] = field(default_factory=set)
    layer_links: int = 0
    uploads: list[tuple[str, str, datetime]] = field(default_factory=list)
    stale_uploads: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "blobs": self.blobs,
            "repositories": len(self.repositories),
            "manifests": len(self.manifests),
            "untagged": len(self.untagged),
            "garbage": len(self.garbage),
            "garbage_untagged": len(self.garbage_untagged),
            "layer_links": self.layer_links,
            "uploads": len(self.uploads),
            "stale_uploads": len(self.stale_uploads),
            "files": self.files,
        }


class _Sink:
    """Where files go: the driver, or straight to disk under a filesystem root
    (same layout, about ten times faster: no temporary file and rename each)."""

    def __init__(self, driver: StorageDriver, direct: bool) -> None:
        self.driver = driver
        root = getattr(driver, "root", None)
        self.root: str | None = root if direct and driver.name == "filesystem" else None
        self.made: set[str] = set()
        self.files = 0

    def put(self, path: str, content: bytes) -> None:
        self.files += 1
        if self.root is None:
            self.driver.put_content(path, content)
            return
        full = self.root + path
        folder = full.rpartition("/")[0]
        if folder not in self.made:
            os.makedirs(folder, exist_ok=True)
            self.made.add(folder)
        with open(full, "wb") as f:
            f.write(content)


class _Generator:
    def __init__(self, driver: StorageDriver, seed: int, now: datetime, direct: bool) -> None:
        self.rng = random.Random(seed)
        self.sink = _Sink(driver, direct)
        self.now = now
        self.summary = TreeSummary()
        self.kept: set[Digest] = set()  # referenced by some manifest revision
        self.kept_tagged: set[Digest] = set()  # referenced once untagged ones are gone
        self.all: list[Digest] = []

    # --- blobs and links -----------------------------------------------------------

    def blob(self, content: bytes) -> Digest:
        d = Digest.of(content)
        self.sink.put(paths.blob_data(d), content)
        self.all.append(d)
        return d

    def random_blob(self) -> Digest:
        # A counter inside the bytes keeps every blob distinct whatever the seed.
        data = len(self.all).to_bytes(8, "big") + self.rng.randbytes(self.rng.randint(8, 56))
        return self.blob(data)

    def link(self, path: str, d: Digest) -> None:
        self.sink.put(path, str(d).encode("ascii"))

    def layer_link(self, repo: str, d: Digest) -> None:
        self.link(paths.layer_link(repo, d), d)
        self.summary.layer_links += 1

    # --- manifests -----------------------------------------------------------------

    def image(self, repo: str, layers: list[Digest]) -> tuple[Digest, list[Digest]]:
        diff_ids = [f"sha256:{self.rng.randbytes(32).hex()}" for _ in layers]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            },
            separators=(",", ":"),
        ).encode()
        config_digest = self.blob(config)
        self.layer_link(repo, config_digest)
        style = self.rng.random()
        if style < 0.5:
            media, config_type, layer_type = (
                mt.DOCKER_SCHEMA2,
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        else:
            media, config_type, layer_type = (
                mt.OCI_MANIFEST,
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        doc: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": config_type, "size": len(config), "digest": str(config_digest)},
            "layers": [
                {"mediaType": layer_type, "size": 32, "digest": str(layer)} for layer in layers
            ],
        }
        if style > 0.85:
            del doc["mediaType"]  # OCI lets it out; the type is inferred from the fields
        content = json.dumps(doc, indent=3).encode()
        return self.blob(content), [config_digest, *layers]

    def index(self, children: list[Digest]) -> Digest:
        oci = self.rng.random() < 0.5
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX if oci else mt.DOCKER_MANIFEST_LIST,
            "manifests": [
                {
                    "mediaType": mt.OCI_MANIFEST if oci else mt.DOCKER_SCHEMA2,
                    "size": 500,
                    "digest": str(child),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for child, arch in zip(children, ("amd64", "arm64"), strict=False)
            ],
        }
        return self.blob(json.dumps(doc, indent=3).encode())

    def revision(self, repo: str, d: Digest, tag: str | None) -> None:
        self.link(paths.manifest_revision_link(repo, d), d)
        if tag is not None:
            self.link(paths.tag_current_link(repo, tag), d)
            self.link(paths.tag_index_link(repo, tag, d), d)
        self.summary.manifests.append((repo, d, tag is not None))
        if tag is None:
            self.summary.untagged.append((repo, d))

    # --- a repository ----------------------------------------------------------------

    def repository(self, repo: str, budget: int, base: list[Digest], with_index: bool) -> None:
        """About `budget` referenced blobs: layers, configs, manifests (and an index)."""
        self.summary.repositories.append(repo)
        with_index = with_index and budget >= 12
        images = max(1, (budget - int(with_index)) // 5)
        pool = [self.random_blob() for _ in range(max(1, budget - int(with_index) - 2 * images))]
        for layer in pool:
            self.layer_link(repo, layer)
        shared = self.rng.choice(base)
        self.layer_link(repo, shared)
        order = list(pool)
        self.rng.shuffle(order)
        built: list[tuple[Digest, list[Digest]]] = []
        for _ in range(images):
            count = min(len(pool), self.rng.randint(3, 8))
            layers = order[: max(1, count - 1)]
            order = order[len(layers) :] + layers  # every pool layer gets used
            built.append(self.image(repo, [shared, *layers]))
        children = built[:2] if with_index and images >= 2 else []
        tags = 0
        for i, (d, refs) in enumerate(built):
            tagged = i >= len(children) and self.rng.random() >= 0.2
            self.revision(repo, d, f"v{tags}" if tagged else None)
            tags += int(tagged)
            self.kept.update([d, *refs])
            if tagged:
                self.kept_tagged.update([d, *refs])
            elif tags and self.rng.random() < 0.5:
                # Retagged away: left in a tag's history, which keeps nothing.
                self.link(paths.tag_index_link(repo, f"v{tags - 1}", d), d)
        if children:
            top = self.index([d for d, _ in children])
            self.revision(repo, top, "multiarch")
            self.kept.add(top)
            self.kept_tagged.add(top)
            for d, refs in children:
                self.kept_tagged.update([d, *refs])

    def orphans(self, repos: list[str], count: int) -> None:
        for i in range(count):
            d = self.random_blob()
            if i % 2 == 0 and repos:
                self.layer_link(self.rng.choice(repos), d)

    def uploads(self, repos: list[str], count: int) -> None:
        for i in range(count):
            repo = self.rng.choice(repos)
            uuid = str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
            old = i % 2 == 0
            age = timedelta(days=10) if old else timedelta(minutes=self.rng.randint(1, 600))
            started = (self.now - age).replace(microsecond=0)
            self.sink.put(paths.upload_data(repo, uuid), self.rng.randbytes(64))
            stamp = started.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
            self.sink.put(paths.upload_started_at(repo, uuid), stamp)
            self.summary.uploads.append((repo, uuid, started))
            if self.now - started > UPLOAD_TIMEOUT:
                self.summary.stale_uploads.append((repo, uuid))


def repository_names(count: int) -> Iterator[str]:
    """Nested names; every 7th team is itself a repository beside its apps,
    and every 11th app has a sub-repository."""
    teams = max(1, count // 40)
    made = 0
    i = 0
    while made < count:
        team = f"team{i % teams:03d}"
        if i < teams and (i % teams) % 7 == 0:
            yield team
            made += 1
            if made >= count:
                return
        app = f"{team}/app-{i:05d}"
        yield app
        made += 1
        if i % 11 == 5 and made < count:
            yield f"{app}/api"
            made += 1
        i += 1


def generate(
    driver: StorageDriver,
    blobs: int,
    seed: int,
    *,
    repo_blobs: int = REPO_BLOBS,
    orphan_ratio: float = 0.1,
    uploads: int | None = None,
    now: datetime | None = None,
    direct: bool = True,
) -> TreeSummary:
    """Write a tree of exactly `blobs` blobs (at least 20) and say what a mark must find.

    `direct` lets a FilesystemDriver's tree be written with plain file writes."""
    if blobs < 20:
        raise ValueError("a generated tree has at least 20 blobs")
    gen = _Generator(driver, seed, now or datetime.now(UTC), direct)
    n_orphans = round(blobs * orphan_ratio)
    n_base = max(2, blobs // 1000)
    referenced = blobs - n_orphans - n_base
    per_repo = max(10, round(repo_blobs * (1 - orphan_ratio)))
    n_repos = max(1, referenced // per_repo)
    base = [gen.random_blob() for _ in range(n_base)]
    names = list(repository_names(n_repos))
    for i, name in enumerate(names):
        # Spread the remainder so the total comes out exact.
        budget = referenced // n_repos + (1 if i < referenced % n_repos else 0)
        gen.repository(name, budget, base, with_index=i % 10 == 3)
    gen.orphans(names, blobs - len(gen.all))
    gen.uploads(names, uploads if uploads is not None else min(300, max(4, blobs // 300)))
    summary = gen.summary
    summary.blobs = len(gen.all)
    summary.garbage = {d for d in gen.all if d not in gen.kept}
    summary.garbage_untagged = {d for d in gen.all if d not in gen.kept_tagged}
    summary.files = gen.sink.files
    return summary


@click.command()
@click.option("--root", required=True, type=click.Path(file_okay=False), help="storage root")
@click.option("--blobs", default=2000, show_default=True, help="number of blobs")
@click.option("--seed", default=1, show_default=True)
@click.option("--expected", type=click.Path(dir_okay=False), help="write the garbage digests here")
def main(root: str, blobs: int, seed: int, expected: str | None) -> None:
    """Write a registry tree in the Go layout under ROOT."""
    from layergc.driver.filesystem import FilesystemDriver

    summary = generate(FilesystemDriver(root), blobs, seed)
    if expected:
        with open(expected, "w") as f:
            f.writelines(f"{d}\n" for d in sorted(summary.garbage))
    click.echo(json.dumps(summary.as_dict()))


if __name__ == "__main__":
    main()
