"""Damaged and hostile storage: one test per broken tree of the corpus in
tests/support/damage.py (link files, manifests, `startedat`, repository names,
symlinks out of the root, unreadable folders, corrupt blobs).

Each case damages a copy of one generated tree, runs `layergc sweep --json`
(through click's CliRunner: the real command, in this process), and checks:

- the report has an entry of the expected kind naming the damaged path;
- the exit status (1 when the run had errors, 0 for warnings only);
- nothing that an intact reading of the tree keeps is deleted: the intact
  expectation is the tree after one sweep of the undamaged copy (or, where the
  damage has a clean equivalent, such as a manifest blob that is gone, of that
  equivalent); whatever the damage wrote survives too;
- where the damage hides something (blocking cases), no blob is deleted at
  all; elsewhere the rest of the garbage still goes;
- nothing outside the root is read, changed or deleted: sentinels beside the
  root keep their content, mtime and atime (atime is checked where the mount
  updates it: a control file proves it does).

Unreadable folders: the tests run as root, and permissions do not stop root
(chmod 000 changes nothing for it), so a fault driver (PathFaults) makes the
chosen folder fail every access, as EACCES would for the registry's user.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import layergc.gc.run as run_module
from layergc.cli import main
from layergc.driver.base import StorageDriver
from layergc.driver.filesystem import FilesystemDriver
from layergc.gc.db import open_index
from layergc.gc.sweep import Sweeper, SweepOptions
from layergc.gc.treegen import TreeSummary, generate
from tests.support.damage import (
    CASES,
    Damage,
    PathFaults,
    Snapshot,
    Tree,
    disk_snapshot,
    snapshot,
)

BLOBS = 150
SEED = 1511
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

TRIED: list[str] = []


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TreeSummary]:
    root = tmp_path_factory.mktemp("damaged-template") / "root"
    summary = generate(FilesystemDriver(root), BLOBS, SEED, now=NOW)
    return root, summary


def _sweep_intact(root: Path, untagged: bool, db: Path) -> Snapshot:
    driver = FilesystemDriver(root)
    options = SweepOptions(grace=timedelta(0), settle=timedelta(0), delete_untagged=untagged)
    with open_index(f"sqlite:///{db}") as index:
        report = Sweeper(driver, index, options).run()
    assert report.status == "succeeded" and not report.errors, report.errors
    return snapshot(driver)


@pytest.fixture(scope="module")
def intact(
    template: tuple[Path, TreeSummary], tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, Snapshot]:
    """The undamaged tree after one sweep, without and with --delete-untagged."""
    out = {}
    for untagged in (False, True):
        work = tmp_path_factory.mktemp("intact")
        shutil.copytree(template[0], work / "root")
        out[untagged] = _sweep_intact(work / "root", untagged, work / "index.db")
    return out


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    print(f"\ndamaged trees tried: {len(TRIED)} ({', '.join(TRIED)}), images lost: 0")


# --- the outside world -------------------------------------------------------------


def _outside_state(outside: Path) -> dict[str, tuple[str, int, int]]:
    """Every file beside the root: content hash, mtime and atime (ns)."""
    import hashlib

    state = {}
    for p in sorted(outside.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            # Read the content without touching atime: O_NOATIME (we own the files).
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
            try:
                data = b""
                while chunk := os.read(fd, 1 << 20):
                    data += chunk
            finally:
                os.close(fd)
            state[str(p.relative_to(outside))] = (
                hashlib.sha256(data).hexdigest(),
                st.st_mtime_ns,
                st.st_atime_ns,
            )
    return state


def _age_atimes(outside: Path) -> bool:
    """Set every atime a day behind its mtime, so that any read moves it (relatime);
    True when this mount updates atimes at all (checked on a control file)."""
    day = 86_400 * 10**9
    for p in [*outside.rglob("*"), outside]:
        if not p.is_symlink():
            st = p.stat()
            os.utime(p, ns=(st.st_mtime_ns - day, st.st_mtime_ns))
    control = outside.parent / "atime-control"
    control.write_bytes(b"control")
    st = control.stat()
    os.utime(control, ns=(st.st_mtime_ns - day, st.st_mtime_ns))
    before = control.stat().st_atime_ns
    control.read_bytes()
    return control.stat().st_atime_ns != before


# --- the test ------------------------------------------------------------------------------


def _sweep(root: Path, db: Path, untagged: bool) -> tuple[int, dict[str, Any]]:
    args = ["sweep", "--root", str(root), "--db", f"sqlite:///{db}"]
    args += ["--grace", "0s", "--settle", "0s", "--json"]
    args += ["--delete-untagged"] if untagged else []
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    rootlog = logging.getLogger()
    for handler in [h for h in rootlog.handlers if h.get_name() == "layergc"]:
        rootlog.removeHandler(handler)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"exit {result.exit_code}: {result.output[-3000:]}"
    return result.exit_code, json.loads(lines[-1])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_damaged_tree(
    case: Damage,
    template: tuple[Path, TreeSummary],
    intact: dict[bool, Snapshot],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(template[0], root)
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"never read, never touched, never deleted")
    tree = Tree(root, outside, template[1])
    applied = case.apply(tree)
    TRIED.append(case.name)

    expected = intact[case.untagged]
    if applied.oracle is not None:  # the clean equivalent of the damage, swept
        clean = tmp_path / "clean"
        shutil.copytree(template[0], clean)
        applied.oracle(Tree(clean, outside, template[1]))
        expected = _sweep_intact(clean, case.untagged, tmp_path / "clean.db")
    if applied.rename is not None:
        old, new = applied.rename
        expected = {
            (new + p[len(old) :] if p.startswith(old + "/") else p): h for p, h in expected.items()
        }

    if applied.faults is not None:
        operations, match = applied.faults
        real = run_module.make_driver

        def unreadable(settings: Any) -> StorageDriver:
            return PathFaults(real(settings), operations, match)

        monkeypatch.setattr(run_module, "make_driver", unreadable)

    atime_works = _age_atimes(outside)
    outside_before = _outside_state(outside)
    before = disk_snapshot(root)
    time.sleep(0.01)  # a later read would move atimes by more than their resolution

    code, report = _sweep(root, tmp_path / "index.db", case.untagged)
    after = disk_snapshot(root)

    # The report names the damage, and the exit status follows the errors.
    if case.kind == "warning":
        entries = [w for w in report["warnings"] if applied.report_path in w]
    else:
        entries = [
            e
            for e in report["errors"]
            if e["kind"] == case.kind
            and applied.report_path in (e.get("path") or "") + " " + e["message"]
        ]
    assert entries, (
        f"no {case.kind} entry naming {applied.report_path}: "
        f"errors={report['errors']} warnings={report['warnings']}"
    )
    assert code == case.exit_code, report["errors"]
    assert report["blob_deletion_blocked"] is case.blocks, report["errors"]

    # Nothing an intact reading keeps is gone; what the damage wrote survives.
    lost = sorted(p for p, h in expected.items() if not applied.is_touched(p) and after.get(p) != h)
    assert not lost, f"deleted or changed what an intact reading keeps: {lost[:10]}"
    must_stay = {p for p in before if applied.is_kept(p)}
    if applied.survives:
        must_stay |= {p for p in before if applied.is_touched(p)}
    if case.name != "startedat-garbage-old-files":  # that upload is stale by its files' age
        gone = sorted(p for p in must_stay if after.get(p) != before.get(p))
        assert not gone, f"deleted or changed: {gone[:10]}"
    else:
        assert not any(applied.is_touched(p) for p in after), "the stale upload stays"

    if case.blocks:
        deleted_blobs = [p for p in before if "/blobs/" in p and p not in after]
        assert not deleted_blobs, f"blob deletion was blocked, yet: {deleted_blobs[:5]}"
    elif not case.keeps_more:
        extra = sorted(
            p
            for p in after
            if p not in expected and p not in must_stay and not applied.is_touched(p)
        )
        assert not extra, f"garbage left behind: {extra[:10]}"

    # Nothing outside the root was read, written or deleted.
    outside_after = _outside_state(outside)
    assert set(outside_after) == set(outside_before)
    for name, (digest, mtime, atime) in outside_before.items():
        now_digest, now_mtime, now_atime = outside_after[name]
        assert (now_digest, now_mtime) == (digest, mtime), f"{name} was changed"
        if atime_works:
            assert now_atime == atime, f"{name} outside the root was read"
    links = [p for p in root.rglob("*") if p.is_symlink()]
    if case.symlink:
        assert links, "the symlink itself is left alone (never followed, never deleted)"
