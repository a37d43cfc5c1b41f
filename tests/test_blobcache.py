"""Clearing the Go registry's Redis blob descriptor cache: exactly the deleted digests."""

from __future__ import annotations

import pytest

from layergc.gc.blobcache import RedisAddress, RedisBlobCache
from tests.support.components import require_redis

DB = 7  # a database of its own, away from the registry tests' keys
GONE = "sha256:" + "a" * 64
KEPT = "sha256:" + "b" * 64


@pytest.fixture
def redis_client():  # type: ignore[no-untyped-def]
    import redis

    host, port = require_redis()
    client = redis.Redis(host=host, port=port, db=DB, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def fill_like_the_registry(client, digest: str, repos: list[str]) -> None:  # type: ignore[no-untyped-def]
    # registry/storage/cache/redis/redis.go: setDescriptor in both scopes
    client.hset(f"blobs::{digest}", mapping={"digest": digest, "size": 10, "mediatype": "x"})
    for repo in repos:
        client.sadd(f"repository::{repo}::blobs", digest)
        client.hset(f"repository::{repo}::blobs::{digest}", mapping={"mediatype": "x"})


def test_forget_removes_exactly_the_deleted_digests(redis_client) -> None:  # type: ignore[no-untyped-def]
    fill_like_the_registry(redis_client, GONE, ["a", "team/b"])
    fill_like_the_registry(redis_client, KEPT, ["a", "team/b", "c"])
    redis_client.set("unrelated", "1")

    cache = RedisBlobCache(RedisAddress("127.0.0.1", 6379, DB))
    removed = cache.forget([GONE])
    cache.close()

    assert removed == 1 + 2 + 2  # descriptor hash, two scoped hashes, two set members
    assert not redis_client.exists(f"blobs::{GONE}")
    for repo in ("a", "team/b"):
        assert not redis_client.exists(f"repository::{repo}::blobs::{GONE}")
        assert redis_client.smembers(f"repository::{repo}::blobs") == {KEPT}
    assert redis_client.exists(f"blobs::{KEPT}")
    assert redis_client.exists("repository::c::blobs::" + KEPT)
    assert redis_client.get("unrelated") == "1"


def test_forget_nothing_touches_nothing(redis_client) -> None:  # type: ignore[no-untyped-def]
    fill_like_the_registry(redis_client, KEPT, ["a"])
    cache = RedisBlobCache(RedisAddress("127.0.0.1", 6379, DB))
    assert cache.forget([]) == 0
    assert cache.forget([GONE]) == 0
    cache.close()
    assert redis_client.dbsize() == 3


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:6379", ("127.0.0.1", 6379)), ("[::1]:6380", ("::1", 6380))],
)
def test_address_parsing(addr: str, expected: tuple[str, int]) -> None:
    parsed = RedisAddress.parse(addr)
    assert (parsed.host, parsed.port) == expected


@pytest.mark.parametrize("addr", ["localhost", "host:port", ":6379"])
def test_bad_address_is_refused(addr: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        RedisAddress.parse(addr)
