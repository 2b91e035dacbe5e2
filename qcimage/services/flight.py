"""One computation per key at a time, within a process and across every worker.

Identical concurrent misses (a look-up, a source fetch, a render) must ask upstream
once. Within a process the first caller runs and the others wait on its future; across
workers the first process takes a lock in the shared store and the others poll for the
result. A failure is shared too: the lock holder records it under its lock's token, so
everyone waiting on that attempt gets the same error (one upstream attempt, one error
each) while a request arriving later tries again.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from . import ServiceError

T = TypeVar("T")


class FlightTimeout(ServiceError):
    """Waited for another caller's computation (an upstream request) longer than allowed."""

    status = 504
    code = "upstream_timeout"

    def __init__(self, key: str):
        super().__init__("timed out waiting for upstream (a concurrent request for the same "
                         "thing is still running)")
        self.key = key


class SharedFailure(ServiceError):
    """Another worker's attempt failed with this status and code; we answer the same."""


def _pack(error: ServiceError) -> bytes:
    return json.dumps({"status": error.status, "code": error.code, "message": error.message,
                       "retry_after": error.retry_after}).encode()


def _unpack(raw: bytes) -> ServiceError:
    try:
        record = json.loads(raw)
        error = _error_class(record["code"])(str(record["message"]))
        error.status, error.code = int(record["status"]), str(record["code"])
        error.retry_after = record.get("retry_after")
    except (ValueError, KeyError, TypeError):
        error = SharedFailure("a concurrent attempt failed")
        error.status, error.code = 502, "upstream_error"
    return error


def _error_class(code: str) -> type[ServiceError]:
    # The same class as the original where one has that code, so callers that catch a
    # specific error (not found → its own message) behave alike for shared failures.
    stack = list(ServiceError.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls.__dict__.get("code") == code and cls is not FlightTimeout:
            return cls
        stack.extend(cls.__subclasses__())
    return SharedFailure


class _HeldLock:
    """A lock kept alive while its holder works: renewed every third of its lifetime.

    The lifetime is short, so the lock of a holder that died (a box killed mid-render)
    frees within seconds and a waiter computes instead of timing out. Renewal also puts
    the lock back when a Redis fail-over lost it.
    """

    def __init__(self, store, key: str, token: bytes, ttl: float):
        self.store, self.key, self.token, self.ttl = store, key, token, ttl
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._renew, name="flight-lock", daemon=True)

    def _renew(self) -> None:
        while not self.done.wait(self.ttl / 3):
            self.store.renew(self.key, self.token, self.ttl)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        # Only our own lock: one that outlived its ttl may be another's now.
        if self.store.get(self.key) == self.token:
            self.store.delete(self.key)


class Flight(Generic[T]):
    """``run(key, cached, compute)``: the cached value, or one computation shared by all."""

    def __init__(self, store, *, wait_timeout: float, lock_ttl: float = 5.0,
                 failure_ttl: float = 5.0, lock_prefix: str = "l:", failure_prefix: str = "f:"):
        self.store = store  # add/get/set/renew/delete, shared by every coordinating worker
        self.wait_timeout = wait_timeout
        self.lock_ttl = lock_ttl
        self.failure_ttl = failure_ttl
        self.lock_prefix = lock_prefix
        self.failure_prefix = failure_prefix
        self._inflight: dict[str, Future] = {}
        self._guard = threading.Lock()

    def run(self, key: str, cached: Callable[[], T | None],
            compute: Callable[[], T]) -> tuple[T, bool]:
        """(value, computed here). ``compute`` stores its result where ``cached`` finds it."""
        with self._guard:
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            try:
                return future.result(timeout=self.wait_timeout)[0], False
            except FutureTimeout:
                raise FlightTimeout(key) from None
        try:
            result = self._across_workers(key, cached, compute)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._guard:
                del self._inflight[key]

    def _across_workers(self, key: str, cached, compute) -> tuple[T, bool]:
        value = cached()
        if value is not None:
            return value, False
        lock = self.lock_prefix + key
        deadline = time.monotonic() + self.wait_timeout
        while True:
            token = secrets.token_hex(8).encode()
            if self.store.add(lock, token, expire=self.lock_ttl):
                return self._compute_holding(lock, token, cached, compute)
            value = self._wait(lock, self.store.get(lock), cached, deadline)
            if value is not None:
                return value, False

    def _compute_holding(self, lock: str, token: bytes, cached, compute) -> tuple[T, bool]:
        with _HeldLock(self.store, lock, token, self.lock_ttl):
            # Someone may have finished between our miss and taking the lock.
            value = cached()
            if value is not None:
                return value, False
            try:
                return compute(), True
            except ServiceError as error:
                self.store.set(self.failure_prefix + token.decode(), _pack(error),
                               expire=self.failure_ttl)
                raise

    def _wait(self, lock: str, holder: bytes | None, cached, deadline: float) -> T | None:
        """The holder's result, its failure raised, or None once the lock is free again."""
        if holder is None:
            return None  # released between our attempt and our look
        pause = 0.005
        while True:
            time.sleep(pause)
            pause = min(pause * 1.5, 0.05)
            value = cached()
            if value is not None:
                return value
            if holder is not None:
                failure = self.store.get(self.failure_prefix + holder.decode())
                if failure is not None:
                    raise _unpack(failure)
            if self.store.get(lock) != holder:
                return None
            if time.monotonic() > deadline:
                raise FlightTimeout(lock)
