"""LayerUpload: a resumable, append-only upload, stored as the Go registry stores it.

    _uploads/<uuid>/startedat                 RFC 3339 UTC, seconds (Go's time.RFC3339)
    _uploads/<uuid>/data                      the bytes so far
    _uploads/<uuid>/hashstates/<alg>/<offset> Go MarshalBinary state after <offset> bytes

As in distribution's blobwriter_resumable.go, a hash state is written at offset
0 when the upload starts and whenever the upload is closed (the Go registry
closes its writer at the end of every PATCH), so a resume, in this process,
another one or the Go registry, finds a state at exactly the data's size and
goes on without reading the data. Writes also leave a state every
`state_interval` bytes (8 MiB), so that a crash costs at most that much
re-hashing.

sha256, the Go registry's canonical algorithm, is always tracked; sha384 and
sha512 are tracked too when asked for at the start. Finishing with an
untracked algorithm hashes the data again, as the Go registry does.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from layergc.digest import ALGORITHMS, CANONICAL, Digest
from layergc.driver.base import FileWriter, basename, parent
from layergc.errors import (
    DigestMismatch,
    LayerUploadUnknown,
    PathNotFound,
    StorageDriverError,
)
from layergc.gc.uploads import read_started_at
from layergc.storage import hashstate, paths

if TYPE_CHECKING:
    from layergc.storage.layers import Layer, LayerService

log = logging.getLogger(__name__)

# A write leaves a hash state once this many bytes passed since the last one: after
# every write of a chunk-sized write, at most one per 8 MiB for small writes (Go
# lists every state on each resume, so thousands of them would cost). Always on close.
DEFAULT_STATE_INTERVAL = 8 << 20
READ_CHUNK = 8 << 20
# One driver path component: what Go's UUIDs (and any sane client id) look like.
_UUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


def format_started_at(when: datetime) -> str:
    """Go's time.RFC3339 of a UTC time: `2026-11-19T05:34:45Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def valid_upload_id(uuid: str) -> bool:
    return isinstance(uuid, str) and _UUID_RE.fullmatch(uuid) is not None


