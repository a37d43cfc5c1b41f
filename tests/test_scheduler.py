"""layergc.gc.scheduler with a fake run function: schedule, exclusivity, lease, stop.

In-process tests run `serve` in threads over an SQLite index in tmp; the
signal tests and the kill -9 takeover run `serve` in subprocesses.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine, text

from layergc.config import Settings, load_settings
from layergc.errors import ConfigError
from layergc.gc.db import open_index
from layergc.gc.scheduler import (
    JOBS_TABLE,
    LEASE_NAME,
    SWEEP_JOB_ID,
    Replica,
    SlotBook,
    current_slot,
    serve,
)
from layergc.metrics import Metrics
from tests.support.components import require_postgres

REPO = Path(__file__).resolve().parents[1]


def make_settings(tmp_path: Path, **options: str) -> Settings:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    values = {
        "root": str(root),
        "db": f"sqlite:///{tmp_path}/index.db",
        "interval": "1s",
        "purge_interval": "0s",
        "lease_ttl": "2s",
    }
    values.update(options)
    return load_settings(values, env={})


@dataclass
class Call:
    replica: str
    mode: str
    slot: datetime | None
    start: float
    end: float = 0.0
    stopped: bool = False


@dataclass
class FakeRun:
    """A run function that records its calls; `block` makes runs wait for their stop."""

    duration: float = 0.0
    block: set[str] = field(default_factory=set)  # replica ids whose runs block
    calls: list[Call] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self, settings: Settings, *, mode: str, stop: threading.Event, index: Any
    ) -> dict[str, Any]:
        call = Call(settings.replica_id, mode, current_slot(), time.monotonic())
        with self.lock:
            self.calls.append(call)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            if settings.replica_id in self.block:
                stop.wait(60)
            else:
                stop.wait(self.duration)
            call.stopped = stop.is_set()
        finally:
            call.end = time.monotonic()
            with self.lock:
                self.active -= 1
        status = "interrupted" if call.stopped else "succeeded"
        return {"status": status, "blobs": [], "manifests": [], "uploads": [], "errors": []}

    def slots(self, mode: str = "sweep") -> list[datetime]:
        return [c.slot for c in self.calls if c.mode == mode and c.slot is not None]


@dataclass
class Running:
    replica: Replica
    stop: threading.Event
    thread: threading.Thread
    result: list[int]


@contextmanager
def running(settings: Settings, fake: Any, **kwargs: Any) -> Iterator[Running]:
    """`serve` in a thread; stopped (and joined) at the end of the block."""
    stop = threading.Event()
    ready = threading.Event()
    box: dict[str, Replica] = {}
    result: list[int] = []

    def started(replica: Replica) -> None:
        box["replica"] = replica
        ready.set()

    def target() -> None:
        result.append(serve(settings, fake, stop=stop, on_started=started, **kwargs))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30), "serve did not start"
    handle = Running(box["replica"], stop, thread, result)
    try:
        yield handle
    finally:
        stop.set()
        thread.join(40)
        assert not thread.is_alive(), "serve did not stop"


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- scheduling ---------------------------------------------------------------------------


def test_interval_runs_on_schedule(tmp_path: Path) -> None:
    fake = FakeRun()
    with running(make_settings(tmp_path), fake) as r:
        time.sleep(3.6)
    assert r.result == [0]
    slots = fake.slots()
    assert 2 <= len(slots) <= 4, slots
    assert all(c.mode == "sweep" for c in fake.calls)
    # One run per slot, slots one interval apart: nothing skipped, nothing doubled.
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(slots)] == [1.0] * (
        len(slots) - 1
    )


def test_purge_job_runs_in_purge_mode(tmp_path: Path) -> None:
    fake = FakeRun()
    with running(make_settings(tmp_path, interval="1h", purge_interval="1s"), fake):
        wait_for(lambda: len(fake.calls) >= 2)
    assert {c.mode for c in fake.calls} == {"purge-uploads"}


def test_max_instances_and_coalescing(tmp_path: Path) -> None:
    """Runs longer than the interval: no overlap, and no burst of catch-up runs after."""
    fake = FakeRun(duration=2.5)
    with running(make_settings(tmp_path), fake):
        time.sleep(4.8)
    assert fake.max_active == 1
    assert 1 <= len(fake.calls) <= 2, fake.calls
    if len(fake.calls) == 2:
        first, second = fake.calls
        assert second.start >= first.end
        assert (second.slot - first.slot).total_seconds() >= 3  # the slots between were skipped


def test_sweep_and_purge_never_overlap(tmp_path: Path) -> None:
    fake = FakeRun(duration=0.6)
    with running(make_settings(tmp_path, purge_interval="1s"), fake):
        time.sleep(4.5)
    assert fake.max_active == 1
    assert {c.mode for c in fake.calls} == {"sweep", "purge-uploads"}


def test_serve_needs_a_schedule(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, interval="")
    with pytest.raises(ConfigError, match="--schedule"):
        serve(settings, FakeRun(), stop=threading.Event())


def test_cron_schedule(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, interval="", schedule="*/5 * * * *")
    with running(settings, FakeRun()) as r:
        job = r.replica.scheduler.get_job(SWEEP_JOB_ID)
        assert job.name == "sweep cron '*/5 * * * *'"
        nxt = job.next_run_time
        assert nxt.minute % 5 == 0 and nxt.second == 0
        assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(minutes=5)


def test_default_run_fn_is_the_real_sweep(tmp_path: Path) -> None:
    """Without run_fn, serve runs layergc.gc.run.run_sweep: runs recorded in the index."""
    from layergc.metrics import METRICS

    def succeeded() -> float:
        return metric(METRICS, "layergc_runs_total", mode="sweep", outcome="succeeded")

    before = succeeded()
    settings = make_settings(tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings,), kwargs={"stop": stop})
    thread.start()
    try:
        wait_for(lambda: succeeded() >= before + 2, timeout=20)
    finally:
        stop.set()
        thread.join(40)
    index = open_index(settings.db)
    runs = index.runs()
    index.close()
    assert len(runs) >= 2 and {r.mode for r in runs} == {"sweep"}
    assert {r.status for r in runs} <= {"succeeded", "interrupted"}


# --- persistence and misfires ------------------------------------------------------------


@contextmanager
def stored_jobs(db_url: str) -> Iterator[SQLAlchemyJobStore]:
    """layergc's job store, opened without a running scheduler (which would run the jobs)."""
    store = SQLAlchemyJobStore(url=db_url, tablename=JOBS_TABLE)
    store.start(BackgroundScheduler(), "default")
    try:
        yield store
    finally:
        store.shutdown()


