"""The stand-in's network conditions: latency, bandwidth, requests in flight, over sockets."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tools.samples import SMALL_SCALE, ensure_samples
from tools.upstream import UpstreamServer
from tools.upstream.conditions import Conditions, Latency, parse_latency_flag

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = (2, 10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    samples = tmp_path_factory.mktemp("samples")
    ensure_samples(samples, scale=SMALL_SCALE)
    with UpstreamServer("127.0.0.1", 0, samples, scale=SMALL_SCALE) as server:
        yield server


@pytest.fixture
def conditions(upstream):
    """``conditions(**json)`` sets them; they and the stats are cleared around the test."""
    def apply(**spec):
        response = requests.post(upstream.url + "/_conditions", json=spec, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return response.json()

    requests.delete(upstream.url + "/_conditions", timeout=TIMEOUT).raise_for_status()
    requests.delete(upstream.url + "/_stats", timeout=TIMEOUT).raise_for_status()
    yield apply
    requests.delete(upstream.url + "/_conditions", timeout=TIMEOUT).raise_for_status()


def images_at_once(upstream, count, **params):
    """``count`` image requests started together; their responses."""
    start = threading.Barrier(count)
    responses = [None] * count

    def fetch(i):
        start.wait()
        responses[i] = requests.get(upstream.url + "/img", timeout=TIMEOUT, params={
            "url": "n4EYdIoE", "width": 50 + i, "format": "jpeg", **params})

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def stats(upstream):
    return requests.get(upstream.url + "/_stats", timeout=TIMEOUT).json()


def test_latency_holds_requests_so_they_overlap_and_are_counted_in_flight(upstream,
                                                                          conditions):
    conditions(latency={"img": {"ms": 600}})
    responses = images_at_once(upstream, 6)
    assert [r.status_code for r in responses] == [200] * 6
    counts = stats(upstream)
    assert counts["in_flight_max"] == 6
    assert counts["in_flight"] == 0
    # Look-ups are not delayed: only the endpoint named.
    started = time.monotonic()
    requests.get(upstream.url + "/api/v1/products/qcMedia", timeout=TIMEOUT,
                 params={"id": "7494645791", "storePlatform": "WEIDIAN"}).raise_for_status()
    assert time.monotonic() - started < 0.6


def test_max_in_flight_makes_the_rest_wait_their_turn(upstream, conditions):
    conditions(latency={"img": {"ms": 300}}, max_in_flight=2)
    started = time.monotonic()
    responses = images_at_once(upstream, 6)
    assert [r.status_code for r in responses] == [200] * 6
    assert stats(upstream)["in_flight_max"] == 2
    assert time.monotonic() - started >= 3 * 0.3  # three turns of two


def test_bandwidth_caps_how_fast_bodies_leave(upstream, conditions):
    body = requests.get(upstream.url + "/img", timeout=TIMEOUT,
                        params={"url": "cR-eVGrQ", "format": "png"}).content
    conditions(bandwidth=len(body) * 2)  # half a second per copy, two copies at once
    started = time.monotonic()
    responses = images_at_once(upstream, 2, url="cR-eVGrQ", format="png", width=10 ** 6)
    assert all(r.content == body for r in responses)
    assert time.monotonic() - started >= 0.9


def test_conditions_round_trip_and_bad_ones_are_refused(upstream, conditions):
    shown = conditions(latency={"product": 300, "img": {"ms": 400, "dist": "lognormal"}},
                       bandwidth=10 ** 6)
    assert shown["latency"]["product"]["ms"] == 300
    assert shown["latency"]["img"]["dist"] == "lognormal"
    assert shown["bandwidth"] == 10 ** 6 and shown["max_in_flight"] is None
    for bad in ({"latency": {"cdn": 5}}, {"bandwidth": 0}, {"max_in_flight": "many"},
                {"latency": {"img": {"ms": -1}}}, {"speed": 1}):
        response = requests.post(upstream.url + "/_conditions", json=bad, timeout=TIMEOUT)
        assert response.status_code == 400, bad
        assert response.json()["error"] == "bad_conditions"
    cleared = requests.delete(upstream.url + "/_conditions", timeout=TIMEOUT).json()
    assert cleared == {"latency": {}, "bandwidth": None, "max_in_flight": None}


def test_a_lognormal_latency_has_its_median_at_ms():
    import random

    rng = random.Random(1)
    latency = Latency.from_json({"ms": 200, "dist": "lognormal", "sigma": 0.5})
    draws = sorted(latency.draw(rng) for _ in range(2001))
    assert 0.18 < draws[1000] < 0.22
    assert draws[-20] > 0.4  # the long tail real networks have


def test_command_line_flags_set_the_conditions_at_start(tmp_path):
    samples = tmp_path / "samples"
    ensure_samples(samples, scale=SMALL_SCALE)
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.upstream", "--port", "0", "--samples-dir", samples,
         "--scale", str(SMALL_SCALE), "--latency", "img=400:50", "--latency", "product=300",
         "--bandwidth", "1000000", "--max-in-flight", "8"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split()[1]
        shown = requests.get(url + "/_conditions", timeout=TIMEOUT).json()
    finally:
        process.terminate()
        process.wait(10)
    assert shown == Conditions({"img": Latency(400, 50), "product": Latency(300)},
                               10 ** 6, 8).to_json()


def test_a_bad_latency_flag_says_what_it_expects():
    with pytest.raises(ValueError, match="img=MS"):
        parse_latency_flag("cdn=5")
