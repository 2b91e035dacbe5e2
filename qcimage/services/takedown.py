"""The takedown list: image ids the operator removed, seen by every worker and box.

The list lives in Redis when one is configured (every box shares it), else in the cache
folder (every worker of the box shares it). Each worker keeps a copy in memory and asks
the store whether it changed (one small read) at most every ``refresh`` seconds, so an
addition is in force everywhere within that time without a read per request.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

import diskcache

from . import ServiceError

if TYPE_CHECKING:
    from ..groups import CacheSettings
    from .cache import RedisStore, Store

log = logging.getLogger(__name__)

TAKEDOWN_FOLDER = "takedowns"
SNAPSHOT_FILE = "takedowns-snapshot.json"


class TakenDown(ServiceError):
    """The operator removed this image: it is not served, whatever the URL."""

    status = 451
    code = "taken_down"

    def __init__(self, image_id: str):
        super().__init__(f"image {image_id} has been taken down by the operator")
        self.image_id = image_id


@dataclass(frozen=True)
class Takedown:
    """One removed image: its id, why (for the operator only) and when (unix seconds)."""

    image_id: str
    reason: str
    at: float

    def pack(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def unpack(cls, raw: str | bytes) -> Takedown:
        stored = json.loads(raw)
        return cls(image_id=str(stored["image_id"]), reason=str(stored["reason"]),
                   at=float(stored["at"]))


class TakedownStore(Protocol):
    """Where the list is kept. ``errors``: what a store that cannot be reached raises."""

    errors: tuple[type[BaseException], ...]
    where: str

    def version(self) -> str: ...
    def load(self) -> tuple[str, dict[str, Takedown]]: ...
    def add(self, takedown: Takedown) -> None: ...
    def remove(self, image_id: str) -> bool: ...


class DiskTakedowns:
    """The list in the cache folder, in a diskcache of its own that never evicts."""

    errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, diskcache.Timeout)

    def __init__(self, directory: Path):
        self.where = str(directory)
        self.cache = diskcache.Cache(str(directory), timeout=2, eviction_policy="none")

    def version(self) -> str:
        return str(self.cache.get("version", 0))

    def load(self) -> tuple[str, dict[str, Takedown]]:
        with self.cache.transact():
            return self.version(), {key.removeprefix("t:"): Takedown.unpack(self.cache[key])
                                    for key in self.cache if key.startswith("t:")}

    def add(self, takedown: Takedown) -> None:
        with self.cache.transact():
            self.cache.set("t:" + takedown.image_id, takedown.pack())
            self.cache.incr("version")

    def remove(self, image_id: str) -> bool:
        with self.cache.transact():
            removed = self.cache.delete("t:" + image_id)
            if removed:
                self.cache.incr("version")
        return removed

    def close(self) -> None:
        self.cache.close()


class RedisTakedowns:
    """The list in Redis: one hash of records and a counter bumped after every change.

    No MULTI (a Redis Cluster may not run one): a change is written before its version,
    and read after it, so a reader never keeps a version newer than what it loaded.
    """

    def __init__(self, client, *, where: str, prefix: str = "qcimage:"):
        from .redisconn import ERRORS

        self.errors = ERRORS
        self.client = client
        self.where = where
        self.key = prefix + "takedowns"
        self.version_key = self.key + ":version"

    def version(self) -> str:
        return (self.client.get(self.version_key) or b"0").decode()

    def load(self) -> tuple[str, dict[str, Takedown]]:
        version = self.version()
        records = self.client.hgetall(self.key)
        return version, {key.decode(): Takedown.unpack(value) for key, value in records.items()}

    def add(self, takedown: Takedown) -> None:
        self.client.hset(self.key, takedown.image_id, takedown.pack())
        self.client.incr(self.version_key)

    def remove(self, image_id: str) -> bool:
        removed = self.client.hdel(self.key, image_id)
        self.client.incr(self.version_key)
        return bool(removed)


class TakedownList:
    """A worker's copy of the list, re-read when the store's version changed.

    ``purge(image_id)`` runs once for each id that appears in the list, so every box drops
    its own cached copies. While the store cannot be reached the last copy stays in force;
    a worker that starts then reads the box's snapshot, written at every change it saw.
    """

    def __init__(self, store: TakedownStore, *, refresh: float, purge: Callable[[str], object],
                 snapshot: Path | None = None, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.refresh = refresh
        self.purge = purge
        self.snapshot = snapshot
        self.clock = clock
        self._version: str | None = None
        self._ids: frozenset[str] = frozenset()
        self._checked_at: float | None = None
        self._unreachable = False

    def check(self, image_id: str) -> None:
        """Raise TakenDown when ``image_id`` is on the list."""
        if image_id in self.current():
            raise TakenDown(image_id)

    def without(self, image_ids: Iterable[str]) -> list[str]:
        """``image_ids`` in their order, less the ones taken down."""
        removed = self.current()
        return [image_id for image_id in image_ids if image_id not in removed]

    def current(self) -> frozenset[str]:
        now = self.clock()
        if self._checked_at is None or now - self._checked_at >= self.refresh:
            self._checked_at = now
            self._reload()
        return self._ids

    def _reload(self) -> None:
        try:
            if self._version is not None and self.store.version() == self._version:
                return
            version, records = self.store.load()
        except self.store.errors as error:
            if not self._unreachable:
                log.error("takedown list unreachable in %s (%s); keeping the last copy",
                          self.store.where, type(error).__name__)
                self._unreachable = True
            if self._version is None:
                self._replace(self._read_snapshot(), version=None)
            return
        if self._unreachable:
            log.warning("takedown list reachable again in %s", self.store.where)
            self._unreachable = False
        self._replace(frozenset(records), version=version)
        self._write_snapshot()

    def _replace(self, ids: frozenset[str], *, version: str | None) -> None:
        added = ids - self._ids
        if ids != self._ids:
            log.info("takedown list: %d image(s) taken down", len(ids))
        self._ids = ids
        self._version = version
        for image_id in sorted(added):
            try:
                self.purge(image_id)
            except Exception:  # a cache that fails to purge must not fail the request
                log.exception("could not purge the cached copies of %s", image_id)

    def _read_snapshot(self) -> frozenset[str]:
        if self.snapshot is None:
            return frozenset()
        try:
            return frozenset(str(i) for i in json.loads(self.snapshot.read_text()))
        except (OSError, ValueError, TypeError):
            return frozenset()

    def _write_snapshot(self) -> None:
        if self.snapshot is None:
            return
        draft = self.snapshot.with_name(f".{self.snapshot.name}.{os.getpid()}")
        try:
            draft.write_text(json.dumps(sorted(self._ids)))
            os.replace(draft, self.snapshot)
        except OSError as error:
            log.warning("cannot keep the takedown snapshot in %s (%s)", self.snapshot,
                        error.strerror)


def open_takedown_list(cache: CacheSettings, directory: Path, store: Store,
                       shared: RedisStore | None) -> TakedownList:
    """A worker's copy of the list, purging from ``store``; ``directory``: the cache folder.

    With Redis, the box keeps a snapshot of the list: a worker starting while Redis is
    down still refuses what was taken down.
    """
    return TakedownList(open_takedowns(directory, shared, cache.redis_url),
                        refresh=cache.takedown_refresh, purge=store.purge,
                        snapshot=directory / SNAPSHOT_FILE if shared else None)


def open_takedowns(cache_dir: Path, shared: RedisStore | None = None,
                   redis_url: str | None = None) -> TakedownStore:
    """Redis when the service has one (every box sees it), else the box's cache folder."""
    if shared is not None:
        # Named without its credentials: this ends up in messages and logs.
        parts = urlsplit(redis_url or "")
        where = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return RedisTakedowns(shared.client, where=f"Redis at {where}")
    return DiskTakedowns(cache_dir / TAKEDOWN_FOLDER)