def set_next_run(db_url: str, when: datetime) -> None:
    with stored_jobs(db_url) as store:
        job = store.lookup_job(SWEEP_JOB_ID)
        job.next_run_time = when
        store.update_job(job)


def test_jobs_are_persisted_and_kept_across_restarts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, interval="1h")
    with running(settings, FakeRun()):
        pass
    with stored_jobs(settings.db) as store:
        job = store.lookup_job(SWEEP_JOB_ID)
        assert job.name == "sweep every 1h" and job.args == ("sweep",)
        first_next = job.next_run_time
    with running(settings, FakeRun()):
        pass
    with stored_jobs(settings.db) as store:
        assert store.lookup_job(SWEEP_JOB_ID).next_run_time == first_next  # kept
    with running(make_settings(tmp_path, interval="2h"), FakeRun()):
        pass
    with stored_jobs(settings.db) as store:
        job = store.lookup_job(SWEEP_JOB_ID)
        assert job.name == "sweep every 2h"  # a changed schedule replaces the job
        assert job.next_run_time > first_next


def test_missed_runs_run_once_at_start_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, interval="1h", misfire_grace="1h")
    with running(settings, FakeRun()):
        pass
    missed = datetime.now(UTC) - timedelta(hours=3, minutes=30)
    set_next_run(settings.db, missed)  # four slots missed
    fake = FakeRun()
    with running(settings, fake):
        wait_for(lambda: fake.calls)
        time.sleep(1.5)
    assert len(fake.calls) == 1  # coalesced into one run
    assert fake.calls[0].slot == missed + timedelta(hours=3)  # the latest missed slot


def test_runs_missed_beyond_misfire_grace_are_not_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, interval="6h", misfire_grace="1h")
    with running(settings, FakeRun()):
        pass
    set_next_run(settings.db, datetime.now(UTC) - timedelta(hours=2))
    fake = FakeRun()
    with running(settings, fake) as r:
        time.sleep(2)
        next_run = r.replica.scheduler.get_job(SWEEP_JOB_ID).next_run_time
    assert fake.calls == []
    assert next_run > datetime.now(UTC)  # rescheduled to the next slot


