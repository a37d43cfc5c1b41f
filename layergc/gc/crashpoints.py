"""Crash points: a test hook that SIGKILLs the process at a chosen protocol step.

tests/test_crash.py stops `layergc sweep` at every step of the delete protocol
to prove that the next run finishes or undoes the work. The sweep calls
`crash_point(step)` at each step; with the environment variable

    LAYERGC_TEST_CRASH_AT=<step>:<n>     (or `any:<n>`)

set, the process kills itself with SIGKILL (no cleanup, no `finally`, as a
power cut or the OOM killer would) the n-th time it reaches `step` (any step
for `any`). `LAYERGC_TEST_CRASH_TRACE=<file>` appends each step reached to
`file`, so a test can count the steps of an uninterrupted run. Neither is set
outside tests: a crash point then costs one environment lookup.

The steps, in the order a sweep reaches them:
  leftover     after each file a leftover quarantine puts back (recovery)
  upload       after each stale upload purged
  hold         after each doomed object moved into quarantine (blob or manifest)
  quarantined  after everything is in quarantine, before the registry forgets
  settle       after the settle, before the re-check
  recheck      after the re-check's mark, before anything is deleted
  purge        after each quarantined object deleted for good
  index        between the index writes that close the delete
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

CRASH_AT = "LAYERGC_TEST_CRASH_AT"
CRASH_TRACE = "LAYERGC_TEST_CRASH_TRACE"

_reached: Counter[str] = Counter()
_lock = threading.Lock()


def crash_point(step: str) -> None:
    at, trace = os.environ.get(CRASH_AT), os.environ.get(CRASH_TRACE)
    if not at and not trace:
        return
    with _lock:
        _reached[step] += 1
        _reached["any"] += 1
        if trace:
            with open(trace, "a") as f:
                f.write(step + "\n")
        if not at:
            return
        target, _, count = at.partition(":")
        hit = target in (step, "any") and _reached[target] == int(count or "1")
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
