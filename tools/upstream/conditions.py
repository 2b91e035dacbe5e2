"""How far away the stand-in seems: per-endpoint latency, a bandwidth cap, a concurrency cap.

The real upstream is across the internet: a look-up or a resized image takes hundreds of
milliseconds. These conditions make the stand-in answer like that, and count the
requests it is serving at once (``in_flight``, and its peak since the last stats reset),
so tests and benchmarks can assert how much waiting overlapped.

JSON form (``GET/POST/DELETE /_conditions``, ``--latency``/``--bandwidth``/
``--max-in-flight`` on the command line)::

    {"latency": {"img": {"ms": 400, "jitter_ms": 100}, "product": {"ms": 300}},
     "bandwidth": 2000000, "max_in_flight": 64}

``ms`` is the median wait before answering; ``jitter_ms`` spreads it uniformly over
``ms ± jitter_ms``; ``dist: "lognormal"`` with ``sigma`` (0.5) gives the long tail real
networks have instead. ``bandwidth`` (bytes per second, shared by every response) caps how
fast bodies are written; ``max_in_flight`` makes requests beyond it wait their turn, as
an upstream with a connection limit does. ``null`` (or absent) turns each off.
"""
from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field

ENDPOINTS = ("img", "product")
_DISTRIBUTIONS = ("uniform", "lognormal")


@dataclass(frozen=True)
class Latency:
    ms: float = 0.0
    jitter_ms: float = 0.0
    dist: str = "uniform"
    sigma: float = 0.5

    @classmethod
    def from_json(cls, spec: object) -> Latency:
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"ms": spec}
        if not isinstance(spec, dict) or not set(spec) <= {"ms", "jitter_ms", "dist", "sigma"}:
            raise ValueError('latency is a number of ms or {"ms", "jitter_ms", "dist", "sigma"}')
        latency = cls(**spec)
        numbers = (latency.ms, latency.jitter_ms, latency.sigma)
        if not all(isinstance(n, (int, float)) and n >= 0 for n in numbers):
            raise ValueError("latency values must be non-negative numbers")
        if latency.dist not in _DISTRIBUTIONS:
            raise ValueError(f"dist must be one of {', '.join(_DISTRIBUTIONS)}")
        return latency

    def draw(self, rng: random.Random) -> float:
        """Seconds to wait for one request."""
        if self.dist == "lognormal" and self.ms > 0:
            return rng.lognormvariate(math.log(self.ms), self.sigma) / 1000
        return max(0.0, self.ms + rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1000

    def to_json(self) -> dict:
        return {"ms": self.ms, "jitter_ms": self.jitter_ms, "dist": self.dist,
                "sigma": self.sigma}


@dataclass
class Conditions:
    """The active conditions; replaced whole by ``update``, read by every handler thread."""

    latency: dict[str, Latency] = field(default_factory=dict)
    bandwidth: int | None = None
    max_in_flight: int | None = None

    @classmethod
    def from_json(cls, spec: object) -> Conditions:
        if not isinstance(spec, dict) or not set(spec) <= set(cls.__dataclass_fields__):
            raise ValueError('conditions are {"latency", "bandwidth", "max_in_flight"}')
        latency = spec.get("latency") or {}
        if not isinstance(latency, dict) or not set(latency) <= set(ENDPOINTS):
            raise ValueError('latency is {"img": ..., "product": ...}')
        for name in ("bandwidth", "max_in_flight"):
            value = spec.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive integer or null")
        return cls({kind: Latency.from_json(value) for kind, value in latency.items()},
                   spec.get("bandwidth"), spec.get("max_in_flight"))

    def to_json(self) -> dict:
        return {"latency": {kind: value.to_json() for kind, value in self.latency.items()},
                "bandwidth": self.bandwidth, "max_in_flight": self.max_in_flight}


def parse_latency_flag(text: str) -> tuple[str, Latency]:
    """``img=400`` or ``img=400:100`` (ms and jitter ms) → (endpoint, Latency)."""
    kind, sep, value = text.partition("=")
    if not sep or kind not in ENDPOINTS:
        raise ValueError(f"expected img=MS[:JITTER] or product=MS[:JITTER], got {text!r}")
    ms, _, jitter = value.partition(":")
    try:
        return kind, Latency.from_json({"ms": float(ms), "jitter_ms": float(jitter or 0)})
    except ValueError:
        raise ValueError(f"expected numbers of milliseconds, got {value!r}") from None


class Network:
    """Applies the conditions to requests and counts what is in flight."""

    def __init__(self, conditions: Conditions | None = None, *, seed: int = 0):
        self._lock = threading.Condition()
        self._rng = random.Random(seed)
        self._conditions = conditions or Conditions()
        self.in_flight = 0
        self.peak = 0
        # Token bucket for the shared bandwidth: when the next byte may leave.
        self._next_send = 0.0

    @property
    def conditions(self) -> Conditions:
        return self._conditions

    def update(self, conditions: Conditions) -> None:
        with self._lock:
            self._conditions = conditions
            self._lock.notify_all()

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.in_flight

    def snapshot(self) -> dict:
        with self._lock:
            return {"in_flight": self.in_flight, "in_flight_max": self.peak}

    def enter(self, stopping: threading.Event) -> None:
        """Wait for a place under max_in_flight, then count this request in flight."""
        with self._lock:
            while (self._conditions.max_in_flight is not None
                   and self.in_flight >= self._conditions.max_in_flight
                   and not stopping.is_set()):
                self._lock.wait(0.1)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._lock.notify()

    def wait_latency(self, kind: str, stopping: threading.Event) -> None:
        latency = self._conditions.latency.get(kind)
        if latency is not None:
            with self._lock:
                seconds = latency.draw(self._rng)
            stopping.wait(seconds)

    def pace(self, size: int) -> None:
        """Block until ``size`` more bytes fit under the shared bandwidth cap."""
        bandwidth = self._conditions.bandwidth
        if bandwidth is None:
            return
        with self._lock:
            now = time.monotonic()
            done = max(now, self._next_send) + size / bandwidth
            self._next_send = done
        time.sleep(max(0.0, done - now))