# --- replicas and the lease ----------------------------------------------------------------


def test_two_replicas_run_each_slot_once(tmp_path: Path) -> None:
    fake = FakeRun(duration=0.3)
    # A lease long enough that no run loses it on a loaded machine: a holder whose
    # lease ran out while it still ran is taken over, and its slot run again, by
    # design (seen once in CI with 2s, a slot run twice).
    a = make_settings(tmp_path, replica_id="a", lease_ttl="10s")
    b = make_settings(tmp_path, replica_id="b", lease_ttl="10s")
    with running(a, fake), running(b, fake):
        time.sleep(5)
    slots = fake.slots()
    assert len(slots) >= 3
    assert len(slots) == len(set(slots)), "a slot ran twice"
    assert fake.max_active == 1, "two replicas ran at once"
    # Every slot between the first and the last ran (on one replica or the other).
    span = round((max(slots) - min(slots)).total_seconds())
    assert len(slots) >= span  # at most one slot lost to the start of the second replica


def test_waiting_replica_takes_over_an_expired_lease(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, lease_ttl="2s")
    index = open_index(settings.db)
    # A replica on another host died (kill -9) holding the lease, its run "running".
    assert index.acquire_lease(LEASE_NAME, "ghost", 3) is not None
    expiry = time.monotonic() + 3
    dead_run = index.start_run("sweep", dry_run=False, host="elsewhere", pid=1)
    fake = FakeRun()
    with running(settings, fake):
        wait_for(lambda: fake.calls, timeout=10)
    first = fake.calls[0]
    assert first.start >= expiry - 0.3  # not before the dead holder's lease expired
    assert first.start <= expiry + 2  # within a poll of the expiry
    assert index.run(dead_run).status == "interrupted"  # the new holder recorded it
    index.close()


def test_interrupted_slot_is_finished_by_another_replica(tmp_path: Path) -> None:
    fake = FakeRun(duration=0.1, block={"a"})
    a_settings = make_settings(tmp_path, replica_id="a", interval="1s")
    b_settings = make_settings(tmp_path, replica_id="b", interval="1s")
    with running(a_settings, fake) as a:
        assert fake.started.wait(10)
        slot = fake.calls[0].slot
        with running(b_settings, fake):
            time.sleep(1.5)  # b's scheduler picks up the slot and waits for the lease
            assert [c.replica for c in fake.calls] == ["a"]
            assert a.replica.shutdown(10)  # SIGTERM-like: a's run is interrupted
            wait_for(lambda: any(c.replica == "b" for c in fake.calls))
            time.sleep(0.3)
    assert fake.calls[0].stopped
    b_calls = [c for c in fake.calls if c.replica == "b"]
    assert b_calls[0].slot == slot  # b finished the slot a left
    assert len(fake.slots()) == len(set(fake.slots())) + 1  # only that slot ran twice


def test_next_start_finishes_an_interrupted_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, replica_id="a", interval="1h")
    fake = FakeRun(block={"a"})
    with running(settings, fake) as r:
        set_next_run_now(r.replica)
        assert fake.started.wait(10)
    assert fake.calls[0].stopped  # stopped mid-run, like SIGTERM
    slot = fake.calls[0].slot
    again = FakeRun()
    with running(settings, again):
        wait_for(lambda: again.calls and again.calls[0].end)
    assert again.calls[0].slot == slot and not again.calls[0].stopped
    index = open_index(settings.db)
    assert SlotBook(index.engine).done(SWEEP_JOB_ID) == round(slot.timestamp() * 1e6)
    index.close()


def set_next_run_now(replica: Replica) -> None:
    replica.scheduler.modify_job(SWEEP_JOB_ID, next_run_time=datetime.now(UTC))


def test_a_run_that_raises_is_not_retried_in_a_loop(tmp_path: Path) -> None:
    calls = []

    def broken(settings: Settings, **kwargs: Any) -> dict[str, Any]:
        calls.append(current_slot())
        raise RuntimeError("storage unreachable")

    settings = make_settings(tmp_path, interval="1h", lease_ttl="1s")
    with running(settings, broken) as r:
        set_next_run_now(r.replica)
        wait_for(lambda: calls)
        time.sleep(1.5)  # several watchdog polls
        done = SlotBook(r.replica.index.engine).done(SWEEP_JOB_ID)
    assert len(calls) == 1
    assert done == round(calls[0].timestamp() * 1e6)


