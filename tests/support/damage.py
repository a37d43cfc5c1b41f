"""Storage snapshots and the corpus of damaged and hostile registry trees.

Snapshots compare what a sweep leaves with what an intact reading keeps:
`snapshot(driver)` maps every file a registry can see (everything but
layergc's own `/layergc` folder) to the sha256 of its content.

The corpus (`CASES`) is a list of `Damage` builders. Each one damages a
freshly generated tree (layergc.gc.treegen) in one way and says what the
sweep must report and what an intact reading of the tree keeps, so that a
test can check that the run deletes nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.driver.faults import ERROR, FaultInjectingDriver
from layergc.driver.filesystem import FilesystemDriver
from layergc.errors import PathNotFound
from layergc.gc.treegen import TreeSummary
from layergc.storage import manifests as mt
from layergc.storage import paths
from tests.support.files import fs_path

Snapshot = dict[str, str]


def snapshot(driver: StorageDriver) -> Snapshot:
    """Every file outside /layergc, by path, with the sha256 of its content."""
    files: Snapshot = {}
    for top in driver.list("/"):
        if top == "/layergc":
            continue
        try:
            infos = list(driver.walk(top))
        except PathNotFound:
            continue
        for info in infos:
            if not info.is_dir:
                files[info.path] = hashlib.sha256(driver.get_content(info.path)).hexdigest()
    return files


def disk_snapshot(root: Path) -> Snapshot:
    """Like `snapshot`, read straight from disk: it also sees what no driver path
    can name (a folder `my app`). Symlinks are neither followed nor listed."""
    files: Snapshot = {}
    for folder, _dirs, names in os.walk(root):
        rel = "/" + os.path.relpath(folder, root) if folder != str(root) else ""
        if rel == "/layergc" or rel.startswith("/layergc/"):
            continue
        for name in names:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                with open(full, "rb") as f:
                    files[f"{rel}/{name}"] = hashlib.sha256(f.read()).hexdigest()
    return files


def quarantined_files(driver: StorageDriver) -> list[str]:
    """Files left in layergc's quarantine (by a run that did not finish)."""
    try:
        return [i.path for i in driver.walk(paths.QUARANTINE) if not i.is_dir]
    except PathNotFound:
        return []


def missing_or_changed(expected: Snapshot, actual: Snapshot) -> list[str]:
    """Paths of `expected` that `actual` lacks or holds with other content."""
    return sorted(p for p, h in expected.items() if actual.get(p) != h)


def diff(expected: Snapshot, actual: Snapshot) -> dict[str, list[str]]:
    """What differs between two snapshots, for assertion messages (empty if equal)."""
    out = {
        "missing": sorted(p for p in expected if p not in actual),
        "extra": sorted(p for p in actual if p not in expected),
        "changed": sorted(p for p in expected if p in actual and actual[p] != expected[p]),
    }
    return {k: v[:20] for k, v in out.items() if v}


# --- faults on chosen paths -------------------------------------------------------------


class PathFaults(FaultInjectingDriver):
    """Fails every call of `operations` on a path `match` accepts, and nothing else:
    an unreadable folder or file, as `chmod 000` would make one for a non-root
    process (tests run as root, whom permissions do not stop)."""

    def __init__(
        self, driver: StorageDriver, operations: set[str], match: Callable[[str], bool]
    ) -> None:
        super().__init__(driver, 1.0, operations=operations, kinds=(ERROR,))
        self.match = match

    def _fault(self, operation: str, path: str) -> str | None:
        if not self.match(path):
            return None
        return super()._fault(operation, path)


# --- the damaged-tree corpus ------------------------------------------------------------


@dataclass
class Tree:
    """A generated registry tree on disk, to be damaged, and a folder outside it."""

    root: Path
    outside: Path
    summary: TreeSummary

    @property
    def driver(self) -> FilesystemDriver:
        return FilesystemDriver(self.root)

    def file(self, path: str) -> Path:
        return fs_path(self.root, path)

    def write(self, path: str, content: bytes) -> None:
        self.file(path).parent.mkdir(parents=True, exist_ok=True)
        self.file(path).write_bytes(content)

    def tagged(self, n: int = 0) -> tuple[str, Digest]:
        found = [(r, d) for r, d, tagged in self.summary.manifests if tagged]
        return found[n]

    def orphans(self) -> list[Digest]:
        """Blobs no manifest references (an intact sweep deletes them)."""
        return sorted(self.summary.garbage, key=str)

    def blob_and_links(self, d: Digest) -> set[str]:
        """The folders that go with blob `d`: its own and every layer link to it."""
        links = {
            paths.layer_link_dir(repo, d)
            for repo in self.summary.repositories
            if self.file(paths.layer_link_dir(repo, d)).exists()
        }
        return {paths.blob_dir(d), *links}

    def stale_upload(self) -> tuple[str, str]:
        return self.summary.stale_uploads[0]

    def add_manifest(self, repo: str, content: bytes, tag: str) -> Digest:
        """Store `content` as a manifest blob, with a revision link and a tag."""
        d = Digest.of(content)
        self.write(paths.blob_data(d), content)
        self.write(paths.manifest_revision_link(repo, d), str(d).encode())
        self.write(paths.tag_current_link(repo, tag), str(d).encode())
        self.write(paths.tag_index_link(repo, tag, d), str(d).encode())
        return d

    def outside_file(self, name: str, content: bytes) -> Path:
        target = self.outside / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        return target

    def symlink(self, path: str, target: Path) -> None:
        link = self.file(path)
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        elif link.exists() or link.is_symlink():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)


