"""Render once, serve many, across real gunicorn workers (and across boxes through Redis)."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.e2e.test_main_path import look_up

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]


def concurrent_get(url: str, n: int) -> list[requests.Response]:
    barrier = threading.Barrier(n)
    results: list[requests.Response] = [None] * n

    def fetch(index: int) -> None:
        barrier.wait()
        results[index] = requests.get(url, timeout=60, headers={"Connection": "close"})

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def image_fetches(upstream, image_id: str) -> int:
    return upstream.stats()["images"].get(image_id, 0)


def test_concurrent_identical_misses_fetch_and_render_once(qcimage_server, upstream):
    server = qcimage_server(workers=2)
    image = look_up(server.url, server.api_key)["images"][0]
    url = image["watermarked"]
    upstream.reset_stats()
    responses = concurrent_get(url, 16)
    assert all(r.status_code == 200 for r in responses)
    assert len({r.content for r in responses}) == 1
    assert [r.headers["X-Cache"] for r in responses].count("MISS") == 1
    assert image_fetches(upstream, image["original"]) == 1


def test_304_and_hits_cost_no_upstream_call(qcimage_server, upstream):
    server = qcimage_server(workers=2)
    image = look_up(server.url, server.api_key)["images"][1]
    first = requests.get(image["watermarked"], timeout=60)
    upstream.reset_stats()
    for _ in range(6):
        hit = requests.get(image["watermarked"], timeout=60, headers={"Connection": "close"})
        assert hit.headers["X-Cache"] == "HIT" and hit.content == first.content
        revalidated = requests.get(image["watermarked"], timeout=60,
                                   headers={"If-None-Match": first.headers["ETag"]})
        assert revalidated.status_code == 304
    assert upstream.stats()["images"] == {}


def test_renders_are_shared_between_boxes_through_redis(qcimage_server, upstream,
                                                        redis_server):
    redis_url = redis_server().url
    a = qcimage_server(workers=1, QCIMAGE_REDIS_URL=redis_url)
    b = qcimage_server(workers=1, QCIMAGE_REDIS_URL=redis_url,
                       QCIMAGE_SIGNING_KEYS=a.env["QCIMAGE_SIGNING_KEYS"])
    image = look_up(a.url, a.api_key)["images"][0]
    upstream.reset_stats()
    from_a = requests.get(image["watermarked"], timeout=60)
    from_b = requests.get(image["watermarked"].replace(a.url, b.url), timeout=60)
    assert from_a.headers["X-Cache"] == "MISS" and from_b.headers["X-Cache"] == "HIT"
    assert from_a.content == from_b.content
    assert image_fetches(upstream, image["original"]) == 1
