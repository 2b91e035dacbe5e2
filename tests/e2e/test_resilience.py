"""Upstream and Redis failures under real gunicorn (two workers) and the stand-in upstream.

Every test starts its own server with short deadlines (``faults.FAST_ENV``) and shares the
session's stand-in, whose faults are cleared around each test. Time bounds carry a generous
``MARGIN``: they tell "answered at the deadline" from "waited for something else".

Not covered: the connect timeout. Loopback refuses or accepts at once, so a connection that
neither succeeds nor fails cannot be made here without root-only packet filtering.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time

import pytest
import requests

from tests.e2e.faults import (
    FAST_ENV, MARGIN, OTHER_PRODUCT, SYNC_ENV, DripServer, Listener, assert_error, image_urls,
    log_records, look_up, on_each_worker, served_by, srcset_url, timed, wait_until)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]

READ_TIMEOUT = float(FAST_ENV["QCIMAGE_UPSTREAM_READ_TIMEOUT"])
LOOKUP_DEADLINE = float(FAST_ENV["QCIMAGE_LOOKUP_TIMEOUT"])
IMAGE_DEADLINE = float(FAST_ENV["QCIMAGE_IMAGE_FETCH_TIMEOUT"])
RETRY_AFTER_CAP = 2.0  # upstream._CappedRetry.retry_after_cap
FAST = 0.5  # an answer that asked nobody


def start(qcimage_server, workers=2, **env):
    return qcimage_server(workers=workers, **{**FAST_ENV, **env})


def get(url, **kwargs):
    return timed(requests.get, url, **kwargs)


def ready(server):
    return requests.get(server.url + "/health/ready", timeout=10)


def upstream_requests(upstream, endpoint):
    return upstream.stats()["endpoints"].get(endpoint, 0)


def assert_workers_survived(server, pids):
    assert server.worker_pids() == pids, "a worker was replaced"
    assert "WORKER TIMEOUT" not in server.log_text()


def assert_ready(response, status="ready", **checks):
    """200 with the operator-facing body: overall status and every check by name."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["status"] == status, body
    assert set(body) == {"status", "checks"}, body
    for name, value in checks.items():
        assert body["checks"][name] == value, body
    return body


def assert_not_ready(response, reason, **checks):
    """503 in the error shape, saying why, with every check in details and a Retry-After."""
    body = assert_error(response, 503, "not_ready")
    assert reason in body["message"], body
    for name, value in checks.items():
        assert body["details"][name] == value, body
    assert 1 <= int(response.headers["Retry-After"]) <= 60, response.headers
    assert response.headers["Cache-Control"] == "no-store"
    return body


def assert_image(response, cache):
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("image/")
    assert response.headers["X-Cache"] == cache


# --------------------------------------------------------------------------- 1. timeouts


def test_silent_upstream_ends_in_504_at_the_read_timeout_without_retry(qcimage_server,
                                                                       upstream):
    server = start(qcimage_server)
    pids = server.worker_pids()
    image_url = image_urls(server)["n4EYdIoE"]
    problems = []
    for mode, options in (("hang", {}), ("delay", {"ms": 4000})):
        for path in ("product", "img"):
            upstream.reset_stats()
            upstream.set_faults({"mode": mode, "paths": [path], **options})
            if path == "product":
                response, seconds = look_up(server, *OTHER_PRODUCT)
            else:
                response, seconds = get(image_url)
            upstream.clear_faults()
            try:
                body = assert_error(response, 504, "upstream_timeout")
                assert "upstream" in body["message"]
                assert READ_TIMEOUT * 0.9 <= seconds < READ_TIMEOUT + MARGIN, seconds
                # A read timeout is not retried: that would double the wait.
                assert upstream_requests(upstream, path) == 1, upstream.stats()
            except AssertionError as error:
                problems.append(f"{mode} on {path} ({seconds:.2f}s): {error}")
    assert not problems, "\n".join(problems)
    assert_workers_survived(server, pids)


