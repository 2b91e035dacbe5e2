"""Misses against a stand-in that is as far away as the real upstream (issue 9).

Each miss is a distinct image source (another image or another width near 960), so the
shared source cache and coalescing cannot hide the upstream wait; the stand-in's own
output cache is filled first, so the stand-in spends no CPU during the measurement and
only its latency is measured.
"""

from __future__ import annotations

import http.client
import itertools
import multiprocessing
import random
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import requests

from qcimage.services.signing import Signer
from tools import harness
from tools.samples import SAMPLES_BY_ID

from .metrics import median, percentile
from .phases import warm_workers
from .servers import Service

IMAGE_DELAYS_S = (0.0, 0.2, 0.8)
LOOKUP_DELAY_S = 0.3
CONCURRENCIES = (4, 16, 64)
# Requests per cell: six rounds of every client at each concurrency, so that the rate is
# read over a steady middle (see run_cell), few enough for the budget.
REQUESTS = {4: 24, 16: 96, 64: 384}
QUALITY, FORMAT = 80, "webp"
# Client threads per client process, and at most this many processes (see run_cell).
CLIENTS_PER_PROCESS, CLIENT_PROCESSES = 8, 8


class DistinctMisses:
    """Signed URLs that each need a source nobody fetched: images in turn, widths from 800."""

    def __init__(self, service: Service):
        self.service = service
        self.signer = Signer(service.env["QCIMAGE_SIGNING_KEYS"].split(","))
        # Upright JPEG photos: the stand-in prepares them fast, and an EXIF-rotated one
        # would be fetched a second time at a width not prepared.
        self.images = sorted(image_id for image_id, spec in SAMPLES_BY_ID.items()
                             if spec.fmt == "JPEG" and spec.orientation == 1)
        self._counter = itertools.count()

    def take(self, count: int) -> list[tuple[str, int]]:
        """(image id, width) pairs never handed out before."""
        pairs = []
        for n in itertools.islice(self._counter, count):
            pairs.append((self.images[n % len(self.images)], 800 + n // len(self.images)))
        return pairs

    def deal(self, sizes: list[int]) -> list[list[tuple[str, int]]]:
        """Fresh pairs in shares of ``sizes``, each share spread over the same widths.

        A miss's work grows with its width squared: handed out in order, the last of
        1512 misses rendered at 1300 px where the first ones rendered at 800, and the
        late cells were measured doing twice the work of the early ones. Here each pair
        (in width order) goes to the share least filled so far, so every share spans the
        whole range evenly; each share is then shuffled (seeded) so the ramp and the tail
        of a cell are no cheaper than its middle.
        """
        shares: list[list[tuple[str, int]]] = [[] for _ in sizes]
        for pair in self.take(sum(sizes)):
            open_shares = [i for i, size in enumerate(sizes) if len(shares[i]) < size]
            shares[min(open_shares, key=lambda i: len(shares[i]) / sizes[i])].append(pair)
        for index, share in enumerate(shares):
            random.Random(index).shuffle(share)
        return shares

    def url(self, image_id: str, width: int) -> str:
        params = {"url": image_id, "width": str(width), "quality": str(QUALITY),
                  "format": FORMAT}
        params["sig"] = self.signer.sign(params)
        return f"{self.service.url}/api/image?{urlencode(params)}"


def warm_standin(upstream: harness.Upstream, pairs: list[tuple[str, int]],
                 source: dict[str, str]) -> None:
    """Have the stand-in encode every source once now, so measuring costs it no CPU."""
    def fetch(pair):
        image_id, width = pair
        requests.get(f"{upstream.url}/img", timeout=120, params={
            "url": image_id, "width": width, "format": source["format"],
            "quality": source["quality"]}).raise_for_status()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fetch, pairs))


