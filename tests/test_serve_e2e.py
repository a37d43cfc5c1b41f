"""`layergc serve` end to end, with the real sweep (issue 4, "Done means").

Every daemon here is `python -m layergc.cli serve` in a subprocess of its own,
over a private copy of the session's scenario (tests/support/scenario.py: a
storage root the Go registry filled through skopeo, with known garbage and
stale uploads), `--grace 0s` so that the garbage goes at the first sweep.

1. One daemon, SQLite index, `--interval 2s`: sweeps run on the schedule (slots
   two seconds apart, read from its JSON log), /metrics agrees with the runs the
   index recorded, /healthz answers 200. Then, on a fresh copy, a daemon whose
   sweep sits in the settle of the delete protocol (`--settle 8s`; the crash
   trace, layergc/gc/crashpoints.py, says when everything is in quarantine) gets
   SIGTERM: it exits 0 well within 30 s, the run is "interrupted" in the index,
   and storage is file for file what it was (the quarantine put back; only the
   stale uploads the run purged before the quarantine are gone). The next start
   runs that same slot again, deletes the garbage, and every tag pulls back.
2. Three daemons sharing one PostgreSQL index (a random schema) and one storage
   root, `--interval 3s --lease-ttl 3s --settle 4s`: the runner is killed with
   SIGKILL while its sweep is mid-protocol; another replica takes the lease
   within one lease period, runs the dead runner's slot again and deletes the
   garbage. Runs never overlap (the index's runs table), no slot runs to its end
   twice and, once the runs are short again, every slot runs (their JSON logs).
   The survivors stop on SIGTERM with exit 0.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from layergc.gc.crashpoints import CRASH_TRACE
from layergc.gc.db import open_index
from layergc.gc.index import Index, Run
from layergc.gc.lease import LEASE_NAME
from tests.support.components import free_port, require_postgres
from tests.support.damage import Snapshot, disk_snapshot
from tests.support.database import postgres_schema
from tests.support.goregistry import GoRegistry
from tests.support.scenario import Scenario, failed_pulls
from tests.support.serve import spawn_serve
from tests.test_online import Daemon, counter

pytestmark = [pytest.mark.interop, pytest.mark.slow]

STOP_LIMIT = 30.0  # seconds: issue 4, SIGTERM exits 0 within this
START_TIMEOUT = 60.0  # a loaded CI machine takes seconds to import layergc
STARTED = "layergc serve started"  # its log line once the scheduler runs
FINISHED = "scheduled run finished"  # its log line after each run (with slot, outcome)
T = TypeVar("T")


# --- daemons -------------------------------------------------------------------------------


@dataclass
class Serve(Daemon):
    """One `layergc serve` subprocess (Daemon: its process, /metrics port and log)."""

    name: str = "serve"
    trace: Path | None = None

    def events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose `event` is `event`."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    out.append(record)
        return out

    def slots(self, event: str, **fields: str) -> list[datetime]:
        """Slots of this replica's sweep runs logging `event` (and `fields`)."""
        return [
            datetime.fromisoformat(r["slot"])
            for r in self.events(event)
            if r.get("job") == "sweep" and all(r.get(k) == v for k, v in fields.items())
        ]

    def steps(self) -> list[str]:
        """The delete-protocol steps its sweeps reached (the crash trace)."""
        if self.trace is None or not self.trace.exists():
            return []
        return self.trace.read_text().split()

    def healthz(self) -> int:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/healthz"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def terminate(self) -> float:
        """SIGTERM; it must exit 0 within STOP_LIMIT. Returns how long it took."""
        return terminate([self])[0]


def start_serve(
    workdir: Path, name: str, root: Path, db: str, *options: str, trace: bool = False
) -> Serve:
    """Start `layergc serve` (JSON logs, /metrics on a free port); not waited for."""
    port = free_port()
    log = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERGC_")}
    trace_path = workdir / f"{name}.trace" if trace else None
    if trace_path is not None:
        env[CRASH_TRACE] = str(trace_path)
    args = ["--root", str(root), "--db", db, "--grace", "0s", "--replica-id", name, *options]
    proc = spawn_serve(args, port=port, log=log, cwd=workdir, env=env, append=True)
    return Serve(proc, port, log, name=name, trace=trace_path)


