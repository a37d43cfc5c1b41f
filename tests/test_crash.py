"""Crash consistency: `layergc sweep` killed with SIGKILL at every step of the
delete protocol, on the filesystem driver and on S3 (moto).

Each trial copies one generated tree (treegen: 200 blobs, shared layers,
untagged manifests, orphans, stale uploads), runs `python -m layergc.cli
sweep` as a subprocess with LAYERGC_TEST_CRASH_AT=<step>:<n>, which makes it
SIGKILL itself the n-th time it reaches that step (layergc/gc/crashpoints.py
lists them: quarantine mid-way and done, settle, re-check, mid-delete, between
the index writes, mid-upload purge, mid-recovery), then checks:

- right after the kill, no file that one uninterrupted sweep keeps is missing
  or changed (kept blobs, manifests, tags, links: the intact expectation is
  the tree after ONE uninterrupted sweep of the same copy);
- the index still says "running" for the killed run, by a dead pid;
- a new `layergc sweep` exits 0 with no errors, marks the killed run
  "interrupted", and leaves storage equal, file for file and byte for byte,
  to what the uninterrupted sweep left (layergc's own folder and the index
  aside), with nothing left in quarantine.

The steps are counted from a traced uninterrupted run (LAYERGC_TEST_CRASH_TRACE),
so the trials hit the first, middle and last occurrence of each step, plus
seeded random points (`any:<n>`). The killed sweeps are processes of their own:
`python -m layergc.cli sweep` on S3, for the uninterrupted runs and for a few
filesystem trials; a forked child running the same command for the other
filesystem trials (a fresh interpreter spends a CPU second on imports). The
recovery sweeps run in this process through click's CliRunner (same command,
same exit code).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from layergc.cli import main as cli_main
from layergc.driver.base import StorageDriver
from layergc.driver.filesystem import FilesystemDriver
from layergc.gc.crashpoints import CRASH_AT, CRASH_TRACE
from layergc.gc.db import open_index
from layergc.gc.treegen import generate
from tests.support.damage import Snapshot, diff, missing_or_changed, quarantined_files, snapshot

FS_BLOBS = 200
S3_BLOBS = 40  # moto answers a request in a few ms: a smaller tree keeps S3 trials short
SEED = 20261129
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # one `startedat` clock for every copy
STEPS = ("upload", "hold", "quarantined", "settle", "recheck", "purge", "index")

FIGURES: Counter[str] = Counter()


# --- running sweeps -----------------------------------------------------------------


def sweep_args(storage: list[str], db: Path, untagged: bool) -> list[str]:
    args = ["sweep", *storage, "--db", f"sqlite:///{db}", "--grace", "0s", "--settle", "0s"]
    return [*args, "--json", *(["--delete-untagged"] if untagged else [])]


def sweep_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """`layergc sweep` in a process of its own (the one that gets killed)."""
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "layergc.cli", *args],
        env=full_env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def sweep_forked(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`layergc sweep` in a forked child of this process: the same command in a
    process of its own, minus the second of imports a fresh interpreter pays.
    Returns its exit status (-9 when killed) and stderr. Filesystem only: a
    forked child must not share the parent's S3 connections."""
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.environ.update(env)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(err.fileno(), 2)
                cli_main.main(args, prog_name="layergc", standalone_mode=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), err.read().decode(errors="replace")


def sweep_in_process(args: list[str]) -> tuple[int, dict[str, Any]]:
    """The same command in this process: its exit code and JSON report."""
    result = CliRunner().invoke(cli_main, args, catch_exceptions=False)
    # The command points its log handler at CliRunner's stream, closed now.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.StreamHandler)]:
        if handler.get_name() and handler.get_name().startswith("layergc"):
            root.removeHandler(handler)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON report (exit {result.exit_code}): {result.output[-2000:]}"
    return result.exit_code, json.loads(lines[-1])


# --- one storage backend ------------------------------------------------------------


@dataclass
class Backend:
    """Fresh copies of the generated tree, and the CLI options that reach them."""

    name: str
    workdir: Path
    blobs: int

    def fresh(self, label: str) -> tuple[StorageDriver, list[str]]:
        raise NotImplementedError

    def release(self, driver: StorageDriver) -> None:
        driver.close()

    env: dict[str, str] | None = None


class FilesystemBackend(Backend):
    def __init__(self, workdir: Path) -> None:
        super().__init__("filesystem", workdir, FS_BLOBS)
        self.base = workdir / "base"
        generate(FilesystemDriver(self.base), FS_BLOBS, SEED, now=NOW)

    def fresh(self, label: str) -> tuple[StorageDriver, list[str]]:
        root = self.workdir / label
        shutil.copytree(self.base, root, symlinks=True)
        return FilesystemDriver(root), ["--root", str(root)]

    def release(self, driver: StorageDriver) -> None:
        driver.close()
        shutil.rmtree(getattr(driver, "root"), ignore_errors=True)  # noqa: B009


