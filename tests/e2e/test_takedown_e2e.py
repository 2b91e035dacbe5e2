"""Takedown end to end (DESIGN §7): the real CLI, gunicorn workers, Redis and the shipped nginx.

The operator runs ``qcimage takedown add`` beside the service, with its environment. Every
worker then answers 451 within QCIMAGE_TAKEDOWN_REFRESH, and nginx once its copy expires
(QCIMAGE_SHARED_CACHE_TTL, made short here instead of waiting minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis
import requests

from tests.e2e.test_main_path import look_up
from tools import harness

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]
QCIMAGE = os.path.join(os.path.dirname(sys.executable), "qcimage")


def takedown(server, *args):
    """``qcimage takedown …`` as the operator runs it: the service's environment, no app."""
    result = subprocess.run([QCIMAGE, "takedown", *args], env=server.env, cwd=server.cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def answers_by_worker(server, request_ids):
    """{worker pid: [statuses]} of the requests with these ids, from the JSON access log."""
    seen: dict[int, list[int]] = {}
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if (record.get("logger") == "qcimage.access"
                    and record.get("request_id") in request_ids):
                seen.setdefault(record["pid"], []).append(record["status"])
    return seen


def test_a_takedown_reaches_both_workers_within_the_refresh_and_purges(qcimage_server,
                                                                       upstream):
    refresh = 1.0
    server = qcimage_server(workers=2, QCIMAGE_TAKEDOWN_REFRESH=refresh)
    image = look_up(server.url, server.api_key)["images"][0]
    image_id, url = image["original"], image["watermarked"]
    assert requests.get(url, timeout=60).status_code == 200

    took_down_at = time.monotonic()
    takedown(server, "add", image_id, "--reason", "e2e privacy request")
    # The contract is "within the refresh": from then on no worker may serve it.
    time.sleep(max(0.0, took_down_at + refresh - time.monotonic()))
    request_ids, statuses = set(), []
    # Fresh connections spread over the workers; go on until both have answered.
    for attempt in range(200):
        request_id = f"takedown-{attempt}"
        request_ids.add(request_id)
        response = requests.get(url, timeout=60, headers={"Connection": "close",
                                                          "X-Request-ID": request_id})
        statuses.append(response.status_code)
        assert response.json()["error"] == "taken_down"
        if attempt % 10 == 9 and len(answers_by_worker(server, request_ids)) == 2:
            break
    by_worker = answers_by_worker(server, request_ids)
    assert len(by_worker) == 2, "one worker answered everything; cannot test both"
    assert set(statuses) == {451} and all(set(s) == {451} for s in by_worker.values())
    body = look_up_raw(server)
    assert image_id not in [entry["original"] for entry in body["images"]]

    upstream.reset_stats()
    takedown(server, "remove", image_id)
    time.sleep(refresh)
    again = requests.get(url, timeout=60)
    # Purged at the takedown: rendered afresh from upstream, not served from the cache.
    assert again.status_code == 200 and again.headers["X-Cache"] == "MISS"
    assert upstream.stats()["images"].get(image_id) == 1


def look_up_raw(server):
    response = requests.get(f"{server.url}/api/qc-images",
                            params={"id": "7494645791", "storePlatform": "WEIDIAN"},
                            headers={"X-API-Key": server.api_key}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_nginx_revalidates_its_copy_and_keeps_the_451_in_its_place(qcimage_server, nginx_proxy,
                                                                   redis_server):
    https_port = harness.free_port()
    shared = redis_server()
    server = qcimage_server(workers=1, public_url=f"https://127.0.0.1:{https_port}",
                            QCIMAGE_TRUSTED_PROXIES=1, QCIMAGE_REDIS_URL=shared.url,
                            QCIMAGE_SHARED_CACHE_TTL=1, QCIMAGE_TAKEDOWN_REFRESH=0.5)
    nginx = nginx_proxy(int(server.url.rsplit(":", 1)[1]), https_port=https_port)
    image = look_up(nginx.url, server.api_key, verify=nginx.ca_bundle)["images"][0]

    def get():
        return requests.get(image["watermarked"], timeout=60, verify=nginx.ca_bundle)

    first, second = get(), get()
    assert first.status_code == 200 and first.headers["X-Cache-Status"] == "MISS"
    assert second.headers["X-Cache-Status"] == "HIT"
    # Browsers keep a day (the link's expiry permitting); nginx keeps its own lifetime.
    assert first.headers["Cache-Control"].endswith(", immutable")
    assert "X-Accel-Expires" not in first.headers

    takedown(server, "add", image["original"])
    seen = []
    for _ in range(100):
        response = get()
        seen.append((response.status_code, response.headers.get("X-Cache-Status")))
        if response.status_code == 451:
            break
        time.sleep(0.1)
    assert seen[-1] == (451, "EXPIRED"), seen
    assert all(status == 200 for status, _ in seen[:-1]), seen
    assert response.json()["error"] == "taken_down"

    # Redis restarts empty (the sample config keeps nothing on disk): the worker puts the
    # list back, and never serves the image meanwhile.
    shared.stop()
    shared.start()
    direct = image["watermarked"].replace(nginx.url, server.url)
    for _ in range(100):
        # As nginx would send it: over HTTPS (production redirects plain HTTP).
        assert requests.get(direct, timeout=60, allow_redirects=False,
                            headers={"X-Forwarded-Proto": "https"}).status_code == 451
        if redis.Redis.from_url(shared.url).hget("qcimage:takedowns", image["original"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the takedown list was not put back into Redis")

    # The 451 replaced nginx's copy: even with the app gone, the image is not served stale.
    server.stop()
    gone = get()
    assert gone.status_code == 451 and gone.json()["error"] == "taken_down"
