"""A small bounded memo: the last N values by key, for answers that repeat."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Recent(Generic[V]):
    """The last values put, by key; the oldest goes first when full.

    Full is ``size`` values or, given ``weigh``, values weighing ``max_weight`` in all
    (a value over an eighth of it is not kept: it would push out many small ones).
    Values are shared by every thread that gets them: callers keep them read-only. Reads
    take no lock (one dict look-up); puts take one so eviction never races another put.
    """

    def __init__(self, size: int | None = None, *, max_weight: int | None = None,
                 weigh: Callable[[V], int] | None = None):
        self.size = size
        self.max_weight = max_weight
        self._weigh = weigh or (lambda value: 0)
        self._values: dict[Hashable, V] = {}
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        return self._values.get(key)

    def put(self, key: Hashable, value: V) -> None:
        weight = self._weigh(value)
        if self.max_weight is not None and weight * 8 > self.max_weight:
            return
        with self._lock:
            if key in self._values:
                return
            while self._values and self._full(weight):
                self._weight -= self._weigh(self._values.pop(next(iter(self._values))))
            self._values[key] = value
            self._weight += weight

    def _full(self, adding: int) -> bool:
        return ((self.size is not None and len(self._values) >= self.size)
                or (self.max_weight is not None and self._weight + adding > self.max_weight))

    def clear(self) -> None:
        with self._lock:
            self._values = {}
            self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._values)
