"""Measurements through HTTP: cold renders, cache hits, 304s, coalescing, look-ups, memory."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tools import harness

from .metrics import median, percentile
from .servers import Service, product_of
from .wrk import WrkResult, run_wrk

# The rendition browsers get by default: what the hit and cold throughputs are measured on.
DEFAULT_IMAGE = "n4EYdIoE"
DEFAULT_WIDTH = 960
DEFAULT_FORMAT = "webp"


@dataclass(frozen=True)
class ColdCase:
    label: str
    image_id: str
    fmt: str = DEFAULT_FORMAT
    width: int = DEFAULT_WIDTH


COLD_CASES = (
    ColdCase("4000x3000 JPEG -> 960 webp", "n4EYdIoE"),
    ColdCase("5000x3750 PNG -> 960 webp", "cR-eVGrQ"),
    ColdCase("EXIF-rotated JPEG -> 960 webp", "Tq3_Hx8w"),
    ColdCase("4000x3000 JPEG -> 960 jpeg", "n4EYdIoE", "jpeg"),
    ColdCase("4000x3000 JPEG -> 960 png", "n4EYdIoE", "png"),
    ColdCase("4000x3000 JPEG -> 960 avif", "n4EYdIoE", "avif"),
)


def _check_ok(response, expect_cache: str | None = None) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.url} answered {response.status_code}: "
                           f"{response.text[:200]}")
    if expect_cache and response.headers.get("X-Cache") != expect_cache:
        raise RuntimeError(f"{response.url} was X-Cache {response.headers.get('X-Cache')}, "
                           f"expected {expect_cache}")


def warm_workers(service: Service, image_id: str = "dRk5nT0p", rounds: int = 3) -> dict:
    """Have every worker render once: "cold" is a URL never rendered, not an unused worker.

    A worker's first render also loads coders, builds the watermark overlay and probes the
    output formats; that is start-up cost, paid once per worker.
    """
    pids = set(service.server.worker_pids())
    covered: set[int] = set()
    for _ in range(rounds):
        # Twice as many concurrent requests as workers: each free worker accepts one.
        batch = [(service.fresh_url(image_id, DEFAULT_WIDTH, DEFAULT_FORMAT),
                  service.request_id()) for _ in range(2 * len(pids))]
        with ThreadPoolExecutor(len(batch)) as pool:
            for response, _ in pool.map(lambda job: service.get(*job), batch):
                _check_ok(response)
        records = service.log_records({request_id for _, request_id in batch})
        covered |= {record.get("pid") for record in records.values()}
        if pids <= covered:
            break
    return {"policy": service.label, "workers": len(pids), "warmed": len(pids & covered)}


def cold_latency(service: Service, cases: tuple[ColdCase, ...], n: int,
                 budget_s: float) -> list[dict]:
    """Sequential first requests of distinct URLs; p50 of client time and the logged split."""
    deadline = time.monotonic() + budget_s
    samples: dict[ColdCase, list[tuple[str, float]]] = {case: [] for case in cases}
    # Round-robin over the cases: a noisy spell on the machine hits them all alike.
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        for case in cases:
            url = service.fresh_url(case.image_id, case.width, case.fmt)
            request_id = service.request_id()
            response, ms = service.get(url, request_id)
            _check_ok(response, "MISS")
            samples[case].append((request_id, ms))
    records = service.log_records({r for taken in samples.values() for r, _ in taken})
    rows = []
    for case, taken in samples.items():
        logged = [records[r] for r, _ in taken if r in records]
        upstream = [rec["upstream_ms"] for rec in logged if rec.get("upstream_ms") is not None]
        render = [rec["render_ms"] for rec in logged if rec.get("render_ms") is not None]
        totals = [ms for _, ms in taken]
        rows.append({
            "policy": service.label, "case": case.label, "n": len(totals),
            "p50_ms": median(totals) if totals else None,
            "p90_ms": percentile(totals, 90) if totals else None,
            "upstream_p50_ms": median(upstream) if upstream else None,
            "render_p50_ms": median(render) if render else None,
        })
    return rows


def warm_hit_urls(service: Service) -> list[str]:
    """Every image of the default product at each srcset width, rendered and now cached."""
    platform, product_id = product_of(DEFAULT_IMAGE)
    body = service.lookup(platform, product_id)
    urls = []
    for image in body["images"]:
        urls += [candidate.strip().rsplit(" ", 1)[0] for candidate in image["srcset"].split(",")]
    for url in urls:
        _check_ok(service.get(url)[0])
        _check_ok(service.get(url)[0], "HIT")
    return urls


def wrk_rows(service: Service, what: str, urls: list[str], concurrencies: tuple[int, ...],
             duration: float, headers: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for connections in concurrencies:
        boots = service.worker_boots()
        result: WrkResult = run_wrk(urls, connections=connections, duration=duration,
                                    headers=headers)
        rows.append({"policy": service.label, "what": what, "c": connections,
                     "rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                     "requests": result.requests, "non_2xx_3xx": result.non_2xx_3xx,
                     "socket_errors": result.socket_errors,
                     "recycled": service.worker_boots() - boots})
    return rows


def cold_throughput(service: Service, concurrency: int, max_requests: int,
                    budget_s: float) -> dict:
    """Distinct URLs of the default rendition, ``concurrency`` at a time, bounded both ways."""
    urls = [service.fresh_url(DEFAULT_IMAGE, DEFAULT_WIDTH, DEFAULT_FORMAT)
            for _ in range(max_requests)]
    pending = iter(urls)
    lock = threading.Lock()
    latencies: list[float] = []
    misses = []
    boots = service.worker_boots()
    started = time.monotonic()
    deadline = started + budget_s

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                url = next(pending, None)
            if url is None:
                return
            response, ms = service.get(url)
            _check_ok(response)
            with lock:
                latencies.append(ms)
                misses.append(response.headers.get("X-Cache") == "MISS")

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    elapsed = time.monotonic() - started
    return {"policy": service.label, "what": "cold render (distinct URLs)", "c": concurrency,
            "rps": len(latencies) / elapsed, "p50_ms": median(latencies),
            "p99_ms": percentile(latencies, 99), "requests": len(latencies),
            "non_2xx_3xx": 0, "socket_errors": 0, "misses": sum(misses),
            "recycled": service.worker_boots() - boots}


def not_modified_check(service: Service, url: str) -> str:
    """The URL's ETag, after checking that sending it back really gets a 304."""
    response = service.get(url)[0]
    _check_ok(response)
    etag = response.headers["ETag"]
    again = service.get(url, headers={"If-None-Match": etag})[0]
    if again.status_code != 304:
        raise RuntimeError(f"If-None-Match got {again.status_code}, not 304")
    return etag


