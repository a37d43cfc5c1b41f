"""`layergc serve`: sweeps on a schedule, one runner among replicas.

How it is built, and why
------------------------
Each replica runs its own APScheduler 3 BackgroundScheduler over one shared
SQLAlchemyJobStore in the index database (table `layergc_scheduler_jobs`):
two jobs with fixed ids, "layergc-sweep" (cron or interval) and
"layergc-purge" (purge-uploads, interval), coalesced, max_instances 1.

APScheduler 3 was not built for several schedulers on one job store: two of
them may both pick up a due job, or one may pick it up and move the stored
next run time on before the others look. So the store only says *when* runs
are due; four things make each scheduled run happen once:

1. Slots. Every scheduled run has a fire time, the same on every replica since
   they read it from the one stored job; our executor hands it (the slot) to
   the job function. The table `layergc_schedule_slots` holds, per job, the
   latest slot a runner started and the latest slot run to its end.
2. The lease. Before running, a replica takes the index's lease "sweep"
   (`Index.acquire_lease`: an expiring row with a fencing token), renews it
   from a heartbeat thread, and stops the run if it loses it. Sweep and purge
   share the lease, and runs of one process take turns (first come, first
   served), so no two runs of any kind overlap anywhere. Under the lease the
   runner re-reads the slot table, skips a slot already done, records the
   slot started, runs, and records it done, both writes fenced on its token.
3. Waiting instead of giving up. A replica that finds the lease taken polls
   until the slot is done (then skips it) or the lease is free with the slot
   still undone (then runs it).
4. A watchdog. Every poll, each replica looks for a slot started and not done
   and waits for it as in (3). So when a runner is killed (-9), its lease
   expires within one lease period and a surviving replica runs that slot
   again; the sweep resumes from the index what the dead run left. A run
   stopped by SIGTERM is not marked done either: another replica finishes it
   at once, or, with no other replica, this one does at its next start.

Hence: a slot runs to its end at most once (every runner checks the done mark
under the lease), and at least once while some replica lives. A run that
fails or raises counts as done (the next slot tries again; retrying at once
would loop on a broken configuration); only an interrupted one is resumed.

Start-up: a stored job whose trigger is unchanged keeps its stored next run
time, so a run missed while every replica was down is still due: APScheduler
runs it once (coalesced) if it is at most `misfire_grace` late. A changed
trigger replaces the job. Replicas must share the schedule settings: a
replica with another schedule replaces the shared job for all.

SIGTERM/SIGINT set the stop event: the scheduler stops (no new runs), the run
in flight gets the event through `run_fn(stop=...)` and finishes or rolls back
its step, and `serve` returns 0 after at most ~25 s (a run that ignores the
stop is abandoned: its lease expires and the next run resumes its work).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    String,
    Table,
    exists,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from layergc.config import Settings, format_duration
from layergc.errors import ConfigError
from layergc.gc.lease import LEASE_NAME, Heartbeat
from layergc.logs import bind
from layergc.metrics import METRICS, Metrics, MetricsServer
from layergc.signals import stop_on_signals

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "layergc-sweep"
PURGE_JOB_ID = "layergc-purge"
SWEEP, PURGE = "sweep", "purge-uploads"
JOB_IDS = {SWEEP: SWEEP_JOB_ID, PURGE: PURGE_JOB_ID}
MODES = {job_id: mode for mode, job_id in JOB_IDS.items()}
JOBS_TABLE = "layergc_scheduler_jobs"
SLOTS_TABLE = "layergc_schedule_slots"
JOB_FUNC = "layergc.gc.scheduler:scheduled_run"
SHUTDOWN_WAIT = 25.0  # seconds; systemd and Kubernetes give 30-40 before SIGKILL
HEALTH_TIMEOUT = 5.0

RunFn = Callable[..., Mapping[str, Any]]

_metadata = MetaData()
_slots = Table(
    SLOTS_TABLE,
    _metadata,
    Column("job_id", String(191), primary_key=True),
    # Fire times in Unix microseconds: the latest slot a runner started, and the
    # latest one run to its end. started > done means a run is in flight or died.
    Column("started_us", BigInteger, nullable=False),
    Column("done_us", BigInteger, nullable=False),
    Column("holder", String(255), nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)


# --- jobs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    mode: str
    trigger: BaseTrigger
    signature: str  # stored as the job's name: an unchanged signature keeps the stored job


def job_specs(settings: Settings, timezone: Any = None) -> list[JobSpec]:
    """The jobs `settings` asks for; ConfigError without a sweep schedule."""
    specs = []
    if settings.schedule:
        trigger: BaseTrigger = CronTrigger.from_crontab(settings.schedule, timezone=timezone)
        specs.append(JobSpec(SWEEP_JOB_ID, SWEEP, trigger, f"sweep cron {settings.schedule!r}"))
    elif settings.interval:
        trigger = IntervalTrigger(seconds=settings.interval.total_seconds(), timezone=timezone)
        specs.append(
            JobSpec(
                SWEEP_JOB_ID, SWEEP, trigger, f"sweep every {format_duration(settings.interval)}"
            )
        )
    else:
        raise ConfigError("serve needs a schedule: --schedule CRON or --interval DURATION")
    if settings.purge_interval:
        trigger = IntervalTrigger(
            seconds=settings.purge_interval.total_seconds(), timezone=timezone
        )
        specs.append(
            JobSpec(
                PURGE_JOB_ID,
                PURGE,
                trigger,
                f"purge every {format_duration(settings.purge_interval)}",
            )
        )
    return specs


@dataclass(frozen=True)
class _JobContext:
    replica: Replica
    slot: datetime


_JOB_CONTEXT: contextvars.ContextVar[_JobContext | None] = contextvars.ContextVar(
    "layergc_job", default=None
)


def current_slot() -> datetime | None:
    """The scheduled fire time of the job running in this thread, if any."""
    context = _JOB_CONTEXT.get()
    return context.slot if context else None


def scheduled_run(mode: str) -> str:
    """The function the stored jobs name (so the job store pickles only `mode`).

    Whichever replica's scheduler picks the job up runs it with its own settings.
    """
    context = _JOB_CONTEXT.get()
    if context is None:
        log.error("scheduled_run outside a layergc executor", extra={"mode": mode})
        return "no-context"
    return context.replica.run_scheduled(mode, context.slot)


class _ReplicaExecutor(BaseExecutor):
    """Runs each job in its own daemon thread, telling it its replica and slot.

    Daemon threads: a run still going after the shutdown wait must not keep the
    process alive (the lease expires, the next run picks up from the index).
    """

    def __init__(self, replica: Replica) -> None:
        super().__init__()
        self._replica = replica

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        thread = threading.Thread(
            target=self._run, args=(job, run_times), name=f"layergc-{job.id}", daemon=True
        )
        self._replica._track(thread)
        thread.start()

    def _run(self, job: Any, run_times: list[datetime]) -> None:
        # Coalescing leaves one run time; the latest is the slot in any case.
        _JOB_CONTEXT.set(_JobContext(self._replica, run_times[-1]))
        try:
            events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
        except BaseException as exc:
            self._run_job_error(job.id, exc, exc.__traceback__)
        else:
            self._run_job_success(job.id, events)


# --- slots ------------------------------------------------------------------------------


def _us(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def ensure_tables(engine: Engine, tables: list[Table]) -> None:
    """Create `tables` if missing; replicas starting together may race on it."""
    for attempt in range(5):
        try:
            for table in tables:
                table.create(engine, checkfirst=True)
            return
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


class SlotBook:
    """Per job, the latest slot started and the latest run to its end."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def done(self, job_id: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(_slots.c.done_us).where(_slots.c.job_id == job_id)
            ).scalar_one_or_none()
        return -1 if value is None else int(value)

    def unfinished(self) -> dict[str, int]:
        """job id -> the slot started and not run to its end (in flight, or its runner died)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_slots.c.job_id, _slots.c.started_us).where(
                    _slots.c.started_us > _slots.c.done_us
                )
            ).all()
        return {row.job_id: int(row.started_us) for row in rows}

    def start(self, job_id: str, slot_us: int, holder: str, token: int) -> bool:
        return self._advance(job_id, "started_us", slot_us, holder, token)

    def finish(self, job_id: str, slot_us: int, holder: str, token: int) -> bool:
        return self._advance(job_id, "done_us", slot_us, holder, token)

    def _advance(self, job_id: str, column: str, slot_us: int, holder: str, token: int) -> bool:
        """Move `column` up to `slot_us`, only while `holder` holds the lease as `token`."""
        from layergc.gc.index import Lease

        lease = Lease.__table__.c
        fenced = exists().where(
            lease.name == LEASE_NAME, lease.holder == holder, lease.token == token
        )
        now_us = _us(datetime.now(UTC))
        with self.engine.begin() as conn:
            if not conn.execute(select(fenced)).scalar():
                return False
            row = conn.execute(select(_slots).where(_slots.c.job_id == job_id)).first()
            if row is None:
                values = {"started_us": -1, "done_us": -1, column: slot_us}
                conn.execute(
                    insert(_slots).values(job_id=job_id, holder=holder, updated_us=now_us, **values)
                )
            elif getattr(row, column) < slot_us:
                conn.execute(
                    update(_slots)
                    .where(_slots.c.job_id == job_id)
                    .values({column: slot_us, "holder": holder, "updated_us": now_us})
                )
        return True


class _Turns:
    """Runs of one process take turns in arrival order.

    A plain lock is no queue: a purge every minute would keep grabbing it
    from a sweep that has waited for an hour.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[_Ticket] = deque()
        self.closed = False

    @contextmanager
    def ticket(self) -> Iterator[_Ticket]:
        ticket = _Ticket(self)
        with self._cond:
            self._queue.append(ticket)
        try:
            yield ticket
        finally:
            with self._cond:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter for good (shutting down)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass(eq=False)
