"""The storage driver conformance suite, written once and run against every driver.

It covers what distribution's registry/storage/driver/testsuites/testsuites.go
covers, and the parts of the contract layergc adds (list_entries, walk, atomic
put_content). A driver's test module subclasses `DriverConformance` and provides
a `driver` fixture giving an empty driver for each test:

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        def driver(self): ...

Nothing here may assume a local filesystem: S3 runs the same tests. Drivers with
real folders (in-memory, filesystem) also subclass `FolderConformance`.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from layergc.driver.base import FileInfo, StorageDriver
from layergc.errors import InvalidOffset, InvalidPath, PathNotFound, StorageDriverError

MiB = 1 << 20

VALID_PATHS = [
    "/a",
    "/2",
    "/aa",
    "/a.a",
    "/0-9/abcdefg",
    "/abcdefg/z.75",
    "/abc/1.2.3.4.5-6_zyx/123.z/4",
    "/docker/docker-registry",
    "/123.abc",
    "/abc./abc",
    "/.abc",
    "/a--b",
    "/a-.b",
    "/_.abc",
    "/Docker/docker-registry",
    "/Abc/Cba",
    "/a/...",
    "/" + "x" * 200,
]

INVALID_PATHS = [
    "",
    "/",
    "abc",
    "123.abc",
    "//bcd",
    "/abc_123/",
    "/a/../b",
    "/..",
    "/a/..",
    "/.",
    "/a/./b",
    "/a//b",
    "/a b",
    "/a\x00b",
    "/a\\b",
    "/a:b",
    "/caf\u00e9",
    "/a/b~tmp",
]


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def stream_chunks(total: int, chunk: int = MiB, seed: int = 0) -> Iterator[bytes]:
    """`total` bytes of distinct chunks, made without holding them all at once."""
    block = content(chunk, seed)
    index = 0
    while total > 0:
        piece = (index.to_bytes(8, "big") + block[8:])[: min(chunk, total)]
        yield piece
        total -= len(piece)
        index += 1


def read_all(driver: StorageDriver, path: str, offset: int = 0) -> bytes:
    with driver.reader(path, offset) as stream:
        return stream.read()


def run_threads(target: Callable[[int], None], count: int) -> None:
    """Run target(0..count-1) in threads and re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