class LayerUpload(io.RawIOBase):
    """An upload in progress: write, close, resume elsewhere, finish or cancel.

    Append-only: `seek` only accepts a position equal to the bytes written, so
    `seek(0, io.SEEK_CUR)` and `seek(0, io.SEEK_END)` report the size.
    """

    def __init__(
        self,
        service: LayerService,
        uuid: str,
        started_at: datetime,
        writer: FileWriter,
        hashers: dict[str, hashstate.ResumableHash],
        *,
        state_interval: int = DEFAULT_STATE_INTERVAL,
        rehashed: int = 0,
    ) -> None:
        super().__init__()
        self._service = service
        self._driver = service.driver
        self._repo = service.repository.name
        self.uuid = uuid
        self.started_at = started_at
        self._writer: FileWriter | None = writer
        self._hashers = hashers
        self._size = writer.size
        self._state_interval = state_interval
        self._state_offset = -1  # size at the last persisted state
        self._done = False  # finished or cancelled
        # Bytes of data read back to rebuild a hash state (0 on a clean resume).
        self.rehashed_bytes = rehashed

    def __repr__(self) -> str:
        return f"<LayerUpload {self._repo}@{self.uuid} size={self._size}>"

    # --- file object --------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True

    def write(self, data: hashstate.Buffer) -> int:  # type: ignore[override]
        if self.closed or self._writer is None:
            raise ValueError("write to a closed upload; resume it first")
        n = self._writer.write(data)
        view = data if n == len(data) else memoryview(data)[:n]
        for h in self._hashers.values():
            h.update(view)
        self._size += n
        if self._size - self._state_offset >= self._state_interval:
            self._persist_states()
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence in (io.SEEK_CUR, io.SEEK_END):
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target != self._size:
            raise io.UnsupportedOperation("uploads are append-only")
        return self._size

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        """Keep what was written and persist the hash state, for a later resume."""
        if self.closed:
            return
        try:
            if not self._done and self._writer is not None:
                self._writer.close()
                self._writer = None
                self._persist_states()
        finally:
            super().close()

    def __del__(self) -> None:
        # IOBase would close() here, writing to storage from the garbage collector.
        pass

    # --- the registry's operations ------------------------------------------------

    def finish(self, digest: str | Digest) -> Layer:
        """Verify the content against `digest`, move it into the blob store and link it.

        On a mismatch raises DigestMismatch and leaves the upload closed, intact
        and resumable (through `layers.resume(uuid)`, or `finish` again)."""
        expected = digest if isinstance(digest, Digest) else Digest.parse(digest)
        self._check_known()
        hasher = self._hashers.get(expected.algorithm)
        if hasher is None:
            self.close()
            hasher = self._restore_from_storage(expected.algorithm)
        actual = Digest(expected.algorithm, hasher.hexdigest())
        if actual != expected:
            self.close()
            raise DigestMismatch(str(expected), str(actual))
        self._commit_data()
        layer = self._service._link_uploaded(expected, self._data_path, self._size)
        self._remove()
        log.info(
            "layer upload finished",
            extra={"repository": self._repo, "uuid": self.uuid, "digest": str(expected)},
        )
        return layer

    def cancel(self) -> None:
        """Throw the upload away; resuming it then raises LayerUploadUnknown."""
        self._check_known()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._remove()

    # --- internals ----------------------------------------------------------------

    @property
    def _data_path(self) -> str:
        return paths.upload_data(self._repo, self.uuid)

    def _check_known(self) -> None:
        if self._done:
            raise LayerUploadUnknown(self._repo, self.uuid)

    def _persist_states(self) -> None:
        if self._state_offset == self._size:
            return
        for algorithm, h in self._hashers.items():
            path = paths.upload_hashstate(self._repo, self.uuid, algorithm, self._size)
            self._driver.put_content(path, h.marshal())
        self._state_offset = self._size

    def _commit_data(self) -> None:
        """Make the data final and check nothing else appended to it meanwhile."""
        if self._size == 0:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            return  # the empty blob is written directly, data file or not
        writer = self._writer or self._driver.writer(self._data_path, append=True)
        self._writer = None
        writer.commit()
        writer.close()
        stored = self._driver.stat(self._data_path).size
        if stored != self._size:
            raise StorageDriverError(
                f"upload {self._repo}@{self.uuid} holds {stored} bytes, {self._size} were hashed"
            )

    def _restore_from_storage(self, algorithm: str) -> hashstate.ResumableHash:
        h, reread = restore_hash(self._service, self.uuid, algorithm, self._size)
        self.rehashed_bytes += reread
        return h

    def _remove(self) -> None:
        self._done = True
        try:
            self._driver.delete(paths.upload_dir(self._repo, self.uuid))
        except PathNotFound:
            pass  # already gone: cancelled or purged meanwhile
        super().close()


# --- starting and resuming ---------------------------------------------------------


def start_upload(
    service: LayerService,
    algorithms: Iterable[str] = (CANONICAL,),
    *,
    uuid: str,
    state_interval: int = DEFAULT_STATE_INTERVAL,
) -> LayerUpload:
    wanted = _algorithms(algorithms)
    repo, driver = service.repository.name, service.driver
    started_at = datetime.now(UTC).replace(microsecond=0)
    driver.put_content(
        paths.upload_started_at(repo, uuid), format_started_at(started_at).encode("ascii")
    )
    writer = driver.writer(paths.upload_data(repo, uuid), append=False)
    hashers = {alg: hashstate.new(alg) for alg in wanted}
    upload = LayerUpload(service, uuid, started_at, writer, hashers, state_interval=state_interval)
    upload._persist_states()
    return upload


