"""The SQL index API, on SQLite and on PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import IntegrityError

from layergc.digest import Digest
from layergc.gc.db import open_index
from layergc.gc.index import (
    CHUNK,
    REFERENCE_LOOKUP_CHUNK,
    REFERENCE_WRITE_CHUNK,
    Index,
    Lease,
)
from tests.support.database import BACKENDS, database_url, lease_worker

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def index(db_url: str) -> Iterator[Index]:
    with open_index(db_url) as idx:
        yield idx


class StatementCounter:
    """Counts the SQL statements an engine sends (executemany counts once)."""

    def __init__(self, index: Index) -> None:
        self.count = 0
        self.engine = index.engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


# --- runs ------------------------------------------------------------------------------------


def test_run_lifecycle(index: Index) -> None:
    run_id = index.start_run("sweep", dry_run=True, delete_untagged=True, host="h1", pid=42)
    run = index.run(run_id)
    assert run is not None
    assert (run.status, run.mode, run.dry_run, run.delete_untagged) == (
        "running",
        "sweep",
        True,
        True,
    )
    assert (run.host, run.pid, run.errors, run.report, run.finished_at) == (
        "h1",
        42,
        [],
        None,
        None,
    )
    assert run.started_at.tzinfo is not None

    report = {"run_id": run_id, "blobs": [{"digest": digest(1), "action": "would-delete"}]}
    errors = [{"kind": "manifest-unparseable", "message": "bad json"}]
    index.finish_run(
        run_id, "failed", {"blobs_found": 3, "bytes_reclaimed": 10**12}, errors, report
    )
    run = index.run(run_id)
    assert run is not None
    assert run.status == "failed"
    assert run.blobs_found == 3 and run.bytes_reclaimed == 10**12 and run.blobs_deleted == 0
    assert run.errors == errors and run.report == report
    assert run.finished_at is not None and run.finished_at >= run.started_at


def test_runs_newest_first_with_limit(index: Index) -> None:
    ids = [index.start_run("purge-uploads", dry_run=False) for _ in range(5)]
    assert [r.id for r in index.runs(limit=3)] == ids[::-1][:3]
    assert [r.id for r in index.runs(limit=None)] == ids[::-1]
    assert index.run(max(ids) + 100) is None


def test_run_arguments_are_checked(index: Index) -> None:
    with pytest.raises(ValueError, match="run mode"):
        index.start_run("vacuum", dry_run=True)
    run_id = index.start_run("sweep", dry_run=True)
    with pytest.raises(ValueError, match="unknown run counters: blobs_eaten"):
        index.finish_run(run_id, "succeeded", {"blobs_eaten": 1})
    with pytest.raises(ValueError, match="final run status"):
        index.finish_run(run_id, "running")
    with pytest.raises(KeyError):
        index.finish_run(run_id + 1, "succeeded")


def test_stale_running_runs_become_interrupted(index: Index) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    import socket

    here = socket.gethostname()
    old = index.start_run("sweep", True, host="elsewhere", pid=1, started_at=T0)
    dead = index.start_run("sweep", True, host=here, pid=dead_pid)
    mine = index.start_run("sweep", True)  # this process: alive
    recent_elsewhere = index.start_run("sweep", True, host="elsewhere", pid=dead_pid)
    finished = index.start_run("sweep", True, host=here, pid=dead_pid, started_at=T0)
    index.finish_run(finished, "succeeded")

    changed = index.mark_stale_running_runs(older_than=T0 + timedelta(hours=1))
    assert sorted(changed) == sorted([old, dead])
    statuses = {r.id: r.status for r in index.runs(limit=None)}
    assert statuses == {
        old: "interrupted",
        dead: "interrupted",
        mine: "running",
        recent_elsewhere: "running",
        finished: "succeeded",
    }
    interrupted = index.run(old)
    assert interrupted is not None and interrupted.finished_at is not None
    assert index.mark_stale_running_runs() == []


# --- candidates ------------------------------------------------------------------------------


def test_observe_keeps_first_seen_and_updates_last_seen(index: Index) -> None:
    r1 = index.start_run("sweep", True)
    seen = index.observe_unreferenced(
        r1, "blob", [(digest(1), None, 10), (digest(2), None, 20)], T0
    )
    assert seen == {digest(1): T0, digest(2): T0}

    r2 = index.start_run("sweep", True)
    later = T0 + timedelta(hours=5)
    seen = index.observe_unreferenced(
        r2, "blob", [(digest(1), None, None), (digest(3), None, 30)], later
    )
    assert seen == {digest(1): T0, digest(3): later}
    row = index.candidates("blob", [digest(1)])[digest(1)]
    assert (row.first_seen_unreferenced, row.last_seen, row.last_run_id) == (T0, later, r2)
    assert (row.state, row.size, row.repository) == ("pending", 10, None)  # size kept


def test_observe_manifests_and_uploads_carry_repository(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    key = f"team/app@{digest(7)}"
    index.observe_unreferenced(run_id, "manifest", [(key, "team/app", None)], T0)
    index.observe_unreferenced(run_id, "upload", [("team/app/0b1c", "team/app", 99)], T0)
    assert index.candidates("manifest", [key])[key].repository == "team/app"
    assert index.candidates("upload", ["team/app/0b1c"])["team/app/0b1c"].size == 99
    # kinds are separate key spaces
    assert index.candidates("blob", [key]) == {}


def test_observe_tolerates_duplicate_keys_in_one_batch(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    seen = index.observe_unreferenced(
        run_id, "blob", [(digest(1), None, 1), (digest(1), None, 2)], T0
    )
    assert seen == {digest(1): T0}
    assert index.candidates("blob", [digest(1)])[digest(1)].size == 2


def test_grace_restarts_after_a_candidate_was_referenced(index: Index) -> None:
    r1 = index.start_run("sweep", True)
    index.observe_unreferenced(r1, "blob", [(digest(1), None, 1), (digest(2), None, 2)], T0)
    r2 = index.start_run("sweep", True)
    index.observe_unreferenced(r2, "blob", [(digest(2), None, 2)], T0 + timedelta(hours=1))
    assert index.forget_absent("blob", r2) == 1  # digest(1) is referenced again
    assert index.candidates("blob", [digest(1)])[digest(1)].state == "referenced"

    r3 = index.start_run("sweep", True)
    later = T0 + timedelta(days=2)
    seen = index.observe_unreferenced(
        r3, "blob", [(digest(1), None, 1), (digest(2), None, 2)], later
    )
    # unreferenced anew: its grace period starts over; digest(2) stayed unreferenced
    assert seen == {digest(1): later, digest(2): T0}
    assert index.candidates("blob", [digest(1)])[digest(1)].state == "pending"


def test_observe_keeps_quarantine_and_restarts_deleted(index: Index) -> None:
    r1 = index.start_run("sweep", False)
    index.observe_unreferenced(r1, "blob", [(digest(1), None, 1), (digest(2), None, 2)], T0)
    index.set_state("blob", [digest(1)], "quarantined", quarantine_path="/q/run1")
    index.set_state("blob", [digest(2)], "deleted")

    r2 = index.start_run("sweep", False)
    later = T0 + timedelta(hours=3)
    seen = index.observe_unreferenced(
        r2, "blob", [(digest(1), None, 1), (digest(2), None, 2)], later
    )
    assert seen == {digest(1): T0, digest(2): later}  # digest(2) was pushed again
    rows = index.candidates("blob", [digest(1), digest(2)])
    assert (rows[digest(1)].state, rows[digest(1)].quarantine_path) == ("quarantined", "/q/run1")
    assert rows[digest(2)].state == "pending"


def test_forget_absent_touches_only_pending_of_that_kind(index: Index) -> None:
    r1 = index.start_run("sweep", False)
    index.observe_unreferenced(r1, "blob", [(digest(i), None, i) for i in range(4)], T0)
    index.observe_unreferenced(r1, "manifest", [(f"a@{digest(9)}", "a", None)], T0)
    index.set_state("blob", [digest(0)], "quarantined", "/q")
    r2 = index.start_run("sweep", False)
    index.observe_unreferenced(r2, "blob", [(digest(1), None, 1)], T0)
    assert index.forget_absent("blob", r2) == 2  # digests 2 and 3
    states = {
        k: c.state for k, c in index.candidates("blob", [digest(i) for i in range(4)]).items()
    }
    assert states == {
        digest(0): "quarantined",
        digest(1): "pending",
        digest(2): "referenced",
        digest(3): "referenced",
    }
    assert index.candidates("manifest", [f"a@{digest(9)}"])[f"a@{digest(9)}"].state == "pending"
    assert index.forget_absent("blob", r2) == 0


def test_set_state_paths_and_quarantined(index: Index) -> None:
    run_id = index.start_run("sweep", False)
    index.observe_unreferenced(run_id, "blob", [(digest(i), None, i) for i in range(5)], T0)
    assert index.set_state("blob", [digest(0), digest(1)], "quarantined", "/q/a") == 2
    paths = {digest(2): "/q/b/2", digest(3): "/q/b/3"}
    assert index.set_state("blob", paths, "quarantined", paths) == 2
    assert index.set_state("blob", [digest(99)], "deleted") == 0  # unknown keys: ignored
    assert index.set_state("manifest", [digest(4)], "deleted") == 0  # other kind

    quarantined = index.quarantined("blob")
    assert [(c.key, c.quarantine_path) for c in quarantined] == [
        (digest(0), "/q/a"),
        (digest(1), "/q/a"),
        (digest(2), "/q/b/2"),
        (digest(3), "/q/b/3"),
    ]
    assert index.quarantined("upload") == []
    assert len(index.quarantined()) == 4

    index.set_state("blob", [digest(0)], "restored")
    index.set_state("blob", [digest(1)], "deleted")
    rows = index.candidates("blob", [digest(0), digest(1)])
    assert (rows[digest(0)].state, rows[digest(0)].quarantine_path) == ("restored", None)
    assert (rows[digest(1)].state, rows[digest(1)].quarantine_path) == ("deleted", None)
    with pytest.raises(ValueError, match="candidate state"):
        index.set_state("blob", [digest(0)], "gone")
    with pytest.raises(ValueError, match="candidate kind"):
        index.set_state("layer", [digest(0)], "deleted")


def test_pending_candidates_oldest_first(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    index.observe_unreferenced(run_id, "blob", [(digest(1), None, 1)], T0 + timedelta(hours=2))
    index.observe_unreferenced(run_id, "upload", [("r/u1", "r", 5)], T0)
    index.observe_unreferenced(run_id, "blob", [(digest(2), None, 2)], T0 + timedelta(hours=1))
    index.observe_unreferenced(run_id, "blob", [(digest(3), None, 3)], T0 + timedelta(hours=3))
    index.set_state("blob", [digest(3)], "deleted")
    assert [c.key for c in index.pending_candidates()] == ["r/u1", digest(2), digest(1)]
    assert [c.key for c in index.pending_candidates(limit=1, kind="blob")] == [digest(2)]


def test_candidate_counts(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    index.observe_unreferenced(run_id, "blob", [(digest(i), None, 10) for i in range(5)], T0)
    index.observe_unreferenced(run_id, "manifest", [("a@" + digest(1), "a", None)], T0)
    index.set_state("blob", [digest(0), digest(1)], "quarantined", "/q")
    assert index.candidate_counts() == {
        ("blob", "pending"): (3, 30),
        ("blob", "quarantined"): (2, 20),
        ("manifest", "pending"): (1, 0),
    }


def test_iter_observed_streams_one_runs_candidates(index: Index) -> None:
    r1 = index.start_run("sweep", True)
    index.observe_unreferenced(r1, "blob", [(digest(i), None, i) for i in range(25)], T0)
    r2 = index.start_run("sweep", True)
    index.observe_unreferenced(r2, "blob", [(digest(i), None, i) for i in range(10, 15)], T0)
    assert sorted(c.key for c in index.iter_observed(r2, "blob", batch=2)) == [
        digest(i) for i in range(10, 15)
    ]
    assert len(list(index.iter_observed(r1, "blob", batch=7))) == 20


def test_prune_candidates_drops_only_settled_history(index: Index) -> None:
    run_id = index.start_run("sweep", False)
    index.observe_unreferenced(run_id, "blob", [(digest(i), None, i) for i in range(4)], T0)
    index.set_state("blob", [digest(0)], "deleted")
    index.set_state("blob", [digest(1)], "referenced")
    index.set_state("blob", [digest(2)], "quarantined", "/q")
    assert index.prune_candidates(T0) == 0  # not older than the cut-off
    assert index.prune_candidates(T0 + timedelta(days=1)) == 2
    assert set(index.candidates("blob", [digest(i) for i in range(4)])) == {digest(2), digest(3)}


# --- the mark set, staged ------------------------------------------------------------------


def test_marks_stage_a_mark_set(index: Index) -> None:
    r1 = index.start_run("sweep", True)
    r2 = index.start_run("sweep", True)
    assert index.add_marks(r1, [digest(i) for i in range(10)] + [digest(3)]) == 11
    index.add_marks(r1, [digest(0)])  # again: no conflict
    index.add_marks(r2, [digest(12)])
    listing = [digest(i) for i in range(15)]
    assert index.unmarked(r1, listing) == [digest(i) for i in range(10, 15)]
    assert index.unmarked(r2, listing) == [d for d in listing if d != digest(12)]
    index.finish_run(r1, "succeeded")  # a finished run's marks are gone
    assert index.unmarked(r1, listing) == listing
    assert index.clear_marks() == 1


def test_marks_at_scale(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    marked = [digest(i) for i in range(50_000)]
    listing = [digest(i) for i in range(55_000)]
    start = time.perf_counter()
    index.add_marks(run_id, iter(marked))
    add_s = time.perf_counter() - start
    start = time.perf_counter()
    garbage = index.unmarked(run_id, iter(listing))
    check_s = time.perf_counter() - start
    print(
        f"\n[{index.engine.dialect.name}] marks: add 50,000 in {add_s:.2f}s, "
        f"filter a 55,000-blob listing in {check_s:.2f}s"
    )
    assert sorted(garbage) == [digest(i) for i in range(50_000, 55_000)]
    assert add_s < 30 and check_s < 30


# --- the audit log ---------------------------------------------------------------------------


def test_record_deletions(index: Index) -> None:
    run_id = index.start_run("sweep", False)
    items = [("blob", digest(i), None, i * 100) for i in range(2500)]
    items.append(("upload", "team/app/uuid-1", "team/app", 7))
    assert index.record_deletions(run_id, items, deleted_at=T0) == 2501
    rows = index.deletions(run_id)
    assert len(rows) == 2501
    last = rows[-1]
    assert (last.kind, last.key, last.repository, last.size, last.deleted_at) == (
        "upload",
        "team/app/uuid-1",
        "team/app",
        7,
        T0,
    )
    assert index.deletions(run_id + 1) == []


def test_deletions_need_a_real_run(index: Index) -> None:
    # Foreign keys are enforced on both backends (SQLite needs PRAGMA foreign_keys=ON).
    with pytest.raises(IntegrityError):
        index.record_deletions(12345, [("blob", digest(1), None, 1)])


# --- the manifest reference cache ------------------------------------------------------------


def _refs(i: int) -> dict[str, object]:
    return {
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "kind": "image",
        "blobs": [digest(10_000_000 + i * 8 + j) for j in range(6)],
        "children": [],
        "subject": None,
    }


def test_reference_cache_round_trip(index: Index) -> None:
    image = _refs(1)
    referrer = {**_refs(2), "subject": digest(1), "unknown_algorithms": ["md5"]}
    manifest_list = {
        "media_type": "application/vnd.docker.distribution.manifest.list.v2+json",
        "kind": "index",
        "blobs": [],
        "children": [digest(1), digest(2)],
        "subject": None,
        "unknown_algorithms": [],
    }
    entries = {digest(1): image, digest(2): referrer, digest(3): manifest_list}
    assert index.put_references(entries) == 3
    got = index.get_references([digest(1), digest(2), digest(3), digest(4)])
    assert got[digest(1)] == image
    assert got[digest(2)] == referrer
    # empty extras are not stored: the entry comes back without them
    assert got[digest(3)] == {k: v for k, v in manifest_list.items() if k != "unknown_algorithms"}
    assert digest(4) not in got

    # immutable: a second put of a known digest changes nothing
    index.put_references({digest(1): {**image, "blobs": [digest(99)]}})
    assert index.get_references([digest(1)])[digest(1)] == image

    assert index.delete_references([digest(1), digest(4)]) == 1
    assert set(index.get_references([digest(1), digest(2)])) == {digest(2)}
    with pytest.raises(ValueError, match="whitespace"):
        index.put_references({digest(5): {**image, "blobs": ["sha256:a b"]}})


def test_reference_cache_adapter_speaks_manifest_refs(index: Index) -> None:
    from layergc.storage.manifests import ManifestRefs

    refs = ManifestRefs(
        media_type="application/vnd.oci.image.manifest.v1+json",
        kind="image",
        blobs=(Digest.parse(digest(5)), Digest.parse(digest(6))),
        subject=Digest.parse(digest(7)),
    )
    cache = index.reference_cache()
    key = Digest.parse(digest(1))
    cache.put_many({key: refs})
    assert cache.get_many([key, Digest.parse(digest(2))]) == {key: refs}


def test_reference_cache_20000_entries_in_few_queries(index: Index) -> None:
    entries = {digest(i): _refs(i) for i in range(20_000)}
    counter = StatementCounter(index)
    try:
        start = time.perf_counter()
        index.put_references(entries)
        put_s = time.perf_counter() - start
        puts = counter.count

        counter.count = 0
        start = time.perf_counter()
        got = index.get_references(list(entries))
        get_s = time.perf_counter() - start
        gets = counter.count
    finally:
        counter.close()
    print(
        f"\n[{index.engine.dialect.name}] reference cache, 20,000 entries: "
        f"put {put_s:.2f}s in {puts} statements, get {get_s:.2f}s in {gets} statements"
    )
    assert got == entries
    assert gets <= 20_000 // REFERENCE_LOOKUP_CHUNK  # thousands of keys per query
    assert puts <= 20_000 // REFERENCE_WRITE_CHUNK
    assert put_s < 15 and get_s < 15  # a few tenths of a second on a quiet machine


def test_observe_50000_in_batches(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    items = [(digest(i), None, i) for i in range(50_000)]
    counter = StatementCounter(index)
    try:
        start = time.perf_counter()
        first = index.observe_unreferenced(run_id, "blob", iter(items), T0)
        first_s = time.perf_counter() - start
        statements = counter.count
        start = time.perf_counter()
        again = index.observe_unreferenced(run_id, "blob", iter(items), T0 + timedelta(hours=1))
        again_s = time.perf_counter() - start
    finally:
        counter.close()
    print(
        f"\n[{index.engine.dialect.name}] observe 50,000: new {first_s:.2f}s, "
        f"upsert of existing {again_s:.2f}s, {statements} statements"
    )
    assert len(first) == 50_000 and again == first
    assert statements <= 50_000 // CHUNK + 2
    assert first_s < 20 and again_s < 20  # 1-2 s each on a quiet machine


def test_concurrent_writers_from_threads(index: Index) -> None:
    run_id = index.start_run("sweep", True)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            keys = [(digest(worker * 10_000 + i), None, i) for i in range(2_000)]
            for start in range(0, 2_000, 500):
                index.observe_unreferenced(run_id, "blob", keys[start : start + 500], T0)
            index.record_deletions(run_id, [("blob", k, None, s) for k, _, s in keys[:100]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(index.iter_observed(run_id, "blob"))) == 8_000
    assert len(index.deletions(run_id)) == 400


# --- leases ----------------------------------------------------------------------------------


def test_lease_acquire_renew_release(index: Index) -> None:
    assert index.acquire_lease("sweep", "a", 30) == 1
    assert index.acquire_lease("sweep", "b", 30) is None
    assert index.acquire_lease("sweep", "a", 30) == 1  # the holder renews, same token
    assert index.renew_lease("sweep", "a", 1, 30) is True
    assert index.renew_lease("sweep", "b", 1, 30) is False
    lease = index.lease("sweep")
    assert lease is not None and (lease.holder, lease.token) == ("a", 1)
    assert lease.expires_at > datetime.now(UTC) + timedelta(seconds=20)

    assert index.release_lease("sweep", "b") is False  # not b's to release
    assert index.release_lease("sweep", "a") is True
    assert index.acquire_lease("sweep", "b", 30) == 2
    assert index.renew_lease("sweep", "a", 1, 30) is False  # fenced off
    assert index.acquire_lease("sweep", "a", 30) is None
    assert index.acquire_lease("purge", "a", 30) == 1  # leases are independent
    assert index.lease("nothing") is None
    with pytest.raises(ValueError):
        index.acquire_lease("sweep", "a", 0)


def test_expired_lease_is_taken_over_with_a_higher_token(index: Index) -> None:
    assert index.acquire_lease("sweep", "a", 2.0) == 1
    assert index.acquire_lease("sweep", "b", 2.0) is None
    time.sleep(2.3)
    assert index.acquire_lease("sweep", "b", 30) == 2
    assert index.renew_lease("sweep", "a", 1, 30) is False
    assert index.acquire_lease("sweep", "a", 30) is None
    assert index.renew_lease("sweep", "b", 2, 30) is True
    # a holder whose lease lapsed, with nobody taking it, gets it back under a new token
    assert index.acquire_lease("sweep", "b", timedelta(milliseconds=300)) == 2
    time.sleep(0.5)
    assert index.acquire_lease("sweep", "b", 30) == 3


def test_lease_contention_between_threads(index: Index) -> None:
    holders = 8
    barrier = threading.Barrier(holders)
    results: dict[str, int | None] = {}

    def contend(name: str) -> None:
        barrier.wait()
        results[name] = index.acquire_lease("sweep", name, 30)

    threads = [threading.Thread(target=contend, args=(f"t{n}",)) for n in range(holders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = {name: token for name, token in results.items() if token is not None}
    assert len(results) == holders
    assert list(winners.values()) == [1], results
    lease = index.lease("sweep")
    assert lease is not None and lease.holder in winners


def _contend_in_processes(url: str, holders: int, ttl: float) -> dict[str, int | None]:
    # fork: a spawned child would spend seconds importing; the parent holds no pooled
    # connection here (every engine it opened is disposed), so the children share nothing.
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(holders)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=lease_worker, args=(url, "sweep", f"p{n}", ttl, barrier, out))
        for n in range(holders)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_lease_contention_between_processes(db_url: str) -> None:
    with open_index(db_url) as index:  # create the schema before the race
        pass
    first = _contend_in_processes(db_url, holders=4, ttl=30)
    assert sorted(t for t in first.values() if t is not None) == [1], first
    with open_index(db_url) as index, index.engine.begin() as conn:
        # time passes: the winner's lease expires (set, not slept: no race with a slow start)
        conn.execute(update(Lease).values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    second = _contend_in_processes(db_url, holders=4, ttl=30)
    assert sorted(t for t in second.values() if t is not None) == [2], second
    with open_index(db_url) as index:
        lease = index.lease("sweep")
        assert lease is not None and lease.token == 2 and second[lease.holder] == 2
