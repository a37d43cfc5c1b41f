"""A mark's work shared with a forked child (layergc/gc/split.py, and its use in
gc/scan.py): every chunk runs once, a failed child's chunks are redone by the
parent, and a split mark finds exactly what a one-process mark finds, errors
included."""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from layergc.digest import Digest
from layergc.driver.filesystem import FilesystemDriver
from layergc.gc import scan, split
from layergc.gc.db import open_index
from layergc.gc.sweep import Sweeper, SweepOptions
from layergc.gc.treegen import generate
from layergc.storage import paths

PARENT = os.getpid()


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fork even if a test runner's thread is alive: the child's work in these tests
    takes no lock that such a thread could hold."""
    monkeypatch.setattr(split, "can_fork", lambda: True)


def run(count: int, size: int, fail_child: str | None = None) -> tuple[list[int], dict[int, int]]:
    """split.share over range(count): which items the parent did, and what the
    child delivered (item -> the child's pid)."""
    parent_did: list[int] = []
    child_chunks = 0  # counted in the child

    def mine(start: int, stop: int) -> None:
        assert os.getpid() == PARENT
        parent_did.extend(range(start, stop))
        time.sleep(0.001)  # work, so that the child gets to claim some

    def theirs(start: int, stop: int) -> list[tuple[int, int]]:
        assert os.getpid() != PARENT
        nonlocal child_chunks
        child_chunks += 1
        if fail_child == "raise" and child_chunks == 2:
            raise RuntimeError("boom")
        if fail_child == "die" and child_chunks == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return [(i, os.getpid()) for i in range(start, stop)]

    child: dict[int, int] = {}

    def deliver(start: int, items: list[tuple[int, int]]) -> None:
        assert os.getpid() == PARENT and items[0][0] == start
        child.update(items)

    split.share(count, size, mine, theirs, deliver)
    return parent_did, child


@pytest.mark.usefixtures("forking")
def test_every_chunk_runs_once_in_one_process_or_the_other() -> None:
    parent_did, child = run(2000, 7)
    assert sorted(parent_did + list(child)) == list(range(2000))
    assert child, "the child claimed no chunk"
    assert len(set(child.values())) == 1 and PARENT not in child.values()


@pytest.mark.usefixtures("forking")
@pytest.mark.parametrize("how", ["raise", "die"])
def test_a_failed_child_s_chunks_are_done_by_the_parent(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    parent_did, child = run(2000, 5, fail_child=how)
    # The child's first chunk arrived; the one it failed in, and the rest, were
    # done here, every item once.
    assert len(child) <= 5
    assert sorted(parent_did + list(child)) == list(range(2000))
    assert "forked child failed" in caplog.text


def test_without_a_fork_the_parent_does_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(split.ENV, "1")
    assert not split.can_fork()
    parent_did, child = run(100, 3)
    assert parent_did == list(range(100)) and child == {}


@pytest.mark.usefixtures("forking")
def test_first_runs_in_the_parent_before_its_chunks() -> None:
    order: list[str] = []
    split.share(
        10,
        1,
        lambda start, stop: order.append("chunk"),
        lambda start, stop: None,
        lambda start, result: None,
        first=lambda: order.append("first"),
    )
    assert order[0] == "first"


def test_chunk_size_keeps_the_queue_within_a_pipe() -> None:
    assert split.chunk_size(100, 16) == 16
    assert split.chunk_size(10**7, 16) * split._MAX_CHUNKS >= 10**7


# --- the split mark ------------------------------------------------------------------


@pytest.fixture
def generated(tmp_path: Path) -> tuple[FilesystemDriver, list[str]]:
    """A generated tree (39 repositories), and its repositories' names, sorted."""
    driver = FilesystemDriver(tmp_path / "root")
    summary = generate(driver, 2000, seed=5)
    return driver, sorted(summary.repositories)


@pytest.fixture
def tree(generated: tuple[FilesystemDriver, list[str]]) -> FilesystemDriver:
    """The generated tree with one corrupt tag link, one corrupt revision link and
    one unparseable manifest, spread so that either process may meet them."""
    driver, repos = generated
    tag_dir = Path(driver.root + paths.tags_dir(repos[3]))
    tag = next(tag_dir.iterdir())
    (tag / "current" / "link").write_bytes(b"sha256:nothex")
    revisions = Path(driver.root + paths.manifest_revisions_dir(repos[20], "sha256"))
    first, second = sorted(revisions.iterdir())[:2]
    (first / "link").write_bytes(b"garbage")
    Path(driver.root + paths.blob_data(Digest("sha256", second.name))).write_bytes(b"{")
    return driver


def count_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """os.fork counted from now on: the list's one item is the count."""
    forks = [0]
    real_fork = os.fork

    def counting_fork() -> int:
        forks[0] += 1
        return real_fork()

    monkeypatch.setattr(os, "fork", counting_fork)
    return forks


def mark_both(driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple:
    monkeypatch.setattr(scan, "_SPLIT_MIN_REPOSITORIES", 4)
    monkeypatch.setattr(scan, "_SPLIT_REPOSITORIES_CHUNK", 3)
    monkeypatch.setattr(split, "can_fork", lambda: False)
    alone = scan.mark(driver, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(split, "can_fork", lambda: True)
    forks = count_forks(monkeypatch)
    shared = scan.mark(driver, **kw)  # type: ignore[arg-type]
    return alone, shared, forks[0]


def same(a: scan.MarkResult, b: scan.MarkResult) -> None:
    assert a.repositories == b.repositories
    assert a.manifests == b.manifests
    assert a.untagged_to_delete == b.untagged_to_delete
    assert set(a.marked) == set(b.marked)
    assert list(a.unreferenced) == list(b.unreferenced)
    assert dict(a.layer_links) == dict(b.layer_links)
    assert sorted(a.uploads) == sorted(b.uploads)
    assert sorted(a.errors, key=repr) == sorted(b.errors, key=repr)
    assert a.blob_deletion_blocked == b.blob_deletion_blocked
    assert a.stats.tags == b.stats.tags


@pytest.mark.parametrize("delete_untagged", [False, True])
def test_a_split_mark_finds_what_a_one_process_mark_finds(
    tree: FilesystemDriver, monkeypatch: pytest.MonkeyPatch, delete_untagged: bool
) -> None:
    alone, shared, forks = mark_both(tree, monkeypatch, delete_untagged=delete_untagged)
    assert forks == 1
    same(alone, shared)
    assert alone.stats.manifests_parsed == shared.stats.manifests_parsed
    kinds = sorted(e.kind for e in shared.errors)
    assert kinds.count(scan.CORRUPT_LINK) == 2  # the tag and the revision, once each
    assert kinds.count(scan.UNPARSEABLE_MANIFEST) == 1
    assert shared.blob_deletion_blocked
    assert len(shared.unreferenced) > 0


def test_a_manifest_shared_by_both_processes_is_reported_once(
    tree: FilesystemDriver,
    generated: tuple[FilesystemDriver, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unparseable manifest that every repository holds is parsed by both
    processes, each for a repository of its own: reported once, as in one process."""
    bad = Digest.of(b"{")
    tree.put_content(paths.blob_data(bad), b"{")
    for repo in generated[1]:
        tree.put_content(paths.manifest_revision_link(repo, bad), str(bad).encode())
    alone, shared, forks = mark_both(tree, monkeypatch)
    assert forks == 1
    about = [e for e in shared.errors if e.path == paths.blob_data(bad)]
    assert [e.kind for e in about] == [scan.UNPARSEABLE_MANIFEST]
    assert len([e for e in alone.errors if e.path == paths.blob_data(bad)]) == 1


def test_a_split_mark_with_a_reference_cache(
    tree: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second mark reads every cached entry while the child scans."""
    cache = scan.DictReferenceCache()
    alone, shared, _ = mark_both(tree, monkeypatch, reference_cache=cache)
    same(alone, shared)
    again = scan.mark(tree, reference_cache=cache)
    same(alone, again)
    # Every manifest from the cache but the unparseable one (never cached, read again).
    assert again.stats.manifests_parsed == 0
    assert again.stats.manifests_cached == alone.stats.manifests_parsed > 300


# --- in a sweep ---------------------------------------------------------------------------


def sweep_report(root: Path, db: Path, *, dry_run: bool) -> dict[str, object]:
    driver = FilesystemDriver(root)
    with open_index(f"sqlite:///{db}") as index:
        report = Sweeper(driver, index, SweepOptions(dry_run=dry_run, grace=timedelta(0))).run()
    return report.as_json()


@pytest.mark.usefixtures("forking")
def test_a_sweep_with_a_split_mark_reports_and_deletes_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report of a dry run and of a real sweep, and what the real sweep deletes,
    match one-process sweeps of a copy."""
    generate(FilesystemDriver(tmp_path / "a"), 2000, seed=9)
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    monkeypatch.setattr(scan, "_SPLIT_MIN_REPOSITORIES", 4)
    forks = count_forks(monkeypatch)
    shared = [sweep_report(tmp_path / "a", tmp_path / "a.db", dry_run=d) for d in (True, False)]
    assert forks == [2]  # one a mark
    monkeypatch.setattr(split, "can_fork", lambda: False)
    alone = [sweep_report(tmp_path / "b", tmp_path / "b.db", dry_run=d) for d in (True, False)]

    def essentials(report: dict[str, object]) -> tuple[object, ...]:
        keys = ("status", "blobs", "uploads", "bytes_reclaimable", "bytes_reclaimed", "errors")
        return tuple(report[k] for k in keys)

    assert [essentials(r) for r in shared] == [essentials(r) for r in alone]
    assert len(shared[0]["blobs"]) == 200  # type: ignore[arg-type]
    assert {b["action"] for b in shared[1]["blobs"]} == {"deleted"}  # type: ignore[attr-defined, index]
    after_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    after_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert after_a == after_b


@pytest.mark.usefixtures("forking")
def test_when_the_system_refuses_the_fork_one_process_does_it_all(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    before = len(os.listdir("/proc/self/fd"))
    parent_did, child = run(300, 7)
    assert sorted(parent_did) == list(range(300)) and child == {}
    assert "cannot fork" in caplog.text
    assert len(os.listdir("/proc/self/fd")) == before  # the queue and the file closed