def terminate(daemons: list[Serve]) -> list[float]:
    """SIGTERM to all at once; each must exit 0 within STOP_LIMIT. Seconds each took."""
    began = time.monotonic()
    for daemon in daemons:
        daemon.proc.send_signal(signal.SIGTERM)
    took = []
    for daemon in daemons:
        try:
            code = daemon.proc.wait(max(0.0, began + STOP_LIMIT - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{daemon.name}: no exit {STOP_LIMIT}s after SIGTERM") from None
        assert code == 0, f"{daemon.name} exited {code} on SIGTERM:\n{daemon.log_tail()}"
        took.append(time.monotonic() - began)
    return took


def wait_healthy(daemons: list[Serve]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for daemon in daemons:
        while daemon.healthz() != 200:
            assert daemon.proc.poll() is None, (
                f"{daemon.name} exited {daemon.proc.returncode}:\n{daemon.log_tail()}"
            )
            assert time.monotonic() < deadline, f"{daemon.name} not healthy:\n{daemon.log_tail()}"
            time.sleep(0.1)


@contextmanager
def serving(daemons: list[Serve]) -> Iterator[list[Serve]]:
    """Healthy daemons; any still running at the end (a failed test) are killed, by PID."""
    try:
        wait_healthy(daemons)
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait(10)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, poll: float = 0.1) -> T:
    """The first truthy value of `probe()` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(poll)


# --- what the index and storage say -------------------------------------------------------


def sweeps(index: Index, status: str | None = None) -> list[Run]:
    """Every sweep run (of that status), oldest first."""
    runs = (r for r in index.runs(None) if r.mode == "sweep" and status in (None, r.status))
    return sorted(runs, key=lambda r: r.id)


def blobs_on_disk(root: Path) -> set[str]:
    sha256 = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {
        f"sha256:{blob.name}"
        for prefix in sha256.iterdir()
        for blob in prefix.iterdir()
        if (blob / "data").is_file()
    }


def quarantined(root: Path) -> list[Path]:
    quarantine = root / "layergc" / "quarantine"
    return [p for p in quarantine.rglob("*") if p.is_file()] if quarantine.exists() else []


def assert_collected(root: Path, kept: set[str], scenario: Scenario) -> None:
    """The garbage is gone, everything else is there, nothing is left in quarantine."""
    on_disk = blobs_on_disk(root)
    assert on_disk & scenario.garbage == set(), "garbage left"
    assert kept - on_disk == set(), "kept blobs missing"
    assert quarantined(root) == []
    for repo, uuid in scenario.stale_uploads:
        assert not (root / "docker/registry/v2/repositories" / repo / "_uploads" / uuid).exists()
    for repo, uuid in scenario.fresh_uploads:
        assert (root / "docker/registry/v2/repositories" / repo / "_uploads" / uuid).exists()


def without_stale_uploads(files: Snapshot, scenario: Scenario) -> Snapshot:
    folders = [
        f"/docker/registry/v2/repositories/{repo}/_uploads/{uuid}/"
        for repo, uuid in scenario.stale_uploads
    ]
    return {p: h for p, h in files.items() if not any(p.startswith(f) for f in folders)}


def assert_no_overlap(runs: list[Run]) -> None:
    """Sorted by start, each run starts after the one before it finished."""
    spans = sorted((r.started_at, r.finished_at, r.id) for r in runs)
    for (_, end, before), (start, _, after) in itertools.pairwise(spans):
        assert end is not None and start >= end, f"runs {before} and {after} overlap: {spans}"


# --- 1. one daemon, SQLite ----------------------------------------------------------------


def test_serve_sweeps_on_schedule_and_sigterm_mid_sweep(
    built_scenario: Scenario, tmp_path: Path, skopeo: str
) -> None:
    kept = blobs_on_disk(built_scenario.root) - built_scenario.garbage
    garbage_bytes = sum(
        (built_scenario.v2 / "blobs/sha256" / d[7:9] / d[7:] / "data").stat().st_size
        for d in built_scenario.garbage
    )

    # (a) Sweeps on schedule, and /metrics says so.
    first = built_scenario.copy_to(tmp_path / "a" / "root")
    db = f"sqlite:///{tmp_path / 'a' / 'index.db'}"
    options = ("--interval", "2s", "--settle", "1s")
    daemon = start_serve(tmp_path / "a", "solo", first.root, db, *options)
    with serving([daemon]):
        index = open_index(db, migrate=False)
        t0 = time.monotonic()
        # Read from its log: a run is "succeeded" in the index a moment before its slot
        # is logged as finished.
        wait_for("three sweeps", lambda: len(daemon.slots(FINISHED, outcome="succeeded")) >= 3, 30)
        scheduled = daemon.slots(FINISHED, outcome="succeeded")
        assert time.monotonic() - t0 < 12, "three 2-second slots took too long"
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(scheduled)]
        # Slots are 2 s apart; the first sweep deletes (1 s settle), so on a slow
        # machine the slot after it may be coalesced away, never the later ones.
        assert all(g > 0 and g % 2.0 == 0 for g in gaps), gaps
        assert gaps[-1] == 2.0, gaps

        samples, runs = quiet_metrics(daemon, index)
        index.close()
        succeeded = [r for r in runs if r.status == "succeeded"]
        assert len(succeeded) == len(runs)
        assert counter(samples, "layergc_runs_total", mode="sweep", outcome="succeeded") == len(
            succeeded
        )
        assert succeeded[0].blobs_deleted == len(first.garbage)
        assert sum(r.blobs_deleted for r in runs) == len(first.garbage)
        assert sum(r.blobs_deleted for r in runs[1:]) == 0
        deleted = counter(samples, "layergc_objects_deleted_total", kind="blob")
        assert deleted == len(first.garbage)
        uploads = counter(samples, "layergc_objects_deleted_total", kind="upload")
        assert uploads == sum(r.uploads_deleted for r in runs) == len(first.stale_uploads)
        reclaimed = counter(samples, "layergc_reclaimed_bytes_total")
        assert reclaimed == sum(r.bytes_reclaimed for r in runs) > garbage_bytes
        assert counter(samples, "layergc_last_success_timestamp_seconds", mode="sweep") > 0
        assert counter(samples, "layergc_errors_total", mode="sweep") == 0
        assert daemon.healthz() == 200
        assert_collected(first.root, kept, first)
        daemon.terminate()

    # (b) SIGTERM while a sweep waits in the settle, everything quarantined.
    second = built_scenario.copy_to(tmp_path / "b" / "root")
    before = without_stale_uploads(disk_snapshot(second.root), second)
    db = f"sqlite:///{tmp_path / 'b' / 'index.db'}"
    daemon = start_serve(
        tmp_path / "b", "solo", second.root, db, "--interval", "2s", "--settle", "8s", trace=True
    )
    with serving([daemon]):
        wait_for("a sweep in quarantine", lambda: "quarantined" in daemon.steps(), timeout=30)
        assert quarantined(second.root), "nothing in quarantine mid-sweep"
        slot = daemon.slots("scheduled run starting")[-1]
        took = daemon.terminate()
    assert took < 7, f"SIGTERM took {took:.1f}s: the settle did not see the stop"
    assert "settle" in daemon.steps() and "recheck" not in daemon.steps()
    with open_index(db, migrate=False) as index:
        (run,) = sweeps(index)
    assert run.status == "interrupted" and run.blobs_deleted == 0, run
    assert run.report is not None and run.report["status"] == "interrupted"
    actions = {b["digest"]: b["action"] for b in run.report["blobs"]}
    assert actions == dict.fromkeys(second.garbage, "deferred"), actions
    assert quarantined(second.root) == []
    assert disk_snapshot(second.root) == before, "storage changed by the interrupted sweep"

    # (c) The next start resumes at once (that unfinished slot, or the missed one
    # after it, whichever its scheduler hands over first) and completes the work.
    daemon = start_serve(tmp_path / "b", "again", second.root, db, *options)
    with serving([daemon]):
        index = open_index(db, migrate=False)
        wait_for(
            "the work completed",
            lambda: [r for r in sweeps(index) if r.status == "succeeded" and r.blobs_deleted],
            timeout=30,
        )
        index.close()
        daemon.terminate()
    resumed = daemon.slots("scheduled run starting")[0]
    (started,) = [datetime.fromisoformat(e["timestamp"]) for e in daemon.events(STARTED)]
    assert slot <= resumed < started, f"not resumed at start-up: {slot} -> {resumed}"
    with open_index(db, migrate=False) as index:
        runs = sweeps(index)
    assert [r.status for r in runs][:2] == ["interrupted", "succeeded"], runs
    assert runs[1].blobs_deleted == len(second.garbage)
    assert_no_overlap(runs)
    assert_collected(second.root, kept, second)
    with GoRegistry(second.root, cache="inmemory", workdir=tmp_path / "b" / "registry") as reg:
        assert failed_pulls(reg, second) == []
    print(
        f"\n[serve e2e, one daemon] slot gaps {gaps} s, runs {len(succeeded)}, blobs deleted "
        f"{int(deleted)}, bytes reclaimed {int(reclaimed)}; SIGTERM mid-settle: exit 0 in "
        f"{took:.1f} s; resumed at start-up, {len(second.pulls)} pulls ok"
    )


def quiet_metrics(daemon: Serve, index: Index) -> tuple[dict[Any, float], list[Run]]:
    """/metrics and the index's sweeps at one moment between runs: every run the index
    has is finished and logged as such (a run counts in /metrics before that line)."""
    for _ in range(100):
        logged = len(daemon.slots(FINISHED))
        samples = daemon.metrics()
        runs = sweeps(index)
        if logged == len(daemon.slots(FINISHED)) == len(runs) and all(
            r.status != "running" for r in runs
        ):
            return samples, runs
        time.sleep(0.1)
    raise AssertionError("no quiet moment between sweeps to read /metrics")


# --- 2. three replicas, PostgreSQL, kill -9 ------------------------------------------------

INTERVAL, LEASE_TTL = 3.0, 3.0
POLL = LEASE_TTL / 4  # how often a waiting replica looks at the lease (scheduler.Replica)
QUIET_SECONDS = 10.0


@pytest.mark.postgres
def test_three_replicas_on_postgres_kill_9_mid_sweep(scenario: Scenario, tmp_path: Path) -> None:
    require_postgres()
    kept = blobs_on_disk(scenario.root) - scenario.garbage
    options = ("--interval", "3s", "--lease-ttl", "3s", "--settle", "4s")
    with postgres_schema() as url:
        replicas = {
            name: start_serve(tmp_path, name, scenario.root, url, *options, trace=True)
            for name in ("r1", "r2", "r3")
        }
        with serving(list(replicas.values())):
            index = open_index(url, migrate=False)
            try:
                figures = kill_the_runner_and_watch(replicas, index, scenario)
                runs = sweeps(index)
                lease = index.lease(LEASE_NAME)
            finally:
                index.close()
    victim = replicas[figures["victim"]]
    survivors = [r for r in replicas.values() if r is not victim]
    print(f"\n[serve e2e, 3 replicas] {figures}")

    # The killed run and its takeover.
    killed = next(r for r in runs if r.id == figures["killed_run"])
    takeover = next(r for r in runs if r.id == figures["takeover_run"])
    assert killed.status == "interrupted" and killed.pid == victim.proc.pid
    assert takeover.status == "succeeded" and takeover.pid != victim.proc.pid
    assert takeover.blobs_deleted == len(scenario.garbage)
    assert figures["takeover_after_s"] <= LEASE_TTL + POLL + 1.5, figures
    assert lease is not None and lease.token > figures["victim_token"]
    assert not lease.holder.startswith(f"{victim.name}#")

    # Each slot ran to its end once; runs never overlapped, anywhere.
    assert_no_overlap(runs)
    done = sorted(s for r in survivors for s in r.slots(FINISHED))
    assert len(done) == len(set(done)), f"a slot ran to its end twice: {done}"
    outcomes = [r["outcome"] for d in survivors for r in d.events(FINISHED) if r["job"] == "sweep"]
    assert set(outcomes) == {"succeeded"}, outcomes
    assert len(done) == sum(1 for r in runs if r.status == "succeeded"), (done, runs)
    assert victim.slots(FINISHED) == []
    assert figures["victim_slot"] in done, "the killed runner's slot was not run again"
    # Once runs are short again, every slot runs, on one survivor or the other.
    quiet = [s for s in done if s > figures["takeover_end"]]
    assert len(quiet) >= QUIET_SECONDS / INTERVAL - 1, (quiet, done)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(quiet)}
    assert gaps == {INTERVAL}, f"slots skipped or doubled after the takeover: {quiet}"
    elapsed = round((done[-1] - figures["victim_slot"]).total_seconds() / INTERVAL) + 1
    print(f"slots elapsed {elapsed}, run to their end {len(done)} (the rest coalesced)")
    assert len(done) >= elapsed - 3, (elapsed, done)
    for survivor in survivors:
        assert survivor.proc.returncode == 0
    assert_collected(scenario.root, kept, scenario)


def kill_the_runner_and_watch(
    replicas: dict[str, Serve], index: Index, scenario: Scenario
) -> dict[str, Any]:
    """SIGKILL the replica whose sweep is mid-protocol, see another take over, let a few
    quiet slots run, then SIGTERM the survivors. Returns what the test asserts on."""
    runner = wait_for(
        "a sweep in quarantine",
        lambda: next((r for r in replicas.values() if "quarantined" in r.steps()), None),
        timeout=40,
    )
    lease = index.lease(LEASE_NAME)
    assert lease is not None and lease.holder.startswith(f"{runner.name}#"), lease
    assert lease.expires_at > datetime.now(UTC)
    held = {name: counter(r.metrics(), "layergc_lease_held") for name, r in replicas.items()}
    assert held == {name: float(name == runner.name) for name in replicas}, held
    (killed_run,) = [r for r in sweeps(index) if r.status == "running"]
    assert "recheck" not in runner.steps(), "the settle ended before the kill"
    victim_slot = runner.slots("scheduled run starting")[-1]

    runner.proc.send_signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)
    assert runner.proc.wait(10) == -signal.SIGKILL

    takeover = wait_for(
        "another replica to finish the work",
        lambda: next(
            (r for r in sweeps(index) if r.id > killed_run.id and r.status == "succeeded"), None
        ),
        timeout=30,
    )
    assert takeover.finished_at is not None
    time.sleep(QUIET_SECONDS)
    # SIGTERM right after a sweep ends: the next slot is seconds away, so no run
    # is interrupted and every slot the logs show ran to its end.
    last = sweeps(index)[-1].id
    wait_for(
        "a quiet moment",
        lambda: (runs := sweeps(index))[-1].id > last and runs[-1].status != "running",
        timeout=2 * INTERVAL + 10,
        poll=0.05,
    )
    survivors = [r for r in replicas.values() if r is not runner]
    stop_seconds = terminate(survivors)
    return {
        "victim": runner.name,
        "victim_token": lease.token,
        "victim_slot": victim_slot,
        "killed_run": killed_run.id,
        "takeover_run": takeover.id,
        "takeover_after_s": round((takeover.started_at - killed_at).total_seconds(), 2),
        "takeover_end": takeover.finished_at,
        "stop_seconds": [round(s, 2) for s in stop_seconds],
        "garbage": len(scenario.garbage),
    }
