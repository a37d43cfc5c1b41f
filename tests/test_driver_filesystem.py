"""FilesystemDriver: the conformance suite (with each way of resolving paths), and
what only a local filesystem promises: the Go layout on disk, atomic
put_content, streaming without buffering, resumes across processes, and no
access outside the root through symlinks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layergc.driver import filesystem
from layergc.driver.filesystem import FilesystemDriver
from layergc.errors import InvalidPath, PathNotFound, StorageDriverError
from tests.driver_conformance import (
    DriverConformance,
    FolderConformance,
    MiB,
    run_threads,
    stream_chunks,
)

# Both resolutions run the whole suite where the kernel has openat2(2); the
# portable one everywhere. The openat2 driver holds its root open (as a run's
# driver does), the portable one opens it per call (as a long-lived one does):
# each way of getting the root is exercised by the whole suite.
RESOLUTIONS = ["openat2", "portable"] if filesystem._OPENAT2 is not None else ["portable"]


def make_driver(root: Path, resolution: str) -> FilesystemDriver:
    held = resolution == "openat2" or filesystem._OPENAT2 is None
    return FilesystemDriver(root, openat2=resolution == "openat2", hold_root=held)


@pytest.fixture(params=RESOLUTIONS)
def resolution(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestFilesystemDriver(DriverConformance, FolderConformance):
    @pytest.fixture
    def driver(self, tmp_path: Path, resolution: str) -> Iterator[FilesystemDriver]:
        driver = make_driver(tmp_path / "root", resolution)
        yield driver
        driver.close()


@pytest.fixture
def fs(tmp_path: Path, resolution: str) -> Iterator[FilesystemDriver]:
    driver = make_driver(tmp_path / "root", resolution)
    yield driver
    driver.close()


# --- the root and the layout ----------------------------------------------------


def test_root_is_created_if_missing(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "root"
    driver = FilesystemDriver(root)
    assert root.is_dir()
    assert driver.list("/") == []


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises((StorageDriverError, FileExistsError)):
        FilesystemDriver(tmp_path / "file")


def test_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    driver = FilesystemDriver(tmp_path / "link")
    driver.put_content("/a/b", b"x")
    assert (tmp_path / "real" / "a" / "b").read_bytes() == b"x"


def test_files_sit_where_the_go_registry_puts_them(fs: FilesystemDriver) -> None:
    path = "/docker/registry/v2/repositories/team/app/_layers/sha256/" + "ab" * 32 + "/link"
    fs.put_content(path, b"sha256:" + b"0" * 64)
    assert Path(fs.root + path).read_bytes() == b"sha256:" + b"0" * 64
    # And what another program wrote there is read back.
    on_disk = Path(fs.root, "docker/registry/v2/blobs/sha256/ab/abc/data")
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(b"blob")
    assert fs.get_content("/docker/registry/v2/blobs/sha256/ab/abc/data") == b"blob"
    assert fs.list_entries("/docker/registry/v2/blobs/sha256/ab") == [("abc", True)]


def test_empty_folders_stay_as_in_go(fs: FilesystemDriver) -> None:
    """Go's driver leaves a folder when its last file goes; the registry relies on
    it (the empty revision folder of a deleted manifest)."""
    fs.put_content("/revisions/sha256/abc/link", b"x")
    fs.delete("/revisions/sha256/abc/link")
    assert fs.list("/revisions/sha256/abc") == []
    assert fs.stat("/revisions/sha256/abc").is_dir


def test_root_replaced_while_the_driver_lives(tmp_path: Path, resolution: str) -> None:
    """A driver that does not hold its root (the default) follows a new one."""
    driver = FilesystemDriver(tmp_path / "root", openat2=resolution == "openat2")
    driver.put_content("/old", b"old")
    (tmp_path / "root").rename(tmp_path / "moved")
    (tmp_path / "root").mkdir()
    driver.put_content("/new", b"new")
    assert (tmp_path / "root" / "new").read_bytes() == b"new"
    assert driver.list("/") == ["/new"]


def test_unnameable_entries_are_not_listed(fs: FilesystemDriver) -> None:
    fs.put_content("/dir/good", b"x")
    Path(fs.root, "dir", "bad name").write_bytes(b"y")
    Path(fs.root, "dir", "caf\u00e9").mkdir()
    # Never hidden from a listing (the garbage collector would miss what is
    # below): the folder cannot be listed. walk skips them.
    with pytest.raises(InvalidPath, match="no driver path can name"):
        fs.list("/dir")
    with pytest.raises(InvalidPath, match="no driver path can name"):
        fs.list_entries("/dir")
    with pytest.raises(InvalidPath, match="no driver path can name"):
        fs.list_names("/dir")
    assert [info.path for info in fs.walk("/")] == ["/dir", "/dir/good"]
    fs.delete("/dir")  # and they go with their folder
    assert not Path(fs.root, "dir").exists()


def test_own_temporary_files_are_not_listed(fs: FilesystemDriver) -> None:
    fs.put_content("/dir/good", b"x")
    Path(fs.root, "dir", ".good.0123456789abcdef~tmp").write_bytes(b"half")
    assert fs.list("/dir") == ["/dir/good"]
    assert fs.list_names("/dir") == ["good"]


# --- atomic put_content -------------------------------------------------------


def test_put_content_leaves_no_temporary_file(fs: FilesystemDriver) -> None:
    fs.put_content("/dir/file", b"one")
    fs.put_content("/dir/file", b"two")
    fs.put_content("/dir/sub/x", b"x")
    with pytest.raises(InvalidPath):
        fs.put_content("/dir/sub", b"a folder is there")
    assert sorted(os.listdir(Path(fs.root, "dir"))) == ["file", "sub"]
    assert os.listdir(Path(fs.root, "dir", "sub")) == ["x"]


def test_put_content_is_atomic_for_a_reader_on_disk(fs: FilesystemDriver) -> None:
    """No reader, through the driver or straight on disk, sees a partial value
    while large alternating contents are put."""
    values = [bytes([97 + i]) * (8 * MiB + i) for i in range(2)]
    fs.put_content("/blob/link", values[0])
    on_disk = Path(fs.root, "blob", "link")
    stop = threading.Event()
    reads = [0, 0, 0]

    def worker(index: int) -> None:
        if index == 0:
            try:
                round_ = 0
                while round_ < 20 or min(reads[1:]) < 20:
                    round_ += 1
                    fs.put_content("/blob/link", values[round_ % 2])
            finally:
                stop.set()
            return
        while not stop.is_set():
            got = fs.get_content("/blob/link") if index == 1 else on_disk.read_bytes()
            assert got in values, f"partial read: {len(got)} bytes"
            reads[index] += 1

    run_threads(worker, 3)


# --- streaming and resumes --------------------------------------------------------


def test_streams_without_holding_the_content(fs: FilesystemDriver) -> None:
    """Writing and reading 64 MiB in 1 MiB chunks allocates a few chunks at most."""
    total = 64 * MiB
    chunks = list(stream_chunks(4 * MiB))  # made before measuring
    tracemalloc.start()
    try:
        with fs.writer("/big") as writer:
            for _ in range(total // (4 * MiB)):
                for chunk in chunks:
                    writer.write(chunk)
            writer.commit()
        with fs.reader("/big") as stream:
            while stream.read(MiB):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fs.stat("/big").size == total
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_writer_resumes_across_processes(fs: FilesystemDriver, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from layergc.driver.filesystem import FilesystemDriver
        driver = FilesystemDriver({fs.root!r})
        writer = driver.writer("/uploads/u1/data", append=True)
        assert writer.size == 5, writer.size
        writer.write(b" world")
        writer.close()
        """
    )
    with fs.writer("/uploads/u1/data") as writer:
        writer.write(b"hello")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1])
    writer = fs.writer("/uploads/u1/data", append=True)
    assert writer.size == len(b"hello world")
    writer.write(b"!")
    writer.commit()
    writer.close()
    assert fs.get_content("/uploads/u1/data") == b"hello world!"


