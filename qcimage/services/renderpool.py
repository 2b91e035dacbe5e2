"""Renders run on a few threads of their own, at a lower CPU priority than requests.

Rendering is the one CPU-bound job of a worker; everything else (hits, 304s, look-ups,
``/health``, the 503 that sheds a miss) is short and waits on it when both want a core.
Linux schedules each thread on its own, and a thread's nice value is its own
(setpriority on its thread id): the render threads are niced once, when they start, so
under load the kernel runs the short requests first and gives renders what is left. With
cores to spare nothing changes; a render is not slower on an idle box.

ImageMagick releases the GIL while it works (Wand calls it through ctypes), so the
priority applies to the render's real work.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def lower_this_thread(nice: int) -> int | None:
    """Raise the calling thread's nice value by ``nice``; its new value, or None."""
    try:
        tid = threading.get_native_id()
        value = min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        os.setpriority(os.PRIO_PROCESS, tid, value)
        return value
    except (OSError, AttributeError) as error:  # not Linux, or not allowed: still render
        log.warning("render threads keep the request threads' priority: %s", error)
        return None


class RenderPool:
    """``run(fn, ...)`` on one of ``size`` render threads, niced by ``nice`` (0: not)."""

    def __init__(self, size: int, nice: int):
        self.size = size
        self.nice = nice
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args) -> T:
        if not self.nice:
            return fn(*args)
        return self._executor().submit(fn, *args).result()

    def _executor(self) -> ThreadPoolExecutor:
        # Started on first use, in the worker: never in a gunicorn master before fork.
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="render",
                                                    initializer=lower_this_thread,
                                                    initargs=(self.nice,))
        return self._pool