def coalescing(service: Service, upstream: harness.Upstream, n: int = 32) -> dict:
    """n identical misses released together: how many upstream fetches and renders."""
    # A width no other phase asks for, so upstream's per-image counter sees only this.
    width = 777
    url = service.image_url(DEFAULT_IMAGE, width, 80, DEFAULT_FORMAT)
    upstream.reset_stats()
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait(timeout=30)
        response, ms = service.get(url)
        return response.status_code, response.headers.get("X-Cache"), ms

    started = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.monotonic() - started
    stats = upstream.stats()
    return {
        "policy": service.label, "clients": n,
        "upstream_fetches": stats["images"].get(DEFAULT_IMAGE, 0),
        "variants": {k: v for k, v in stats["variants"].items()
                     if k.startswith(DEFAULT_IMAGE + ":")},
        "misses": sum(1 for _, cache, _ in results if cache == "MISS"),
        "hits": sum(1 for _, cache, _ in results if cache == "HIT"),
        "non_200": sum(1 for status, _, _ in results if status != 200),
        "p50_ms": median([ms for *_, ms in results]),
        "max_ms": max(ms for *_, ms in results),
        "wall_s": elapsed,
    }


def lookup_url(service: Service) -> str:
    platform, product_id = product_of(DEFAULT_IMAGE)
    service.lookup(platform, product_id)  # warms the look-up cache
    return f"{service.url}/api/qc-images?id={product_id}&storePlatform={platform}"


def big_source_memory(service: Service, image_id: str, rounds: int, budget_s: float) -> dict:
    """Render the largest source on every worker at once, then read each worker's VmHWM."""
    workers = len(service.server.worker_pids())
    # Twice as many clients as workers keeps every worker busy with one of them.
    clients = 2 * workers
    deadline = time.monotonic() + budget_s
    statuses: list[int] = []
    latencies: list[float] = []
    request_ids: set[str] = set()
    for _ in range(rounds):
        if time.monotonic() > deadline:
            break
        batch = [(service.fresh_url(image_id, DEFAULT_WIDTH, DEFAULT_FORMAT),
                  service.request_id()) for _ in range(clients)]
        request_ids.update(request_id for _, request_id in batch)
        with ThreadPoolExecutor(clients) as pool:
            for response, ms in pool.map(lambda job: service.get(*job), batch):
                statuses.append(response.status_code)
                latencies.append(ms)
    peaks = service.worker_peak_rss()
    # Which worker rendered what, from the pid in the app's log: proves each one did.
    renders = {pid: 0 for pid in peaks}
    for record in service.log_records(request_ids).values():
        if record.get("pid") in renders and record.get("cache") == "miss":
            renders[record["pid"]] += 1
    return {"policy": service.label, "image_id": image_id, "renders": len(statuses),
            "non_200": sum(1 for s in statuses if s != 200),
            "p50_ms": median(latencies) if latencies else None,
            "peak_rss": peaks, "renders_by_pid": renders,
            "max_peak_rss": max(peaks.values()) if peaks else None}
