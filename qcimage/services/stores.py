"""Where the caches keep their bytes: a bounded disk store, Redis, or disk over Redis.

diskcache (SQLite index + files: safe across processes, bounded in bytes with eviction,
atomic, survives restarts) on one box, optionally layered over Redis (redis-py) so several
boxes share renders and coalesce misses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import diskcache

if TYPE_CHECKING:
    from ..groups import CacheSettings

log = logging.getLogger(__name__)


class Store(Protocol):
    """Bytes by key. ``tag``: the image id an entry belongs to, so ``purge`` finds it."""

    def get(self, key: str, *, tag: str | None = None) -> bytes | None: ...

    def set(self, key: str, value: bytes, expire: float | None = None, *,
            tag: str | None = None) -> None: ...

    def add(self, key: str, value: bytes, expire: float) -> bool: ...
    def renew(self, key: str, value: bytes, expire: float) -> bool: ...
    def delete(self, key: str) -> None: ...
    def purge(self, tag: str) -> int: ...


class DiskStore:
    """A bounded on-disk store shared by every worker on the machine."""

    def __init__(self, directory: Path, size_limit: int):
        directory.mkdir(parents=True, exist_ok=True)
        # least-recently-stored: a hit is a pure read. least-recently-used would write the
        # access time on every hit, so every worker's hits would queue on SQLite's write
        # lock. timeout bounds SQLite lock waits. The tag index makes a purge by image id
        # one indexed delete.
        self.cache = diskcache.Cache(str(directory), size_limit=size_limit, timeout=2,
                                     eviction_policy="least-recently-stored", tag_index=True)

    def get(self, key: str, *, tag: str | None = None) -> bytes | None:
        return self.cache.get(key)

    def set(self, key: str, value: bytes, expire: float | None = None, *,
            tag: str | None = None) -> None:
        self.cache.set(key, value, expire=expire, tag=tag)

    def add(self, key: str, value: bytes, expire: float) -> bool:
        return self.cache.add(key, value, expire=expire)

    def renew(self, key: str, value: bytes, expire: float) -> bool:
        with self.cache.transact():
            if self.cache.get(key) == value:
                return self.cache.touch(key, expire=expire)
            return self.cache.add(key, value, expire=expire)

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def purge(self, tag: str) -> int:
        return self.cache.evict(tag)

    def close(self) -> None:
        self.cache.close()


class RedisStore:
    """Redis for several machines; when Redis is down every call degrades to a miss.

    A miss means the caller renders (or asks upstream) itself: slower, never wrong.
    The failure is logged once per outage and redis-py reconnects on the next call.
    """

    # Extend our own lock, or take it again when a fail-over lost it; one round trip.
    _RENEW = """
    local held = redis.call('get', KEYS[1])
    if held == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
    if not held then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 end
    return 0
    """

    QUIET = 5.0  # seconds without an error before an outage is logged as over

    def __init__(self, url: str, *, prefix: str = "qcimage:"):
        from . import redisconn

        self.errors = redisconn.ERRORS
        # One server, Sentinel's current master or a cluster: the URL says which.
        self.client = redisconn.connect(url)
        self.is_cluster = redisconn.is_cluster(self.client)
        self.prefix = prefix
        self.down = False
        self.last_error = 0.0

    def _call(self, default, fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except self.errors as exc:
            self.last_error = time.monotonic()
            if not self.down:
                log.error("redis unavailable (%s); bypassing it until it returns",
                          type(exc).__name__)
                self.down = True
            return default
        # "Back" once calls have succeeded for a while: a cluster with one dead node
        # fails some calls and not others, and must not log every call.
        if self.down and time.monotonic() - self.last_error > self.QUIET:
            log.warning("redis is back")
            self.down = False
        return result

    def ping(self) -> bool:
        return bool(self._call(False, self.client.ping))

    def get(self, key: str, *, tag: str | None = None) -> bytes | None:
        return self._call(None, self.client.get, self.prefix + key)

    def set(self, key: str, value: bytes, expire: float | None = None, *,
            tag: str | None = None) -> None:
        px = int(expire * 1000) if expire else None
        if tag is None:
            self._call(None, self.client.set, self.prefix + key, value, px=px)
            return
        # A set of keys per image id: what purge(tag) deletes. Not a MULTI: in a Redis
        # Cluster the two keys may live on different nodes.
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.prefix + key, value, px=px).sadd(self._tag_key(tag), key)
        self._call(None, pipe.execute)

    def _tag_key(self, tag: str) -> str:
        return f"{self.prefix}tag:{tag}"

    def add(self, key: str, value: bytes, expire: float) -> bool:
        # Redis down: nobody can coordinate, so everybody renders for themselves.
        return bool(self._call(True, self.client.set, self.prefix + key, value,
                               nx=True, px=int(expire * 1000)))

    def renew(self, key: str, value: bytes, expire: float) -> bool:
        return bool(self._call(True, self.client.eval, self._RENEW, 1, self.prefix + key,
                               value, int(expire * 1000)))

    def delete(self, key: str) -> None:
        self._call(None, self.client.delete, self.prefix + key)

    def purge(self, tag: str) -> int:
        keys = self._call(set(), self.client.smembers, self._tag_key(tag))
        if not keys:
            return 0
        # redis-py splits a many-key DEL by node in a Redis Cluster.
        deleted = self._call(0, self.client.delete, *(self.prefix + k.decode() for k in keys))
        self._call(None, self.client.delete, self._tag_key(tag))
        return int(deleted)


class TieredStore:
    """Local disk in front of a shared store: hits stay local, renders are shared."""

    def __init__(self, local: Store, shared: Store):
        self.local = local
        self.shared = shared

    def get(self, key: str, *, tag: str | None = None) -> bytes | None:
        value = self.local.get(key)
        if value is None:
            value = self.shared.get(key)
            if value is not None:
                self.local.set(key, value, tag=tag)
        return value

    def set(self, key: str, value: bytes, expire: float | None = None, *,
            tag: str | None = None) -> None:
        self.local.set(key, value, expire, tag=tag)
        self.shared.set(key, value, expire, tag=tag)

    def add(self, key: str, value: bytes, expire: float) -> bool:
        return self.shared.add(key, value, expire)

    def renew(self, key: str, value: bytes, expire: float) -> bool:
        return self.shared.renew(key, value, expire)

    def delete(self, key: str) -> None:
        self.local.delete(key)
        self.shared.delete(key)

    def purge(self, tag: str) -> int:
        return self.local.purge(tag) + self.shared.purge(tag)


def open_store(cache: CacheSettings, default_dir: Path) -> tuple[Store, RedisStore | None]:
    """The store the settings describe, and the shared Redis store in it if there is one.

    The disk cache on its own, or in front of Redis so that several boxes share it.
    """
    store: Store = DiskStore(cache.dir or default_dir, cache.max_bytes)
    if not cache.redis_url:
        return store, None
    shared = RedisStore(cache.redis_url)
    return TieredStore(store, shared), shared


def open_source_store(cache: CacheSettings, default_dir: Path,
                      shared: RedisStore | None) -> Store:
    """Fetched sources in a folder of their own, so their byte bound is theirs alone;
    in front of the same Redis as the rest when there is one."""
    store: Store = DiskStore((cache.dir or default_dir) / "sources", cache.source_max_bytes)
    return TieredStore(store, shared) if shared is not None else store
