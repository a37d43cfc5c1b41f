"""layergc.metrics: counters from sweep reports, and the /metrics + /healthz server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from layergc.errors import ConfigError
from layergc.metrics import Metrics, serve_http

REPORT = {
    "run_id": 7,
    "dry_run": False,
    "status": "succeeded",
    "blobs": [
        {"digest": "sha256:" + "a" * 64, "size": 100, "action": "deleted"},
        {"digest": "sha256:" + "b" * 64, "size": 50, "action": "deleted"},
        {"digest": "sha256:" + "c" * 64, "size": 10, "action": "deferred"},
    ],
    "manifests": [{"repository": "team/app", "digest": "sha256:" + "d" * 64, "action": "deleted"}],
    "uploads": [
        {"repository": "team/app", "uuid": "u1", "size": 9, "action": "deleted"},
        {"repository": "team/app", "uuid": "u2", "size": 9, "action": "failed"},
    ],
    "bytes_reclaimed": 168,
    "errors": [{"kind": "delete-failed", "message": "upload u2"}],
}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_record_run_counts_a_report() -> None:
    m = Metrics()
    m.record_run(REPORT, "sweep", "succeeded", 12.5)
    assert value(m, "layergc_runs_total", mode="sweep", outcome="succeeded") == 1
    assert value(m, "layergc_run_duration_seconds_sum", mode="sweep") == 12.5
    assert value(m, "layergc_run_duration_seconds_bucket", mode="sweep", le="15.0") == 1
    assert value(m, "layergc_run_duration_seconds_bucket", mode="sweep", le="5.0") == 0
    assert value(m, "layergc_garbage_found", kind="blob") == 3
    assert value(m, "layergc_garbage_found", kind="manifest") == 1
    assert value(m, "layergc_garbage_found", kind="upload") == 2
    assert value(m, "layergc_objects_deleted_total", kind="blob") == 2
    assert value(m, "layergc_objects_deleted_total", kind="manifest") == 1
    assert value(m, "layergc_objects_deleted_total", kind="upload") == 1
    assert value(m, "layergc_reclaimed_bytes_total") == 168
    assert value(m, "layergc_candidates_pending") == 2  # deferred + failed
    assert value(m, "layergc_errors_total", mode="sweep") == 1
    assert value(m, "layergc_last_success_timestamp_seconds", mode="sweep") > 1.7e9

    m.record_run(REPORT, "sweep", "succeeded", 1.0)
    assert value(m, "layergc_objects_deleted_total", kind="blob") == 4  # counters add up
    assert value(m, "layergc_garbage_found", kind="blob") == 3  # gauges do not


def test_failed_and_interrupted_runs_are_not_successes() -> None:
    m = Metrics()
    m.record_run(None, "sweep", "error", 0.5)
    m.record_run({**REPORT, "status": "interrupted"}, "sweep", "interrupted", 3)
    assert value(m, "layergc_runs_total", mode="sweep", outcome="error") == 1
    assert value(m, "layergc_runs_total", mode="sweep", outcome="interrupted") == 1
    assert value(m, "layergc_errors_total", mode="sweep") == 2  # the raise + one report error
    assert not any(n == "layergc_last_success_timestamp_seconds" for n, _ in samples(m))


def test_purge_run_leaves_blob_gauges_alone() -> None:
    m = Metrics()
    m.record_run(REPORT, "sweep", "succeeded", 1)
    purge = {"status": "succeeded", "uploads": [], "bytes_reclaimed": 0, "errors": []}
    m.record_run(purge, "purge-uploads", "succeeded", 1)
    assert value(m, "layergc_garbage_found", kind="blob") == 3
    assert value(m, "layergc_garbage_found", kind="upload") == 0
    assert value(m, "layergc_candidates_pending") == 2


def test_dry_run_counts_pending_not_deleted() -> None:
    m = Metrics()
    report = {
        "status": "succeeded",
        "blobs": [{"digest": "x", "size": 1, "action": "would-delete"}],
        "manifests": [],
        "uploads": [],
        "bytes_reclaimed": 0,
        "errors": [],
    }
    m.record_run(report, "sweep", "succeeded", 1)
    assert value(m, "layergc_objects_deleted_total", kind="blob") == 0
    assert value(m, "layergc_candidates_pending") == 1


def test_hook_and_lease() -> None:
    m = Metrics()
    m.record_hook(0)
    m.record_hook(3)
    m.record_hook(None)
    assert value(m, "layergc_after_delete_hook_runs_total", status="0") == 1
    assert value(m, "layergc_after_delete_hook_runs_total", status="3") == 1
    assert value(m, "layergc_after_delete_hook_runs_total", status="timeout") == 1
    assert value(m, "layergc_after_delete_hook_exit_status") == -1
    m.set_lease_held(True)
    assert value(m, "layergc_lease_held") == 1
    m.set_lease_held(False)
    assert value(m, "layergc_lease_held") == 0


def test_separate_registries() -> None:
    a, b = Metrics(), Metrics()
    a.record_run(REPORT, "sweep", "succeeded", 1)
    assert ("layergc_runs_total", (("mode", "sweep"), ("outcome", "succeeded"))) not in samples(b)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_http_metrics_and_healthz() -> None:
    m = Metrics()
    m.record_run(REPORT, "sweep", "succeeded", 2)
    healthy = {"value": True}

    def health() -> bool:
        if healthy["value"] is None:
            raise RuntimeError("probe broke")
        return healthy["value"]

    server = serve_http("127.0.0.1:0", health, m)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, ctype, body = get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'layergc_runs_total{mode="sweep",outcome="succeeded"} 1.0' in body
        assert get(base + "/healthz")[0] == 200
        healthy["value"] = False
        assert get(base + "/healthz")[0] == 503
        healthy["value"] = None  # an exception is unhealthy, not a 500
        assert get(base + "/healthz")[0] == 503
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/metrics", timeout=2)


def test_bad_address() -> None:
    with pytest.raises(ConfigError):
        serve_http("nowhere", lambda: True, Metrics())
