"""LayerService (a repository's layers) and Layer (a seekable reader of one).

A layer exists in a repository through its link
`_layers/<alg>/<hex>/link`, which names the blob `blobs/<alg>/<xx>/<hex>/data`
holding the bytes; the same blob serves every repository that links it.
"""

from __future__ import annotations

import io
import logging
import uuid as uuidlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

from layergc.digest import CANONICAL, Digest
from layergc.driver.base import StorageDriver, seek_target
from layergc.errors import InvalidLink, PathNotFound, UnknownLayer
from layergc.storage import paths
from layergc.storage.cache import LayerInfo
from layergc.storage.links import read_link, write_link
from layergc.storage.upload import (
    DEFAULT_STATE_INTERVAL,
    LayerUpload,
    resume_upload,
    start_upload,
)

if TYPE_CHECKING:
    from layergc.storage.registry import Repository

log = logging.getLogger(__name__)


def _digest(value: str | Digest) -> Digest:
    return value if isinstance(value, Digest) else Digest.parse(value)


class LayerService:
    """Upload, resume, check and fetch the layers of one repository."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.driver: StorageDriver = repository.registry.driver
        self._cache = repository.registry.cache

    def upload(
        self,
        algorithms: Iterable[str] = (CANONICAL,),
        *,
        state_interval: int = DEFAULT_STATE_INTERVAL,
    ) -> LayerUpload:
        """Start an upload; sha256 is always hashed, `algorithms` may add sha384/sha512."""
        return start_upload(
            self, algorithms, uuid=str(uuidlib.uuid4()), state_interval=state_interval
        )

    def resume(self, uuid: str, *, state_interval: int = DEFAULT_STATE_INTERVAL) -> LayerUpload:
        """Reopen an upload (LayerUploadUnknown once cancelled, finished or never started)."""
        return resume_upload(self, uuid, state_interval=state_interval)

    def exists(self, digest: str | Digest) -> bool:
        try:
            self.stat(digest)
        except UnknownLayer:
            return False
        return True

    def stat(self, digest: str | Digest) -> LayerInfo:
        """The blob behind the repository's layer `digest` and its size (UnknownLayer)."""
        dgst = _digest(digest)
        name = self.repository.name
        if self._cache is not None and (info := self._cache.get(name, dgst)) is not None:
            return info
        try:
            blob = read_link(self.driver, paths.layer_link(name, dgst))
            stat = self.driver.stat(paths.blob_data(blob))
        except PathNotFound:
            raise UnknownLayer(name, str(dgst)) from None
        except InvalidLink as exc:
            log.warning("corrupt layer link", extra={"repository": name, "error": str(exc)})
            raise UnknownLayer(name, str(dgst)) from None
        if stat.is_dir:
            raise UnknownLayer(name, str(dgst))
        info = LayerInfo(blob, stat.size)
        if self._cache is not None:
            self._cache.set(name, dgst, info)
        return info

    def fetch(self, digest: str | Digest) -> Layer:
        dgst = _digest(digest)
        info = self.stat(dgst)
        return Layer(self.driver, dgst, info.blob, info.size)

    # --- called by LayerUpload.finish ---------------------------------------------

    def _link_uploaded(self, digest: Digest, data_path: str, size: int) -> Layer:
        """Move verified upload data into the blob store (once) and link it here."""
        driver, name = self.driver, self.repository.name
        blob_path = paths.blob_data(digest)
        # Serialise finishes of one digest in this process; across processes the
        # move replaces identical content, which is harmless.
        with self.repository.registry.digest_lock(digest):
            try:
                existing = driver.stat(blob_path)
            except PathNotFound:
                existing = None
            if existing is not None and not existing.is_dir and existing.size == size:
                log.debug("blob already stored", extra={"digest": str(digest)})
            elif size == 0:
                driver.put_content(blob_path, b"")
            else:
                if existing is not None:
                    log.warning(
                        "replacing a blob of the wrong size",
                        extra={"digest": str(digest), "size": existing.size, "expected": size},
                    )
                driver.move(data_path, blob_path)
            write_link(driver, paths.layer_link(name, digest), digest)
        if self._cache is not None:
            self._cache.set(name, digest, LayerInfo(digest, size))
        return Layer(driver, digest, digest, size)


class Layer(io.RawIOBase):
    """A seekable binary reader of a layer; storage is opened on the first read."""

    def __init__(self, driver: StorageDriver, digest: Digest, blob: Digest, length: int) -> None:
        super().__init__()
        self._driver = driver
        self.digest = digest
        self.blob = blob  # the stored blob; differs from `digest` only for a cross-algorithm link
        self.length = length
        self._path = paths.blob_data(blob)
        self._pos = 0
        self._reader: BinaryIO | None = None

    def __repr__(self) -> str:
        return f"<Layer {self.digest} length={self.length}>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        target = seek_target(self._pos, self.length, offset, whence)
        if target != self._pos:
            self._drop_reader()  # reopened at the new offset by the next read
            self._pos = target
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        remaining = self.length - self._pos
        if remaining <= 0 or size == 0:
            return b""
        want = remaining if size is None or size < 0 else min(size, remaining)
        reader = self._open()
        parts = []
        while want > 0:
            chunk = reader.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        data = b"".join(parts)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._drop_reader()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed layer")

    def _open(self) -> BinaryIO:
        if self._reader is None:
            self._reader = self._driver.reader(self._path, self._pos)
        return self._reader

    def _drop_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