@dataclass
class Applied:
    """What a damage did, and what the sweep must do about it."""

    report_path: str  # the report entry names this path (in its path or message)
    touched: set[str] = field(default_factory=set)  # path prefixes the damage wrote
    kept: set[str] = field(default_factory=set)  # prefixes that must survive, beyond the intact set
    survives: bool = True  # everything the damage wrote must survive
    rename: tuple[str, str] | None = None  # the intact set, with this prefix renamed
    oracle: Callable[[Tree], None] | None = None  # the clean tree whose sweep is expected
    faults: tuple[set[str], Callable[[str], bool]] | None = None  # an unreadable spot

    def is_touched(self, path: str) -> bool:
        return _under(path, self.touched)

    def is_kept(self, path: str) -> bool:
        return _under(path, self.kept)


def _under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


@dataclass(frozen=True)
class Damage:
    name: str
    kind: str  # the kind of the report entry; "warning" for a report warning
    apply: Callable[[Tree], Applied]
    blocks: bool = False  # blob deletion must be blocked for the run
    untagged: bool = False  # sweep with --delete-untagged
    exit_code: int = 1
    symlink: bool = False  # plants symlinks: filesystem only
    keeps_more: bool = False  # an unsure reading keeps more than the intact one


def _revision_link(tree: Tree, n: int = 0) -> str:
    repo, d = tree.tagged(n)
    return paths.manifest_revision_link(repo, d)


def _rewrite_revision_link(content: Callable[[Digest], bytes]) -> Callable[[Tree], Applied]:
    def apply(tree: Tree) -> Applied:
        repo, d = tree.tagged()
        link = paths.manifest_revision_link(repo, d)
        tree.write(link, content(d))
        return Applied(link, {link})

    return apply


def _tag_link(content: bytes) -> Callable[[Tree], Applied]:
    def apply(tree: Tree) -> Applied:
        repo, _ = tree.tagged()
        tags = sorted(p.name for p in tree.file(paths.tags_dir(repo)).iterdir())
        link = paths.tag_current_link(repo, tags[0])
        tree.write(link, content)
        return Applied(link, {link})

    return apply


def _missing_manifest_blob(tree: Tree) -> Applied:
    """The blob of a tagged manifest is gone. Expected: what a sweep keeps after
    that manifest was deleted cleanly (its blob, revision and tags removed)."""
    repo, d = tree.tagged()
    tags = {
        paths.tag_dir(repo, tag.name)
        for tag in tree.file(paths.tags_dir(repo)).iterdir()
        if tree.file(paths.tag_current_link(repo, tag.name)).read_bytes() == str(d).encode()
    }

    def drop(t: Tree) -> None:
        for folder in [paths.blob_dir(d), paths.manifest_revision_dir(repo, d), *tags]:
            shutil.rmtree(t.file(folder))

    shutil.rmtree(tree.file(paths.blob_dir(d)))
    link = paths.manifest_revision_link(repo, d)
    return Applied(link, {paths.manifest_revision_dir(repo, d), *tags}, oracle=drop)


def _tag_to_missing_manifest(tree: Tree) -> Applied:
    repo, _ = tree.tagged()
    ghost = Digest.of(b"a manifest that was never stored")
    link = paths.tag_current_link(repo, "ghost")
    tree.write(link, str(ghost).encode())
    return Applied(paths.tags_dir(repo), {paths.tag_dir(repo, "ghost")})


def _manifest(repo_tree: Tree, body: bytes, tag: str) -> Applied:
    repo, _ = repo_tree.tagged()
    d = repo_tree.add_manifest(repo, body, tag)
    touched = {paths.blob_dir(d), paths.manifest_revision_dir(repo, d), paths.tag_dir(repo, tag)}
    return Applied(paths.blob_data(d), touched)


