"""Layer info caches: which layers a repository holds, and their sizes.

A hit answers `exists` and the metadata of `fetch` without touching storage.
Entries are keyed by (repository, digest), since a layer exists in a
repository only through that repository's link; the value records the blob the
link points at and its size. Only positive answers are cached: a layer that is
missing now may be pushed a moment later.

Whoever deletes a blob behind the service's back (the garbage collector) must
call `forget(digest)`, as it does for the Go registry's own cache.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from layergc.digest import Digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LayerInfo:
    blob: Digest  # what the repository's link points at
    size: int


class BaseLayerInfoCache(ABC):
    @abstractmethod
    def get(self, repository: str, digest: Digest) -> LayerInfo | None: ...

    @abstractmethod
    def set(self, repository: str, digest: Digest, info: LayerInfo) -> None: ...

    @abstractmethod
    def forget(self, digest: Digest, repository: str | None = None) -> None:
        """Drop `digest` from one repository, or from every repository when None."""

    @abstractmethod
    def clear(self) -> None: ...


class LayerInfoCache(BaseLayerInfoCache):
    """A bounded, thread-safe LRU in this process's memory."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, Digest], LayerInfo] = OrderedDict()
        # digest -> repositories holding an entry for it, so forget(digest) is not a scan.
        self._repositories: dict[Digest, set[str]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, repository: str, digest: Digest) -> LayerInfo | None:
        key = (repository, digest)
        with self._lock:
            info = self._entries.get(key)
            if info is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return info

    def set(self, repository: str, digest: Digest, info: LayerInfo) -> None:
        key = (repository, digest)
        with self._lock:
            self._entries[key] = info
            self._entries.move_to_end(key)
            self._repositories.setdefault(digest, set()).add(repository)
            while len(self._entries) > self.max_entries:
                (old_repo, old_digest), _ = self._entries.popitem(last=False)
                self._unindex(old_repo, old_digest)

    def forget(self, digest: Digest, repository: str | None = None) -> None:
        with self._lock:
            repos = (
                [repository] if repository is not None else list(self._repositories.get(digest, ()))
            )
            for repo in repos:
                if self._entries.pop((repo, digest), None) is not None:
                    self._unindex(repo, digest)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._repositories.clear()

    def _unindex(self, repository: str, digest: Digest) -> None:
        repos = self._repositories.get(digest)
        if repos is not None:
            repos.discard(repository)
            if not repos:
                del self._repositories[digest]


class RedisLayerInfoCache(BaseLayerInfoCache):
    """The same cache in Redis, shared by processes; keys under `layergc::`.

        layergc::repository::<name>::layers::<digest>   hash: blob, size
        layergc::layer::<digest>::repositories          set of repository names

    The prefix keeps clear of the Go registry's own keys (`blobs::`,
    `repository::`) when both use one Redis database. A Redis failure is
    logged and treated as a miss: the cache must never fail a storage call.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        prefix: str = "layergc::",
        ttl: int | None = None,
        timeout: float = 1.0,
    ) -> None:
        if client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # A cache must fail fast: redis-py's default retries with backoff
            # would hold every storage call for seconds while Redis is down.
            client = redis.Redis(
                host=host,
                port=port,
                db=db,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
        self._redis = client
        self.prefix = prefix
        self.ttl = ttl  # seconds; None keeps entries until forgotten

    def _key(self, repository: str, digest: Digest) -> str:
        return f"{self.prefix}repository::{repository}::layers::{digest}"

    def _index(self, digest: Digest) -> str:
        return f"{self.prefix}layer::{digest}::repositories"

    def get(self, repository: str, digest: Digest) -> LayerInfo | None:
        import redis

        try:
            fields = self._redis.hgetall(self._key(repository, digest))
        except redis.RedisError as exc:
            log.warning("layer cache read failed", extra={"error": str(exc)})
            return None
        try:
            return LayerInfo(Digest.parse(fields[b"blob"].decode()), int(fields[b"size"]))
        except (KeyError, ValueError):
            return None  # missing or unreadable entry: ask storage

    def set(self, repository: str, digest: Digest, info: LayerInfo) -> None:
        import redis

        key = self._key(repository, digest)
        try:
            with self._redis.pipeline() as pipe:
                pipe.hset(key, mapping={"blob": str(info.blob), "size": info.size})
                pipe.sadd(self._index(digest), repository)
                if self.ttl is not None:
                    pipe.expire(key, self.ttl)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("layer cache write failed", extra={"error": str(exc)})

    def forget(self, digest: Digest, repository: str | None = None) -> None:
        # Unlike reads, a failed forget must not pass silently: the caller is
        # deleting a blob and a stale entry would claim it still exists.
        index = self._index(digest)
        if repository is not None:
            with self._redis.pipeline() as pipe:
                pipe.delete(self._key(repository, digest))
                pipe.srem(index, repository)
                pipe.execute()
            return
        repos = [r.decode() for r in self._redis.smembers(index)]
        with self._redis.pipeline() as pipe:
            for repo in repos:
                pipe.delete(self._key(repo, digest))
            pipe.delete(index)
            pipe.execute()

    def clear(self) -> None:
        keys = list(self._redis.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            self._redis.delete(*keys[i : i + 1000])
