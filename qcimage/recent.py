"""A small bounded memo: the last N values by key, for answers that repeat."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Recent(Generic[V]):
    """The last ``size`` values put, by key; the oldest goes first when full.

    Values are shared by every thread that gets them: callers keep them read-only. Reads
    take no lock (one dict look-up); puts take one so eviction never races another put.
    """

    def __init__(self, size: int):
        self.size = size
        self._values: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        return self._values.get(key)

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            while len(self._values) >= self.size:
                del self._values[next(iter(self._values))]
            self._values[key] = value

    def __len__(self) -> int:
        return len(self._values)
