"""FilesystemDriver writers start the writeback of what they wrote as they go
(sync_file_range on Linux), and commit still fsyncs: the hint saves commit's
wait, never its durability."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from layergc.driver import filesystem
from layergc.driver.filesystem import FilesystemDriver

MiB = 1 << 20
STEP = filesystem._WRITEBACK_STEP


class Recorder:
    """Stands for sync_file_range: the ranges asked for, and the file's size then."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, fd: int, offset: int, length: int) -> None:
        self.calls.append((offset, length, os.fstat(fd).st_size))


@pytest.fixture
def hints(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(filesystem, "_START_WRITEBACK", recorder)
    return recorder


def write(driver: FilesystemDriver, data: bytes, chunk: int, *, append: bool = False) -> None:
    writer = driver.writer("/up/data", append=append)
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
    writer.close()


def test_writeback_ranges_cover_the_written_data_in_order(tmp_path: Path, hints: Recorder) -> None:
    driver = FilesystemDriver(tmp_path)
    data = os.urandom(3 * STEP + 5 * MiB)
    write(driver, data, 3 * MiB)  # not a divisor of the step: ranges end mid-write

    offset = 0
    for start, length, size_then in hints.calls:
        assert start == offset
        assert length >= STEP
        # Flushed first: the whole range is in the file when the kernel is asked.
        assert size_then >= start + length
        offset = start + length
    assert len(hints.calls) == 3
    assert len(data) - offset < STEP  # the rest is left to commit's fsync
    assert (tmp_path / "up" / "data").read_bytes() == data


def test_resumed_writer_hints_from_where_it_starts(tmp_path: Path, hints: Recorder) -> None:
    driver = FilesystemDriver(tmp_path)
    first, second = os.urandom(5 * MiB), os.urandom(STEP + MiB)
    write(driver, first, MiB)
    assert hints.calls == []  # under one step
    write(driver, second, 4 * MiB, append=True)
    assert [(s, n) for s, n, _ in hints.calls] == [(len(first), 2 * 4 * MiB)]
    assert (tmp_path / "up" / "data").read_bytes() == first + second


def test_small_writes_give_no_hint(tmp_path: Path, hints: Recorder) -> None:
    write(FilesystemDriver(tmp_path), os.urandom(STEP - 1), 64 * 1024)
    assert hints.calls == []


def test_commit_fsyncs_after_hints(
    tmp_path: Path, hints: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    writer = FilesystemDriver(tmp_path).writer("/up/data")
    data = os.urandom(2 * STEP + 123)
    writer.write(data[: 2 * STEP])
    writer.write(data[2 * STEP :])  # still in the writer's buffer
    assert len(hints.calls) == 1
    writer.commit()
    writer.close()
    assert synced == [len(data)]  # every byte flushed, then fsynced


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")
def test_real_sync_file_range_is_used_on_linux(tmp_path: Path) -> None:
    start_writeback = filesystem._make_start_writeback()
    assert start_writeback is not None
    path = tmp_path / "f"
    path.write_bytes(os.urandom(MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        start_writeback(fd, 0, MiB)  # returns without waiting; errors are ignored
    finally:
        os.close(fd)
    assert filesystem._START_WRITEBACK is not None
