"""The worker model under real gunicorn with its defaults (gthread) and a slow stand-in.

Waits overlap, overload is answered at once, a hanging upstream costs one attempt and
cannot starve the box, and slow clients cannot block ``/health``. Assertions are counts
and orderings (requests in flight at the stand-in, upstream attempts, which requests were
still waiting when another answered), never durations.
"""

from __future__ import annotations

import os
import runpy
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import urlencode

import pytest
import requests

from qcimage.services.signing import Signer
from tests.e2e.faults import FAST_ENV, assert_error
from tools import harness

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]

IMAGE = "n4EYdIoE"


def _default_threads():
    # gunicorn.conf.py exports settings into os.environ when run: keep this process's own
    # (PROMETHEUS_MULTIPROC_DIR left set made every later in-process metrics test read 0).
    saved = dict(os.environ)
    try:
        return runpy.run_path(str(harness.GUNICORN_CONF))["DEFAULT_THREADS"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


DEFAULT_THREADS = _default_threads()
OTHER_IMAGE = "cR-eVGrQ"


class Box:
    """A gunicorn with two workers and a signing key of ours, so tests mint image URLs."""

    def __init__(self, qcimage_server, **env):
        self.key = secrets.token_urlsafe(32)
        self.server = qcimage_server(workers=2, QCIMAGE_SIGNING_KEYS=self.key, **env)
        self.url = self.server.url

    def image_url(self, image_id=IMAGE, width=960):
        params = {"url": image_id, "width": str(width), "quality": "80", "format": "webp"}
        params["sig"] = Signer([self.key]).sign(params)
        return f"{self.url}/api/image?{urlencode(params)}"

    def distinct_misses(self, count, image_id=IMAGE):
        """URLs never rendered, each asking upstream for a different source width."""
        return [self.image_url(image_id, 400 + 100 * n) for n in range(count)]


def get_all(urls):
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda url: requests.get(url, timeout=60), urls))


# The stand-in encodes each distinct source on the same two cores, one after another
# under the GIL: on a busy machine the 16th answer can come seconds after the first.
# This test counts overlap, not timeouts (those have their own tests), so it gives
# upstream room to be slow instead of turning a starved stand-in into a 504.
PATIENT_ENV = {"QCIMAGE_UPSTREAM_READ_TIMEOUT": "20", "QCIMAGE_IMAGE_FETCH_TIMEOUT": "30",
               "QCIMAGE_WORKER_TIMEOUT": "90"}


def test_upstream_waits_overlap_across_threads_and_workers(qcimage_server, upstream):
    box = Box(qcimage_server, **PATIENT_ENV)
    upstream.set_conditions(latency={"img": 1000})
    upstream.reset_stats()
    responses = get_all(box.distinct_misses(16))
    assert [r.status_code for r in responses] == [200] * 16
    stats = upstream.stats()
    assert stats["endpoints"]["img"] == 16
    # Two sync workers would have had 2 in flight at most.
    assert stats["in_flight_max"] >= 8, stats


def test_64_clients_of_slow_misses_on_the_defaults_are_all_served(qcimage_server, upstream):
    # 64 clients taking distinct misses in turn, three rounds each: the kernel hands new
    # connections to the two workers unevenly, and with 64 threads (a queue of 56) a
    # worker that held more than 56 of them refused the rest with 503 overloaded although
    # the box had room. The defaults must serve them all, overlapping the waits.
    box = Box(qcimage_server, **PATIENT_ENV)
    urls = [box.image_url(IMAGE, 700 + 2 * n) for n in range(2 + 3 * 64)]
    for url in urls[:2]:  # ImageMagick's start-up out of the way before the burst
        assert requests.get(url, timeout=60).status_code == 200
    upstream.set_conditions(latency={"img": 200})
    upstream.reset_stats()
    pending = iter(urls[2:])

    def client():
        statuses = []
        while (url := next(pending, None)) is not None:
            statuses.append(requests.get(url, timeout=60).status_code)
        return statuses

    with ThreadPoolExecutor(64) as pool:
        statuses = [s for done in [pool.submit(client) for _ in range(64)] for s in done.result()]
    assert statuses == [200] * (3 * 64), sorted(statuses)
    stats = upstream.stats()
    assert stats["endpoints"]["img"] == 3 * 64
    assert stats["in_flight_max"] >= 32, stats