def _invalid_json(tree: Tree) -> Applied:
    body = b'{"schemaVersion": 2, "mediaType": "' + mt.OCI_MANIFEST.encode() + b'", "layers": ['
    return _manifest(tree, body, "broken-json")


def _unknown_media_type(tree: Tree) -> Applied:
    a, b = tree.orphans()[:2]
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.example.future.manifest.v9+json",
        "payload": {"deep": [{"ref": {"digest": str(a), "size": 1}}]},
        "also": f"see {b}",
        "plain": str(b),
    }
    applied = _manifest(tree, json.dumps(doc).encode(), "future")
    applied.kept |= tree.blob_and_links(a) | tree.blob_and_links(b)
    return applied


def _oci_manifest(tree: Tree, name: str, kept: list[Digest], **fields: object) -> Applied:
    """A tagged OCI manifest whose config is kept[0], with `fields`; `kept` (blobs
    of the tree's orphans) must survive with their links."""
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": "application/json", "digest": str(kept[0]), "size": 1},
        **fields,
    }
    applied = _manifest(tree, json.dumps(doc).encode(), name)
    for digest in kept:
        applied.kept |= tree.blob_and_links(digest)
    return applied


def _layer(digest: Digest | str) -> dict[str, object]:
    return {"mediaType": "application/octet-stream", "digest": str(digest), "size": 1}


def _huge_manifest(tree: Tree) -> Applied:
    padding = {"padding": "x" * (20 << 20)}
    return _oci_manifest(tree, "huge", tree.orphans()[:1], layers=[], annotations=padding)


def _case_variant_manifest(tree: Tree) -> Applied:
    """Layers under "Layers": the Go registry reads them as the layers."""
    config, layer = tree.orphans()[:2]
    return _oci_manifest(tree, "case", [config, layer], Layers=[_layer(layer)])


def _unknown_algorithm_refs(tree: Tree) -> Applied:
    config, layer = tree.orphans()[:2]
    layers = [_layer("blake3:" + "ab" * 32), _layer(layer)]
    return _oci_manifest(tree, "blake3", [config, layer], layers=layers)


def _manifest_content_mismatch(tree: Tree) -> Applied:
    _repo, d = tree.tagged()
    other = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []}
    path = paths.blob_data(d)
    tree.write(path, json.dumps(other).encode())
    return Applied(path, {path})


def _startedat(content: bytes | None, *, age: timedelta | None = None) -> Callable[[Tree], Applied]:
    """Replace (or remove, for None) the startedat of a stale upload; with `age`,
    set every modification time in the folder that far back."""

    def apply(tree: Tree) -> Applied:
        repo, uuid = tree.stale_upload()
        folder = paths.upload_dir(repo, uuid)
        started = tree.file(paths.upload_started_at(repo, uuid))
        if content is None:
            started.unlink()
        else:
            started.write_bytes(content)
        applied = Applied(f"{repo}/{uuid}", {folder})
        if age is not None:
            when = (datetime.now(UTC) - age).timestamp()
            for p in [tree.file(folder), *tree.file(folder).rglob("*")]:
                os.utime(p, (when, when))
        else:
            applied.kept |= {
                "/" + str(p.relative_to(tree.root))
                for p in tree.file(folder).rglob("*")
                if p.is_file()
            }
        return applied

    return apply


def _rename_repository(new_leaf: str, *, unnameable: bool = False) -> Callable[[Tree], Applied]:
    """Move a repository to a name that breaks the grammar: its manifests are now
    the only ones keeping their blobs, so keeping them proves it is still read.
    Garbage linked from it still goes; its stale uploads stay (no upload purge
    through a name the grammar refuses). A name no driver path can hold (a
    space) makes its parent folder unreadable: the report names the parent."""

    def apply(tree: Tree) -> Applied:
        repo = next(r for r in tree.summary.repositories if "/" in r)
        parent = repo.rsplit("/", 1)[0]
        new = f"{parent}/{new_leaf}"
        old_dir, new_dir = paths.repository_dir(repo), paths.repository_dir(new)
        tree.file(new_dir).parent.mkdir(parents=True, exist_ok=True)
        tree.file(old_dir).rename(tree.file(new_dir))
        uploads = paths.uploads_dir(new)
        reported = paths.repository_dir(parent) if unnameable else new_dir
        return Applied(
            reported, {new_dir}, kept={uploads}, survives=unnameable, rename=(old_dir, new_dir)
        )

    return apply


