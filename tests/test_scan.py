"""The mark (layergc.gc.scan) on hand-built trees, on both local drivers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.driver.filesystem import FilesystemDriver
from layergc.driver.inmemory import InMemoryDriver
from layergc.gc import scan, treegen, uploads
from layergc.storage import manifests as mt
from layergc.storage import paths
from layergc.storage.links import MAX_LINK_SIZE, write_link


@pytest.fixture(params=["inmemory", "filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageDriver]:
    d: StorageDriver = (
        InMemoryDriver() if request.param == "inmemory" else FilesystemDriver(tmp_path / "root")
    )
    yield d
    d.close()


class Tree:
    """Writes registry objects in the Go layout, as the registry would."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self.n = 0

    def blob(self, content: bytes) -> Digest:
        d = Digest.of(content)
        self.driver.put_content(paths.blob_data(d), content)
        return d

    def layer(self, repo: str | None = None) -> Digest:
        self.n += 1
        d = self.blob(f"layer {self.n}".encode())
        if repo:
            write_link(self.driver, paths.layer_link(repo, d), d)
        return d

    def manifest(self, repo: str, doc: dict[str, object], tag: str | None = None) -> Digest:
        d = self.blob(json.dumps(doc, indent=2).encode())
        write_link(self.driver, paths.manifest_revision_link(repo, d), d)
        if tag:
            self.tag(repo, tag, d)
        return d

    def tag(self, repo: str, tag: str, d: Digest) -> None:
        write_link(self.driver, paths.tag_current_link(repo, tag), d)
        write_link(self.driver, paths.tag_index_link(repo, tag, d), d)

    def image(
        self,
        repo: str,
        tag: str | None = None,
        layers: int = 2,
        media_type: str = mt.DOCKER_SCHEMA2,
        subject: Digest | None = None,
    ) -> tuple[Digest, list[Digest]]:
        self.n += 1
        config = self.blob(json.dumps({"n": self.n}).encode())
        write_link(self.driver, paths.layer_link(repo, config), config)
        layer_digests = [self.layer(repo) for _ in range(layers)]
        doc: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": "c", "size": 1, "digest": str(config)},
            "layers": [{"mediaType": "l", "size": 1, "digest": str(x)} for x in layer_digests],
        }
        if subject is not None:
            doc["subject"] = {"mediaType": media_type, "size": 1, "digest": str(subject)}
        return self.manifest(repo, doc, tag), [config, *layer_digests]

    def index(self, repo: str, children: list[Digest], tag: str | None = None) -> Digest:
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "size": 1, "digest": str(c)} for c in children
            ],
        }
        return self.manifest(repo, doc, tag)

    def upload(self, repo: str, uuid: str) -> None:
        self.driver.put_content(paths.upload_data(repo, uuid), b"partial")
        self.driver.put_content(paths.upload_started_at(repo, uuid), b"2026-11-19T05:34:45Z")

    def put(self, path: str, content: bytes) -> None:
        self.driver.put_content(path, content)


def kinds(result: scan.MarkResult) -> list[str]:
    return [e.kind for e in result.errors]


def entry(result: scan.MarkResult, repo: str, d: Digest) -> scan.ManifestEntry:
    return next(e for e in result.manifests if e.repository == repo and e.digest == d)


# --- repositories ------------------------------------------------------------------


def test_empty_storage(driver: StorageDriver) -> None:
    result = scan.mark(driver)
    assert result.repositories == [] and list(result.all_blobs) == [] and result.errors == []
    assert not result.blob_deletion_blocked


def test_repositories_nested_beside_sub_repositories_and_by_each_marker(
    driver: StorageDriver,
) -> None:
    t = Tree(driver)
    t.image("org/team", "v1")
    t.image("org/team/r1", "v1")
    t.image("a/b/c/d", "v1")
    t.layer("only/layers")
    t.image("only/manifests")
    driver.delete(paths.layers_dir("only/manifests"))
    t.upload("only/uploads", "u-1")
    t.put(f"{paths.REPOSITORIES}/not/a/repo/file", b"x")  # no marker folder anywhere
    result = scan.mark(driver)
    assert result.repositories == [
        "a/b/c/d",
        "only/layers",
        "only/manifests",
        "only/uploads",
        "org/team",
        "org/team/r1",
    ]
    assert result.uploads == [("only/uploads", "u-1")]
    assert result.errors == []