def resume_upload(
    service: LayerService, uuid: str, *, state_interval: int = DEFAULT_STATE_INTERVAL
) -> LayerUpload:
    repo, driver = service.repository.name, service.driver
    if not valid_upload_id(uuid):
        raise LayerUploadUnknown(repo, str(uuid))
    started_path = paths.upload_started_at(repo, uuid)
    try:
        started_at = read_started_at(driver, started_path)
    except PathNotFound:
        raise LayerUploadUnknown(repo, uuid) from None
    except ValueError:  # UnicodeDecodeError too
        # A broken timestamp must not make the data unreachable: use the file's time.
        started_at = driver.stat(started_path).mod_time
        log.warning("unreadable startedat", extra={"repository": repo, "uuid": uuid})
    data_path = paths.upload_data(repo, uuid)
    try:
        writer = driver.writer(data_path, append=True)
    except PathNotFound:
        # Nothing written yet, and a driver (S3) that only has data once written.
        writer = driver.writer(data_path, append=False)
    size = writer.size
    hashers: dict[str, hashstate.ResumableHash] = {}
    reread = 0
    for algorithm in _tracked_algorithms(service, uuid):
        states = _stored_states(service, uuid, algorithm, size)
        if algorithm == CANONICAL or size in states:
            hashers[algorithm], n = restore_hash(service, uuid, algorithm, size, states)
            reread += n
    upload = LayerUpload(
        service, uuid, started_at, writer, hashers, state_interval=state_interval, rehashed=reread
    )
    if reread:
        upload._persist_states()  # the next resume need not read the data again
    else:
        upload._state_offset = size
    return upload


def restore_hash(
    service: LayerService,
    uuid: str,
    algorithm: str,
    size: int,
    states: dict[int, str] | None = None,
) -> tuple[hashstate.ResumableHash, int]:
    """The hash of the first `size` bytes of the upload, and how many bytes it read.

    Loads the stored state at `size` when there is one; otherwise the nearest
    state below it (or none) and hashes the rest of the data from storage."""
    repo, driver = service.repository.name, service.driver
    if states is None:
        states = _stored_states(service, uuid, algorithm, size)
    h: hashstate.ResumableHash | None = None
    # One byte over a state's fixed size is enough to refuse a larger file.
    limit = hashstate.SPECS[algorithm].marshaled_size + 1
    for offset in sorted(states, reverse=True):
        try:
            candidate = hashstate.unmarshal(driver.get_content(states[offset], limit), algorithm)
        except (PathNotFound, hashstate.HashStateError) as exc:
            log.warning("unusable hash state", extra={"path": states[offset], "error": str(exc)})
            continue
        if candidate.length == offset:
            h = candidate
            break
    if h is None:
        h = hashstate.new(algorithm)
    start = h.length
    if start < size:
        log.info(
            "rehashing upload data",
            extra={"repository": repo, "uuid": uuid, "from": start, "to": size},
        )
        with driver.reader(paths.upload_data(repo, uuid), start) as reader:
            remaining = size - start
            while remaining > 0:
                chunk = reader.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise StorageDriverError(f"upload data of {repo}@{uuid} ended early")
                h.update(chunk)
                remaining -= len(chunk)
    return h, size - start


def _stored_states(service: LayerService, uuid: str, algorithm: str, size: int) -> dict[int, str]:
    """Offset -> path of the states usable at `size`; states past it are removed.

    A state beyond the data describes bytes lost in a crash: left in place, the
    Go registry would load it once the data grows to that offset again."""
    driver, repo = service.driver, service.repository.name
    try:
        listed = driver.list(paths.upload_hashstates_dir(repo, uuid, algorithm))
    except PathNotFound:
        return {}
    states: dict[int, str] = {}
    for path in listed:
        name = basename(path)
        if not name.isdigit():
            continue
        offset = int(name)
        if offset <= size:
            states[offset] = path
        else:
            try:
                driver.delete(path)
            except PathNotFound:
                pass
    return states


def _tracked_algorithms(service: LayerService, uuid: str) -> list[str]:
    """sha256 and every other supported algorithm with a hashstates folder."""
    repo = service.repository.name
    try:
        listed = service.driver.list(parent(paths.upload_hashstates_dir(repo, uuid, CANONICAL)))
    except PathNotFound:
        listed = []
    found = {basename(p) for p in listed} & set(ALGORITHMS)
    return [CANONICAL, *sorted(found - {CANONICAL})]


def _algorithms(algorithms: Iterable[str]) -> list[str]:
    wanted = [CANONICAL, *algorithms]
    unknown = set(wanted) - set(ALGORITHMS)
    if unknown:
        raise ValueError(f"unsupported digest algorithms: {sorted(unknown)}")
    return list(dict.fromkeys(wanted))
