"""One run from settings: build the driver, index and cache the settings describe,
then sweep (or purge stale uploads) and return the JSON report."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layergc.config import Settings, make_driver
from layergc.gc.blobcache import RedisAddress, RedisBlobCache
from layergc.gc.db import open_index
from layergc.gc.lease import held_lease
from layergc.gc.sweep import SWEEP, Sweeper, SweepOptions

if TYPE_CHECKING:
    from layergc.metrics import Metrics

log = logging.getLogger(__name__)

# UNSAFE, FOR TESTS ONLY. Set to 1, sweeps leave the registry's blob descriptor cache
# alone: no Redis keys cleared, no --after-delete-command. That breaks images (DESIGN.md,
# "The registry's blob descriptor cache"): tests/test_online.py sets it to prove that its
# online test catches the breakage. Never set it on a real registry.
UNSAFE_NO_CACHE_INVALIDATION = "LAYERGC_UNSAFE_NO_CACHE_INVALIDATION"


def cache_invalidation_disabled() -> bool:
    return os.environ.get(UNSAFE_NO_CACHE_INVALIDATION) == "1"


def sweep_options(settings: Settings) -> SweepOptions:
    return SweepOptions(
        dry_run=settings.dry_run,
        delete_untagged=settings.delete_untagged,
        grace=settings.grace,
        upload_timeout=settings.upload_timeout,
        settle=settings.settle,
        after_delete_command=(
            None if cache_invalidation_disabled() else settings.after_delete_command
        ),
        after_delete_timeout=settings.after_delete_timeout,
        registry_cache=settings.blob_cache,
    )


def blob_cache_for(settings: Settings) -> RedisBlobCache | None:
    if cache_invalidation_disabled():
        log.warning(
            "UNSAFE: the registry's blob cache is not cleared",
            extra={"variable": UNSAFE_NO_CACHE_INVALIDATION},
        )
        return None
    if settings.blob_cache != "redis" or not settings.redis_addr:
        return None
    address = RedisAddress.parse(settings.redis_addr, settings.redis_db, settings.redis_password)
    return RedisBlobCache(address)


def run_sweep(
    settings: Settings,
    *,
    mode: str = SWEEP,
    stop: threading.Event | None = None,
    index: Any = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    take_lease: bool = False,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """Run once and return the report; per-object errors are in the report, not raised.

    With `take_lease` (a one-shot `layergc sweep`), a run that may delete first
    takes the index lease that `layergc serve` replicas take, so the two never
    overlap; LeaseBusy when another run holds it. The run is counted in `metrics`
    when given (`layergc serve` passes the set it serves; a one-shot sweep has no
    one to serve them to, and does not import prometheus_client at all).
    """
    driver = make_driver(settings)
    own_index = index is None
    index = open_index(settings.db) if own_index else index
    cache = blob_cache_for(settings)
    started = time.monotonic()
    try:
        sweeper = Sweeper(
            driver,
            index,
            sweep_options(settings),
            blob_cache=cache,
            stop=stop,
            progress=progress,
            hook_observer=metrics.record_hook if metrics is not None else None,
        )
        if take_lease and not settings.dry_run:
            with held_lease(index, settings.lease_ttl, sweeper.stop):
                report = sweeper.run(mode).as_json()
        else:
            report = sweeper.run(mode).as_json()
    except BaseException:
        if metrics is not None:
            metrics.record_run(None, mode, "error", time.monotonic() - started)
        raise
    finally:
        if cache is not None:
            cache.close()
        if own_index:
            index.close()
        driver.close()
    if metrics is not None:
        metrics.record_run(report, mode, report["status"], time.monotonic() - started)
    return report
