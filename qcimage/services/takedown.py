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
import secrets
import sqlite3
import threading
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
    from .stores import RedisStore, Store

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
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, stored: dict) -> Takedown:
        return cls(image_id=str(stored["image_id"]), reason=str(stored["reason"]),
                   at=float(stored["at"]))


@dataclass(frozen=True)
class Stamp:
    """Which list, and which change of it: ``epoch`` is made when a list is first written,
    so a new one means the list was lost (Redis restarted or evicted it) and begun again."""

    epoch: str
    version: int


class TakedownStore(Protocol):
    """Where the list is kept. ``errors``: what a store that cannot be reached raises.

    ``stamp()`` is None when there is no list: never made, or lost.
    """

    errors: tuple[type[BaseException], ...]
    where: str

    def stamp(self) -> Stamp | None: ...
    def load(self) -> tuple[Stamp | None, dict[str, Takedown]]: ...
    def add(self, takedown: Takedown) -> None: ...
    def remove(self, image_id: str) -> bool: ...
    def restore(self, takedowns: Iterable[Takedown]) -> None: ...


def _new_epoch() -> str:
    return secrets.token_hex(8)


class DiskTakedowns:
    """The list in the cache folder, in a diskcache of its own that never evicts."""

    errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, diskcache.Timeout)

    def __init__(self, directory: Path):
        self.where = str(directory)
        self.cache = diskcache.Cache(str(directory), timeout=2, eviction_policy="none")

    def stamp(self) -> Stamp | None:
        epoch = self.cache.get("epoch")
        return None if epoch is None else Stamp(epoch, self.cache.get("version", 0))

    def load(self) -> tuple[Stamp | None, dict[str, Takedown]]:
        with self.cache.transact():
            return self.stamp(), {key.removeprefix("t:"): Takedown.unpack(self.cache[key])
                                  for key in self.cache if key.startswith("t:")}

    def add(self, takedown: Takedown) -> None:
        with self.cache.transact():
            self.cache.add("epoch", _new_epoch())
            self.cache.set("t:" + takedown.image_id, takedown.pack())
            self.cache.incr("version")

    def remove(self, image_id: str) -> bool:
        with self.cache.transact():
            removed = self.cache.delete("t:" + image_id)
            if removed:
                self.cache.incr("version")
        return removed

    def restore(self, takedowns: Iterable[Takedown]) -> None:
        with self.cache.transact():
            self.cache.add("epoch", _new_epoch())
            for takedown in takedowns:
                self.cache.add("t:" + takedown.image_id, takedown.pack())
            self.cache.incr("version")

    def close(self) -> None:
        self.cache.close()