def test_repository_without_layers_folder_still_keeps_its_blobs(driver: StorageDriver) -> None:
    """Go 2.8 recognises a repository by `_layers` only and would delete these."""
    t = Tree(driver)
    d, refs = t.image("team/app", "v1")
    driver.delete(paths.layers_dir("team/app"))
    result = scan.mark(driver)
    assert {d, *refs} <= result.marked
    assert result.unreferenced == []


# --- what is marked ------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [mt.DOCKER_SCHEMA2, mt.OCI_MANIFEST])
def test_image_marks_manifest_config_and_layers(driver: StorageDriver, media_type: str) -> None:
    t = Tree(driver)
    d, refs = t.image("team/app", "v1", layers=3, media_type=media_type)
    orphan = t.layer("team/app")
    result = scan.mark(driver)
    assert set(result.marked) == {d, *refs}
    assert result.unreferenced == [orphan]
    assert set(result.all_blobs) == {d, *refs, orphan}
    assert result.layer_links[orphan] == ["team/app"]
    assert result.manifests == [scan.ManifestEntry("team/app", d, True, True)]


def test_schema1_marks_fs_layers(driver: StorageDriver) -> None:
    t = Tree(driver)
    layers = [t.layer("old/app") for _ in range(2)]
    doc = {
        "schemaVersion": 1,
        "mediaType": mt.DOCKER_SCHEMA1_SIGNED,
        "fsLayers": [{"blobSum": str(x)} for x in layers],
        "signatures": [],
    }
    d = t.manifest("old/app", doc, "latest")
    result = scan.mark(driver)
    assert set(result.marked) == {d, *layers}


def test_layer_shared_across_repositories(driver: StorageDriver) -> None:
    t = Tree(driver)
    shared = t.layer("a/one")
    write_link(driver, paths.layer_link("b/two", shared), shared)
    result = scan.mark(driver)
    assert sorted(result.layer_links[shared]) == ["a/one", "b/two"]
    assert result.unreferenced == [shared]


def test_index_marks_children_and_their_blobs(driver: StorageDriver) -> None:
    t = Tree(driver)
    amd, amd_refs = t.image("multi/app")
    arm, arm_refs = t.image("multi/app")
    top = t.index("multi/app", [amd, arm], "latest")
    result = scan.mark(driver, delete_untagged=True)
    assert {top, amd, arm, *amd_refs, *arm_refs} == set(result.marked)
    assert result.untagged_to_delete == []
    assert all(e.kept for e in result.manifests)
    assert entry(result, "multi/app", amd).tagged is False


def test_unknown_media_type_keeps_every_descriptor(driver: StorageDriver) -> None:
    t = Tree(driver)
    hidden = [t.layer("odd/app") for _ in range(3)]
    doc = {
        "mediaType": "application/vnd.example.future.manifest+json",
        "parts": [{"things": [{"digest": str(hidden[0])}]}, {"digest": str(hidden[1])}],
        "note": str(hidden[2]),
    }
    d = t.manifest("odd/app", doc, "v1")
    result = scan.mark(driver, delete_untagged=True)
    assert set(result.marked) == {d, *hidden}
    assert not result.blob_deletion_blocked


def test_an_unknown_type_s_child_without_a_revision_is_followed(driver: StorageDriver) -> None:
    """An index of unknown type names a child manifest whose revision link was deleted:
    the child is read from the blob store and its blobs kept, as under an OCI index;
    a layer it names is an ordinary blob (no error)."""
    t = Tree(driver)
    config, layer, plain = t.layer("odd/app"), t.layer("odd/app"), t.layer("odd/app")
    child = t.blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {"digest": str(config), "size": 1, "mediaType": "c"},
                "layers": [{"digest": str(layer), "size": 1, "mediaType": "l"}],
            }
        ).encode()
    )
    doc = {
        "mediaType": "application/vnd.example.index.v1+json",
        "manifests": [{"digest": str(child)}, {"digest": str(plain)}],
    }
    top = t.manifest("odd/app", doc, "v1")
    result = scan.mark(driver)
    assert set(result.marked) == {top, child, config, layer, plain}
    assert not result.unreferenced
    assert not result.blob_deletion_blocked


