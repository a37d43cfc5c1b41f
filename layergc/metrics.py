"""Prometheus metrics of the daemon, and the small HTTP server for /metrics and /healthz.

The metrics live in their own CollectorRegistry (not prometheus_client's
global one), so nothing a library registers leaks into them and tests can make
a fresh set. `METRICS` is the process's set; `record_run` and `record_hook`
update it from a sweep's JSON report (DESIGN.md, "The command-line contract").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from layergc.config import parse_addr

log = logging.getLogger(__name__)

KINDS = ("blob", "manifest", "upload")
SUCCESS = "succeeded"  # the run status of a clean run (index.RUN_STATUSES)
_REPORT_LISTS = {"blob": "blobs", "manifest": "manifests", "upload": "uploads"}
# Actions that leave a candidate in the index for a later run.
_PENDING_ACTIONS = frozenset({"deferred", "would-delete", "failed"})
# Sweeps take seconds on a small registry and up to hours on a large S3 bucket.
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, float("inf"))


class Metrics:
    """One set of layergc metrics in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "layergc_runs", "Runs by mode and outcome.", ["mode", "outcome"], registry=r
        )
        self.skipped = Counter(
            "layergc_scheduled_runs_skipped",
            "Scheduled runs this replica did not run (done elsewhere, stopped).",
            ["mode", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "layergc_run_duration_seconds",
            "Run duration.",
            ["mode"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.found = Gauge(
            "layergc_garbage_found",
            "Garbage found by the last run that looked for that kind (deferred included).",
            ["kind"],
            registry=r,
        )
        self.deleted = Counter("layergc_objects_deleted", "Objects deleted.", ["kind"], registry=r)
        self.bytes_reclaimed = Counter(
            "layergc_reclaimed_bytes", "Bytes reclaimed by deletes.", registry=r
        )
        self.pending = Gauge(
            "layergc_candidates_pending",
            "Garbage recorded but not deleted yet (grace, dry run, failures), last run.",
            registry=r,
        )
        self.errors = Counter("layergc_errors", "Errors reported by runs.", ["mode"], registry=r)
        self.last_success = Gauge(
            "layergc_last_success_timestamp_seconds",
            "When the last successful run finished (Unix time).",
            ["mode"],
            registry=r,
        )
        self.lease_held = Gauge(
            "layergc_lease_held", "1 while this replica holds the run lease.", registry=r
        )
        self.hook_status = Gauge(
            "layergc_after_delete_hook_exit_status",
            "Exit status of the last --after-delete-command (-1: timed out or did not start).",
            registry=r,
        )
        self.hook_runs = Counter(
            "layergc_after_delete_hook_runs",
            "After-delete hook runs by exit status.",
            ["status"],
            registry=r,
        )
        for kind in KINDS:
            self.deleted.labels(kind)  # export zeros before the first run

    def record_run(
        self, report: Mapping[str, Any] | None, mode: str, outcome: str, duration: float
    ) -> None:
        """Count a finished run; `report` is the sweep's JSON report (None if it raised).

        `outcome` is the run's status (succeeded, failed, interrupted) or "error"
        when the run raised. The after-delete hook is counted by `record_hook`,
        which the sweep calls as its hook observer.
        """
        self.runs.labels(mode, outcome).inc()
        self.duration.labels(mode).observe(max(duration, 0.0))
        if outcome == SUCCESS:
            self.last_success.labels(mode).set(time.time())
        if not report:  # the run raised: that is its one error
            if outcome != SUCCESS:
                self.errors.labels(mode).inc()
            return
        pending = 0
        for kind, key in _REPORT_LISTS.items():
            entries = report.get(key)
            if entries is None:  # a purge-uploads run has no blob or manifest list
                continue
            self.found.labels(kind).set(len(entries))
            actions = [entry.get("action") for entry in entries]
            deleted = actions.count("deleted")
            if deleted:
                self.deleted.labels(kind).inc(deleted)
            pending += sum(action in _PENDING_ACTIONS for action in actions)
        if mode != "purge-uploads" or "candidates_pending" in report:
            self.pending.set(report.get("candidates_pending", pending))
        reclaimed = report.get("bytes_reclaimed") or 0
        if reclaimed > 0:
            self.bytes_reclaimed.inc(reclaimed)
        errors = report.get("errors") or []
        if errors:
            self.errors.labels(mode).inc(len(errors))

    def record_hook(self, exit_status: int | None) -> None:
        """Record an after-delete hook run; None means it timed out or did not start."""
        self.hook_status.set(-1 if exit_status is None else exit_status)
        self.hook_runs.labels("timeout" if exit_status is None else str(exit_status)).inc()

    def set_lease_held(self, held: bool) -> None:
        self.lease_held.set(1 if held else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()


def record_run(report: Mapping[str, Any] | None, mode: str, outcome: str, duration: float) -> None:
    METRICS.record_run(report, mode, outcome, duration)


def record_hook(exit_status: int | None) -> None:
    METRICS.record_hook(exit_status)


# --- HTTP ---------------------------------------------------------------------


class MetricsServer:
    """/metrics and /healthz on a ThreadingHTTPServer in a daemon thread."""

    def __init__(
        self, addr: str, health: Callable[[], bool], metrics: Metrics | None = None
    ) -> None:
        host, port = parse_addr(addr, "metrics address")
        self.metrics = metrics or METRICS
        self.health = health
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="layergc-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("serving metrics", extra={"addr": f"{self._httpd.server_address}"})
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def healthy(self) -> bool:
        try:
            return bool(self.health())
        except Exception:  # a failing probe is an unhealthy answer, not a crash
            log.warning("health check failed", exc_info=True)
            return False


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = server.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit every few seconds: keep them out of the default log level.
            log.debug("http " + format, *args)

    return Handler


def serve_http(
    addr: str, health: Callable[[], bool], metrics: Metrics | None = None
) -> MetricsServer:
    """Serve /metrics and /healthz (200 when `health()` is true, else 503); `.stop()` ends it."""
    return MetricsServer(addr, health, metrics).start()
