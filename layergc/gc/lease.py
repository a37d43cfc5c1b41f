"""The index lease that makes one layergc run at a time, across processes and hosts.

`layergc serve` replicas and one-shot `layergc sweep` runs take the same lease
("sweep", an expiring row with a fencing token, `Index.acquire_lease`) before
they change storage, and renew it from a heartbeat thread while they run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from layergc.errors import LayergcError

log = logging.getLogger(__name__)

LEASE_NAME = "sweep"


class LeaseBusy(LayergcError):
    """Another layergc process holds the lease."""


class Heartbeat:
    """Renews the lease every ttl/3; on losing it, sets `on_lost` (the run's stop)."""

    def __init__(
        self, index: Any, holder: str, token: int, ttl: float, on_lost: threading.Event
    ) -> None:
        self.index, self.holder, self.token, self.ttl = index, holder, token, ttl
        self.on_lost = on_lost
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="layergc-lease", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.ttl)

    def _loop(self) -> None:
        renewed = time.monotonic()
        while not self._done.wait(self.ttl / 3):
            try:
                if self.index.renew_lease(LEASE_NAME, self.holder, self.token, self.ttl):
                    renewed = time.monotonic()
                    continue
                reason = "another replica took the lease"
            except Exception as exc:  # the database may come back before the lease expires
                if time.monotonic() - renewed < self.ttl * 2 / 3:
                    log.warning("lease renewal failed; retrying", extra={"error": str(exc)})
                    continue
                reason = f"lease renewal failed until expiry: {exc}"
            self.lost = True
            log.error("lease lost; stopping the run", extra={"reason": reason})
            self.on_lost.set()
            return


@contextmanager
def held_lease(index: Any, ttl: timedelta, stop: threading.Event) -> Iterator[int]:
    """Hold the lease for a one-shot run; LeaseBusy if another process has it.

    Losing the lease mid-run sets `stop`, so the run ends at its next safe point.
    """
    holder = f"sweep@{socket.gethostname()}:{os.getpid()}"
    seconds = ttl.total_seconds()
    token = index.acquire_lease(LEASE_NAME, holder, seconds)
    if token is None:
        current = index.lease(LEASE_NAME)
        if current is not None and _dead_sweep_here(current.holder):
            # A one-shot sweep on this host was killed (SIGKILL, OOM) with the lease:
            # free it now instead of making the next run wait out its ttl. The
            # release is fenced on the dead holder's token, so it never robs a taker.
            index.release_lease(LEASE_NAME, current.holder, current.token)
            token = index.acquire_lease(LEASE_NAME, holder, seconds)
    if token is None:
        current = index.lease(LEASE_NAME)
        who = (
            f" ({current.holder}, until {current.expires_at:%Y-%m-%d %H:%M:%S}Z)" if current else ""
        )
        raise LeaseBusy(f"another layergc run holds the sweep lease{who}; try again later")
    try:
        with Heartbeat(index, holder, token, seconds, stop):
            yield token
    finally:
        with suppress(Exception):  # an unreleased lease simply expires
            index.release_lease(LEASE_NAME, holder, token)


def _dead_sweep_here(holder: str) -> bool:
    """True when `holder` is a `layergc sweep` of this host whose process is gone."""
    kind, _, where = holder.partition("@")
    host, _, pid = where.rpartition(":")
    if kind != "sweep" or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