class RedisTakedowns:
    """The list in Redis: one hash holding the records (by image id), the epoch and a
    version bumped after every change.

    One key, so Redis evicts or keeps it whole, and the check every worker makes keeps it
    recently used. No MULTI (a Redis Cluster may not run one): the record is written before
    the version, so a reader never holds a version newer than the records it read.
    """

    # Not image ids (they cannot hold ':'), so they share the hash with the records.
    _EPOCH, _VERSION = ":epoch", ":version"

    def __init__(self, client, *, where: str, prefix: str = "qcimage:"):
        from .redisconn import ERRORS

        self.errors = ERRORS
        self.client = client
        self.where = where
        self.key = prefix + "takedowns"

    def stamp(self) -> Stamp | None:
        epoch, version = self.client.hmget(self.key, self._EPOCH, self._VERSION)
        return None if epoch is None else Stamp(epoch.decode(), int(version or 0))

    def load(self) -> tuple[Stamp | None, dict[str, Takedown]]:
        fields = {key.decode(): value for key, value in self.client.hgetall(self.key).items()}
        epoch, version = fields.pop(self._EPOCH, None), fields.pop(self._VERSION, 0)
        stamp = None if epoch is None else Stamp(epoch.decode(), int(version))
        return stamp, {key: Takedown.unpack(value) for key, value in fields.items()}

    def add(self, takedown: Takedown) -> None:
        self.client.hsetnx(self.key, self._EPOCH, _new_epoch())
        self.client.hset(self.key, takedown.image_id, takedown.pack())
        self.client.hincrby(self.key, self._VERSION, 1)

    def remove(self, image_id: str) -> bool:
        removed = bool(self.client.hdel(self.key, image_id))
        if removed:
            self.client.hincrby(self.key, self._VERSION, 1)
        return removed

    def restore(self, takedowns: Iterable[Takedown]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(self.key, self._EPOCH, _new_epoch())
        for takedown in takedowns:
            pipe.hsetnx(self.key, takedown.image_id, takedown.pack())
        pipe.hincrby(self.key, self._VERSION, 1)
        pipe.execute()


class TakedownList:
    """A worker's copy of the list, re-read when the store's stamp changed.

    ``purge(image_id)`` runs once for each id that appears in the list, so every box drops
    its own cached copies. While the store cannot be reached the last copy stays in force.
    When the list was lost (Redis restarted, or evicted it) the worker puts back what it
    knew, so nothing taken down comes back. A worker starts from the box's snapshot,
    written after every change a worker saw (and purged): the ids in it need no purge.
    """

    def __init__(self, store: TakedownStore, *, refresh: float, purge: Callable[[str], object],
                 snapshot: Path | None = None, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.refresh = refresh
        self.purge = purge
        self.snapshot = snapshot
        self.clock = clock
        self._stamp: Stamp | None = None
        self._records: dict[str, Takedown] = {}
        self._ids: frozenset[str] = frozenset()
        self._checked_at: float | None = None
        self._loaded = False
        self._unreachable = False
        self._lock = threading.Lock()
        # Called after every change this worker sees (a worker's in-memory copies, which a
        # purge of the stores does not reach, are dropped there).
        self.on_change: list[Callable[[], object]] = []

    def check(self, image_id: str) -> None:
        """Raise TakenDown when ``image_id`` is on the list."""
        if image_id in self.current():
            raise TakenDown(image_id)

    def without(self, image_ids: Iterable[str]) -> list[str]:
        """``image_ids`` in their order, less the ones taken down."""
        removed = self.current()
        return [image_id for image_id in image_ids if image_id not in removed]

    def current(self) -> frozenset[str]:
        if self._due():
            # One thread reads the store; the others go on with the copy they have (or,
            # before the first copy, wait for it).
            if self._lock.acquire(blocking=self._checked_at is None):
                try:
                    if self._due():
                        self._refresh()
                finally:
                    self._lock.release()
        return self._ids

    def _due(self) -> bool:
        return self._checked_at is None or self.clock() - self._checked_at >= self.refresh

    def _refresh(self) -> None:
        started = self.clock()
        if self._checked_at is None:
            self._stamp, self._records = self._read_snapshot()
            self._ids = frozenset(self._records)
        self._reload()
        # Only now: until the first copy is read, every thread waits for it.
        self._checked_at = started

    def _reload(self) -> None:
        try:
            stamp = self.store.stamp()
            if self._loaded and stamp == self._stamp:
                return
            if self._records and (stamp is None or self._stamp is None
                                  or stamp.epoch != self._stamp.epoch):
                log.warning("takedown list in %s was lost; putting back the %d image(s) "
                            "this worker knew", self.store.where, len(self._records))
                self.store.restore(self._records.values())
            stamp, records = self.store.load()
        except self.store.errors as error:
            if not self._unreachable:
                log.error("takedown list unreachable in %s (%s); keeping the last copy",
                          self.store.where, type(error).__name__)
                self._unreachable = True
            return
        if self._unreachable:
            log.warning("takedown list reachable again in %s", self.store.where)
            self._unreachable = False
        self._stamp, self._loaded = stamp, True
        self._replace(records)
        self._write_snapshot()
        for changed in self.on_change:
            changed()

    def _replace(self, records: dict[str, Takedown]) -> None:
        added = records.keys() - self._records.keys()
        if records.keys() != self._records.keys():
            log.info("takedown list: %d image(s) taken down", len(records))
        self._records = records
        self._ids = frozenset(records)
        for image_id in sorted(added):
            try:
                self.purge(image_id)
            except Exception:  # a cache that fails to purge must not fail the request
                log.exception("could not purge the cached copies of %s", image_id)

    def _read_snapshot(self) -> tuple[Stamp | None, dict[str, Takedown]]:
        if self.snapshot is None:
            return None, {}
        try:
            stored = json.loads(self.snapshot.read_text())
            records = [Takedown.from_dict(record) for record in stored["records"]]
            stamp = Stamp(str(stored["epoch"]), int(stored["version"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None, {}
        return stamp, {record.image_id: record for record in records}

    def _write_snapshot(self) -> None:
        if self.snapshot is None or self._stamp is None:
            return
        draft = self.snapshot.with_name(f".{self.snapshot.name}.{os.getpid()}")
        try:
            draft.write_text(json.dumps({
                "epoch": self._stamp.epoch, "version": self._stamp.version,
                "records": [asdict(record) for record in self._records.values()]}))
            os.replace(draft, self.snapshot)
        except OSError as error:
            log.warning("cannot keep the takedown snapshot in %s (%s)", self.snapshot,
                        error.strerror)


def open_takedown_list(cache: CacheSettings, directory: Path, store: Store,
                       shared: RedisStore | None, *,
                       sources: Store | None = None) -> TakedownList:
    """A worker's copy of the list, purging from ``store`` (and the fetched ``sources``);
    ``directory``: the cache folder.

    The box's snapshot lets a worker start without purging what the box already purged,
    and, with Redis, refuse what was taken down even while Redis is down or has lost it.
    """
    stores = (store,) if sources is None else (store, sources)
    return TakedownList(open_takedowns(directory, shared, cache.redis_url),
                        refresh=cache.takedown_refresh,
                        purge=lambda image_id: sum(each.purge(image_id) for each in stores),
                        snapshot=directory / SNAPSHOT_FILE)


def open_takedowns(cache_dir: Path, shared: RedisStore | None = None,
                   redis_url: str | None = None) -> TakedownStore:
    """Redis when the service has one (every box sees it), else the box's cache folder."""
    if shared is not None:
        # Named without its credentials: this ends up in messages and logs.
        parts = urlsplit(redis_url or "")
        where = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return RedisTakedowns(shared.client, where=f"Redis at {where}")
    return DiskTakedowns(cache_dir / TAKEDOWN_FOLDER)