def test_a_read_capped_by_the_kernel_is_not_taken_for_the_end(
    fs: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux returns at most 2 GiB less a page from one read(2): a file larger
    than that must still be read whole. The cap is made small here."""
    data = os.urandom(1000)
    fs.put_content("/big", data)
    real_read = os.read
    monkeypatch.setattr(filesystem, "_MAX_READ", 100)
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 100)))
    assert fs.get_content("/big") == data
    assert fs.get_content("/big", 250) == data[:250]


def test_closed_writer_content_is_on_disk(fs: FilesystemDriver) -> None:
    writer = fs.writer("/data")
    writer.write(b"abc")
    writer.close()
    assert Path(fs.root, "data").read_bytes() == b"abc"


def test_cancel_after_the_folder_was_renamed(fs: FilesystemDriver) -> None:
    writer = fs.writer("/uploads/u/data")
    writer.write(b"x")
    fs.move("/uploads/u", "/uploads/v")
    writer.cancel()
    assert fs.list("/uploads/v") == []


# --- symlinks: never outside the root -------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the root with a secret file, its atime set far back so
    that any read of it would show (relatime updates an atime older than a day)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    secret = folder / "secret"
    secret.write_bytes(b"secret")
    os.utime(secret, (946684800, 946684800))  # 2000-01-01
    return folder


def assert_untouched(outside: Path) -> None:
    secret = outside / "secret"
    assert sorted(os.listdir(outside)) == ["secret"]
    assert secret.stat().st_atime == 946684800, "the outside file was read"
    assert secret.stat().st_mtime == 946684800
    assert secret.read_bytes() == b"secret"
    os.utime(secret, (946684800, 946684800))  # that read was ours: set the atime back


def every_call(driver: FilesystemDriver, path: str) -> list[Callable[[], object]]:
    """Every driver method aimed at `path`."""
    return [
        lambda: driver.get_content(path),
        lambda: driver.reader(path),
        lambda: driver.stat(path),
        lambda: driver.exists(path),
        lambda: driver.list(path),
        lambda: driver.list_entries(path),
        lambda: driver.list_names(path),
        lambda: driver.walk(path),
        lambda: driver.put_content(path, b"pwned"),
        lambda: driver.writer(path),
        lambda: driver.writer(path, append=True),
        lambda: driver.delete(path),
        lambda: driver.move(path, "/inside/moved"),
        lambda: driver.move("/inside/file", path),
    ]


def symlink_cases(root: Path, outside: Path) -> Iterator[tuple[str, str]]:
    """(kind, a driver path through a symlink out of the root) for every kind of escape."""
    (root / "inside").mkdir(parents=True, exist_ok=True)
    (root / "repos").mkdir(exist_ok=True)
    # The last component, a file.
    (root / "repos" / "file-link").symlink_to(outside / "secret")
    yield "last component to a file", "/repos/file-link"
    # The last component, a folder.
    (root / "repos" / "dir-link").symlink_to(outside)
    yield "last component to a folder", "/repos/dir-link"
    # In the middle of the path.
    yield "middle component", "/repos/dir-link/secret"
    yield "middle component, new file", "/repos/dir-link/new/file"
    # Relative, and at the top of the root.
    (root / "repos" / "rel-link").symlink_to(Path("..", "..", "outside"))
    yield "relative link", "/repos/rel-link/secret"
    (root / "docker").symlink_to(outside)
    yield "top-level folder", "/docker/secret"
    # Pointing back inside the root: refused all the same (no link is followed).
    (root / "repos" / "inner-link").symlink_to(root / "inside")
    yield "link to inside the root", "/repos/inner-link/file"


def test_symlink_escapes_are_refused(tmp_path: Path, outside: Path, resolution: str) -> None:
    root = tmp_path / "root"
    driver = make_driver(root, resolution)
    driver.put_content("/inside/file", b"inside")
    for kind, path in list(symlink_cases(root, outside)):
        for index, call in enumerate(every_call(driver, path)):
            with pytest.raises(InvalidPath, match="symbolic link"):
                call()
                pytest.fail(f"{kind}: call {index} on {path} did not raise")
        assert_untouched(outside)
        assert driver.get_content("/inside/file") == b"inside", kind


def test_walk_and_list_do_not_follow_symlinked_folders(
    tmp_path: Path, outside: Path, resolution: str
) -> None:
    root = tmp_path / "root"
    driver = make_driver(root, resolution)
    driver.put_content("/repos/real/file", b"x")
    (root / "repos" / "dir-link").symlink_to(outside)
    (root / "repos" / "file-link").symlink_to(outside / "secret")

    walked = {info.path: info for info in driver.walk("/")}
    assert sorted(walked) == [
        "/repos",
        "/repos/dir-link",
        "/repos/file-link",
        "/repos/real",
        "/repos/real/file",
    ]
    # Shown as folders (so that nothing goes unseen), never entered.
    assert walked["/repos/dir-link"].is_dir
    assert walked["/repos/file-link"].is_dir
    assert sorted(driver.list_entries("/repos")) == [
        ("dir-link", True),
        ("file-link", True),
        ("real", True),
    ]
    assert sorted(driver.list_names("/repos")) == ["dir-link", "file-link", "real"]
    assert sorted(driver.list("/repos")) == [
        "/repos/dir-link",
        "/repos/file-link",
        "/repos/real",
    ]
    assert_untouched(outside)


def test_deleting_a_folder_with_symlinks_keeps_their_targets(
    tmp_path: Path, outside: Path, resolution: str
) -> None:
    root = tmp_path / "root"
    driver = make_driver(root, resolution)
    driver.put_content("/repo/a/file", b"x")
    (root / "repo" / "a" / "dir-link").symlink_to(outside)
    (root / "repo" / "file-link").symlink_to(outside / "secret")
    driver.delete("/repo")
    assert not (root / "repo").exists()
    assert_untouched(outside)


def test_writes_below_a_symlinked_folder_create_nothing_outside(
    tmp_path: Path, outside: Path, resolution: str
) -> None:
    root = tmp_path / "root"
    driver = make_driver(root, resolution)
    (root / "repos").mkdir(parents=True)
    (root / "repos" / "link").symlink_to(outside)
    for path in ("/repos/link/new", "/repos/link/a/b/c"):
        with pytest.raises(InvalidPath):
            driver.put_content(path, b"x")
        with pytest.raises(InvalidPath):
            driver.writer(path)
    driver.put_content("/src", b"x")
    with pytest.raises(InvalidPath):
        driver.move("/src", "/repos/link/moved")
    assert driver.get_content("/src") == b"x"
    assert_untouched(outside)


def test_symlink_swapped_in_during_a_walk(tmp_path: Path, outside: Path, resolution: str) -> None:
    """A folder replaced by a symlink after the walk listed it is not entered."""
    root = tmp_path / "root"
    driver = make_driver(root, resolution)
    for i in range(3):
        driver.put_content(f"/w/d{i}/f", b"x")
    seen = []
    for info in driver.walk("/w"):
        seen.append(info.path)
        if info.path == "/w/d0":
            driver.delete("/w/d2")
            (root / "w" / "d2").symlink_to(outside)
    assert "/w/d2/secret" not in seen
    assert_untouched(outside)


def test_fifo_is_not_opened_for_reading(fs: FilesystemDriver) -> None:
    """A FIFO left in the tree neither hangs a read nor counts as a file."""
    os.mkfifo(Path(fs.root, "fifo"))
    with pytest.raises(InvalidPath):
        fs.get_content("/fifo")
    with pytest.raises(InvalidPath):
        fs.stat("/fifo")


def test_missing_path_under_a_file_is_not_found(fs: FilesystemDriver) -> None:
    fs.put_content("/file", b"x")
    with pytest.raises(PathNotFound):
        fs.get_content("/file/below")
    with pytest.raises(PathNotFound):
        fs.list("/file/below")


def test_openat2_required_but_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(filesystem, "_OPENAT2", None)
    with pytest.raises(StorageDriverError, match="openat2"):
        FilesystemDriver(tmp_path, openat2=True)
    assert FilesystemDriver(tmp_path)._open is filesystem._open_portable


def test_unexpected_os_errors_become_driver_errors(
    fs: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs.put_content("/dir/file", b"x")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    writer = fs.writer("/dir/upload")
    writer.write(b"data")
    monkeypatch.setattr(filesystem.os, "fsync", refuse)
    with pytest.raises(StorageDriverError, match=r"commit '/dir/upload'.*Permission denied"):
        writer.commit()
    writer.close()
    monkeypatch.setattr(filesystem.os, "scandir", refuse)
    with pytest.raises(StorageDriverError, match=r"list_entries '/dir'.*Permission denied"):
        fs.list("/dir")
    monkeypatch.setattr(filesystem.os, "unlink", refuse)
    with pytest.raises(StorageDriverError, match=r"delete '/dir/file'.*Permission denied"):
        fs.delete("/dir/file")


# --- the held root ----------------------------------------------------------------


def test_held_root_keeps_the_folder_it_opened(tmp_path: Path) -> None:
    """A run's driver sees one root throughout: renamed away and replaced midway,
    the old tree is what it goes on reading and writing."""
    root = tmp_path / "root"
    held = FilesystemDriver(root, hold_root=True)
    fresh = FilesystemDriver(root)
    held.put_content("/a/b", b"old")
    root.rename(tmp_path / "moved")
    root.mkdir()
    (root / "a").mkdir()
    (root / "a" / "b").write_bytes(b"new")
    assert held.get_content("/a/b") == b"old"
    assert fresh.get_content("/a/b") == b"new"
    held.put_content("/a/c", b"written")
    assert (tmp_path / "moved" / "a" / "c").read_bytes() == b"written"
    assert not (root / "a" / "c").exists()
    assert held.list("/") == ["/a"]


def test_close_releases_the_held_root(tmp_path: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    driver = FilesystemDriver(tmp_path / "root", hold_root=True)
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1
    driver.put_content("/x", b"1")
    driver.close()
    driver.close()  # idempotent
    assert len(os.listdir("/proc/self/fd")) == fds_before
    # After close it opens the root per call, as a driver that never held it.
    assert driver.get_content("/x") == b"1"
    assert len(os.listdir("/proc/self/fd")) == fds_before