class S3Backend(Backend):
    def __init__(self, workdir: Path, server: Any) -> None:
        from tests.support.s3server import plain_http_env

        super().__init__("s3", workdir, S3_BLOBS)
        self.server = server
        self.env = plain_http_env({})
        self.buckets: dict[int, str] = {}

    def fresh(self, label: str) -> tuple[StorageDriver, list[str]]:
        from layergc.driver.s3 import S3Driver

        bucket = self.server.create_bucket()
        params = self.server.registry_storage_config(bucket)
        driver = S3Driver.from_registry_config(params)
        generate(driver, S3_BLOBS, SEED, now=NOW, direct=False)
        config = self.workdir / f"{label}.yml"
        config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"s3": params}}))
        self.buckets[id(driver)] = bucket
        return driver, ["--registry-config", str(config)]

    def release(self, driver: StorageDriver) -> None:
        driver.close()
        self.server.drop_bucket(self.buckets.pop(id(driver)))


@dataclass
class Expected:
    """What one uninterrupted sweep leaves, and how often it reached each step."""

    tree: Snapshot
    steps: Counter[str]
    report: dict[str, Any]
    deletions: Counter[tuple[str, str]]  # the audit log: (kind, key) deleted


def uninterrupted(backend: Backend, untagged: bool, template_db: Path) -> Expected:
    label = f"intact-{'untagged' if untagged else 'plain'}"
    driver, storage = backend.fresh(label)
    try:
        db = backend.workdir / f"{label}.db"
        shutil.copy(template_db, db)
        trace = backend.workdir / f"{label}.trace"
        done = sweep_process(
            sweep_args(storage, db, untagged), {**(backend.env or {}), CRASH_TRACE: str(trace)}
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        report = json.loads(done.stdout)
        assert report["status"] == "succeeded" and not report["errors"]
        steps = Counter(trace.read_text().split())
        steps["any"] = sum(steps.values())
        with open_index(f"sqlite:///{db}") as index:
            deletions = Counter(
                (d.kind, d.key) for d in index.deletions(report["run_id"]) if d.kind != "upload"
            )
        return Expected(snapshot(driver), steps, report, deletions)
    finally:
        backend.release(driver)


# --- the trials -----------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    step: str  # a crash point, or "any"
    which: str  # "first", "middle", "last" or "random"
    untagged: bool = False
    then_recovery_at: str | None = None  # also kill the first recovery there
    fork: bool = True  # on the filesystem, a forked child; else `python -m layergc.cli`

    @property
    def id(self) -> str:
        mode = "untagged" if self.untagged else "plain"
        tail = f"+{self.then_recovery_at}" if self.then_recovery_at else ""
        return f"{mode}-{self.step}-{self.which}{tail}"

    def count(self, steps: Counter[str], rng: random.Random) -> int:
        total = steps["any"] if self.step == "any" else steps[self.step]
        assert total > 0, f"the uninterrupted sweep never reached {self.step!r}: {steps}"
        return {"first": 1, "middle": (total + 1) // 2, "last": total}.get(
            self.which, rng.randint(1, total)
        )


FS_TRIALS = [
    *(Trial(step, which) for step in ("hold", "purge") for which in ("first", "middle", "last")),
    *(Trial(step, "first") for step in STEPS if step not in ("hold", "purge")),
    Trial("index", "middle"),
    Trial("index", "last"),
    *(Trial(step, "middle", untagged=True) for step in ("hold", "recheck", "purge")),
    Trial("hold", "last", untagged=True),
    Trial("purge", "last", untagged=True),
    Trial("index", "first", untagged=True),
    *(Trial("any", f"random{i}", untagged=i % 2 == 1, fork=i > 0) for i in range(3)),
    Trial("purge", "middle", then_recovery_at="leftover:1", fork=False),
    Trial("hold", "last", untagged=True, then_recovery_at="leftover:3", fork=False),
]
# Fewer on S3: every request to moto costs milliseconds, a trial some seconds.
S3_TRIALS = [
    Trial("hold", "middle"),
    Trial("recheck", "first"),
    Trial("purge", "middle", untagged=True),
    Trial("any", "random0"),
    Trial("hold", "first", then_recovery_at="leftover:1"),
]


def run_trial(backend: Backend, trial: Trial, expected: Expected, template_db: Path) -> None:
    rng = random.Random(f"{SEED}-{trial.id}")
    n = trial.count(expected.steps, rng)
    label = f"trial-{trial.id}"
    driver, storage = backend.fresh(label)
    try:
        db = backend.workdir / f"{label}.db"
        shutil.copy(template_db, db)
        args = sweep_args(storage, db, trial.untagged)
        kills = [f"{trial.step}:{n}"] + ([trial.then_recovery_at] if trial.then_recovery_at else [])
        killed_runs: list[int] = []
        for at in kills:
            env = {**(backend.env or {}), CRASH_AT: at}
            if trial.fork and backend.name == "filesystem":
                code, stderr = sweep_forked(args, env)
            else:
                done = sweep_process(args, env)
                code, stderr = done.returncode, done.stderr.decode(errors="replace")
            assert code == -9, f"{at}: the sweep was not killed (exit {code}): {stderr[-2000:]}"
            FIGURES[f"kills-{backend.name}"] += 1
            after_kill = snapshot(driver)
            lost = missing_or_changed(expected.tree, after_kill)
            assert not lost, f"killed at {at}: kept files missing or changed: {lost[:10]}"
            with open_index(f"sqlite:///{db}") as index:
                run = index.runs(1)[0]
            assert run.status == "running" and run.pid == _child_pid_gone(run.pid)
            killed_runs.append(run.id)
        # On a local disk objects move and go one at a time, so these kills leave a
        # quarantine; S3 moves and purges several at once, and the others in flight
        # may all finish before the kill lands.
        if backend.name == "filesystem" and (
            trial.step in ("hold", "quarantined", "settle", "recheck")
            or (trial.step == "purge" and trial.which != "last")
        ):
            assert quarantined_files(driver), "the kill should have left a quarantine"

        code, report = sweep_in_process(args)
        assert code == 0, report["errors"]
        assert report["status"] == "succeeded" and not report["errors"], report["errors"]
        with open_index(f"sqlite:///{db}") as index:
            statuses = {r.id: r.status for r in index.runs(None)}
            stuck = index.quarantined()
            audited = Counter(
                (d.kind, d.key)
                for run in statuses
                for d in index.deletions(run)
                if d.kind != "upload"
            )
        assert all(statuses[r] == "interrupted" for r in killed_runs), statuses
        assert statuses[report["run_id"]] == "succeeded"
        # The index agrees with storage: nothing left "quarantined", and the audit
        # log holds each deletion once, as after one uninterrupted sweep.
        assert not stuck, stuck[:5]
        assert audited == expected.deletions, audited ^ expected.deletions

        final = snapshot(driver)
        assert final == expected.tree, diff(expected.tree, final)
        assert not quarantined_files(driver)
        FIGURES[f"recoveries-{backend.name}"] += 1
    finally:
        backend.release(driver)


def _child_pid_gone(pid: int | None) -> int | None:
    """`pid`, after checking that no such process runs (the kill reaped it)."""
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index already migrated: each trial copies it instead of migrating anew."""
    path = tmp_path_factory.mktemp("crash-db") / "template.db"
    open_index(f"sqlite:///{path}").close()
    return path


@pytest.fixture(scope="module")
def fs_backend(tmp_path_factory: pytest.TempPathFactory) -> FilesystemBackend:
    return FilesystemBackend(tmp_path_factory.mktemp("crash-fs"))


@pytest.fixture(scope="module")
def fs_expected(fs_backend: FilesystemBackend, template_db: Path) -> dict[bool, Expected]:
    return {u: uninterrupted(fs_backend, u, template_db) for u in (False, True)}


@pytest.fixture(scope="module")
def s3_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Backend]:
    from tests.support.s3server import MotoServer

    with MotoServer() as server:
        yield S3Backend(tmp_path_factory.mktemp("crash-s3"), server)


@pytest.fixture(scope="module")
def s3_expected(s3_backend: S3Backend, template_db: Path) -> dict[bool, Expected]:
    return {u: uninterrupted(s3_backend, u, template_db) for u in (False, True)}


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    print(f"\ncrash trials: {dict(sorted(FIGURES.items()))}, images lost: 0")


# --- the tests ---------------------------------------------------------------------------


def test_expectation_is_a_real_deletion_run(fs_expected: dict[bool, Expected]) -> None:
    """The uninterrupted runs delete garbage at every step the trials target."""
    for untagged, expected in fs_expected.items():
        deleted = [b for b in expected.report["blobs"] if b["action"] == "deleted"]
        assert len(deleted) >= 10, len(deleted)
        for step in STEPS:
            assert expected.steps[step] >= 1, (untagged, step, expected.steps)
    plain, untagged = fs_expected[False], fs_expected[True]
    assert set(untagged.tree) < set(plain.tree)  # --delete-untagged deletes more


@pytest.mark.parametrize("trial", FS_TRIALS, ids=lambda t: t.id)
def test_kill_filesystem(
    trial: Trial,
    fs_backend: FilesystemBackend,
    fs_expected: dict[bool, Expected],
    template_db: Path,
) -> None:
    run_trial(fs_backend, trial, fs_expected[trial.untagged], template_db)


@pytest.mark.s3
@pytest.mark.parametrize("trial", S3_TRIALS, ids=lambda t: t.id)
def test_kill_s3(
    trial: Trial, s3_backend: S3Backend, s3_expected: dict[bool, Expected], template_db: Path
) -> None:
    run_trial(s3_backend, trial, s3_expected[trial.untagged], template_db)