def run_cell(urls: list[str], concurrency: int) -> dict:
    """``concurrency`` clients take URLs until none is left; rate, latencies, statuses.

    The clients are threads in several processes (8 threads each), as independent
    clients are: 64 threads in one Python process queued on its GIL to build and read
    their requests, and the last of a burst sent its request ~100 ms after the first.

    The rate is read in the steady state: over the completions between the first
    ``concurrency`` (while every client sent its first request at once) and the last
    ``concurrency`` (while clients run out of work and the box idles). With 192 requests
    at c=64 the ramp alone took a third off the wall-clock rate; ``wall_rps`` keeps it.
    """
    processes = max(1, min(CLIENT_PROCESSES, concurrency // CLIENTS_PER_PROCESS))
    shares = [urls[n::processes] for n in range(processes)]
    threads = [concurrency // processes + (n < concurrency % processes)
               for n in range(processes)]
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        taken = [row for done in [pool.submit(_clients, share, count)
                                  for share, count in zip(shares, threads)]
                 for row in done.result()]
    elapsed = time.perf_counter() - started
    ok = [ms for status, ms, _ in taken if status == 200]
    refused = [ms for status, ms, _ in taken if status == 503]
    finished = sorted(at for status, _, at in taken if status == 200)
    return {"c": concurrency, "requests": len(taken), "ok": len(ok),
            "overloaded": len(refused), "errors": len(taken) - len(ok) - len(refused),
            "rps": steady_rate(finished, concurrency) or len(ok) / elapsed,
            "wall_rps": len(ok) / elapsed, "p50_ms": median(ok) if ok else None,
            "p99_ms": percentile(ok, 99) if ok else None,
            "refused_p99_ms": percentile(refused, 99) if refused else None}


def _clients(urls: list[str], concurrency: int) -> list[tuple[int, float, float]]:
    """In a client process: (status, ms, finished at) of each URL, ``concurrency`` at once.

    perf_counter is the system's monotonic clock, so the processes' times compare."""
    pending = iter(urls)
    lock = threading.Lock()
    taken: list[tuple[int, float, float]] = []

    def client() -> None:
        while True:
            with lock:
                url = next(pending, None)
            if url is None:
                return
            started = time.perf_counter()
            status = _get(url)
            finished = time.perf_counter()
            with lock:
                taken.append((status, (finished - started) * 1000, finished))

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return taken


def _get(url: str) -> int:
    """GET on a new connection, the body read; its status. http.client, not requests: a
    Session per request cost the clients ~1 ms of CPU each, on the box's own cores."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def steady_rate(finished: list[float], concurrency: int) -> float | None:
    """Completions per second between the ``concurrency``-th and the ``concurrency``-th
    from last (sorted completion times); None when too few are left in between."""
    first, last = concurrency - 1, len(finished) - concurrency - 1
    if last - first < concurrency or finished[last] <= finished[first]:
        return None
    return (last - first) / (finished[last] - finished[first])


def misses_under_latency(service: Service, upstream: harness.Upstream) -> list[dict]:
    """Misses/s at each image delay and concurrency (look-ups delayed too, as upstream is)."""
    misses = DistinctMisses(service)
    cells = [(delay, c) for delay in IMAGE_DELAYS_S for c in CONCURRENCIES]
    plan = dict(zip(cells, misses.deal([REQUESTS[c] for _, c in cells])))
    warm_standin(upstream, [p for pairs in plan.values() for p in pairs], _source(service))
    rows = []
    try:
        for delay, c in cells:
            upstream.set_conditions(latency={"img": delay * 1000,
                                             "product": LOOKUP_DELAY_S * 1000})
            upstream.reset_stats()
            boots = service.worker_boots()
            row = run_cell([misses.url(*pair) for pair in plan[delay, c]], c)
            row.update(delay_s=delay, policy=service.label,
                       in_flight_max=upstream.stats()["in_flight_max"],
                       recycled=service.worker_boots() - boots)
            rows.append(row)
        peaks = service.worker_peak_rss()
    finally:
        upstream.clear_conditions()
    add_ideal(rows, cores=len(peaks) or 2)
    for row in rows:
        row["peak_rss"] = peaks
    return rows


def add_ideal(rows: list[dict], cores: int) -> None:
    """Each row's ideal ``min(CPU-bound rate, c / (delay + service time))`` and ratio.

    The CPU-bound rate is the best instant-upstream rate; the service time of one miss is
    the CPU it takes, ``cores / CPU-bound rate``.
    """
    instant = [row["rps"] for row in rows if row["delay_s"] == 0]
    cpu_rate = max(instant) if instant else None
    for row in rows:
        if not cpu_rate or row["delay_s"] == 0:
            row["ideal_rps"] = row["ratio"] = None
            continue
        row["ideal_rps"] = min(cpu_rate, row["c"] / (row["delay_s"] + cores / cpu_rate))
        row["ratio"] = row["rps"] / row["ideal_rps"]
        row["cpu_rate"] = cpu_rate


def overload(service: Service, upstream: harness.Upstream, delay_s: float = 0.8,
             concurrency: int = 64) -> dict:
    """A queue bound below the load: who is refused (503 overloaded), how fast, who is served.

    Every worker first renders once (as before the cold phases): a fresh worker's first
    request pays its one-off start-up work, which is not what refusing costs."""
    warm_workers(service)
    misses = DistinctMisses(service)
    pairs = misses.take(2 * concurrency)
    warm_standin(upstream, pairs, _source(service))
    upstream.set_conditions(latency={"img": delay_s * 1000})
    try:
        row = run_cell([misses.url(*pair) for pair in pairs], concurrency)
    finally:
        upstream.clear_conditions()
    row.update(delay_s=delay_s, policy=service.label,
               queue=int(service.env["QCIMAGE_RENDER_QUEUE"]),
               workers=len(service.server.worker_pids()))
    # The same 503s as the app timed them (its access line's duration_ms): the client's
    # figure adds its own 64 Python threads' queueing on the same two cores.
    served_in = [record["duration_ms"] for record in service.access_records()
                 if record.get("status") == 503 and record.get("route") == "/api/image"]
    row["refused_server_p99_ms"] = percentile(served_in, 99) if served_in else None
    return row


def _source(service: Service) -> dict[str, str]:
    # What the default source policy asks upstream for (SourcePolicy's defaults).
    return {"format": service.env.get("QCIMAGE_SOURCE_FORMAT", "jpeg"),
            "quality": service.env.get("QCIMAGE_SOURCE_QUALITY", "98")}