def test_lost_lease_stops_the_run(tmp_path: Path) -> None:
    fake = FakeRun(block={"a"})
    settings = make_settings(tmp_path, replica_id="a", lease_ttl="1500ms", interval="1h")
    metrics = Metrics()
    with running(settings, fake, metrics=metrics) as r:
        set_next_run_now(r.replica)
        assert fake.started.wait(10)
        assert metric(metrics, "layergc_lease_held") == 1
        with r.replica.index.engine.begin() as conn:  # another replica takes the lease
            conn.execute(
                text("UPDATE layergc_leases SET holder = 'thief', token = token + 1"),
            )
        wait_for(lambda: fake.calls[0].end, timeout=5)
        assert fake.calls[0].stopped
        wait_for(lambda: metric(metrics, "layergc_lease_held") == 0, timeout=5)
        slots = SlotBook(r.replica.index.engine)
        assert slots.done(SWEEP_JOB_ID) == -1  # an interrupted run does not mark its slot


def test_same_replica_id_twice_still_excludes(tmp_path: Path) -> None:
    """Two processes given one LAYERGC_REPLICA_ID must not both think they hold the lease."""
    fake = FakeRun(duration=0.4)
    settings = make_settings(tmp_path, replica_id="same")
    with running(settings, fake), running(settings, fake):
        time.sleep(4)
    assert fake.max_active == 1
    assert len(fake.slots()) == len(set(fake.slots()))


# --- health, metrics, stopping -------------------------------------------------------------


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_healthz_and_metrics_endpoint(tmp_path: Path) -> None:
    fake = FakeRun()
    metrics = Metrics()
    settings = make_settings(tmp_path, metrics_addr="127.0.0.1:0")
    with running(settings, fake, metrics=metrics) as r:
        base = f"http://127.0.0.1:{r.replica.http.port}"
        assert get_status(base + "/healthz") == 200
        wait_for(lambda: fake.calls and fake.calls[0].end)
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert "layergc_lease_held " in body and "layergc_runs_total" in body

        real = r.replica.index
        broken = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
        r.replica.index = type("Down", (), {"engine": broken})()
        try:
            assert get_status(base + "/healthz") == 503  # the database does not answer
        finally:
            r.replica.index = real
        assert get_status(base + "/healthz") == 200
        r.replica.scheduler.pause()
        assert not r.replica.health()  # the scheduler is not running
        r.replica.scheduler.resume()
        assert r.replica.health()


def test_stop_reaches_the_run_and_serve_returns_0(tmp_path: Path) -> None:
    fake = FakeRun(block={"a"})
    metrics = Metrics()
    settings = make_settings(tmp_path, replica_id="a")
    with running(settings, fake, metrics=metrics) as r:
        assert fake.started.wait(10)
        began = time.monotonic()
        r.stop.set()
        r.thread.join(30)
        assert time.monotonic() - began < 5
    assert r.result == [0]
    assert fake.calls[0].stopped
    assert metric(metrics, "layergc_lease_held") == 0
    index = open_index(settings.db)
    lease = index.lease(LEASE_NAME)
    assert lease is not None and lease.expires_at < datetime.now(UTC)  # released
    index.close()


def test_shutdown_gives_up_on_a_run_that_ignores_stop(tmp_path: Path) -> None:
    release = threading.Event()

    def stubborn(settings: Settings, **kwargs: Any) -> dict[str, Any]:
        started.set()
        release.wait(30)
        return {"status": "succeeded"}

    started = threading.Event()
    replica = Replica(make_settings(tmp_path), stubborn, metrics=Metrics()).start()
    try:
        assert started.wait(10)
        began = time.monotonic()
        assert replica.shutdown(timeout=1) is False
        assert time.monotonic() - began < 3
    finally:
        release.set()


# --- signals and kill -9, in subprocesses -----------------------------------------------