def test_endless_body_ends_at_the_deadline_or_the_byte_cap(qcimage_server, upstream):
    # 1 KiB every 100 ms reaches neither cap (4 MiB look-ups, 1 MiB images here) before the
    # 2 s deadlines: 504. 64 KiB every millisecond passes the 1 MiB image cap first: 413.
    server = start(qcimage_server, QCIMAGE_MAX_SOURCE_BYTES=str(1024 * 1024))
    pids = server.worker_pids()
    image_url = image_urls(server)["n4EYdIoE"]

    upstream.set_faults({"mode": "endless", "paths": ["product"]})
    response, seconds = look_up(server, *OTHER_PRODUCT)
    assert_error(response, 504, "upstream_timeout")
    assert LOOKUP_DEADLINE * 0.9 <= seconds < LOOKUP_DEADLINE + MARGIN, seconds
    upstream.clear_faults()

    upstream.set_faults({"mode": "endless", "paths": ["img"]})
    response, seconds = get(image_url)
    assert_error(response, 504, "upstream_timeout")
    assert IMAGE_DEADLINE * 0.9 <= seconds < IMAGE_DEADLINE + MARGIN, seconds
    upstream.clear_faults()

    upstream.set_faults({"mode": "endless", "paths": ["img"], "chunk": 65536, "interval_ms": 1})
    response, seconds = get(image_url)
    assert_error(response, 413, "image_too_large")
    assert seconds < IMAGE_DEADLINE, seconds
    assert_workers_survived(server, pids)


def test_body_dripping_under_its_content_length_still_ends_at_the_deadline(qcimage_server):
    # Every read returns within the read timeout, so only a total deadline can stop this.
    drip = DripServer(length=200_000, piece=100, interval=0.2, duration=15)
    try:
        server = start(qcimage_server, QCIMAGE_UPSTREAM_URL=drip.url)
        pids = server.worker_pids()
        started = time.monotonic()
        try:
            response, seconds = look_up(server)
        except requests.RequestException as exc:
            pytest.fail(f"no answer after {time.monotonic() - started:.1f}s ({exc!r}); "
                        f"worker killed: {'WORKER TIMEOUT' in server.log_text()}")
        assert_error(response, 504, "upstream_timeout")
        assert seconds < LOOKUP_DEADLINE + READ_TIMEOUT + MARGIN, seconds
        assert_workers_survived(server, pids)
    finally:
        drip.close()


def test_capped_retry_after_waits_still_fit_the_worker_timeout(qcimage_server, upstream):
    # The most retries config allows, and a worker timeout config accepts (2 + 1 + 3 < 8).
    server = start(qcimage_server, QCIMAGE_UPSTREAM_RETRIES="5", QCIMAGE_WORKER_TIMEOUT="8")
    pids = server.worker_pids()
    upstream.set_faults({"mode": "status", "status": 503, "retry_after": 120,
                         "paths": ["product"]})
    started = time.monotonic()
    try:
        response, seconds = look_up(server)
    except requests.RequestException as exc:
        pytest.fail(f"no answer after {time.monotonic() - started:.1f}s ({exc!r}); "
                    f"worker killed: {'WORKER TIMEOUT' in server.log_text()}; "
                    f"upstream asked {upstream_requests(upstream, 'product')} times")
    assert response.status_code in (502, 504), response.text
    assert_error(response, response.status_code)
    assert seconds < LOOKUP_DEADLINE + READ_TIMEOUT + MARGIN, seconds
    assert_workers_survived(server, pids)


# --------------------------------------------------------------------------- 2. retries