def test_misses_beyond_the_queue_are_503_overloaded_while_health_answers(
        qcimage_server, upstream):
    box = Box(qcimage_server, QCIMAGE_RENDER_QUEUE="2")
    upstream.set_conditions(latency={"img": 1000})
    upstream.reset_stats()
    with ThreadPoolExecutor(16) as pool:
        misses = [pool.submit(requests.get, url, timeout=60)
                  for url in box.distinct_misses(16)]
        health = requests.get(box.url + "/health", timeout=10)
        waiting_at_health = sum(not miss.done() for miss in misses)
        responses = [miss.result() for miss in misses]
    assert health.status_code == 200
    assert waiting_at_health >= 1, "health answered only after the misses"
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for refused in (r for r in responses if r.status_code == 503):
        assert_error(refused, 503, "overloaded")
        assert refused.headers["Retry-After"] == "1"
    stats = upstream.stats()
    # The refused asked upstream nothing; two places per worker, so never more than four
    # fetches at once.
    assert stats["endpoints"]["img"] == statuses.count(200)
    assert stats["in_flight_max"] <= 4, stats


def test_a_hanging_image_costs_one_attempt_and_starves_nothing(qcimage_server, upstream):
    box = Box(qcimage_server, **{**FAST_ENV, "QCIMAGE_UPSTREAM_READ_TIMEOUT": "3",
                                 "QCIMAGE_IMAGE_FETCH_TIMEOUT": "4",
                                 "QCIMAGE_WORKER_TIMEOUT": "15"})
    cached = box.image_url(OTHER_IMAGE)
    first = requests.get(cached, timeout=60)
    assert first.status_code == 200
    upstream.set_faults({"mode": "hang", "paths": ["img"], "ids": [IMAGE]})
    upstream.reset_stats()
    hanging_url = box.image_url(IMAGE)
    with ThreadPoolExecutor(8) as pool:  # 4 x the workers, all for the one hanging image
        hanging = [pool.submit(requests.get, hanging_url, timeout=60) for _ in range(8)]
        health = requests.get(box.url + "/health", timeout=10)
        hit = requests.get(cached, timeout=10)
        revalidated = requests.get(cached, timeout=10,
                                   headers={"If-None-Match": first.headers["ETag"]})
        still_waiting = sum(not request.done() for request in hanging)
        responses = [request.result() for request in hanging]
    assert health.status_code == 200
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    assert revalidated.status_code == 304
    assert still_waiting == 8, "the hanging requests ended before the others were answered"
    for response in responses:
        assert_error(response, 504, "upstream_timeout")
    # One upstream attempt, its failure shared by every waiter in both workers.
    assert upstream.stats()["images"] == {IMAGE: 1}


def test_half_sent_requests_straight_at_gunicorn_do_not_block_health(qcimage_server):
    box = Box(qcimage_server, QCIMAGE_HEAD_TIMEOUT="3")
    host, port = box.url.rsplit("/", 1)[1].split(":")
    slow, stalled = [], []
    try:
        # More half-sent requests than the two workers have threads: gthread gave each a
        # thread, which then waited for the rest of the head.
        for n in range(2 * DEFAULT_THREADS + 32):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: qcimage\r\n")
            (slow if n % 2 else stalled).append(sock)
        assert requests.get(box.url + "/health", timeout=10).status_code == 200
        # Those that finish their head are answered...
        answers = []
        for sock in slow:
            sock.sendall(b"Connection: close\r\n\r\n")
            answers.append(_read_all(sock))
        # ...and a kept-alive connection's next request gets the same treatment.
        conn = HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/health")
        assert conn.getresponse().read() and conn.sock is not None
        conn.sock.sendall(b"GET /health HTTP/1.1\r\n")  # half of the next head
        assert requests.get(box.url + "/health", timeout=10).status_code == 200
        # ...while those that never do are closed after QCIMAGE_HEAD_TIMEOUT, unanswered.
        closed = [_read_all(sock) for sock in stalled]
        assert _read_all(conn.sock) == b""
    finally:
        for sock in slow + stalled:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers[:1]
    assert closed == [b""] * len(stalled)


def _read_all(sock):
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_gunicorn_keeps_connections_alive_between_requests(qcimage_server):
    # gthread keeps a connection open for the next request (sync closed every one), so
    # nginx's upstream keepalive pays off.
    box = Box(qcimage_server)
    host, port = box.url.rsplit("/", 1)[1].split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        # Next requests sent at once (the answering thread serves them) and after a
        # pause longer than its wait (the main loop takes the connection back).
        for pause in (0, 0, 0, 0.05, 0, 0.05):
            time.sleep(pause)
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
        assert conn.sock is sock and sock is not None
    finally:
        conn.close()