SCRIPT = """
import os, sys, threading, time
from layergc.config import load_settings
from layergc.gc.scheduler import current_slot, serve
from layergc.logs import configure_logging

log_path, run_seconds = sys.argv[1], float(sys.argv[2])
settings = load_settings({}, env=os.environ)
configure_logging("json", "info")

def note(*words):
    with open(log_path, "a") as fh:
        fh.write(" ".join(str(w) for w in words) + "\\n")

def fake(settings, *, mode, stop, index):
    slot = current_slot().timestamp()
    note("start", settings.replica_id, os.getpid(), mode, slot, time.time())
    stopped = stop.wait(run_seconds)
    note("stopped" if stopped else "end", settings.replica_id, os.getpid(), mode, slot, time.time())
    return {"status": "interrupted" if stopped else "succeeded", "errors": []}

sys.exit(serve(settings, fake))
"""


def start_serve(
    tmp_path: Path, env: dict[str, str], log: Path, run_seconds: float
) -> subprocess.Popen[bytes]:
    script = tmp_path / "serve_fake.py"
    script.write_text(textwrap.dedent(SCRIPT))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERGC_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    with open(tmp_path / f"stderr-{env.get('LAYERGC_REPLICA_ID')}.log", "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, str(script), str(log), str(run_seconds)],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def events(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_run_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "root").mkdir()
    log = tmp_path / "events.log"
    env = {
        "LAYERGC_ROOT": str(tmp_path / "root"),
        "LAYERGC_DB": f"sqlite:///{tmp_path}/index.db",
        "LAYERGC_INTERVAL": "1s",
        "LAYERGC_PURGE_INTERVAL": "0s",
        "LAYERGC_REPLICA_ID": "solo",
    }
    proc = start_serve(tmp_path, env, log, run_seconds=60)
    try:
        wait_for(lambda: any(e[0] == "start" for e in events(log)), timeout=30)
        began = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        assert time.monotonic() - began < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kinds = [e[0] for e in events(log)]
    assert kinds == ["start", "stopped"]  # the run saw the stop; no new run started
    stderr = (tmp_path / "stderr-solo.log").read_text()
    assert '"event": "signal received; stopping"' in stderr


@pytest.mark.postgres
def test_three_replicas_on_postgres_with_kill_9(tmp_path: Path) -> None:
    """Each slot runs to its end once; a killed runner's slot is taken over within a lease."""
    base_url = require_postgres()
    schema = "sched_" + uuid.uuid4().hex[:10]
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{base_url}?options=-csearch_path%3D{schema}"
    (tmp_path / "root").mkdir()
    log = tmp_path / "events.log"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("r1", "r2", "r3"):
            env = {
                "LAYERGC_ROOT": str(tmp_path / "root"),
                "LAYERGC_DB": url,
                "LAYERGC_INTERVAL": "2s",
                "LAYERGC_PURGE_INTERVAL": "0s",
                "LAYERGC_LEASE_TTL": "3s",
                "LAYERGC_REPLICA_ID": name,
            }
            procs[name] = start_serve(tmp_path, env, log, run_seconds=1.0)
        # Kill whoever runs once a few slots have run.
        wait_for(lambda: sum(e[0] == "end" for e in events(log)) >= 2, timeout=60)
        wait_for(lambda: events(log)[-1][0] == "start", timeout=20)
        victim_event = events(log)[-1]
        victim, victim_slot = victim_event[1], victim_event[4]
        killed_at = time.time()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        wait_for(
            lambda: any(e[0] == "end" and e[4] == victim_slot for e in events(log)),
            timeout=20,
        )
        time.sleep(2.5)  # another slot with two replicas
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    evs = events(log)
    ends = [e[4] for e in evs if e[0] == "end"]
    assert len(ends) == len(set(ends)), "a slot ran to its end twice"
    takeover = next(e for e in evs if e[0] == "start" and e[4] == victim_slot and e[1] != victim)
    assert float(takeover[5]) - killed_at < 3 + 2  # within one lease period (+ a poll)
    # Never two runs at once: sorted by start, each run begins after the previous ended
    # (the victim's run ended when it was killed).
    runs: dict[tuple[str, str], list[float]] = {}
    for kind, replica, _pid, _mode, slot, at in evs:
        span = runs.setdefault((replica, slot), [float(at), killed_at])
        if kind != "start":
            span[1] = float(at)
    spans = sorted(runs.values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05, spans
    assert {e[1] for e in evs if e[0] == "end"} - {victim}, "survivors ran slots"
    for name, proc in procs.items():
        if name != victim:
            assert proc.returncode == 0