def test_gateway_errors_are_retried_once_recovered_and_500_is_not(qcimage_server, upstream):
    server = start(qcimage_server, QCIMAGE_LOOKUP_CACHE_TTL="0")
    for status in (502, 503, 504):
        upstream.reset_stats()
        upstream.set_faults({"mode": "status", "status": status, "paths": ["product"],
                             "count": 1})
        response, _ = look_up(server)
        assert response.status_code == 200, (status, response.text)
        stats = upstream.stats()
        assert stats["endpoints"]["product"] == 2, (status, stats)
        assert stats["statuses"] == {str(status): 1, "200": 1}, stats

    upstream.reset_stats()
    upstream.set_faults({"mode": "status", "status": 500, "paths": ["product"], "count": 1})
    response, _ = look_up(server)
    assert_error(response, 502, "upstream_error")
    assert upstream_requests(upstream, "product") == 1
    response, _ = look_up(server)
    assert response.status_code == 200

    # Retries are bounded: 1 + QCIMAGE_UPSTREAM_RETRIES (2) attempts, then a 502.
    upstream.reset_stats()
    upstream.set_faults({"mode": "status", "status": 503, "paths": ["product"]})
    response, _ = look_up(server)
    assert_error(response, 502, "upstream_error")
    assert upstream_requests(upstream, "product") == 3
    upstream.clear_faults()

    # Images are retried the same way.
    url = image_urls(server)["n4EYdIoE"]
    upstream.reset_stats()
    upstream.set_faults({"mode": "status", "status": 503, "paths": ["img"], "count": 1})
    response, _ = get(url)
    assert_image(response, "MISS")
    assert upstream_requests(upstream, "img") == 2


def test_retry_after_is_honoured_and_capped(qcimage_server, upstream):
    # A deadline longer than the cap, so a capped wait can still end in success.
    server = start(qcimage_server, QCIMAGE_LOOKUP_CACHE_TTL="0", QCIMAGE_LOOKUP_TIMEOUT="5")
    upstream.set_faults({"mode": "status", "status": 503, "retry_after": 1,
                         "paths": ["product"], "count": 1})
    response, seconds = look_up(server)
    assert response.status_code == 200, response.text
    assert 0.95 <= seconds < 1 + MARGIN, seconds
    assert upstream_requests(upstream, "product") == 2

    upstream.reset_stats()
    upstream.set_faults({"mode": "status", "status": 503, "retry_after": 120,
                         "paths": ["product"], "count": 1})
    response, seconds = look_up(server)
    assert response.status_code == 200, response.text
    assert seconds < RETRY_AFTER_CAP + MARGIN, seconds
    assert upstream_requests(upstream, "product") == 2


# --------------------------------------------------------------------------- 3. breaker


BREAKER_ENV = {"QCIMAGE_BREAKER_FAIL_MAX": "3", "QCIMAGE_BREAKER_RESET_TIMEOUT": "4",
               "QCIMAGE_LOOKUP_CACHE_TTL": "0", **SYNC_ENV}
FAIL_MAX = int(BREAKER_ENV["QCIMAGE_BREAKER_FAIL_MAX"])
RESET = float(BREAKER_ENV["QCIMAGE_BREAKER_RESET_TIMEOUT"])


def assert_fails_fast(server, upstream):
    """An open circuit: 503 + Retry-After, at once, asking upstream nothing.

    Returns the response; callers check Retry-After's value at the end (``retry_afters``),
    so a wrong value does not hide the rest of the breaker's behaviour.
    """
    before = upstream.stats()["total"]
    response, seconds = look_up(server)
    body = assert_error(response, 503, "upstream_unavailable")
    assert "upstream" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1, response.headers
    assert seconds < FAST, seconds
    assert upstream.stats()["total"] == before, "an open circuit still asked upstream"
    assert_not_ready(ready(server), "circuit", upstream_circuit="open")
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    return response


def assert_retry_after_within_reset(responses):
    """The circuit reopens for probes within the reset timeout: Retry-After says so."""
    values = sorted({int(response.headers["Retry-After"]) for response in responses})
    assert values and max(values) <= RESET + 1, (
        f"Retry-After {values} on circuit-open 503s; the breaker resets within {RESET:g}s")


