"""Registry and Repository: the entry points of the layer service.

Usage:

    registry = Registry(FilesystemDriver("/var/lib/docker-registry"))
    repo = registry.repository("team/app")      # InvalidRepositoryName before any I/O
    repo.layers(); repo.manifests(); repo.tags()
"""

from __future__ import annotations

import threading
import zlib

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.names import validate_repository_name
from layergc.storage.cache import BaseLayerInfoCache
from layergc.storage.layers import LayerService
from layergc.storage.manifeststore import ManifestService
from layergc.storage.tags import TagService

# Finishes of one digest are serialised on one of these; a fixed stripe keeps
# memory bounded however many digests pass through.
_LOCK_STRIPES = 64


class Registry:
    def __init__(self, driver: StorageDriver, cache: BaseLayerInfoCache | None = None) -> None:
        self.driver = driver
        self.cache = cache
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def repository(self, name: str) -> Repository:
        return Repository(self, validate_repository_name(name))

    def digest_lock(self, digest: Digest) -> threading.Lock:
        return self._locks[zlib.crc32(str(digest).encode()) % _LOCK_STRIPES]


class Repository:
    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    def __repr__(self) -> str:
        return f"<Repository {self.name}>"

    def layers(self) -> LayerService:
        return LayerService(self)

    def manifests(self) -> ManifestService:
        return ManifestService(self)

    def tags(self) -> TagService:
        return TagService(self)
