"""Prometheus metrics, correct across gunicorn workers (prometheus-client multiprocess mode).

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the
workers start; every worker then writes its samples there and ``/metrics`` sums
them. Without that variable (tests, ``flask run``) the process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest, multiprocess)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# tenant: the site a request, render or cache outcome was for ("" when none is known).
# Its values are the tenants file's names, never a request's text, so they stay bounded.
REQUESTS = Counter("qcimage_http_requests_total", "HTTP requests answered",
                   ["route", "method", "status", "tenant"])
REQUEST_SECONDS = Histogram("qcimage_http_request_duration_seconds",
                            "Time to answer an HTTP request", ["route", "method", "tenant"],
                            buckets=_LATENCY_BUCKETS)
IN_FLIGHT = Gauge("qcimage_http_requests_in_flight", "Requests being answered now",
                  multiprocess_mode="livesum")
UPSTREAM_SECONDS = Histogram("qcimage_upstream_request_duration_seconds",
                             "Time for an upstream request, body included", ["endpoint"],
                             buckets=_LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("qcimage_upstream_errors_total", "Upstream requests that failed",
                          ["endpoint", "error"])
RENDER_SECONDS = Histogram("qcimage_render_duration_seconds",
                           "Time to decode, resize, watermark and encode one image",
                           ["format", "tenant"],
                           buckets=_LATENCY_BUCKETS)
CACHE_REQUESTS = Counter("qcimage_cache_requests_total", "Cache look-ups by outcome",
                         ["cache", "result", "tenant"])
CACHE_BYTES = Counter("qcimage_cache_bytes_served_total", "Image bytes served from the cache",
                      ["tenant"])
RATE_LIMITED = Counter("qcimage_rate_limited_total", "Requests refused by a rate limit",
                       ["route"])
CIRCUIT_OPEN = Gauge("qcimage_upstream_circuit_open",
                     "1 while a worker's circuit to upstream is open",
                     # live: a worker recycled while open must stop counting.
                     multiprocess_mode="livemax")


def render_latest() -> tuple[bytes, str]:
    """The exposition text: summed over all workers when running under gunicorn."""
    if os.path.isdir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
