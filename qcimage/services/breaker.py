"""A circuit breaker for upstream calls that locks only its state, never a call.

pybreaker's ``CircuitBreaker.call`` holds one lock for the whole call, so in a threaded
worker every upstream request waited for the one before it. Here a call runs
inside ``guard()`` (which may raise ``CircuitOpen`` at once) without any lock held; only
the half-open probe flag is locked, for microseconds.
The state lives in memory (one worker) or in Redis (every worker and box at once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Protocol

from .. import metrics

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitOpen(Exception):
    """The circuit is open: fail fast; ``retry_after`` seconds until a probe is let through."""

    def __init__(self, retry_after: int):
        super().__init__(f"circuit open for {retry_after}s more")
        self.retry_after = retry_after


class BreakerState(Protocol):
    """Failures counted since the last success, and when the circuit opened (None: closed)."""

    def opened_at(self) -> float | None: ...
    def add_failure(self) -> int: ...
    def open(self, at: float) -> None: ...
    def close(self) -> None: ...


class MemoryState:
    """This process's own state."""

    def __init__(self):
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    def opened_at(self) -> float | None:
        return self._opened_at

    def add_failure(self) -> int:
        with self._lock:
            self._failures += 1
            return self._failures

    def open(self, at: float) -> None:
        self._opened_at = at

    def close(self) -> None:
        self._failures = 0
        self._opened_at = None


class RedisState:
    """State shared through Redis; while Redis is unreachable, this process's own.

    The namespace's hash tag puts both keys in one Redis Cluster slot (one DEL for both).
    """

    def __init__(self, client, namespace: str = "qcimage:{breaker}"):
        from .redisconn import ERRORS

        self.client = client
        self.errors = ERRORS
        self.failures_key = namespace + ":failures"
        self.opened_key = namespace + ":opened_at"
        self.local = MemoryState()

    def opened_at(self) -> float | None:
        try:
            raw = self.client.get(self.opened_key)
        except self.errors:
            return self.local.opened_at()
        return float(raw) if raw is not None else None

    def add_failure(self) -> int:
        try:
            return int(self.client.incr(self.failures_key))
        except self.errors:
            return self.local.add_failure()

    def open(self, at: float) -> None:
        self.local.open(at)
        try:
            self.client.set(self.opened_key, repr(at))
        except self.errors:
            pass

    def close(self) -> None:
        self.local.close()
        try:
            self.client.delete(self.failures_key, self.opened_key)
        except self.errors:
            pass


class CircuitBreaker:
    """Opens after ``fail_max`` failures in a row; after ``reset_timeout`` one probe goes.

    While half-open, one call per process probes upstream and the others fail fast;
    the probe's success closes the circuit, its failure opens it for another period.
    """

    def __init__(self, *, fail_max: int = 5, reset_timeout: float = 30.0,
                 state: BreakerState | None = None, clock=time.time):
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.state = state or MemoryState()
        self.clock = clock
        self._lock = threading.Lock()
        self._probing = False

    def current_state(self) -> str:
        opened = self.state.opened_at()
        if opened is None:
            return CLOSED
        return OPEN if self.clock() - opened < self.reset_timeout else HALF_OPEN

    def retry_after(self) -> int:
        """Whole seconds until an open circuit lets a probe through (at least 1)."""
        opened = self.state.opened_at()
        remaining = self.reset_timeout if opened is None else \
            self.reset_timeout - (self.clock() - opened)
        return max(1, math.ceil(min(remaining, self.reset_timeout)))

    @contextmanager
    def guard(self, healthy: Callable[[Exception], bool] = lambda error: False):
        """Run the ``with`` body as one upstream call, or raise CircuitOpen at once.

        An exception for which ``healthy`` is true (upstream answered sensibly, e.g.
        "not found") counts as a success.
        """
        probe = self._admit()
        try:
            yield
        except Exception as error:
            if healthy(error):
                self._succeeded()
            else:
                self._failed(probe)
            raise
        else:
            self._succeeded()
        finally:
            if probe:
                with self._lock:
                    self._probing = False

    def _admit(self) -> bool:
        state = self.current_state()
        if state == CLOSED:
            return False
        with self._lock:
            if state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
        raise CircuitOpen(self.retry_after())

    def _succeeded(self) -> None:
        was = self.current_state()
        # Failures count "in a row": any success starts over.
        self.state.close()
        if was != CLOSED:
            self._changed(was, CLOSED)

    def _failed(self, probe: bool) -> None:
        failures = self.state.add_failure()
        if probe or (failures >= self.fail_max and self.state.opened_at() is None):
            self.state.open(self.clock())
            self._changed(HALF_OPEN if probe else CLOSED, OPEN)

    @staticmethod
    def _changed(old: str, new: str) -> None:
        metrics.CIRCUIT_OPEN.set(1 if new == OPEN else 0)
        log.warning("upstream circuit %s -> %s", old, new)