def test_unknown_algorithm_references_are_reported_not_blocking(driver: StorageDriver) -> None:
    t = Tree(driver)
    config = t.layer("algo/app")
    odd = "blake3:" + "ab" * 32
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"digest": str(config), "size": 1, "mediaType": "c"},
        "layers": [{"digest": odd, "size": 1, "mediaType": "l"}],
    }
    t.manifest("algo/app", doc, "v1")
    t.put(f"{paths.BLOBS}/blake3/ab/{'ab' * 32}/data", b"?")
    result = scan.mark(driver)
    assert sorted(kinds(result)) == [scan.INVALID_NAME, scan.UNKNOWN_ALGORITHM]
    assert odd in next(e.message for e in result.errors if e.kind == scan.UNKNOWN_ALGORITHM)
    assert not result.blob_deletion_blocked
    assert result.unreferenced == []  # the blake3 blob is never a candidate


# --- delete_untagged -------------------------------------------------------------------


def test_delete_untagged_keeps_tagged_and_offers_the_rest(driver: StorageDriver) -> None:
    t = Tree(driver)
    tagged, tagged_refs = t.image("team/app", "v2")
    old, old_refs = t.image("team/app")
    t.tag("team/app", "v1", old)
    t.tag("team/app", "v1", tagged)  # retag: `old` stays only in v1's index/ history
    result = scan.mark(driver, delete_untagged=True)
    assert result.untagged_to_delete == [("team/app", old)]
    assert set(result.unreferenced) == {old, *old_refs}
    assert entry(result, "team/app", old) == scan.ManifestEntry("team/app", old, False, False)
    # Without the option every revision is kept.
    plain = scan.mark(driver)
    assert plain.untagged_to_delete == [] and plain.unreferenced == []
    assert set(plain.marked) == {tagged, old, *tagged_refs, *old_refs}


def test_referrers_are_kept_through_their_subject(driver: StorageDriver) -> None:
    t = Tree(driver)
    base, _ = t.image("sig/app", "v1", media_type=mt.OCI_MANIFEST)
    signature, sig_refs = t.image("sig/app", media_type=mt.OCI_MANIFEST, subject=base)
    # A referrer of a referrer: kept too (fixpoint).
    attestation, _ = t.image("sig/app", media_type=mt.OCI_MANIFEST, subject=signature)
    orphan_base, _ = t.image("sig/app", media_type=mt.OCI_MANIFEST)
    orphan_sig, _ = t.image("sig/app", media_type=mt.OCI_MANIFEST, subject=orphan_base)
    result = scan.mark(driver, delete_untagged=True)
    kept = {e.digest for e in result.manifests if e.kept}
    assert kept == {base, signature, attestation}
    assert {signature, *sig_refs} <= result.marked
    assert sorted(result.untagged_to_delete) == sorted(
        [("sig/app", orphan_base), ("sig/app", orphan_sig)]
    )