def recover(server, upstream):
    """Upstream healthy again: after the reset timeout each worker gets through and closes."""
    upstream.clear_faults()
    for _ in on_each_worker(server):
        wait_until(lambda: ready(server).status_code == 200, RESET + MARGIN,
                   message="readiness after the reset timeout")
        assert_ready(ready(server))
        response, _ = look_up(server)
        assert response.status_code == 200, response.text
        assert_ready(ready(server), upstream_circuit="closed")


def test_breaker_opens_per_worker_without_redis(qcimage_server, upstream):
    server = start(qcimage_server, **BREAKER_ENV)
    upstream.set_faults({"mode": "status", "status": 500, "paths": ["*"]})
    served, pinned, refused = [], [], []
    for pin in on_each_worker(server):
        pids = set()
        for _ in range(FAIL_MAX):
            response, _ = look_up(server)
            assert_error(response, 502, "upstream_error")
            pids.add(served_by(server, response))
        for _ in range(3):
            refused.append(assert_fails_fast(server, upstream))
            pids.add(served_by(server, refused[-1]))
        served.append(pids)
        pinned.append(pin)
    assert served == [{pinned[1].pid}, {pinned[0].pid}], (served, [p.pid for p in pinned])
    # Each worker learnt on its own: FAIL_MAX failures each, then nothing.
    assert upstream_requests(upstream, "product") == 2 * FAIL_MAX
    recover(server, upstream)
    assert_retry_after_within_reset(refused)


def test_breaker_state_is_shared_through_redis(qcimage_server, upstream, redis_server):
    redis = redis_server()
    server = start(qcimage_server, QCIMAGE_REDIS_URL=redis.url, **BREAKER_ENV)
    # Hanging: every failure costs the read timeout, so failing fast is visibly faster.
    upstream.set_faults({"mode": "hang", "paths": ["*"]})
    served, refused = [], []
    for number, _ in enumerate(on_each_worker(server)):
        pids = set()
        if number == 0:
            for _ in range(FAIL_MAX):
                response, seconds = look_up(server)
                # 504 is asserted by the timeout tests; here any upstream failure will do.
                assert response.status_code in (502, 504), response.text
                assert seconds >= READ_TIMEOUT * 0.9
                pids.add(served_by(server, response))
        # The second worker never failed itself, yet refuses at once.
        refused.append(assert_fails_fast(server, upstream))
        pids.add(served_by(server, refused[-1]))
        served.append(pids)
    assert len(served[0] | served[1]) == 2, served
    assert upstream_requests(upstream, "product") == FAIL_MAX
    recover(server, upstream)
    assert_retry_after_within_reset(refused)


# --------------------------------------------------------------------------- 4. stale


def test_stale_lookups_and_cached_renders_cover_an_outage(qcimage_server, upstream):
    server = start(qcimage_server, QCIMAGE_LOOKUP_CACHE_TTL="1", QCIMAGE_BREAKER_FAIL_MAX="3",
                   QCIMAGE_BREAKER_RESET_TIMEOUT="60")
    fresh, _ = look_up(server)
    assert fresh.status_code == 200 and "X-Stale" not in fresh.headers
    originals = [image["original"] for image in fresh.json()["images"]]
    url = fresh.json()["images"][0]["watermarked"]
    rendered, _ = get(url)
    assert_image(rendered, "MISS")
    time.sleep(1.3)  # past QCIMAGE_LOOKUP_CACHE_TTL

    # An error, a timeout, a reset, then (circuit open after 3) no upstream call at all.
    for fault in ({"mode": "status", "status": 500}, {"mode": "hang"}, {"mode": "reset"},
                  {"mode": "status", "status": 500}, {"mode": "status", "status": 500}):
        upstream.set_faults({**fault, "paths": ["*"]})
        response, seconds = look_up(server)
        upstream.clear_faults()
        assert response.status_code == 200, (fault, response.text)
        assert response.headers.get("X-Stale") == "1", (fault, response.headers)
        assert [image["original"] for image in response.json()["images"]] == originals
        assert seconds < READ_TIMEOUT + MARGIN, (fault, seconds)

    upstream.set_faults({"mode": "status", "status": 500, "paths": ["*"]})
    again, _ = get(url)
    assert_image(again, "HIT")
    assert again.content == rendered.content
    assert upstream_requests(upstream, "img") == 1


