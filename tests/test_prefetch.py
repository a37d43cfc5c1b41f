"""The page-cache warmer of a one-shot sweep (layergc/gc/prefetch.py): what it
reads, in which order, when it stops, and the process it runs in."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from layergc import cli
from layergc.driver.filesystem import FilesystemDriver
from layergc.gc import pace, prefetch, split
from layergc.gc.treegen import generate
from layergc.storage import paths


class WaitingDriver(FilesystemDriver):
    """Every read and listing waits a little, as from a cold page cache; the
    files read are recorded, in order."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.read: list[str] = []
        self.lock = threading.Lock()

    def get_content(self, path: str, limit: int | None = None) -> bytes:
        time.sleep(0.0002)
        with self.lock:
            self.read.append(path)
        return super().get_content(path, limit)

    def list_names(self, path: str) -> list[str]:
        time.sleep(0.0002)
        return super().list_names(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A generated tree (39 repositories), never changed by these tests."""
    root = tmp_path_factory.mktemp("prefetch") / "root"
    summary = generate(FilesystemDriver(root), 2000, seed=3)
    return root, sorted(summary.repositories)


def links_of(root: Path, repository: str) -> set[str]:
    """The revision and tag links of `repository`, as driver paths."""
    driver = FilesystemDriver(root)
    folder = paths.manifest_revisions_dir(repository, "sha256")
    revisions = {f"{folder}/{h}/link" for h in driver.list_names(folder)}
    tags = driver.list_names(paths.tags_dir(repository))
    return revisions | {paths.tag_current_link(repository, t) for t in tags}


def test_waiting_reads_warm_every_link_a_mark_reads(tree: tuple[Path, list[str]]) -> None:
    root, repositories = tree
    driver = WaitingDriver(root)
    assert prefetch.warm(driver) == len(repositories)
    expected = set().union(*(links_of(root, r) for r in repositories))
    assert set(driver.read) == expected


def test_the_repositories_are_read_from_the_last(tree: tuple[Path, list[str]]) -> None:
    """The mark goes from the first: the two meet instead of reading the same files."""
    root, repositories = tree
    driver = WaitingDriver(root)
    prefetch.warm(driver)
    owner = {link: r for r in repositories for link in links_of(root, r)}
    assert owner[driver.read[0]] == repositories[-1]  # the first batch's probe
    last = repositories[-prefetch._BATCH :]
    first_batch = sum(len(links_of(root, r)) for r in last)
    assert {owner[p] for p in driver.read[:first_batch]} == set(last)


def test_reads_that_do_not_wait_stop_it_at_once(tree: tuple[Path, list[str]]) -> None:
    """As from a warm cache: the first window of reads is all CPU time."""
    root, _ = tree
    recorded: list[str] = []

    class Recording(FilesystemDriver):
        def get_content(self, path: str, limit: int | None = None) -> bytes:
            recorded.append(path)
            return super().get_content(path, limit)

    ticks = itertools.count()

    def clock() -> float:
        return next(ticks) * 0.001  # each clock read a tick: every item all CPU time

    assert prefetch.warm(Recording(root), meter=pace.Meter(0.005, (clock, clock))) == 0
    assert recorded == []  # it stopped in the walk of the folders


def test_it_stops_when_no_longer_wanted(tree: tuple[Path, list[str]]) -> None:
    root, repositories = tree
    driver = WaitingDriver(root)
    read = prefetch.warm(driver, lambda: not driver.read)  # until a first batch is read
    assert read == prefetch._BATCH < len(repositories)
    assert set(driver.read) == set().union(
        *(links_of(root, r) for r in repositories[-prefetch._BATCH :])
    )


def test_start_forks_only_for_a_filesystem_root_where_a_fork_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split, "can_fork", lambda: True)
    assert prefetch.start({"driver": "s3", "bucket": "b"}) is None
    assert prefetch.start({"driver": "filesystem", "rootdirectory": str(tmp_path / "no")}) is None
    monkeypatch.setattr(split, "can_fork", lambda: False)
    assert prefetch.start({"driver": "filesystem", "rootdirectory": str(tmp_path)}) is None


def started(root: Path, monkeypatch: pytest.MonkeyPatch) -> prefetch.Prefetch:
    monkeypatch.setattr(split, "can_fork", lambda: True)
    warming = prefetch.start({"driver": "filesystem", "rootdirectory": str(root)})
    assert warming is not None
    return warming


def test_the_process_does_its_work_and_ends_well(
    tree: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left alone, the forked process warms (or finds the cache warm) and exits 0."""
    warming = started(tree[0], monkeypatch)
    _, status = os.waitpid(warming.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    warming.stop()  # reaped already: nothing to do, no error


def test_stop_ends_and_reaps_the_process(
    tree: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    warming = started(tree[0], monkeypatch)
    pid = warming.pid
    warming.stop()
    warming.stop()  # a second stop does nothing
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left


@pytest.mark.parametrize("outcome", ["report", "failure"])
def test_a_cli_sweep_ends_its_warming_process(
    tree: tuple[Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    outcome: str,
) -> None:
    """Whatever way `layergc sweep` ends, the warming process is ended and reaped."""
    root, _ = tree
    monkeypatch.setattr(split, "can_fork", lambda: True)
    started: list[tuple[prefetch.Prefetch, int]] = []
    real_start = prefetch.start

    def recording_start(storage: dict[str, object]) -> prefetch.Prefetch | None:
        warming = real_start(storage)
        assert warming is not None
        started.append((warming, warming.pid))
        return warming

    monkeypatch.setattr(prefetch, "start", recording_start)
    if outcome == "failure":

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("the sweep broke")

        monkeypatch.setattr(cli, "_sweep_once", broken)
    argv = ["sweep", "--root", str(root), "--db", f"sqlite:///{tmp_path / 'i.db'}", "--dry-run"]
    result = CliRunner().invoke(cli.main, [*argv, "--json"])
    assert len(started) == 1
    warming, pid = started[0]
    assert warming.pid == 0  # stopped
    if outcome == "failure":
        assert isinstance(result.exception, RuntimeError)
    else:
        assert result.exit_code == 0, result.output
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
