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
from typing import Protocol

import diskcache

from .flight import Flight

log = logging.getLogger(__name__)


class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, expire: float | None = None) -> None: ...
    def add(self, key: str, value: bytes, expire: float) -> bool: ...
    def delete(self, key: str) -> None: ...


class DiskStore:
    """A bounded on-disk store shared by every worker on the machine."""

    def __init__(self, directory: Path, size_limit: int):
        directory.mkdir(parents=True, exist_ok=True)
        # least-recently-stored: a hit is a pure read. least-recently-used would write the
        # access time on every hit, so every worker's hits would queue on SQLite's write
        # lock. timeout bounds SQLite lock waits.
        self.cache = diskcache.Cache(str(directory), size_limit=size_limit, timeout=2,
                                     eviction_policy="least-recently-stored")

    def get(self, key: str) -> bytes | None:
        return self.cache.get(key)

    def set(self, key: str, value: bytes, expire: float | None = None) -> None:
        self.cache.set(key, value, expire=expire)

    def add(self, key: str, value: bytes, expire: float) -> bool:
        return self.cache.add(key, value, expire=expire)

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def close(self) -> None:
        self.cache.close()


class RedisStore:
    """Redis for several machines; when Redis is down every call degrades to a miss.

    A miss means the caller renders (or asks upstream) itself: slower, never wrong.
    The failure is logged once per outage and redis-py reconnects on the next call.
    """

    def __init__(self, url: str, *, prefix: str = "qcimage:", timeout: float = 0.5):
        import redis

        self.errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           health_check_interval=30)
        self.prefix = prefix
        self.down = False

    def _call(self, default, fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except self.errors as exc:
            if not self.down:
                log.error("redis unavailable (%s); bypassing it until it returns",
                          type(exc).__name__)
                self.down = True
            return default
        if self.down:
            log.warning("redis is back")
            self.down = False
        return result

    def ping(self) -> bool:
        return bool(self._call(False, self.client.ping))

    def get(self, key: str) -> bytes | None:
        return self._call(None, self.client.get, self.prefix + key)

    def set(self, key: str, value: bytes, expire: float | None = None) -> None:
        px = int(expire * 1000) if expire else None
        self._call(None, self.client.set, self.prefix + key, value, px=px)

    def add(self, key: str, value: bytes, expire: float) -> bool:
        # Redis down: nobody can coordinate, so everybody renders for themselves.
        return bool(self._call(True, self.client.set, self.prefix + key, value,
                               nx=True, px=int(expire * 1000)))

    def delete(self, key: str) -> None:
        self._call(None, self.client.delete, self.prefix + key)

    def close(self) -> None:
        self.client.close()


class TieredStore:
    """Local disk in front of a shared store: hits stay local, renders are shared."""

    def __init__(self, local: Store, shared: Store):
        self.local = local
        self.shared = shared

    def get(self, key: str) -> bytes | None:
        value = self.local.get(key)
        if value is None:
            value = self.shared.get(key)
            if value is not None:
                self.local.set(key, value)
        return value

    def set(self, key: str, value: bytes, expire: float | None = None) -> None:
        self.local.set(key, value, expire)
        self.shared.set(key, value, expire)

    def add(self, key: str, value: bytes, expire: float) -> bool:
        return self.shared.add(key, value, expire)

    def delete(self, key: str) -> None:
        self.local.delete(key)
        self.shared.delete(key)


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


def coordination_store(store: Store) -> Store:
    """Where workers take locks and leave failures: the shared part of a tiered store.

    Never the local disk layer of a TieredStore, which would copy a lock's value on read
    and keep it after the lock is gone.
    """
    return getattr(store, "shared", store)


class RenderCache:
    """get-or-render with one render per key across every worker sharing the store."""

    def __init__(self, store: Store, *, wait_timeout: float = 20.0, lock_ttl: float = 60.0):
        self.store = store
        self.flight: Flight[Entry] = Flight(coordination_store(store), wait_timeout=wait_timeout,
                                            lock_ttl=lock_ttl)

    def get(self, key: str) -> Entry | None:
        raw = self.store.get("r:" + key)
        return Entry.unpack(raw) if raw is not None else None

    def get_or_render(self, key: str, render: Callable[[], Entry]) -> tuple[Entry, bool]:
        """Return (entry, was_cached). Concurrent misses wait for the one that renders.

        Raises FlightTimeout when another's render takes longer than ``wait_timeout``.
        """
        def render_and_store() -> Entry:
            entry = render()
            self.store.set("r:" + key, entry.pack())
            return entry

        entry, rendered = self.flight.run(key, lambda: self.get(key), render_and_store)
        return entry, not rendered


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
        self.flight: Flight[bytes] = Flight(coordination_store(store), wait_timeout=wait_timeout)

    def get(self, key: str) -> bytes | None:
        return self.store.get("s:" + key) if self.ttl > 0 else None

    def put(self, key: str, data: bytes) -> None:
        if self.ttl > 0 and len(data) <= self.max_bytes:
            self.store.set("s:" + key, bytes(data), expire=self.ttl)

    def forget(self, key: str) -> None:
        """Drop a source that turned out unusable (truncated, not an image)."""
        self.store.delete("s:" + key)

    def get_or_fetch(self, key: str, fetch: Callable[[], bytes]) -> bytes:
        """The source for ``key``: kept, being fetched by someone else, or fetched now."""
        def fetch_and_keep() -> bytes:
            data = fetch()
            self.put(key, data)
            return data

        return self.flight.run("s:" + key, lambda: self.get(key), fetch_and_keep)[0]


class LookupCache:
    """Product look-ups: fresh for ``ttl`` seconds, kept ``stale_ttl`` more for outages."""

    def __init__(self, store: Store, *, ttl: int, stale_ttl: int = 86400, clock=time.time,
                 wait_timeout: float = 20.0):
        self.store = store
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self.clock = clock
        self.flight: Flight[list[str]] = Flight(coordination_store(store),
                                                wait_timeout=wait_timeout)

    def get(self, key: str) -> tuple[list[str], bool] | None:
        """(image ids, fresh) or None."""
        if self.ttl <= 0:
            return None
        raw = self.store.get("p:" + key)
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
        self.store.set("p:" + key, raw, expire=self.ttl + self.stale_ttl)

    def get_or_fetch(self, key: str, fetch: Callable[[], list[str]]) -> tuple[list[str], bool]:
        """(image ids, fetched by this call); concurrent misses ask upstream once."""
        def fresh() -> list[str] | None:
            cached = self.get(key)
            return cached[0] if cached is not None and cached[1] else None

        def fetch_and_keep() -> list[str]:
            ids = fetch()
            self.set(key, ids)
            return ids

        return self.flight.run("p:" + key, fresh, fetch_and_keep)