def test_a_malformed_answer_does_not_replace_a_good_lookup(qcimage_server, upstream):
    # "data" that is not an object is upstream garbage (502, or the stale copy), not a
    # product without photos: caching it would 404 every caller for the whole TTL.
    server = start(qcimage_server, QCIMAGE_LOOKUP_CACHE_TTL="2")
    fresh, _ = look_up(server)
    originals = [image["original"] for image in fresh.json()["images"]]
    time.sleep(2.3)
    upstream.set_faults({"mode": "wrong_shape", "shape": "null", "paths": ["product"],
                         "count": 1})
    during, _ = look_up(server)
    after, _ = look_up(server)
    seen = (during.status_code, during.headers.get("X-Stale"), after.status_code)
    assert seen == (200, "1", 200), (
        f"during the glitch: {during.status_code} {during.text[:120]}; "
        f"once upstream is fine again: {after.status_code} {after.text[:120]}")
    assert [image["original"] for image in during.json()["images"]] == originals


def test_upstream_not_found_is_not_covered_by_a_stale_copy(qcimage_server, upstream):
    server = start(qcimage_server, QCIMAGE_LOOKUP_CACHE_TTL="1")
    assert look_up(server)[0].status_code == 200
    time.sleep(1.3)
    upstream.set_faults({"mode": "status", "status": 404, "paths": ["product"]})
    response, _ = look_up(server)
    assert_error(response, 404, "not_found")


# --------------------------------------------------------------------------- 5. garbage


def check_cases(cases, call, upstream):
    """Play each (fault, status, code, hint); collect every mismatch before failing."""
    problems = []
    for fault, status, code, hint in cases:
        upstream.set_faults(fault)
        try:
            response, seconds = call()
        except requests.RequestException as exc:
            problems.append(f"{fault}: no answer ({exc!r})")
            continue
        finally:
            upstream.clear_faults()
        try:
            body = assert_error(response, status, code)
            assert hint in body["message"].lower(), (hint, body["message"])
            assert seconds < IMAGE_DEADLINE + MARGIN, seconds
        except AssertionError as error:
            problems.append(f"{fault}: {error}")
    assert not problems, "\n".join(problems)


def test_product_garbage_is_a_clear_502(qcimage_server, upstream):
    server = start(qcimage_server, QCIMAGE_LOOKUP_CACHE_TTL="0")
    elsewhere = Listener()
    try:
        cases = [
            ({"mode": "garbage"}, 502, "upstream_error", "json"),
            ({"mode": "html200"}, 502, "upstream_error", "json"),
            ({"mode": "wrong_shape", "shape": "no_data"}, 502, "upstream_error", "shape"),
            ({"mode": "wrong_shape", "shape": "list"}, 502, "upstream_error", "shape"),
            ({"mode": "wrong_shape", "shape": "null"}, 502, "upstream_error", "shape"),
            ({"mode": "wrong_shape", "shape": "string"}, 502, "upstream_error", "shape"),
            ({"mode": "status", "status": 500}, 502, "upstream_error", "upstream"),
            ({"mode": "reset"}, 502, "upstream_error", "upstream"),
            ({"mode": "redirect", "location": elsewhere.url + "/api/v1/products/qcMedia"},
             502, "upstream_error", "redirect"),
            ({"mode": "redirect", "status": 301}, 502, "upstream_error", "redirect"),
        ]
        check_cases([({**fault, "paths": ["product"]}, *rest) for fault, *rest in cases],
                    lambda: look_up(server), upstream)
        assert elsewhere.connections == 0
    finally:
        elsewhere.close()
    # Nothing bad was cached: the next look-up is a plain success.
    assert look_up(server)[0].status_code == 200


