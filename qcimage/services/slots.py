"""Per-worker bounds on image misses: a few render slots behind a bounded queue.

A worker's threads overlap upstream waits, but rendering is CPU bound: only ``slots``
renders run at once (ImageMagick is single-threaded under our policy). Misses a worker
holds at once (waiting on upstream, waiting for a slot, rendering) are bounded by
``queue``: one more is refused at once with 503 ``overloaded`` instead of waiting, so a
flood of misses never takes the threads that hits, 304s, look-ups and ``/health`` need.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager

from . import ServiceError

log = logging.getLogger(__name__)


class Overloaded(ServiceError):
    status = 503
    code = "overloaded"
    retry_after = 1


class RenderSlots:
    def __init__(self, *, slots: int, queue: int, slot_timeout: float,
                 render_timeout: float | None = None):
        self.slots = slots
        self.queue = queue
        self.slot_timeout = slot_timeout
        # A render running longer than this ends the worker, as gunicorn's timeout used to
        # when one request was the whole worker: a thread cannot be killed on its own.
        self.render_timeout = render_timeout
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._admitted = 0

    def full(self) -> bool:
        """Whether a miss arriving now is refused (a glance: ``admit`` decides)."""
        return self._admitted >= self.queue

    def overloaded(self) -> Overloaded:
        return Overloaded(f"too many images are being made right now ({self.queue} per "
                          "worker); try again in a moment")

    @contextmanager
    def admit(self):
        """Hold one place among the worker's misses, or raise Overloaded at once."""
        with self._lock:
            if self._admitted >= self.queue:
                raise self.overloaded()
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    @contextmanager
    def render_slot(self):
        """One of the worker's render slots for the CPU-bound part of a miss."""
        if not self._free.acquire(timeout=self.slot_timeout):
            raise Overloaded("no render slot came free in time; try again in a moment")
        watchdog = None
        if self.render_timeout:
            watchdog = threading.Timer(self.render_timeout, _stuck, (self.render_timeout,))
            watchdog.daemon = True
            watchdog.start()
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._free.release()


def _stuck(seconds: float) -> None:
    log.critical("a render has run for %gs (a pathological source?); ending this worker so "
                 "gunicorn starts a fresh one", seconds)
    logging.shutdown()
    os._exit(70)
