"""A progress line on stderr for long runs, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Callable as progress(phase, done, total): redraws one line, at most 10 times a second."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if phase == self._phase and now - self._last < 0.1 and done != total:
            return
        if phase != self._phase and self._phase:
            self.stream.write("\n")
        self._phase, self._last = phase, now
        suffix = f"{done}/{total}" if total else str(done)
        self.stream.write(f"\r\x1b[K{phase}: {suffix}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._phase:
            self.stream.write("\n")
            self.stream.flush()
