"""The after-delete hook of the online test: restart the Go registry the test owns.

As layergc's `--after-delete-command`:

    python tests/support/restart_registry.py SOCKET

Why this shape: the test owns the `docker-registry` process (tests/support/
goregistry.GoRegistry keeps its PID, port and HTTP secret, and restart() keeps
all three, so clients' URLs and upload Locations stay valid). So the test does
the restart, and the hook only asks for it: `RestartServer` listens on a Unix
socket in the test process; this script connects, sends `restart`, and blocks
until the answer. The answer `ok` comes after GoRegistry.restart() returned,
that is once the old process has exited (its in-memory blob cache and every
request it was serving gone with it) and the new one answers `/v2/` on the same
port; the script then exits 0 and layergc goes on to the re-check. Any other
answer, a closed connection or a timeout exits 1, and layergc restores its
quarantine.

A supervisor restarting the registry on SIGHUP was the other option; it would
take the process away from the test (no PID to stop, no GoRegistry.restart) and
the hook would have to poll the port to know the restart was done. A socket
gives a synchronous request and answer, with a timeout, and no files to clean.

Only the standard library here: layergc runs this file by path, not as part of
the tests package.
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

REQUEST = b"restart\n"
OK = b"ok\n"
HOOK_TIMEOUT = 60.0  # seconds the hook waits for the test to answer


class RestartServer:
    """Serves restart requests on a Unix socket by calling `restart` (one at a time)."""

    def __init__(self, restart: Callable[[], None]) -> None:
        self._restart = restart
        # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer.
        self._dir = Path(tempfile.mkdtemp(prefix="lgc-hook-"))
        self.path = self._dir / "restart.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="restart-server", daemon=True)
        self.restarts: list[tuple[float, float]] = []  # (monotonic start, duration)
        self.errors: list[str] = []

    def command(self) -> str:
        """The `--after-delete-command` that reaches this server."""
        return f"{sys.executable} {Path(__file__).resolve()} {self.path}"

    def __enter__(self) -> RestartServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()
        self.path.unlink(missing_ok=True)
        self._dir.rmdir()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    if _read_line(conn) != REQUEST:
                        conn.sendall(b"bad request\n")
                        continue
                    started = time.monotonic()
                    self._restart()
                    self.restarts.append((started, time.monotonic() - started))
                    conn.sendall(OK)
                except Exception as exc:  # answer the hook; the test reads `errors`
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    log.exception("registry restart failed")
                    try:
                        conn.sendall(f"error: {exc}\n".encode())
                    except OSError:
                        pass


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} SOCKET", file=sys.stderr)
        return 2
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(HOOK_TIMEOUT)
            conn.connect(argv[1])
            conn.sendall(REQUEST)
            answer = _read_line(conn)
    except OSError as exc:
        print(f"restart request failed: {exc}", file=sys.stderr)
        return 1
    if answer != OK:
        print(f"restart refused: {answer!r}", file=sys.stderr)
        return 1
    print("registry restarted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
