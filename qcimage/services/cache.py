"""Rendered-image, source and look-up caches shared by all workers, computed once a key.

They keep their bytes in a ``stores.Store`` (disk, or disk over Redis) under the key
prefixes below, the only ones in that store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..recent import Recent
from .flight import Flight

if TYPE_CHECKING:
    from .stores import Store

# Every key prefix in the store, here and nowhere else, so no two uses can collide.
_RENDER = "r:"  # a rendered image (Entry.pack)
_LOCK = "l:"  # the worker computing a key (render, source fetch, look-up), while it does
_FAILURE = "f:"  # how a lock holder's attempt failed, by its lock's token, for its waiters
_SOURCE = "s:"  # a fetched upstream source, for a short while (SourceCache)
_LOOKUP = "p:"  # a product's image ids and when they were fetched
_SIZE = "d:"  # the width x height an image renders at, for look-ups
_WIDTH_RATIO = "o:"  # an image's stored/shown width ratio (EXIF-rotated sources)


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


def hot_renders(max_bytes: int) -> Recent[Entry]:
    """The renders a worker stored or read last, in its memory, up to ``max_bytes``.

    A render never changes under its key (the key names every input), so a copy is never
    stale. Every request is checked against the takedown list before any cache is asked,
    and any change of the list this worker sees empties it (so an image put back is
    rendered afresh, as the purged stores would).
    """
    return Recent(max_weight=max_bytes, weigh=lambda entry: len(entry.data))


class RenderCache:
    """get-or-render with one render per key across every worker sharing the store,
    the worker's latest renders kept in memory in front of it (``hot_bytes``)."""

    def __init__(self, store: Store, *, wait_timeout: float = 20.0, lock_ttl: float = 5.0,
                 hot_bytes: int = 0):
        self.store = store
        self.flight: Flight[Entry] = _flight(store, wait_timeout, lock_ttl)
        self.hot = hot_renders(hot_bytes)

    def get(self, key: str, *, tag: str | None = None) -> Entry | None:
        entry = self.hot.get(key)
        if entry is None:
            raw = self.store.get(_RENDER + key, tag=tag)
            entry = Entry.unpack(raw) if raw is not None else None
            if entry is not None:
                self.hot.put(key, entry)
        return entry

    def get_or_render(self, key: str, render: Callable[[], Entry], *,
                      tag: str | None = None) -> tuple[Entry, bool]:
        """Return (entry, was_cached). Concurrent misses wait for the one that renders.

        ``tag`` (the image id) lets the store purge the render with the image's other entries.
        Raises FlightTimeout when another's render takes longer than ``wait_timeout``.
        """
        def render_and_store() -> Entry:
            entry = render()
            self.store.set(_RENDER + key, entry.pack(), tag=tag)
            self.hot.put(key, entry)
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
        # Entries this worker saw fresh, until they are not: an entry fresh in the store
        # is never replaced before its ttl (only a stale one is fetched again), so the
        # copy answers as the store would, without reading and parsing it each time.
        self._fresh: Recent[tuple[list[str], float]] = Recent(4096)

    def get(self, key: str) -> tuple[list[str], bool] | None:
        """(image ids, fresh) or None. The ids are shared: callers keep them read-only."""
        if self.ttl <= 0:
            return None
        seen = self._fresh.get(key)
        if seen is not None and self.clock() - seen[1] < self.ttl:
            return seen[0], True
        raw = self.store.get(_LOOKUP + key)
        if raw is None:
            return None
        try:
            stored = json.loads(raw)
            ids, at = list(stored["ids"]), float(stored["at"])
        except (ValueError, KeyError, TypeError):
            return None
        fresh = self.clock() - at < self.ttl
        if fresh:
            self._fresh.put(key, (ids, at))
        return ids, fresh

    def set(self, key: str, ids: list[str]) -> None:
        if self.ttl <= 0:
            return
        at = self.clock()
        raw = json.dumps({"ids": ids, "at": at}).encode()
        self.store.set(_LOOKUP + key, raw, expire=self.ttl + self.stale_ttl)
        self._fresh.put(key, (list(ids), at))

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
