"""Making the Go registry's blob descriptor cache forget deleted blobs.

The registry caches which blobs exist (`storage.cache.blobdescriptor`). After a
blob is deleted behind its back, a cached entry makes it answer "exists" to a
client that re-pushes the layer, accept a manifest that needs it and serve a
broken image. With the Redis cache layergc removes exactly the deleted digests'
keys, as distribution's registry/storage/cache/redis/redis.go lays them out:

    blobs::<digest>                          hash: digest, size, mediatype
    repository::<name>::blobs::<digest>      hash: mediatype
    repository::<name>::blobs                set of digests

The repository-scoped keys are found with one SCAN over `repository::*`, not
guessed from the layer links: a repository may have cached a blob it no longer
links. The in-memory cache lives inside the registry process; only a restart
(the after-delete hook) clears it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

log = logging.getLogger(__name__)

_REPO_PREFIX = "repository::"
_BLOBS_INFIX = "::blobs::"
_BLOB_SET_SUFFIX = "::blobs"


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = None

    @classmethod
    def parse(cls, addr: str, db: int = 0, password: str | None = None) -> RedisAddress:
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis address must be host:port, got {addr!r}")
        return cls(host.strip("[]"), int(port), db, password or None)


class RedisBlobCache:
    """Removes deleted digests from the registry's Redis blob descriptor cache."""

    def __init__(self, address: RedisAddress) -> None:
        import redis

        self._redis = redis.Redis(
            host=address.host,
            port=address.port,
            db=address.db,
            password=address.password,
            socket_timeout=10,
            decode_responses=True,
        )

    def forget(self, digests: Collection[str]) -> int:
        """Delete every cache entry for `digests`; returns how many keys or members went."""
        if not digests:
            return 0
        doomed = set(digests)
        removed = 0
        pipe = self._redis.pipeline(transaction=False)
        for digest in doomed:
            pipe.delete(f"blobs::{digest}")
        set_keys: list[str] = []
        for key in self._redis.scan_iter(match=f"{_REPO_PREFIX}*", count=1000):
            if key.endswith(_BLOB_SET_SUFFIX):
                set_keys.append(key)
            elif _BLOBS_INFIX in key and key.rsplit(_BLOBS_INFIX, 1)[1] in doomed:
                pipe.delete(key)
        members = list(doomed)
        for key in set_keys:
            pipe.srem(key, *members)
        for result in pipe.execute():
            removed += int(result or 0)
        log.info("redis blob cache cleared", extra={"digests": len(doomed), "removed": removed})
        return removed

    def close(self) -> None:
        self._redis.close()
