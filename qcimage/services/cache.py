"""Rendered-image and look-up caches shared by all workers, with render-once locking.

Storage is diskcache (SQLite index + files: safe across processes, bounded in bytes
with eviction, atomic, survives restarts) on one box, optionally layered over Redis
(redis-py) so several boxes share renders and coalesce misses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import diskcache

from .flight import Flight

if TYPE_CHECKING:
    from ..groups import CacheSettings

log = logging.getLogger(__name__)

# Every key prefix in the store, here and nowhere else, so no two uses can collide.
_RENDER = "r:"  # a rendered image (Entry.pack)
_LOCK = "l:"  # the worker computing a key (render, source fetch, look-up), while it does
_FAILURE = "f:"  # how a lock holder's attempt failed, by its lock's token, for its waiters
_SOURCE = "s:"  # a fetched upstream source, for a short while (SourceCache)
_LOOKUP = "p:"  # a product's image ids and when they were fetched
_SIZE = "d:"  # the width x height an image renders at, for look-ups
_WIDTH_RATIO = "o:"  # an image's stored/shown width ratio (EXIF-rotated sources)


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


@dataclass(frozen=True)
class Entry:
    """A rendered image as stored: bytes plus what the response needs to describe them."""

    data: bytes
    mime: str

    def pack(self) -> bytes:
        # A plain header instead of pickle: a compromised Redis must not mean code execution.
        return json.dumps({"mime": self.mime}).encode() + b"\n" + self.data

    @classmethod
    def unpack(cls, raw: bytes) -> Entry | None:
        header, sep, data = raw.partition(b"\n")
        if not sep:
            return None
        try:
            meta = json.loads(header)
        except ValueError:
            return None
        return cls(data=data, mime=str(meta.get("mime", "")))


def _flight(store: Store, wait_timeout: float, lock_ttl: float = 5.0) -> Flight:
    """Coordination through the shared part of a tiered store, never its local disk
    layer (which would copy a lock's value on read and keep it after the lock is gone)."""
    return Flight(getattr(store, "shared", store), wait_timeout=wait_timeout,
                  lock_ttl=lock_ttl, lock_prefix=_LOCK, failure_prefix=_FAILURE)


class RenderCache:
    """get-or-render with one render per key across every worker sharing the store."""

    def __init__(self, store: Store, *, wait_timeout: float = 20.0, lock_ttl: float = 5.0):
        self.store = store
        self.flight: Flight[Entry] = _flight(store, wait_timeout, lock_ttl)

    def get(self, key: str, *, tag: str | None = None) -> Entry | None:
        raw = self.store.get(_RENDER + key, tag=tag)
        return Entry.unpack(raw) if raw is not None else None

    def get_or_render(self, key: str, render: Callable[[], Entry], *,
                      tag: str | None = None) -> tuple[Entry, bool]:
        """Return (entry, was_cached). Concurrent misses wait for the one that renders.

        ``tag`` (the image id) lets the store purge the render with the image's other entries.
        Raises FlightTimeout when another's render takes longer than ``wait_timeout``.
        """
        def render_and_store() -> Entry:
            entry = render()
            self.store.set(_RENDER + key, entry.pack(), tag=tag)
            return entry

        entry, rendered = self.flight.run(key, lambda: self.get(key, tag=tag),
                                          render_and_store)
        return entry, not rendered

    def rendered_size(self, key: str) -> tuple[int, int] | None:
        """(width, height) kept under key by remember_size, or None."""
        raw = self.store.get(_SIZE + key)
        try:
            width, height = (int(n) for n in raw.decode().split("x"))
        except (AttributeError, ValueError):
            return None
        return width, height

    def remember_size(self, key: str, width: int, height: int, *, tag: str) -> None:
        self.store.set(_SIZE + key, f"{width}x{height}".encode(), tag=tag)

    def width_ratio(self, image_id: str) -> float:
        """How much wider than shown an image is stored (1.0 until one is remembered)."""
        raw = self.store.get(_WIDTH_RATIO + image_id)
        return float(raw) if raw else 1.0

    def remember_width_ratio(self, image_id: str, ratio: float) -> None:
        self.store.set(_WIDTH_RATIO + image_id, repr(ratio).encode(), tag=image_id)


class SourceCache:
    """Fetched upstream sources, kept ``ttl`` seconds so other renders of them skip upstream.

    Other widths' formats, another tenant's watermark and the EXIF re-fetch all ask
    upstream for the same bytes within moments of each other. The store given here is
    bounded in bytes (its own diskcache folder; Redis by its maxmemory); a source
    larger than ``max_bytes`` is never kept.
    """

    def __init__(self, store: Store, *, ttl: float, max_bytes: int, wait_timeout: float):
        self.store = store
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.flight: Flight[bytes] = _flight(store, wait_timeout)

    def get(self, key: str, *, tag: str | None = None) -> bytes | None:
        return self.store.get(_SOURCE + key, tag=tag) if self.ttl > 0 else None

    def put(self, key: str, data: bytes, *, tag: str | None = None) -> None:
        if self.ttl > 0 and len(data) <= self.max_bytes:
            self.store.set(_SOURCE + key, bytes(data), expire=self.ttl, tag=tag)

    def forget(self, key: str) -> None:
        """Drop a source that turned out unusable (truncated, not an image)."""
        self.store.delete(_SOURCE + key)

    def get_or_fetch(self, key: str, fetch: Callable[[], bytes], *,
                     tag: str | None = None) -> bytes:
        """The source for ``key``: kept, being fetched by someone else, or fetched now.

        ``tag`` (the image id) lets a takedown purge the source with the image's renders.
        """
        def fetch_and_keep() -> bytes:
            data = fetch()
            self.put(key, data, tag=tag)
            return data

        return self.flight.run(_SOURCE + key, lambda: self.get(key, tag=tag),
                               fetch_and_keep)[0]


class LookupCache:
    """Product look-ups: fresh for ``ttl`` seconds, kept ``stale_ttl`` more for outages."""

    def __init__(self, store: Store, *, ttl: int, stale_ttl: int = 86400, clock=time.time,
                 wait_timeout: float = 20.0):
        self.store = store
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self.clock = clock
        self.flight: Flight[list[str]] = _flight(store, wait_timeout)

    def get(self, key: str) -> tuple[list[str], bool] | None:
        """(image ids, fresh) or None."""
        if self.ttl <= 0:
            return None
        raw = self.store.get(_LOOKUP + key)
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            ids, at = list(stored["ids"]), float(stored["at"])
        except (ValueError, KeyError, TypeError):
            return None
        return ids, self.clock() - at < self.ttl

    def set(self, key: str, ids: list[str]) -> None:
        if self.ttl <= 0:
            return
        raw = json.dumps({"ids": ids, "at": self.clock()}).encode()
        self.store.set(_LOOKUP + key, raw, expire=self.ttl + self.stale_ttl)

    def get_or_fetch(self, key: str, fetch: Callable[[], list[str]]) -> tuple[list[str], bool]:
        """(image ids, fetched by this call); concurrent misses ask upstream once."""
        def fresh() -> list[str] | None:
            cached = self.get(key)
            return cached[0] if cached is not None and cached[1] else None

        def fetch_and_keep() -> list[str]:
            ids = fetch()
            self.set(key, ids)
            return ids

        return self.flight.run(_LOOKUP + key, fresh, fetch_and_keep)


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