def _unnameable_blob_folder(tree: Tree) -> Applied:
    """A folder no driver path can name among the blobs: that prefix cannot be
    listed, so its blobs (an orphan among them) are left alone this run."""
    prefix = paths.blob_dir(tree.orphans()[0]).rsplit("/", 1)[0]
    tree.write(f"{prefix}/not a digest/data", b"?")
    return Applied(prefix, {f"{prefix}/not a digest"}, kept={prefix})


def _unnameable_tag(tree: Tree) -> Applied:
    """A tag folder no driver path can name: the repository's tags cannot be read."""
    repo, d = tree.tagged()
    tree.write(f"{paths.tags_dir(repo)}/my tag/current/link", str(d).encode())
    return Applied(paths.tags_dir(repo), {f"{paths.tags_dir(repo)}/my tag"})


def _repository_at_root(tree: Tree) -> Applied:
    _repo, d = tree.tagged()
    link = f"{paths.REPOSITORIES}/_manifests/revisions/sha256/{d.hex}/link"
    tree.write(link, str(d).encode())
    return Applied(paths.REPOSITORIES, {f"{paths.REPOSITORIES}/_manifests"})


# Symlinks out of the root. Each target holds a plausible registry object, so a
# driver that followed the link would find something to read or delete there.


def _symlink_repository(tree: Tree) -> Applied:
    repo, _d = tree.tagged()
    target = tree.outside / "repo"
    shutil.copytree(tree.file(paths.repository_dir(repo)) / "_manifests", target / "_manifests")
    link_path = f"{paths.repository_dir(repo)}-evil"
    tree.symlink(link_path, target)
    return Applied(link_path, {link_path})


def _symlink_blob_folder(tree: Tree) -> Applied:
    content = b"secret outside the root"
    d = Digest.of(content)
    tree.outside_file("blob/data", content)
    folder = paths.blob_dir(d)
    tree.symlink(folder, tree.outside / "blob")
    return Applied(folder, {folder})


def _symlink_blob_data(tree: Tree) -> Applied:
    d = tree.orphans()[0]
    target = tree.outside_file("data", tree.file(paths.blob_data(d)).read_bytes())
    tree.symlink(paths.blob_data(d), target)
    return Applied(paths.blob_dir(d), {paths.blob_dir(d)}, kept=tree.blob_and_links(d))


def _symlink_link_file(tree: Tree) -> Applied:
    link = _revision_link(tree)
    target = tree.outside_file("link", tree.file(link).read_bytes())
    tree.symlink(link, target)
    return Applied(link, {link})


def _symlink_layer_link(tree: Tree) -> Applied:
    d = tree.orphans()[0]
    repo = tree.summary.repositories[0]
    folder = paths.layer_link_dir(repo, d)
    tree.outside_file("layer/link", str(d).encode())
    tree.symlink(folder, tree.outside / "layer")
    return Applied(folder, {folder}, kept=tree.blob_and_links(d))


def _symlink_upload(tree: Tree) -> Applied:
    repo, uuid = tree.stale_upload()
    folder = paths.upload_dir(repo, uuid)
    shutil.copytree(tree.file(folder), tree.outside / "upload")
    tree.symlink(folder, tree.outside / "upload")
    return Applied(folder, {folder})


# Unreadable spots: a fault driver fails every access there.


def _unreadable(operations: set[str], spot: Callable[[Tree], str]) -> Callable[[Tree], Applied]:
    def apply(tree: Tree) -> Applied:
        where = spot(tree)
        applied = Applied(where, kept={where})
        applied.faults = (operations, lambda p: p == where or p.startswith(where + "/"))
        return applied

    return apply


def _blob_prefix(tree: Tree) -> str:
    return str(paths.blob_dir(tree.orphans()[0])).rsplit("/", 1)[0]


def _upload_folder(tree: Tree) -> str:
    return paths.upload_dir(*tree.stale_upload())