def test_image_garbage_is_422_413_or_502(qcimage_server, upstream):
    server = start(qcimage_server, QCIMAGE_MAX_SOURCE_BYTES=str(1024 * 1024))
    url = image_urls(server)["n4EYdIoE"]
    elsewhere = Listener()
    not_an_image = "VGhpcyBpcyBub3QgYW4gaW1hZ2UsIGp1c3QgdGV4dC4="  # "This is not an image…"
    try:
        cases = [
            ({"mode": "garbage"}, 422, "unsupported_image", "image"),
            ({"mode": "html200"}, 422, "unsupported_image", "image"),
            ({"mode": "payload", "content_type": "image/jpeg", "body_b64": not_an_image},
             422, "unsupported_image", "image"),
            ({"mode": "oversize"}, 413, "image_too_large", "large"),
            ({"mode": "oversize", "content_length": False}, 413, "image_too_large", "large"),
            ({"mode": "status", "status": 500}, 502, "upstream_error", "upstream"),
            ({"mode": "status", "status": 404}, 404, "not_found", "upstream"),
            ({"mode": "reset"}, 502, "upstream_error", "upstream"),
            ({"mode": "redirect", "location": elsewhere.url + "/img"},
             502, "upstream_error", "redirect"),
        ]
        check_cases([({**fault, "paths": ["img"]}, *rest) for fault, *rest in cases],
                    lambda: get(url), upstream)
        assert elsewhere.connections == 0
    finally:
        elsewhere.close()
    assert_image(get(url)[0], "MISS")


# --------------------------------------------------------------------------- 6. redis down


def redis_env(redis, **extra):
    return {"QCIMAGE_REDIS_URL": redis.url, "QCIMAGE_RATELIMIT_STORAGE_URI": redis.url, **extra}


def log_lines_containing(server, text):
    return [line for line in server.log_text().splitlines() if text.lower() in line.lower()]