class DriverConformance:
    """The contract every StorageDriver must meet."""

    # --- paths -----------------------------------------------------------------

    def test_root_exists_and_is_empty(self, driver: StorageDriver) -> None:
        assert driver.list("/") == []
        assert driver.list_entries("/") == []
        assert list(driver.walk("/")) == []
        assert driver.stat("/").is_dir

    @pytest.mark.parametrize("path", VALID_PATHS)
    def test_valid_paths(self, driver: StorageDriver, path: str) -> None:
        data = content(64)
        driver.put_content(path, data)
        assert driver.get_content(path) == data
        top = "/" + path.split("/")[1]
        assert driver.list("/") == [top]
        driver.delete(top)
        assert driver.list("/") == []

    @pytest.mark.parametrize("path", INVALID_PATHS)
    def test_invalid_paths_are_refused_before_anything_happens(
        self, driver: StorageDriver, path: str
    ) -> None:
        driver.put_content("/keep/file", b"keep")
        calls: list[Callable[[], object]] = [
            lambda: driver.put_content(path, b"x"),
            lambda: driver.get_content(path),
            lambda: driver.reader(path),
            lambda: driver.writer(path),
            lambda: driver.writer(path, append=True),
            lambda: driver.delete(path),
            lambda: driver.move(path, "/keep/file"),
            lambda: driver.move("/keep/file", path),
        ]
        if path != "/":  # the root is the one valid folder path for these
            calls += [
                lambda: driver.stat(path),
                lambda: driver.list(path),
                lambda: driver.list_entries(path),
                lambda: driver.walk(path),
                lambda: driver.exists(path),
            ]
        for call in calls:
            with pytest.raises(InvalidPath):
                call()
        assert driver.list("/") == ["/keep"]
        assert driver.list("/keep") == ["/keep/file"]
        assert driver.get_content("/keep/file") == b"keep"

    def test_non_string_path_is_invalid(self, driver: StorageDriver) -> None:
        with pytest.raises(InvalidPath):
            driver.get_content(b"/a")  # type: ignore[arg-type]

    # --- put_content / get_content -----------------------------------------------

    @pytest.mark.parametrize(
        "data",
        [
            b"a",
            "\u00df".encode(),  # TestWriteRead2: UTF-8
            content(32, 3),
            content(MiB + 7, 4),
            bytes([0x80, 0x80, 0x80, 0x80]) + bytes(range(256)) + b"\xff\xfe\x00",
            b"",
        ],
        ids=["one-byte", "utf8", "random-32", "random-1MiB", "non-utf8", "empty"],
    )
    def test_write_read(self, driver: StorageDriver, data: bytes) -> None:
        driver.put_content("/dir/file", data)
        assert driver.get_content("/dir/file") == data
        assert read_all(driver, "/dir/file") == data
        assert driver.stat("/dir/file").size == len(data)

    def test_get_content_stops_at_its_limit(self, driver: StorageDriver) -> None:
        data = content(MiB + 7, 5)
        driver.put_content("/limited", data)
        for limit in (0, 1, 257, 65536, 65537, MiB + 6):
            assert driver.get_content("/limited", limit) == data[:limit]
        for limit in (MiB + 7, MiB + 8, 8 * MiB):
            assert driver.get_content("/limited", limit) == data
        driver.put_content("/empty", b"")
        assert driver.get_content("/empty", 10) == b""

    def test_put_content_truncates(self, driver: StorageDriver) -> None:
        driver.put_content("/file", content(MiB))
        driver.put_content("/file", b"a")
        assert driver.get_content("/file") == b"a"
        assert driver.stat("/file").size == 1

    def test_put_content_multiple_times(self, driver: StorageDriver) -> None:
        for round_ in range(5):
            data = content(4096 >> round_, round_)
            driver.put_content("/dir/file", data)
            assert driver.get_content("/dir/file") == data
        assert driver.list("/dir") == ["/dir/file"]

    def test_put_content_accepts_bytes_like(self, driver: StorageDriver) -> None:
        driver.put_content("/a", bytearray(b"abc"))
        driver.put_content("/b", memoryview(b"defg")[1:])
        assert driver.get_content("/a") == b"abc"
        assert driver.get_content("/b") == b"efg"

    def test_read_nonexistent(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/other", b"x")
        for path in ("/missing", "/dir/missing", "/missing/deeper", "/dir/other/below"):
            with pytest.raises(PathNotFound):
                driver.get_content(path)
            with pytest.raises(PathNotFound):
                driver.reader(path)
            with pytest.raises(PathNotFound):
                driver.reader(path, 64)
            with pytest.raises(PathNotFound):
                driver.stat(path)
            assert not driver.exists(path)

    def test_reading_a_folder_is_path_not_found(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/sub/file", b"x")
        for path in ("/dir", "/dir/sub"):
            with pytest.raises(PathNotFound):
                driver.get_content(path)
            with pytest.raises(PathNotFound):
                driver.reader(path)

    def test_path_not_found_is_a_file_not_found_error(self, driver: StorageDriver) -> None:
        with pytest.raises(FileNotFoundError) as caught:
            driver.get_content("/nope")
        assert isinstance(caught.value, StorageDriverError)
        assert caught.value.path == "/nope"  # type: ignore[attr-defined]

    # --- streams -----------------------------------------------------------------

    @pytest.mark.parametrize("size", [1, 32, MiB + 3])
    def test_write_read_streams(self, driver: StorageDriver, size: int) -> None:
        data = content(size, size)
        writer = driver.writer("/stream/file")
        assert writer.write(data) == len(data)
        assert writer.size == len(data)
        writer.commit()
        writer.close()
        assert writer.size == len(data)
        assert read_all(driver, "/stream/file") == data
        assert driver.get_content("/stream/file") == data

    def test_write_read_streams_non_utf8(self, driver: StorageDriver) -> None:
        data = bytes([0x80, 0x80, 0x80, 0x80]) * 100
        with driver.writer("/file") as writer:
            writer.write(data[:7])
            writer.write(data[7:])
            writer.commit()
        assert read_all(driver, "/file") == data

    def test_empty_stream(self, driver: StorageDriver) -> None:
        with driver.writer("/empty") as writer:
            writer.commit()
        assert writer.size == 0
        assert driver.get_content("/empty") == b""
        assert driver.stat("/empty").size == 0
        assert read_all(driver, "/empty") == b""

    def test_write_read_large_stream(self, driver: StorageDriver) -> None:
        """Over 100 MiB in 1 MiB chunks, compared by sha256, never held whole."""
        total = 100 * MiB + 12345
        written = hashlib.sha256()
        with driver.writer("/large/blob") as writer:
            for chunk in stream_chunks(total):
                writer.write(chunk)
                written.update(chunk)
            assert writer.size == total
            writer.commit()
        assert driver.stat("/large/blob").size == total

        read = hashlib.sha256()
        with driver.reader("/large/blob") as stream:
            while chunk := stream.read(4 * MiB):
                read.update(chunk)
        assert read.hexdigest() == written.hexdigest()

        # From an offset in the middle of a chunk, to the end.
        offset = 57 * MiB + 5
        tail = hashlib.sha256()
        remaining = offset
        for chunk in stream_chunks(total):
            if remaining >= len(chunk):
                remaining -= len(chunk)
                continue
            tail.update(chunk[remaining:])
            remaining = 0
        read = hashlib.sha256()
        with driver.reader("/large/blob", offset) as stream:
            while chunk := stream.read(4 * MiB):
                read.update(chunk)
        assert read.hexdigest() == tail.hexdigest()

    def test_reader_with_offset(self, driver: StorageDriver) -> None:
        chunk = 32
        c1, c2, c3 = content(chunk, 1), content(chunk, 2), content(chunk, 3)
        driver.put_content("/file", c1 + c2 + c3)
        assert read_all(driver, "/file") == c1 + c2 + c3
        assert read_all(driver, "/file", chunk) == c2 + c3
        assert read_all(driver, "/file", chunk * 2) == c3

        with pytest.raises(InvalidOffset) as caught:
            driver.reader("/file", -1)
        assert caught.value.offset == -1
        assert caught.value.path == "/file"

        # At the end: a reader that gives nothing.
        with driver.reader("/file", chunk * 3) as stream:
            assert stream.read(chunk) == b""
            assert stream.read() == b""
        # The N-1 boundary: one byte, then nothing.
        with driver.reader("/file", chunk * 3 - 1) as stream:
            assert stream.read(chunk) == c3[-1:]
            assert stream.read(chunk) == b""
        # Past the end.
        with pytest.raises(InvalidOffset) as caught:
            driver.reader("/file", chunk * 3 + 1)
        assert caught.value.offset == chunk * 3 + 1

    def test_reader_is_seekable_and_reads_in_pieces(self, driver: StorageDriver) -> None:
        data = content(10_000, 5)
        driver.put_content("/file", data)
        with driver.reader("/file", 100) as stream:
            assert stream.read(10) == data[100:110]
            assert stream.read(1000) == data[110:1110]
            stream.seek(0)
            assert stream.read() == data

    @pytest.mark.parametrize("chunk", [32, 4 * MiB], ids=["small", "large"])
    def test_continue_stream_append(self, driver: StorageDriver, chunk: int) -> None:
        chunks = [content(chunk, seed) for seed in range(4)]
        full = b"".join(chunks)

        writer = driver.writer("/upload/data")
        assert writer.write(chunks[0]) == chunk
        writer.close()
        assert writer.size == chunk

        # Reopened and continued several times; each writer starts at the size so far.
        for index in (1, 2):
            writer = driver.writer("/upload/data", append=True)
            assert writer.size == index * chunk
            writer.write(chunks[index])
            assert writer.size == (index + 1) * chunk
            writer.close()
            assert driver.stat("/upload/data").size == (index + 1) * chunk

        writer = driver.writer("/upload/data", append=True)
        assert writer.size == 3 * chunk
        writer.write(full[writer.size :])
        writer.commit()
        writer.close()
        assert writer.size == len(full)
        assert driver.get_content("/upload/data") == full

    def test_writer_without_append_truncates(self, driver: StorageDriver) -> None:
        driver.put_content("/file", content(1000))
        with driver.writer("/file") as writer:
            assert writer.size == 0
            writer.write(b"new")
            writer.commit()
        assert driver.get_content("/file") == b"new"

    def test_writer_state_machine(self, driver: StorageDriver) -> None:
        writer = driver.writer("/file")
        writer.write(b"abc")
        writer.commit()
        with pytest.raises(StorageDriverError):
            writer.write(b"more")
        with pytest.raises(StorageDriverError):
            writer.commit()
        with pytest.raises(StorageDriverError):
            writer.cancel()
        writer.close()
        writer.close()  # closing twice is harmless
        with pytest.raises(StorageDriverError):
            writer.write(b"more")
        assert driver.get_content("/file") == b"abc"

        writer = driver.writer("/closed")
        writer.write(b"x")
        writer.close()
        for call in (lambda: writer.write(b"y"), writer.commit, writer.cancel):
            with pytest.raises(StorageDriverError):
                call()
        assert driver.get_content("/closed") == b"x"

    def test_writer_cancel_removes_the_file(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/keep", b"keep")
        writer = driver.writer("/dir/upload")
        writer.write(content(1000))
        writer.cancel()
        for call in (lambda: writer.write(b"x"), writer.commit):
            with pytest.raises(StorageDriverError):
                call()
        writer.close()
        with pytest.raises(PathNotFound):
            driver.get_content("/dir/upload")
        assert driver.list("/dir") == ["/dir/keep"]

    def test_writer_cancel_after_resume_removes_everything(self, driver: StorageDriver) -> None:
        with driver.writer("/upload") as writer:
            writer.write(b"first part")
        writer = driver.writer("/upload", append=True)
        writer.write(b", second part")
        writer.cancel()
        assert not driver.exists("/upload")

    # --- list / list_entries / walk ---------------------------------------------

    def test_list(self, driver: StorageDriver) -> None:
        rng = random.Random(7)
        root = "/root" + str(rng.randrange(10**6))
        parent = root + "/parent"
        with pytest.raises(PathNotFound):
            driver.list(root + "/nonexistent")

        children = sorted(f"{parent}/child{i}-{rng.randrange(10**6)}" for i in range(50))
        for child in children:
            driver.put_content(child, content(32))

        assert driver.list("/") == [root]
        assert driver.list(root) == [parent]
        assert sorted(driver.list(parent)) == children
        assert all(path.startswith("/") for path in driver.list(parent))
        # Only direct children, and only of whole components.
        with pytest.raises(PathNotFound):
            driver.list(root[:-1])
        with pytest.raises(PathNotFound):
            driver.list(parent + "/chi")

    def test_list_nested(self, driver: StorageDriver) -> None:
        for path in ("/a/b/c/d", "/a/b/e", "/a/f", "/a/bc/g", "/ab"):
            driver.put_content(path, path.encode())
        assert sorted(driver.list("/")) == ["/a", "/ab"]
        assert sorted(driver.list("/a")) == ["/a/b", "/a/bc", "/a/f"]
        assert sorted(driver.list("/a/b")) == ["/a/b/c", "/a/b/e"]
        assert driver.list("/a/b/c") == ["/a/b/c/d"]

    def test_list_of_a_file_is_path_not_found(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/file", b"x")
        with pytest.raises(PathNotFound):
            driver.list("/dir/file")
        with pytest.raises(PathNotFound):
            driver.list_entries("/dir/file")
        with pytest.raises(PathNotFound):
            driver.list_names("/dir/file")

    def test_list_entries(self, driver: StorageDriver) -> None:
        for path in ("/a/b/c", "/a/d", "/a/e/f/g", "/h"):
            driver.put_content(path, b"x")
        assert sorted(driver.list_entries("/")) == [("a", True), ("h", False)]
        assert sorted(driver.list_entries("/a")) == [("b", True), ("d", False), ("e", True)]
        assert driver.list_entries("/a/e") == [("f", True)]
        with pytest.raises(PathNotFound):
            driver.list_entries("/missing")
        # It agrees with list() and stat().
        for folder in ("/", "/a", "/a/b", "/a/e/f"):
            by_list = sorted(
                (path.rsplit("/", 1)[1], driver.stat(path).is_dir) for path in driver.list(folder)
            )
            assert sorted(driver.list_entries(folder)) == by_list

    def test_list_names(self, driver: StorageDriver) -> None:
        for path in ("/a/b/c", "/a/d", "/a/e/f/g", "/h"):
            driver.put_content(path, b"x")
        assert sorted(driver.list_names("/")) == ["a", "h"]
        assert sorted(driver.list_names("/a")) == ["b", "d", "e"]
        assert driver.list_names("/a/e/f") == ["g"]
        with pytest.raises(PathNotFound):
            driver.list_names("/missing")
        with pytest.raises(InvalidPath):
            driver.list_names("/a/../h")
        # The names list_entries gives, files and folders alike.
        for folder in ("/", "/a", "/a/b", "/a/e"):
            by_entries = sorted(name for name, _ in driver.list_entries(folder))
            assert sorted(driver.list_names(folder)) == by_entries

    def test_walk(self, driver: StorageDriver) -> None:
        files = {"/a/b/c": b"1", "/a/b/d": b"22", "/a/e": b"333", "/f/g/h/i": b"4444"}
        for path, data in files.items():
            driver.put_content(path, data)
        infos = list(driver.walk("/"))
        paths = [info.path for info in infos]
        assert sorted(paths) == sorted(
            ["/a", "/a/b", "/a/b/c", "/a/b/d", "/a/e", "/f", "/f/g", "/f/g/h", "/f/g/h/i"]
        )
        # Parents come before their children.
        for index, path in enumerate(paths):
            parent = path.rsplit("/", 1)[0]
            if parent:
                assert paths.index(parent) < index
        for info in infos:
            assert info.is_dir == (info.path not in files)
            if not info.is_dir:
                assert info.size == len(files[info.path])
        assert [info.path for info in driver.walk("/a/b")] == ["/a/b/c", "/a/b/d"]

    def test_walk_missing_raises_at_once(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.walk("/missing")

    # --- move --------------------------------------------------------------------

    def test_move(self, driver: StorageDriver) -> None:
        data = content(32)
        driver.put_content("/src/file", data)
        driver.move("/src/file", "/dest/sub/file")
        assert driver.get_content("/dest/sub/file") == data
        with pytest.raises(PathNotFound):
            driver.get_content("/src/file")

    def test_move_overwrite(self, driver: StorageDriver) -> None:
        source, dest = content(32, 1), content(64, 2)
        driver.put_content("/src", source)
        driver.put_content("/dest", dest)
        driver.move("/src", "/dest")
        assert driver.get_content("/dest") == source
        assert driver.stat("/dest").size == 32
        with pytest.raises(PathNotFound):
            driver.get_content("/src")

    def test_move_nonexistent(self, driver: StorageDriver) -> None:
        data = content(32)
        driver.put_content("/dest", data)
        with pytest.raises(PathNotFound):
            driver.move("/missing", "/dest")
        with pytest.raises(PathNotFound):
            driver.move("/missing/deeper", "/dest")
        assert driver.get_content("/dest") == data

    def test_move_invalid(self, driver: StorageDriver) -> None:
        driver.put_content("/notadir", content(32))
        with pytest.raises(StorageDriverError):
            driver.move("/notadir/foo", "/notadir/bar")
        for dest in ("/", "/../x", "/a//b", "relative"):
            with pytest.raises(InvalidPath):
                driver.move("/notadir", dest)
        with pytest.raises(InvalidPath):
            driver.move("/notadir", "/notadir/inside")
        assert driver.get_content("/notadir") == content(32)

    def test_move_folder(self, driver: StorageDriver) -> None:
        files = {"/blobs/ab/abc/data": b"blob", "/blobs/ab/abc/extra/x": b"x"}
        for path, data in files.items():
            driver.put_content(path, data)
        driver.put_content("/blobs/ab/abd/data", b"other")
        driver.move("/blobs/ab/abc", "/quarantine/abc")
        assert driver.get_content("/quarantine/abc/data") == b"blob"
        assert driver.get_content("/quarantine/abc/extra/x") == b"x"
        assert driver.stat("/quarantine/abc").is_dir
        assert not driver.exists("/blobs/ab/abc")
        assert not driver.exists("/blobs/ab/abc/data")
        assert driver.list("/blobs/ab") == ["/blobs/ab/abd"]
        # And back, as a quarantine restore does.
        driver.move("/quarantine/abc", "/blobs/ab/abc")
        assert driver.get_content("/blobs/ab/abc/extra/x") == b"x"
        assert not driver.exists("/quarantine/abc")

    def test_move_folder_replaces_dest_folder(self, driver: StorageDriver) -> None:
        driver.put_content("/src/new", b"new")
        driver.put_content("/dest/old", b"old")
        driver.put_content("/dest/deeper/old", b"old")
        driver.move("/src", "/dest")
        assert driver.list("/dest") == ["/dest/new"]
        assert driver.get_content("/dest/new") == b"new"
        assert not driver.exists("/dest/deeper/old")
        assert not driver.exists("/src/new")

    def test_move_to_itself_keeps_it(self, driver: StorageDriver) -> None:
        driver.put_content("/file", b"x")
        driver.move("/file", "/file")
        assert driver.get_content("/file") == b"x"

    # --- delete ------------------------------------------------------------------

    def test_delete(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/file", content(32))
        driver.delete("/dir/file")
        with pytest.raises(PathNotFound):
            driver.get_content("/dir/file")
        assert not driver.exists("/dir/file")

    def test_delete_nonexistent(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/file", b"x")
        for path in ("/missing", "/dir/missing", "/dir/file/below", "/missing/a/b"):
            with pytest.raises(PathNotFound):
                driver.delete(path)
        assert driver.get_content("/dir/file") == b"x"

    def test_delete_folder(self, driver: StorageDriver) -> None:
        data = content(32)
        for name in ("file1", "file2", "sub/file3", "sub/deep/file4"):
            driver.put_content(f"/dir/{name}", data)
        driver.delete("/dir/file1")
        with pytest.raises(PathNotFound):
            driver.get_content("/dir/file1")
        assert driver.get_content("/dir/file2") == data
        assert driver.get_content("/dir/sub/file3") == data

        driver.delete("/dir/sub")
        assert not driver.exists("/dir/sub/file3")
        assert not driver.exists("/dir/sub/deep/file4")
        assert driver.list("/dir") == ["/dir/file2"]

        driver.delete("/dir")
        for name in ("file1", "file2", "sub/file3"):
            with pytest.raises(PathNotFound):
                driver.get_content(f"/dir/{name}")
        assert driver.list("/") == []

    def test_delete_only_deletes_subpaths(self, driver: StorageDriver) -> None:
        data = content(32)
        for path in ("/d/f", "/d/fsuffix", "/d/d/f", "/d/dsuffix/f", "/a/b/c", "/a/bc"):
            driver.put_content(path, data)
        driver.delete("/d/f")
        assert not driver.exists("/d/f")
        assert driver.get_content("/d/fsuffix") == data
        driver.delete("/d/d")
        assert not driver.exists("/d/d/f")
        assert driver.get_content("/d/dsuffix/f") == data
        driver.delete("/a/b")
        assert driver.get_content("/a/bc") == data
        assert driver.list("/a") == ["/a/bc"]

    # --- stat --------------------------------------------------------------------

    def test_stat(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.stat("/dir/sub")
        with pytest.raises(PathNotFound):
            driver.stat("/dir/sub/file")

        before = datetime.now(UTC)
        driver.put_content("/dir/sub/file", content(4096))
        after = datetime.now(UTC)

        info = driver.stat("/dir/sub/file")
        assert isinstance(info, FileInfo)
        assert (info.path, info.size, info.is_dir) == ("/dir/sub/file", 4096, False)
        assert info.mod_time.tzinfo is not None
        assert info.mod_time.utcoffset() == timedelta(0)
        # Coarse clocks: a filesystem stamps with its tick, S3 to the second.
        slack = timedelta(seconds=2)
        assert before - slack <= info.mod_time <= after + slack

        driver.put_content("/dir/sub/file", content(100, 2))
        info2 = driver.stat("/dir/sub/file")
        assert info2.size == 100
        assert info2.mod_time >= info.mod_time

        for folder in ("/dir", "/dir/sub"):
            info = driver.stat(folder)
            assert (info.path, info.size, info.is_dir) == (folder, 0, True)

        # Only whole components name a folder.
        with pytest.raises(PathNotFound):
            driver.stat("/di")
        with pytest.raises(PathNotFound):
            driver.stat("/dir/su")

    def test_stat_after_stream_write(self, driver: StorageDriver) -> None:
        with driver.writer("/file") as writer:
            writer.write(content(1234))
            writer.commit()
        assert driver.stat("/file").size == 1234

    def test_exists(self, driver: StorageDriver) -> None:
        driver.put_content("/a/b", b"x")
        assert driver.exists("/a/b")
        assert driver.exists("/a")
        assert driver.exists("/")
        assert not driver.exists("/a/c")
        assert not driver.exists("/a/b/c")

    # --- a random walk against a model ------------------------------------------

    @pytest.mark.parametrize("seed", range(4))
    def test_random_operations_match_a_model(self, driver: StorageDriver, seed: int) -> None:
        """Random puts, appends, moves and deletes over a small tree, checked after
        every step against a dict of files. Folders a driver keeps after their
        last file went (as the filesystem does) are tolerated, nothing else."""
        ModelCheck(driver, random.Random(seed)).run(250)

    # --- concurrency -------------------------------------------------------------

    def test_concurrent_stream_reads(self, driver: StorageDriver) -> None:
        data = content(8 * MiB, 9)
        driver.put_content("/file", data)
        offsets = [random.Random(i).randrange(len(data)) for i in range(10)]

        def read(index: int) -> None:
            offset = offsets[index]
            got = read_all(driver, "/file", offset)
            assert got == data[offset:]

        run_threads(read, len(offsets))

    def test_concurrent_file_streams(self, driver: StorageDriver) -> None:
        def stream(index: int) -> None:
            path = f"/streams/s{index}/data"
            written = hashlib.sha256()
            with driver.writer(path) as writer:
                for chunk in stream_chunks(2 * MiB + index, 256 * 1024, seed=index):
                    writer.write(chunk)
                    written.update(chunk)
                writer.commit()
            assert hashlib.sha256(read_all(driver, path)).digest() == written.digest()
            driver.put_content(f"/streams/s{index}/link", str(index).encode())
            assert driver.get_content(f"/streams/s{index}/link") == str(index).encode()

        run_threads(stream, 8)
        assert len(driver.list("/streams")) == 8

    def test_concurrent_put_content_is_atomic(self, driver: StorageDriver) -> None:
        """Readers see one whole value or the other, never a mix or a part."""
        values = [bytes([65 + i]) * (2 * MiB + i) for i in range(2)]
        driver.put_content("/link", values[0])
        stop = threading.Event()
        reads = [0, 0, 0]
        seen: set[int] = set()

        def worker(index: int) -> None:
            if index == 0:
                # Writes go on until both readers have read a good many times.
                deadline = time.monotonic() + 10
                round_ = 0
                try:
                    while round_ < 30 or (min(reads[1:]) < 30 and time.monotonic() < deadline):
                        round_ += 1
                        driver.put_content("/link", values[round_ % 2])
                    driver.put_content("/link", values[1])
                finally:
                    stop.set()
                return
            while not stop.is_set():
                got = driver.get_content("/link")
                assert got in values, f"a partial or mixed read of {len(got)} bytes"
                seen.add(len(got))
                reads[index] += 1

        run_threads(worker, 3)
        assert min(reads[1:]) >= 30, reads
        assert len(seen) == 2  # both values were read while they changed
        assert driver.get_content("/link") == values[1]

    def test_concurrent_writes_to_distinct_paths_in_one_folder(self, driver: StorageDriver) -> None:
        def put(index: int) -> None:
            for n in range(20):
                driver.put_content(f"/shared/f{index}-{n}", f"{index}-{n}".encode())

        run_threads(put, 8)
        assert len(driver.list("/shared")) == 160
        assert driver.get_content("/shared/f3-7") == b"3-7"

    def test_delete_while_walking(self, driver: StorageDriver) -> None:
        """A walk goes on when what it has not reached yet is removed meanwhile
        (whether it still shows the removed entries is up to the driver)."""
        for i in range(20):
            driver.put_content(f"/w/d{i:02}/f", b"x")
        seen = []
        for info in driver.walk("/w"):
            seen.append(info.path)
            if info.path == "/w/d00":
                for i in range(10, 20):
                    driver.delete(f"/w/d{i:02}")
        assert "/w/d00/f" in seen
        assert "/w/d09/f" in seen
        assert len(driver.list("/w")) == 10


class ModelCheck:
    """The random walk of test_random_operations_match_a_model."""

    def __init__(self, driver: StorageDriver, rng: random.Random) -> None:
        self.driver = driver
        self.rng = rng
        self.files: dict[str, bytes] = {}

    def run(self, steps: int) -> None:
        ops = [self.put, self.put, self.append, self.get, self.delete, self.move, self.list]
        ops += [self.stat]
        for _ in range(steps):
            self.rng.choice(ops)()
        walked = {i.path: i.size for i in self.driver.walk("/") if not i.is_dir}
        assert walked == {path: len(data) for path, data in self.files.items()}

    # --- the model -----------------------------------------------------------

    def path(self) -> str:
        depth = self.rng.randint(1, 3)
        return "/" + "/".join(self.rng.choice("abc") for _ in range(depth))

    def under(self, folder: str) -> list[str]:
        return [f for f in self.files if f.startswith(folder + "/")]

    def is_folder(self, path: str) -> bool:
        return path == "/" or bool(self.under(path))

    def file_above(self, path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:i]) in self.files for i in range(2, len(parts)))

    def ghost(self, path: str) -> bool:
        """A folder the driver kept with no file below it."""
        try:
            info = self.driver.stat(path)
        except PathNotFound:
            return False
        return info.is_dir and not self.under(path)

    def can_hold_file(self, path: str) -> bool:
        return not (self.is_folder(path) or self.file_above(path) or self.ghost(path))

    # --- the steps -----------------------------------------------------------

    def put(self) -> None:
        path = self.path()
        if not self.can_hold_file(path):
            return
        data = self.rng.randbytes(self.rng.randint(0, 64))
        self.driver.put_content(path, data)
        self.files[path] = data

    def append(self) -> None:
        path = self.path()
        if not self.can_hold_file(path):
            return
        data = self.rng.randbytes(self.rng.randint(1, 64))
        old = self.files.get(path)
        with self.driver.writer(path, append=old is not None) as writer:
            assert writer.size == len(old or b"")
            writer.write(data)
            if self.rng.random() < 0.5:
                writer.commit()
        self.files[path] = (old or b"") + data

    def get(self) -> None:
        path = self.path()
        if path in self.files:
            assert self.driver.get_content(path) == self.files[path]
        else:
            with pytest.raises(PathNotFound):
                self.driver.get_content(path)

    def delete(self) -> None:
        path = self.path()
        if path in self.files or self.is_folder(path):
            self.driver.delete(path)
            for gone in [path, *self.under(path)]:
                self.files.pop(gone, None)
        elif not self.ghost(path):
            with pytest.raises(PathNotFound):
                self.driver.delete(path)

    def move(self) -> None:
        source, dest = self.path(), self.path()
        is_file = source in self.files
        related = dest.startswith(source + "/") or source.startswith(dest + "/")
        if not (is_file or self.is_folder(source)):
            if not (related or self.ghost(source)):
                with pytest.raises(PathNotFound):
                    self.driver.move(source, dest)
            return
        # Replace only the same kind (S3 has no folders to replace a file with),
        # and with no file on the way to dest.
        if dest in self.files:
            same_kind = is_file
        elif self.is_folder(dest) or self.ghost(dest):
            same_kind = not is_file
        else:
            same_kind = True
        if source == dest or related or not same_kind or self.file_above(dest):
            return
        self.driver.move(source, dest)
        moved = {dest + f[len(source) :]: self.files.pop(f) for f in [source, *self.under(source)]
                 if f in self.files}  # fmt: skip
        for gone in [dest, *self.under(dest)]:
            self.files.pop(gone, None)
        self.files.update(moved)

    def list(self) -> None:
        folder = self.rng.choice(["/", self.path()])
        if folder in self.files:
            with pytest.raises(PathNotFound):
                self.driver.list(folder)
            return
        prefix = "" if folder == "/" else folder
        expected = {prefix + "/" + f[len(prefix) + 1 :].split("/")[0] for f in self.under(prefix)}
        try:
            got = set(self.driver.list(folder))
        except PathNotFound:
            assert not expected
            return
        assert expected <= got
        assert all(self.ghost(extra) for extra in got - expected)
        entries = dict(self.driver.list_entries(folder))
        assert {prefix + "/" + name for name in entries} == got
        for path in expected:
            assert entries[path.rsplit("/", 1)[1]] == (path not in self.files)

    def stat(self) -> None:
        path = self.path()
        if path in self.files:
            info = self.driver.stat(path)
            assert (info.size, info.is_dir) == (len(self.files[path]), False)
        elif self.is_folder(path):
            assert self.driver.stat(path).is_dir
        elif not self.ghost(path):
            with pytest.raises(PathNotFound):
                self.driver.stat(path)


class FolderConformance:
    """Rules of drivers with real folders (not S3's flat keys): a path is a file
    or a folder, never both."""

    def test_file_where_a_folder_is_refused(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/file", b"x")
        with pytest.raises(InvalidPath):
            driver.put_content("/dir", b"y")
        with pytest.raises(InvalidPath):
            driver.writer("/dir")
        assert driver.get_content("/dir/file") == b"x"

    def test_file_below_a_file_refused(self, driver: StorageDriver) -> None:
        driver.put_content("/file", b"x")
        with pytest.raises(InvalidPath):
            driver.put_content("/file/below", b"y")
        with pytest.raises(InvalidPath):
            driver.writer("/file/below/deeper")
        with pytest.raises(InvalidPath):
            driver.move("/file", "/file/x")
        driver.put_content("/other", b"o")
        with pytest.raises(InvalidPath):
            driver.move("/other", "/file/x")
        assert driver.get_content("/file") == b"x"
        assert driver.get_content("/other") == b"o"

    def test_move_file_over_folder_and_back(self, driver: StorageDriver) -> None:
        driver.put_content("/f", b"file")
        driver.put_content("/d/x", b"x")
        driver.move("/f", "/d")
        assert driver.get_content("/d") == b"file"
        driver.put_content("/d2/y", b"y")
        driver.move("/d2", "/d")
        assert driver.list("/d") == ["/d/y"]

    def test_mod_time_moves_forward(self, driver: StorageDriver) -> None:
        driver.put_content("/file", b"1")
        first = driver.stat("/file").mod_time
        time.sleep(0.02)
        with driver.writer("/file", append=True) as writer:
            writer.write(b"2")
            writer.commit()
        assert driver.stat("/file").mod_time > first