CASES: list[Damage] = [
    # link files
    Damage("revision-link-empty", "corrupt-link", _rewrite_revision_link(lambda d: b"")),
    Damage(
        "revision-link-truncated",
        "corrupt-link",
        _rewrite_revision_link(lambda d: str(d).encode()[:30]),
    ),
    Damage(  # a planted file of megabytes is refused from its head
        "revision-link-huge",
        "corrupt-link",
        _rewrite_revision_link(lambda d: str(d).encode() * (8 << 20 >> 6)),
    ),
    Damage(
        "revision-link-bad-digest",
        "corrupt-link",
        _rewrite_revision_link(lambda d: b"sha256:" + b"Z" * 64),
    ),
    Damage(
        "revision-link-unknown-algorithm",
        "corrupt-link",
        _rewrite_revision_link(lambda d: b"md5:" + b"0" * 32),
    ),
    Damage(
        "revision-link-binary",
        "corrupt-link",
        _rewrite_revision_link(lambda d: b"\xff\xfe" + bytes(range(40))),
    ),
    Damage(
        "revision-link-newline",
        "noncanonical-link",
        _rewrite_revision_link(lambda d: str(d).encode() + b"\n"),
    ),
    Damage("tag-link-empty", "corrupt-link", _tag_link(b""), untagged=True, keeps_more=True),
    Damage(
        "tag-link-bad-digest",
        "corrupt-link",
        _tag_link(b"sha256:not-a-digest"),
        untagged=True,
        keeps_more=True,
    ),
    Damage("revision-link-missing-blob", "missing-manifest-blob", _missing_manifest_blob),
    Damage("tag-link-missing-manifest", "tag-without-manifest", _tag_to_missing_manifest),
    # manifests
    Damage("manifest-invalid-json", "unparseable-manifest", _invalid_json, blocks=True),
    Damage("manifest-unknown-media-type", "unknown-media-type", _unknown_media_type),
    Damage("manifest-huge", "unparseable-manifest", _huge_manifest, blocks=True),
    Damage("manifest-key-case", "unparseable-manifest", _case_variant_manifest, blocks=True),
    Damage("manifest-unknown-algorithm", "unknown-algorithm", _unknown_algorithm_refs),
    Damage(
        "manifest-content-mismatch",
        "unparseable-manifest",
        _manifest_content_mismatch,
        blocks=True,
    ),
    # startedat
    Damage("startedat-garbage", "warning", _startedat(b"yesterday-ish"), exit_code=0),
    Damage("startedat-empty", "warning", _startedat(b""), exit_code=0),
    Damage("startedat-huge", "warning", _startedat(b"2" * (8 << 20)), exit_code=0),
    Damage("startedat-non-utf8", "warning", _startedat(b"\xff\xfe2026\x00"), exit_code=0),
    Damage("startedat-no-zone", "warning", _startedat(b"2026-11-19T05:34:45"), exit_code=0),
    Damage("startedat-missing", "warning", _startedat(None), exit_code=0),
    Damage(
        "startedat-out-of-range",
        "warning",
        _startedat(b"9999-12-31T23:59:59-01:00"),
        exit_code=0,
    ),
    Damage(
        "startedat-garbage-old-files",
        "warning",
        _startedat(b"\x00garbage", age=timedelta(days=30)),
        exit_code=0,
    ),
    # repository names
    Damage("repository-uppercase", "invalid-repository-name", _rename_repository("App-UPPER")),
    Damage("repository-dots", "invalid-repository-name", _rename_repository("app..evil")),
    Damage("repository-dot-dot-dot", "invalid-repository-name", _rename_repository("...")),
    Damage(
        "repository-space",
        "unreadable",
        _rename_repository("my app", unnameable=True),
        blocks=True,
    ),
    Damage("blob-folder-unnameable", "blob-listing", _unnameable_blob_folder),
    Damage("tag-folder-unnameable", "unreadable", _unnameable_tag, blocks=True),
    Damage(
        "repository-without-name",
        "invalid-repository-name",
        _repository_at_root,
        blocks=True,
    ),
    # symlinks out of the root
    Damage("symlink-repository", "unreadable", _symlink_repository, blocks=True, symlink=True),
    Damage("symlink-blob-folder", "stat-failed", _symlink_blob_folder, symlink=True),
    Damage("symlink-blob-data", "stat-failed", _symlink_blob_data, symlink=True),
    Damage("symlink-link-file", "unreadable", _symlink_link_file, blocks=True, symlink=True),
    Damage("symlink-layer-link", "stat-failed", _symlink_layer_link, symlink=True),
    Damage("symlink-upload", "upload-unreadable", _symlink_upload, symlink=True),
    # unreadable folders
    Damage(
        "unreadable-repository",
        "unreadable",
        _unreadable({"list_entries", "list"}, lambda t: paths.repository_dir(t.tagged()[0])),
        blocks=True,
    ),
    Damage(
        "unreadable-revision-link",
        "unreadable",
        _unreadable({"get_content", "reader", "stat"}, _revision_link),
        blocks=True,
    ),
    Damage(
        "unreadable-blob-prefix",
        "blob-listing",
        _unreadable({"list_entries", "list"}, _blob_prefix),
    ),
    Damage(
        "unreadable-upload",
        "upload-unreadable",
        _unreadable({"get_content", "stat", "list", "list_entries", "walk"}, _upload_folder),
    ),
]