def test_redis_outage_degrades_and_recovers(qcimage_server, upstream, redis_server):
    redis = redis_server()
    signing_key = secrets.token_urlsafe(32)
    env = redis_env(redis, QCIMAGE_LOOKUP_RATE_LIMIT="8 per minute",
                    QCIMAGE_SIGNING_KEYS=signing_key, **SYNC_ENV)
    server = start(qcimage_server, **env)
    assert_ready(ready(server), "ready", redis="ok", upstream_circuit="closed")
    urls = image_urls(server)
    after_restart = srcset_url(server, "Tq3_Hx8w", 480)
    assert_image(get(urls["n4EYdIoE"])[0], "MISS")

    redis.stop()
    response, seconds = look_up(server, *OTHER_PRODUCT)
    assert response.status_code == 200, response.text
    assert seconds < MARGIN, seconds
    assert_image(get(urls["n4EYdIoE"])[0], "HIT")
    assert_image(get(urls["cR-eVGrQ"])[0], "MISS")
    for _ in on_each_worker(server):
        assert_ready(ready(server), "degraded", redis="down", upstream_circuit="closed")
        # Limits still apply, per worker, from memory: 8 a minute, so the 9th at the latest.
        statuses = []
        while len(statuses) < 9 and 429 not in statuses:
            response, _ = look_up(server)
            statuses.append(response.status_code)
        assert statuses[-1] == 429 and set(statuses[:-1]) <= {200}, statuses
        assert_error(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
    # One line per worker for the outage, however many requests met it.
    outage_lines = log_lines_containing(server, "redis unavailable")
    assert 1 <= len(outage_lines) <= 2, outage_lines
    assert len(log_lines_containing(server, "falling back to in-memory")) <= 2
    assert not log_lines_containing(server, "Traceback")

    redis.start()
    for _ in on_each_worker(server):
        wait_until(lambda: ready(server).json().get("status") == "ready", 10,
                   message="readiness back to ready")
        assert_ready(ready(server), "ready", redis="ok")
    # Shared again: a render here is a hit on another box with its own disk cache.
    assert_image(get(after_restart)[0], "MISS")
    other_box = start(qcimage_server, workers=1, **env)
    upstream.reset_stats()
    response, _ = get(after_restart.replace(server.url, other_box.url))
    assert_image(response, "HIT")
    assert upstream_requests(upstream, "img") == 0


def test_redis_required_makes_readiness_fail_while_it_is_down(qcimage_server, upstream,
                                                              redis_server):
    redis = redis_server()
    server = start(qcimage_server, QCIMAGE_REDIS_REQUIRED="true", **redis_env(redis),
                   **SYNC_ENV)
    assert_ready(ready(server), "ready", redis="ok")
    urls = image_urls(server)
    redis.stop()
    for _ in on_each_worker(server):
        assert_not_ready(ready(server), "redis", redis="down", upstream_circuit="closed")
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
    response, _ = look_up(server, *OTHER_PRODUCT)
    assert response.status_code == 200, response.text
    assert_image(get(urls["n4EYdIoE"])[0], "MISS")
    redis.start()
    for _ in on_each_worker(server):
        wait_until(lambda: ready(server).status_code == 200, 10, message="ready again")
        assert_ready(ready(server), "ready", redis="ok")


# --------------------------------------------------------------------------- 7. shutdown


def test_sigterm_lets_the_slow_request_finish(qcimage_server, upstream):
    graceful = 8
    server = start(qcimage_server, QCIMAGE_UPSTREAM_READ_TIMEOUT="4",
                   QCIMAGE_IMAGE_FETCH_TIMEOUT="5", QCIMAGE_LOOKUP_TIMEOUT="5",
                   QCIMAGE_WORKER_TIMEOUT="15", QCIMAGE_GRACEFUL_TIMEOUT=str(graceful))
    url = image_urls(server)["n4EYdIoE"]
    upstream.set_faults({"mode": "delay", "ms": 2000, "paths": ["img"], "ids": ["n4EYdIoE"],
                         "count": 1})
    outcome = {}

    def fetch():
        try:
            outcome["response"] = get(url)
        except requests.RequestException as exc:
            outcome["error"] = exc

    client = threading.Thread(target=fetch)
    client.start()
    wait_until(lambda: upstream.stats()["images"].get("n4EYdIoE"), 10,
               message="the image request reaching upstream")
    signalled = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    client.join(30)
    assert "error" not in outcome, outcome
    response, seconds = outcome["response"]
    assert_image(response, "MISS")
    returncode = server.popen.wait(graceful + MARGIN)
    assert time.monotonic() - signalled < graceful, "master waited out the graceful timeout"
    assert returncode == 0, server.log_text()[-2000:]
    assert "WORKER TIMEOUT" not in server.log_text()


# --------------------------------------------------------------------------- 8. readiness


def test_readiness_is_cheap_unlimited_and_names_its_checks(qcimage_server, upstream):
    server = start(qcimage_server, QCIMAGE_LOOKUP_RATE_LIMIT="1 per minute",
                   QCIMAGE_IMAGE_RATE_LIMIT="1 per minute")
    for _ in range(5):
        body = assert_ready(ready(server), "ready")
        assert body["checks"] == {"upstream_circuit": "closed", "imagemagick_policy": "ok"}
        live = requests.get(server.url + "/health", timeout=10)
        assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert upstream.stats()["total"] == 0, "a probe called upstream"
    assert not [r for r in log_records(server) if r.get("level") == "ERROR"]