def test_tag_history_alone_keeps_nothing(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, _ = t.image("hist/app")
    write_link(driver, paths.tag_index_link("hist/app", "v1", d), d)  # history, no current
    result = scan.mark(driver, delete_untagged=True)
    assert result.untagged_to_delete == [("hist/app", d)]


def test_tag_whose_target_lost_its_revision_still_keeps_it(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, refs = t.image("lost/app", "v1")
    driver.delete(paths.manifest_revision_link("lost/app", d))
    result = scan.mark(driver, delete_untagged=True)
    assert result.manifests == []  # no longer a revision
    assert {d, *refs} <= result.marked
    assert kinds(result) == [scan.TAG_WITHOUT_REVISION]


def test_a_link_read_empty_is_read_again(driver: StorageDriver) -> None:
    """The Go filesystem driver rewrites a tag link in place (truncate, write): a
    reader can see it empty for an instant. One more read gets what it holds."""
    t = Tree(driver)
    d, refs = t.image("moving/app", "v1")
    tag_link = paths.tag_current_link("moving/app", "v1")
    reads: list[str] = []
    real_get = driver.get_content

    def get_content(path: str, limit: int | None = None) -> bytes:
        reads.append(path)
        if path == tag_link and reads.count(path) == 1:
            return b""  # caught mid-rewrite
        return real_get(path, limit)

    driver.get_content = get_content  # type: ignore[method-assign]
    result = scan.mark(driver, delete_untagged=True)
    assert reads.count(tag_link) == 2
    assert kinds(result) == []
    assert {d, *refs} <= result.marked
    assert result.untagged_to_delete == []


def test_a_link_that_stays_empty_is_corrupt(driver: StorageDriver) -> None:
    t = Tree(driver)
    t.image("broken/app", "v1")
    driver.put_content(paths.tag_current_link("broken/app", "v1"), b"")
    result = scan.mark(driver, delete_untagged=True)
    assert kinds(result) == [scan.CORRUPT_LINK]
    assert result.untagged_to_delete == []  # what the tag holds is unknown: all kept


def test_children_in_other_repositories_count_by_digest(driver: StorageDriver) -> None:
    t = Tree(driver)
    child, child_refs = t.image("other/app")
    t.index("multi/app", [child], "latest")
    result = scan.mark(driver, delete_untagged=True)
    # The child is untagged in its own repository, but its blobs are still marked.
    assert result.untagged_to_delete == [("other/app", child)]
    assert {child, *child_refs} <= result.marked


def test_closure_of_deferred_manifests(driver: StorageDriver) -> None:
    t = Tree(driver)
    child, child_refs = t.image("c/app")
    top = t.index("c/app", [child])
    result = scan.mark(driver, delete_untagged=True)
    assert set(result.untagged_to_delete) == {("c/app", child), ("c/app", top)}
    assert result.closure([top]) == {top, child, *child_refs}


# --- damaged storage -------------------------------------------------------------------


def test_revision_folder_without_link_is_a_deleted_manifest(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, refs = t.image("del/app")
    driver.delete(paths.manifest_revision_link("del/app", d))
    t.put(paths.manifest_revision_dir("del/app", d) + "/other", b"")  # folder stays
    result = scan.mark(driver)
    assert result.manifests == [] and result.errors == []
    assert set(result.unreferenced) == {d, *refs}


def test_missing_manifest_blob_is_reported_and_not_a_root(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, refs = t.image("miss/app", "v1")
    driver.delete(paths.blob_dir(d))
    result = scan.mark(driver, delete_untagged=True)
    assert kinds(result) == [scan.MISSING_MANIFEST_BLOB]
    assert result.errors[0].repository == "miss/app"
    assert entry(result, "miss/app", d).kept is False
    assert result.untagged_to_delete == []
    assert set(result.unreferenced) == set(refs)
    assert not result.blob_deletion_blocked


@pytest.mark.parametrize(
    "content",
    [b"", b"sha256:0123", b"sha256:" + b"Z" * 64, b"md5:abc", b"\x00\xff", b"x" * 1000],
    ids=["empty", "truncated", "bad-hex", "bad-algorithm", "binary", "long"],
)
def test_corrupt_revision_link_keeps_its_folder_digest(
    driver: StorageDriver, content: bytes
) -> None:
    t = Tree(driver)
    d, refs = t.image("bad/app")
    t.put(paths.manifest_revision_link("bad/app", d), content)
    result = scan.mark(driver, delete_untagged=True)
    assert kinds(result) == [scan.CORRUPT_LINK]
    assert {d, *refs} <= result.marked
    assert entry(result, "bad/app", d).kept
    assert result.untagged_to_delete == []


def test_link_with_newline_is_read_and_reported(driver: StorageDriver) -> None:
    """Go's digest.Parse refuses the newline (ErrDigestInvalidLength); the mark
    keeps what the link names, and reports it (not blocking)."""
    t = Tree(driver)
    d, _ = t.image("nl/app", "v1")
    t.put(paths.manifest_revision_link("nl/app", d), f"{d}\n".encode())
    t.put(paths.tag_current_link("nl/app", "v1"), f" {d}\n".encode())
    result = scan.mark(driver, delete_untagged=True)
    assert kinds(result) == [scan.NONCANONICAL_LINK] * 2
    assert not result.blob_deletion_blocked
    assert entry(result, "nl/app", d) == scan.ManifestEntry("nl/app", d, True, True)


def test_revision_link_naming_another_digest_keeps_both(driver: StorageDriver) -> None:
    t = Tree(driver)
    a, a_refs = t.image("mm/app")
    b, b_refs = t.image("mm/app")
    driver.delete(paths.manifest_revision_dir("mm/app", b))
    write_link(driver, paths.manifest_revision_link("mm/app", a), b)
    result = scan.mark(driver, delete_untagged=True)
    assert kinds(result) == [scan.LINK_MISMATCH]
    assert {a, b, *a_refs, *b_refs} <= result.marked


def test_corrupt_tag_link_keeps_every_revision_of_its_repository(driver: StorageDriver) -> None:
    t = Tree(driver)
    t.image("tag/app", "v1")
    untagged, _ = t.image("tag/app")
    t.put(paths.tag_current_link("tag/app", "v2"), b"sha256:nope")
    result = scan.mark(driver, delete_untagged=True)
    assert kinds(result) == [scan.CORRUPT_LINK]
    assert result.untagged_to_delete == []
    assert entry(result, "tag/app", untagged).kept


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", json.dumps({"mediaType": mt.OCI_INDEX}).encode()],
    ids=["invalid-json", "not-an-object", "index-without-manifests"],
)
def test_unparseable_manifest_blocks_blob_deletion(driver: StorageDriver, content: bytes) -> None:
    t = Tree(driver)
    good, _ = t.image("fine/app", "v1")
    t.layer("fine/app")  # garbage that must not go this run
    bad = t.blob(content)
    write_link(driver, paths.manifest_revision_link("broken/app", bad), bad)
    result = scan.mark(driver, delete_untagged=True)
    assert result.blob_deletion_blocked
    (error,) = result.errors
    assert error.kind == scan.UNPARSEABLE_MANIFEST and error.blocking
    assert error.repository == "broken/app" and str(bad) in error.message
    assert error.path == paths.blob_data(bad)
    assert entry(result, "broken/app", bad).kept
    assert entry(result, "fine/app", good).kept  # the rest was still scanned


def test_huge_manifest_blocks_blob_deletion(driver: StorageDriver) -> None:
    t = Tree(driver)
    huge = t.blob(b'{"pad": "' + b"x" * (mt.MAX_MANIFEST_SIZE + 10) + b'"}')
    write_link(driver, paths.manifest_revision_link("huge/app", huge), huge)
    result = scan.mark(driver)
    assert result.blob_deletion_blocked
    assert kinds(result) == [scan.UNPARSEABLE_MANIFEST]
    assert "larger than" in result.errors[0].message


def test_planted_huge_files_are_read_no_further_than_their_limit(
    driver: StorageDriver,
) -> None:
    """A link, a manifest or a startedat of megabytes is judged from its head: no
    more of it is read than one byte past the most that is accepted."""
    t = Tree(driver)
    d, _ = t.image("big/app", "v1")
    link = paths.manifest_revision_link("big/app", d)
    driver.put_content(link, str(d).encode() * (1 << 15))
    huge = t.blob(b'{"pad": "' + b"x" * (mt.MAX_MANIFEST_SIZE + 10) + b'"}')
    write_link(driver, paths.manifest_revision_link("huge/app", huge), huge)
    started_at = paths.upload_started_at("big/app", "u1")
    driver.put_content(started_at, b"2" * (1 << 20))
    longest: dict[str, int] = {}
    real_get = driver.get_content

    def get_content(path: str, limit: int | None = None) -> bytes:
        data = real_get(path, limit)
        longest[path] = max(longest.get(path, 0), len(data))
        return data

    driver.get_content = get_content  # type: ignore[method-assign]
    result = scan.mark(driver)
    info = uploads.inspect_upload(driver, "big/app", "u1")
    assert sorted(kinds(result)) == [scan.CORRUPT_LINK, scan.UNPARSEABLE_MANIFEST]
    assert entry(result, "big/app", d).kept  # a corrupt link keeps its revision
    assert longest[link] == MAX_LINK_SIZE + 1
    assert longest[paths.blob_data(huge)] == mt.MAX_MANIFEST_SIZE + 1
    assert info.warning is not None and "startedat is unreadable" in info.warning
    assert longest[started_at] == uploads.MAX_STARTED_AT_SIZE + 1


def test_a_startedat_over_its_limit_is_refused_not_cut_to_size() -> None:
    driver, path = InMemoryDriver(), paths.upload_started_at("a/b", "u1")
    time_ = b"2026-11-19T05:34:45Z"
    limit = uploads.MAX_STARTED_AT_SIZE
    driver.put_content(path, time_.ljust(limit))
    assert uploads.read_started_at(driver, path) == datetime(2026, 11, 19, 5, 34, 45, tzinfo=UTC)
    for content in (time_.ljust(limit + 1), time_ + b" " * 300 + b"junk"):
        driver.put_content(path, content)
        with pytest.raises(ValueError, match="longer than any RFC 3339 time"):
            uploads.read_started_at(driver, path)


def test_manifest_blob_not_matching_its_digest_blocks(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, _ = t.image("flip/app", "v1")
    t.put(paths.blob_data(d), json.dumps({"mediaType": mt.OCI_INDEX, "manifests": []}).encode())
    result = scan.mark(driver)
    assert result.blob_deletion_blocked
    assert "does not match its digest" in result.errors[0].message


def test_hostile_repository_names_are_reported_and_kept_whole(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, refs = t.image("Upper/Case")  # untagged, in a name the grammar refuses
    t.upload("Upper/Case", "u-1")
    t.image("team/-dash")
    result = scan.mark(driver, delete_untagged=True)
    assert sorted(e.repository or "" for e in result.errors) == ["Upper/Case", "team/-dash"]
    assert set(kinds(result)) == {scan.INVALID_REPOSITORY_NAME}
    assert not result.blob_deletion_blocked
    assert {d, *refs} <= result.marked
    assert result.untagged_to_delete == []  # never offered from a name we refuse
    assert result.uploads == []


def test_invalid_blob_folder_names_are_reported_and_never_candidates(
    driver: StorageDriver,
) -> None:
    t = Tree(driver)
    orphan = t.layer()
    hex_ = orphan.hex
    t.put(f"{paths.BLOBS}/sha256/{hex_[:2]}/{hex_.upper()}/data", b"x")
    t.put(f"{paths.BLOBS}/sha256/{hex_[:2]}/{hex_[:60]}/data", b"x")
    t.put(f"{paths.BLOBS}/sha256/zz/{'0' * 64}/data", b"x")
    t.put(f"{paths.BLOBS}/sha256/00/{'1' * 64}/data", b"x")  # wrong prefix
    t.put(f"{paths.BLOBS}/md5/00/{'0' * 32}/data", b"x")
    result = scan.mark(driver)
    assert list(result.all_blobs) == [orphan]
    assert result.unreferenced == [orphan]
    assert kinds(result) == [scan.INVALID_NAME] * 5
    assert not result.blob_deletion_blocked


def test_invalid_revision_folder_blocks(driver: StorageDriver) -> None:
    t = Tree(driver)
    t.put(f"{paths.manifest_revisions_dir('rev/app', 'sha256')}/NOTHEX/link", b"sha256:x")
    result = scan.mark(driver)
    assert kinds(result) == [scan.INVALID_NAME]
    assert result.blob_deletion_blocked


def test_symlinked_repository_is_unreadable_and_blocks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside_driver = FilesystemDriver(outside)
    Tree(outside_driver).image("team/app", "v1")
    driver = FilesystemDriver(tmp_path / "root")
    Tree(driver).layer("real/app")
    os.symlink(
        outside / "docker/registry/v2/repositories/team",
        tmp_path / "root/docker/registry/v2/repositories/team",
    )
    result = scan.mark(driver)
    assert result.blob_deletion_blocked
    assert any(e.kind == scan.UNREADABLE and "repositories/team" in e.path for e in result.errors)
    assert result.repositories == ["real/app"]


# --- the cache, progress, workers ----------------------------------------------------


def test_reference_cache_spares_parsing(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, _ = t.image("c/app", "v1")
    cache = scan.DictReferenceCache()
    first = scan.mark(driver, reference_cache=cache)
    assert (first.stats.manifests_parsed, first.stats.manifests_cached) == (1, 0)
    second = scan.mark(driver, reference_cache=cache)
    assert (second.stats.manifests_parsed, second.stats.manifests_cached) == (0, 1)
    assert set(second.marked) == set(first.marked)
    # A cached manifest whose blob went away is still noticed.
    driver.delete(paths.blob_dir(d))
    third = scan.mark(driver, reference_cache=cache)
    assert kinds(third) == [scan.MISSING_MANIFEST_BLOB]


def test_failing_reference_cache_costs_time_not_safety(driver: StorageDriver) -> None:
    class Broken:
        def get_many(self, digests: object, intern: object = None) -> dict[Digest, mt.ManifestRefs]:
            raise RuntimeError("database is down")

        def put_many(self, refs: object) -> None:
            raise RuntimeError("database is down")

    t = Tree(driver)
    d, refs = t.image("c/app", "v1")
    result = scan.mark(driver, reference_cache=Broken())
    assert set(result.marked) == {d, *refs}
    assert kinds(result) == [scan.REFERENCE_CACHE] * 2
    assert not result.blob_deletion_blocked


def test_started_at_is_taken_before_listing(driver: StorageDriver) -> None:
    before = datetime.now(UTC)
    result = scan.mark(driver)
    assert before <= result.started_at <= datetime.now(UTC)
    assert result.started_at.tzinfo is not None


# --- generated trees -----------------------------------------------------------------


def test_treegen_round_trip(driver: StorageDriver) -> None:
    summary = treegen.generate(driver, 1200, seed=3)
    assert summary.blobs == 1200
    seen: list[tuple[str, int, int | None]] = []
    result = scan.mark(driver, progress=lambda *a: seen.append(a))
    assert result.errors == []
    assert set(result.unreferenced) == summary.garbage
    assert len(result.all_blobs) == 1200
    assert sorted(result.repositories) == sorted(summary.repositories)
    assert len(result.manifests) == len(summary.manifests)
    assert result.stats.layer_links == summary.layer_links
    # Links are kept for what the mark does not keep (the sweep's candidates) only.
    assert result.layer_links and set(result.layer_links) <= set(result.unreferenced)
    assert not set(result.layer_links) & set(result.marked)
    assert sorted(result.uploads) == sorted((r, u) for r, u, _ in summary.uploads)
    assert {p for p, *_ in seen} >= {"blobs", "repositories", "manifests"}
    untagged = scan.mark(driver, delete_untagged=True, workers=4)
    assert set(untagged.unreferenced) == summary.garbage_untagged
    offered = set(untagged.untagged_to_delete)
    assert offered <= set(summary.untagged)
    assert {d for _, d in offered} <= summary.garbage_untagged


def test_views_behave_like_their_builtin_types(driver: StorageDriver) -> None:
    t = Tree(driver)
    d, refs = t.image("v/app", "v1")
    orphan = t.layer("v/app")
    result = scan.mark(driver)
    assert result.marked == {d, *refs} and len(result.marked) == 1 + len(refs)
    assert d in result.marked and orphan not in result.marked and "x" not in result.marked
    assert result.marked - {d} == set(refs)
    assert sorted(result.all_blobs) == sorted([d, orphan, *refs])
    assert result.all_blobs[0] in result.all_blobs[:]
    assert result.layer_links.get(orphan) == ["v/app"]
    assert result.layer_links.get(d) is None and orphan in result.layer_links
    with pytest.raises(KeyError):
        result.layer_links[d]


@pytest.mark.parametrize("delete_untagged", [False, True])
def test_storage_faults_never_unmark_a_kept_blob(delete_untagged: bool) -> None:
    """Under read errors and cut listings, a mark either blocks blob deletion or
    offers only blobs that a clean reading finds unreferenced too."""
    from layergc.driver.faults import READ_OPERATIONS, FaultInjectingDriver

    inner = InMemoryDriver()
    treegen.generate(inner, 600, seed=5, direct=False)
    clean = scan.mark(inner, delete_untagged=delete_untagged)
    assert not clean.blob_deletion_blocked
    garbage = set(clean.unreferenced)
    offered = set(clean.untagged_to_delete)
    blocked = 0
    for seed in range(12):
        faulty = FaultInjectingDriver(inner, 0.01, seed=seed, operations=READ_OPERATIONS, stall=0)
        result = scan.mark(faulty, delete_untagged=delete_untagged)
        assert faulty.faults > 0
        assert result.errors  # every fault is in the report
        assert set(result.untagged_to_delete) <= offered
        if result.blob_deletion_blocked:
            blocked += 1
            continue
        assert set(result.unreferenced) <= garbage
    assert blocked  # the faults hit something that matters at least once


def test_mark_leaves_the_garbage_collector_as_it_found_it(driver: StorageDriver) -> None:
    import gc

    Tree(driver).image("gc/app", "v1")
    assert gc.isenabled()
    scan.mark(driver)
    assert gc.isenabled()
    gc.disable()
    try:
        scan.mark(driver)
        assert not gc.isenabled()
    finally:
        gc.enable()
