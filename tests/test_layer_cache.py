"""Layer info caches: bounded LRU in memory, and Redis; no storage trip after the first."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.driver.filesystem import FilesystemDriver
from layergc.driver.inmemory import InMemoryDriver
from layergc.storage import Registry, paths
from layergc.storage.cache import (
    BaseLayerInfoCache,
    LayerInfo,
    LayerInfoCache,
    RedisLayerInfoCache,
)
from tests.support.components import require_redis
from tests.support.recording import RecordingDriver


def dg(n: int) -> Digest:
    return Digest.of(str(n).encode())


@pytest.fixture(params=["inmemory", "filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "inmemory":
        return InMemoryDriver()
    return FilesystemDriver(tmp_path / "root")


@pytest.fixture
def redis_cache() -> Iterator[RedisLayerInfoCache]:
    host, port = require_redis()
    cache = RedisLayerInfoCache(host=host, port=port, prefix=f"layergc::test-{uuid.uuid4()}::")
    yield cache
    cache.clear()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cache(request: pytest.FixtureRequest) -> BaseLayerInfoCache:
    if request.param == "memory":
        return LayerInfoCache()
    return request.getfixturevalue("redis_cache")


# --- the LRU itself --------------------------------------------------------------------


def test_lru_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = LayerInfoCache(max_entries=3)
    for i in range(3):
        cache.set("r", dg(i), LayerInfo(dg(i), i))
    assert cache.get("r", dg(0)) == LayerInfo(dg(0), 0)  # 0 is now the most recent
    cache.set("r", dg(3), LayerInfo(dg(3), 3))
    assert len(cache) == 3
    assert cache.get("r", dg(1)) is None
    assert cache.get("r", dg(0)) is not None
    assert cache.get("r", dg(3)) is not None
    for i in range(100):
        cache.set("s", dg(i), LayerInfo(dg(i), i))
    assert len(cache) == 3


def test_entries_are_per_repository_and_forget_works(cache: BaseLayerInfoCache) -> None:
    info = LayerInfo(dg(1), 10)
    cache.set("a", dg(1), info)
    cache.set("b", dg(1), info)
    cache.set("a", dg(2), LayerInfo(dg(2), 20))
    assert cache.get("a", dg(1)) == info
    assert cache.get("c", dg(1)) is None
    cache.forget(dg(1), "a")
    assert cache.get("a", dg(1)) is None
    assert cache.get("b", dg(1)) == info
    cache.set("a", dg(1), info)
    cache.forget(dg(1))  # every repository
    assert cache.get("a", dg(1)) is None
    assert cache.get("b", dg(1)) is None
    assert cache.get("a", dg(2)) == LayerInfo(dg(2), 20)


# --- through the layer service -----------------------------------------------------------


def push(registry: Registry, repo: str, data: bytes) -> str:
    upload = registry.repository(repo).layers().upload()
    upload.write(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload.finish(digest)
    return digest


def test_exists_and_size_without_a_storage_read_after_the_first(
    driver: StorageDriver, cache: BaseLayerInfoCache
) -> None:
    data = b"layer bytes" * 1000
    digest = push(Registry(driver), "team/app", data)

    recorder = RecordingDriver(driver)
    layers = Registry(recorder, cache=cache).repository("team/app").layers()
    assert layers.exists(digest)
    assert recorder.calls, "the first answer comes from storage"
    recorder.reset()
    for _ in range(3):
        assert layers.exists(digest)
        layer = layers.fetch(digest)
        assert layer.length == len(data)
        assert str(layer.digest) == digest
    assert recorder.calls == []
    # Reading the content does go to storage, to the blob only.
    assert layer.read() == data
    assert {path for _, path in recorder.calls} == {paths.blob_data(Digest.parse(digest))}


def test_finish_fills_the_cache(driver: StorageDriver) -> None:
    recorder = RecordingDriver(driver)
    registry = Registry(recorder, cache=LayerInfoCache())
    digest = push(registry, "team/app", b"abc")
    recorder.reset()
    assert registry.repository("team/app").layers().fetch(digest).length == 3
    assert recorder.calls == []


def test_misses_are_not_cached_and_repositories_are_separate(
    driver: StorageDriver, cache: BaseLayerInfoCache
) -> None:
    registry = Registry(driver, cache=cache)
    data = b"pushed later"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layers = registry.repository("team/app").layers()
    assert not layers.exists(digest)
    push(registry, "team/app", data)
    assert layers.exists(digest)
    assert not registry.repository("team/other").layers().exists(digest)


def test_forget_makes_the_next_answer_come_from_storage(
    driver: StorageDriver, cache: BaseLayerInfoCache
) -> None:
    registry = Registry(driver, cache=cache)
    digest = push(registry, "team/app", b"doomed")
    layers = registry.repository("team/app").layers()
    assert layers.exists(digest)
    # The garbage collector deletes the blob and its link, then tells the cache.
    driver.delete(paths.layer_link_dir("team/app", Digest.parse(digest)))
    driver.delete(paths.blob_dir(Digest.parse(digest)))
    assert layers.exists(digest), "stale until forgotten"
    cache.forget(Digest.parse(digest))
    assert not layers.exists(digest)


@pytest.mark.redis
def test_redis_cache_is_shared_between_registries(
    driver: StorageDriver, redis_cache: RedisLayerInfoCache
) -> None:
    digest = push(Registry(driver, cache=redis_cache), "team/app", b"shared")
    recorder = RecordingDriver(driver)
    layers = Registry(recorder, cache=redis_cache).repository("team/app").layers()
    assert layers.fetch(digest).length == 6
    assert recorder.calls == []


@pytest.mark.redis
def test_redis_keys_use_the_layergc_prefix(redis_cache: RedisLayerInfoCache) -> None:
    redis_cache.set("team/app", dg(1), LayerInfo(dg(1), 5))
    keys = sorted(k.decode() for k in redis_cache._redis.scan_iter(match="layergc::test-*"))
    mine = [k for k in keys if k.startswith(redis_cache.prefix)]
    assert mine == [
        f"{redis_cache.prefix}layer::{dg(1)}::repositories",
        f"{redis_cache.prefix}repository::team/app::layers::{dg(1)}",
    ]


def test_redis_failures_read_as_misses() -> None:
    # Nothing listens on port 1: every call fails, fast, and the service must not.
    started = time.monotonic()
    cache = RedisLayerInfoCache(host="127.0.0.1", port=1)
    assert cache.get("team/app", dg(1)) is None
    cache.set("team/app", dg(1), LayerInfo(dg(1), 1))
    registry = Registry(InMemoryDriver(), cache=cache)
    digest = push(registry, "team/app", b"still works")
    assert registry.repository("team/app").layers().exists(digest)
    assert time.monotonic() - started < 2