class _Ticket:
    turns: _Turns

    def first(self) -> bool:
        with self.turns._cond:
            return self.turns._queue[0] is self

    def wait(self, timeout: float) -> None:
        with self.turns._cond:
            self.turns._cond.wait_for(
                lambda: self.turns.closed or self.turns._queue[0] is self, timeout
            )


# --- the replica ----------------------------------------------------------------------------


class Replica:
    """One `layergc serve` process (or thread, in tests): scheduler, lease, metrics."""

    def __init__(
        self,
        settings: Settings,
        run_fn: RunFn | None = None,
        *,
        index: Any = None,
        metrics: Metrics | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or METRICS
        self.run_fn = run_fn or _default_run_fn(self.metrics)
        self.stop = stop or threading.Event()
        # Unique per Replica even if two processes are given one replica id: the
        # index renews a lease for a holder of the same name instead of refusing it.
        self.holder = f"{settings.replica_id}#{uuid.uuid4().hex[:8]}"
        self.ttl = settings.lease_ttl.total_seconds()
        # How often a waiting run looks at the lease and the slots again.
        self.poll = max(0.2, min(self.ttl / 4, 5.0))
        self.index = index
        self._own_index = index is None
        self.scheduler: BackgroundScheduler | None = None
        self.http: MetricsServer | None = None
        self._turns = _Turns()  # one run at a time in this process, first come first served
        self._threads: set[threading.Thread] = set()
        self._active_stops: set[threading.Event] = set()
        self._inflight: set[tuple[str, int]] = set()  # (job id, slot) handled here now
        self._registry_lock = threading.Lock()
        self._ping: threading.Thread | None = None
        self._ping_ok = False

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> Replica:
        specs = job_specs(self.settings)  # a missing schedule fails before anything opens
        if self.index is None:
            from layergc.gc.db import open_index

            self.index = open_index(self.settings.db)
        engine: Engine = self.index.engine
        self.slots = SlotBook(engine)
        store = SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)
        ensure_tables(engine, [store.jobs_t, _slots])
        self.scheduler = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": _ReplicaExecutor(self)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(self.settings.misfire_grace.total_seconds())),
            },
        )
        self.scheduler.start(paused=True)
        self._install_jobs(specs)
        self.scheduler.resume()
        self._watchdog = threading.Thread(target=self._watch, name="layergc-watch", daemon=True)
        self._watchdog.start()
        self.metrics.set_lease_held(False)
        if self.settings.metrics_addr:
            self.http = MetricsServer(self.settings.metrics_addr, self.health, self.metrics)
            self.http.start()
        log.info(
            "layergc serve started",
            extra={"replica": self.holder, "jobs": [s.signature for s in specs]},
        )
        return self

    def _install_jobs(self, specs: list[JobSpec]) -> None:
        assert self.scheduler is not None
        grace = max(1, int(self.settings.misfire_grace.total_seconds()))
        for spec in specs:
            try:
                stored = self.scheduler.get_job(spec.job_id)
            except Exception:  # an unreadable job (older layergc) is replaced below
                log.warning("stored job unreadable; replacing it", extra={"job": spec.job_id})
                stored = None
            if (
                stored is not None
                and stored.name == spec.signature
                and stored.func_ref == JOB_FUNC
                and tuple(stored.args) == (spec.mode,)
            ):
                # Same trigger: keep the stored next run time, so a missed run is still due.
                if stored.misfire_grace_time != grace or not stored.coalesce:
                    self.scheduler.modify_job(
                        spec.job_id, misfire_grace_time=grace, coalesce=True, max_instances=1
                    )
                log.info(
                    "keeping stored job",
                    extra={"job": spec.job_id, "next_run": str(stored.next_run_time)},
                )
                continue
            self.scheduler.add_job(
                JOB_FUNC,
                trigger=spec.trigger,
                args=(spec.mode,),
                id=spec.job_id,
                name=spec.signature,
                replace_existing=True,
            )
        wanted = {spec.job_id for spec in specs}
        if PURGE_JOB_ID not in wanted:
            with suppress(Exception):
                self.scheduler.remove_job(PURGE_JOB_ID)

    def shutdown(self, timeout: float = SHUTDOWN_WAIT) -> bool:
        """Stop scheduling, stop the run in flight, wait for it; True if it ended in time."""
        self.stop.set()
        self._turns.close()
        with self._registry_lock:
            for run_stop in self._active_stops:
                run_stop.set()
            threads = list(self._threads)
        if self.scheduler is not None and self.scheduler.state != STATE_STOPPED:
            self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        finished = not any(thread.is_alive() for thread in threads)
        if not finished:
            log.warning(
                "a run is still in flight; exiting anyway (its lease expires, the next run "
                "resumes its work)",
                extra={"waited_s": timeout},
            )
        if self.http is not None:
            self.http.stop()
        if self._own_index and self.index is not None and finished:
            self.index.close()
        log.info("layergc serve stopped", extra={"replica": self.holder})
        return finished

    def _track(self, thread: threading.Thread) -> None:
        with self._registry_lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)

    # --- health ----------------------------------------------------------------------

    def health(self) -> bool:
        """The scheduler runs and the database answers SELECT 1 (within 5 s)."""
        if self.scheduler is None or self.scheduler.state != STATE_RUNNING:
            return False
        with self._registry_lock:
            if self._ping is not None and self._ping.is_alive():
                return False  # the last ping is still hanging: the database is not answering
            done = threading.Event()
            self._ping = threading.Thread(target=self._do_ping, args=(done,), daemon=True)
            self._ping.start()
        return done.wait(HEALTH_TIMEOUT) and self._ping_ok

    def _do_ping(self, done: threading.Event) -> None:
        try:
            with self.index.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self._ping_ok = True
        except Exception as exc:
            log.warning("database ping failed", extra={"error": str(exc)})
            self._ping_ok = False
        finally:
            done.set()

    # --- a scheduled run ----------------------------------------------------------------

    def run_scheduled(self, mode: str, slot: datetime) -> str:
        """Run slot `slot` of job `mode` unless another replica runs or ran it."""
        job_id = JOB_IDS[mode]
        slot_us = _us(slot)
        key = (job_id, slot_us)
        with self._registry_lock:
            if key in self._inflight:
                return "duplicate"  # the watchdog and the scheduler both brought it
            self._inflight.add(key)
        waiting_logged = False
        try:
            with (
                bind(replica=self.holder, job=mode, slot=slot.isoformat()),
                self._turns.ticket() as turn,
            ):
                while True:
                    if self.stop.is_set():
                        return self._skip(mode, "stopping")
                    if self.slots.done(job_id) >= slot_us:
                        return self._skip(mode, "done")
                    if not turn.first():
                        turn.wait(self.poll)  # another run of this process is ahead
                        continue
                    token = self.index.acquire_lease(LEASE_NAME, self.holder, self.ttl)
                    if token is not None:
                        return self._run_holding(mode, job_id, slot_us, token)
                    if not waiting_logged:
                        log.info("another replica holds the lease; waiting for it")
                        waiting_logged = True
                    self.stop.wait(self.poll)
        finally:
            with self._registry_lock:
                self._inflight.discard(key)

    def _watch(self) -> None:
        """Take over slots a runner started and did not finish (it died, or was stopped).

        The shared job store hands a slot to whichever scheduler reads it first,
        so other replicas may never have seen it: they learn of it here.
        """
        while True:
            try:
                unfinished = self.slots.unfinished()
            except Exception as exc:
                log.warning("cannot read the schedule slots", extra={"error": str(exc)})
                unfinished = {}
            for job_id, slot_us in unfinished.items():
                mode = MODES.get(job_id)
                with self._registry_lock:
                    busy = (job_id, slot_us) in self._inflight
                if mode is None or busy:
                    continue
                slot = datetime.fromtimestamp(slot_us / 1_000_000, UTC)
                log.info("unfinished run found", extra={"job": mode, "slot": slot.isoformat()})
                thread = threading.Thread(
                    target=self._take_over, args=(mode, slot), name="layergc-takeover", daemon=True
                )
                self._track(thread)
                thread.start()
            if self.stop.wait(self.poll):
                return

    def _take_over(self, mode: str, slot: datetime) -> None:
        _JOB_CONTEXT.set(_JobContext(self, slot))
        try:
            self.run_scheduled(mode, slot)
        except Exception:
            log.exception("taking over an unfinished run failed")

    def _skip(self, mode: str, reason: str) -> str:
        log.info("scheduled run skipped", extra={"reason": reason})
        self.metrics.skipped.labels(mode, reason).inc()
        return reason

    def _run_holding(self, mode: str, job_id: str, slot_us: int, token: int) -> str:
        run_stop = threading.Event()
        try:
            # Re-read under the lease: the previous holder may have just finished it.
            if self.slots.done(job_id) >= slot_us:
                return self._skip(mode, "done")
            self.metrics.set_lease_held(True)
            self.slots.start(job_id, slot_us, self.holder, token)
            # With the lease, no other run can be in flight: runs still "running"
            # belong to dead runners (kill -9). Record them as interrupted.
            try:
                self.index.mark_stale_running_runs(older_than=datetime.now(UTC))
            except Exception as exc:
                log.warning("cannot mark stale runs", extra={"error": str(exc)})
            with self._registry_lock:
                self._active_stops.add(run_stop)
                if self.stop.is_set():
                    run_stop.set()
            log.info("scheduled run starting", extra={"lease_token": token})
            started = time.monotonic()
            # run_fn records the run's metrics itself (layergc.gc.run.run_sweep does).
            with Heartbeat(self.index, self.holder, token, self.ttl, run_stop) as heartbeat:
                try:
                    report = self.run_fn(self.settings, mode=mode, stop=run_stop, index=self.index)
                    outcome = str((report or {}).get("status") or "succeeded")
                except Exception:
                    log.exception("scheduled run raised")
                    outcome = "error"
            if heartbeat.lost and outcome == "succeeded":
                outcome = "interrupted"
            # Only an interrupted run leaves its slot to be finished. A run that failed
            # or raised is done: retrying it at once would only fail again, in a loop.
            ended = outcome != "interrupted"
            if ended and not self.slots.finish(job_id, slot_us, self.holder, token):
                log.warning("slot not recorded: the lease moved on during the run")
            log.info(
                "scheduled run finished",
                extra={"outcome": outcome, "duration_s": round(time.monotonic() - started, 3)},
            )
            return outcome
        finally:
            with self._registry_lock:
                self._active_stops.discard(run_stop)
            with suppress(Exception):  # an unreleased lease simply expires
                self.index.release_lease(LEASE_NAME, self.holder, token)
            self.metrics.set_lease_held(False)


def _default_run_fn(metrics: Metrics) -> RunFn:
    from layergc.gc.run import run_sweep

    return functools.partial(run_sweep, metrics=metrics)


# --- the entry point ------------------------------------------------------------------


def serve(
    settings: Settings,
    run_fn: RunFn | None = None,
    *,
    stop: threading.Event | None = None,
    index: Any = None,
    metrics: Metrics | None = None,
    on_started: Callable[[Replica], None] | None = None,
) -> int:
    """Run `layergc serve` until SIGTERM/SIGINT (or `stop`); returns the exit status, 0."""
    stop = stop or threading.Event()
    replica = Replica(settings, run_fn, index=index, metrics=metrics, stop=stop)
    with stop_on_signals(stop):
        replica.start()
        try:
            if on_started is not None:
                on_started(replica)
            while not stop.wait(1.0):
                pass
        finally:
            replica.shutdown(SHUTDOWN_WAIT)
    return 0
