"""`layergc serve` as a subprocess, the way the end-to-end tests start it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def spawn_serve(
    args: list[str], *, port: int, log: Path, cwd: Path, env: Mapping[str, str], append: bool
) -> subprocess.Popen[bytes]:
    """`layergc serve ARGS` with JSON logs and /metrics on 127.0.0.1:`port`, its
    output into `log`; not waited for. The caller keeps the PID and ends it."""
    cmd = [sys.executable, "-m", "layergc.cli", "serve", *args]
    cmd += ["--metrics-addr", f"127.0.0.1:{port}", "--log-format", "json"]
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=dict(env)
        )
