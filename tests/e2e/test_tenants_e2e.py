"""Three tenants under real gunicorn: look-ups and images for each, and HUP under load."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import threading
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from tests.e2e.test_main_path import look_up

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]

TENANTS = {"shop-a": ("SHOP-A", "north_west"), "shop-b": ("BRAND-B", "south_east"),
           "shop-c": ("C-STORE", "center")}


# These tests study links, marks and reloads, not limits (tests/test_tenant_requests.py
# does): a load loop must not meet the seed limit of 100 look-ups while a slow HUP runs.
ROOMY_LIMITS = 'lookup_rate_limit = "100000 per hour"\nimage_rate_limit = "100000 per hour"\n'


def tenants_toml(keys: dict[str, str], texts: dict[str, str]) -> str:
    return "".join(
        f'[tenants.{name}]\napi_keys = ["{hashlib.sha256(keys[name].encode()).hexdigest()}"]\n'
        f'{ROOMY_LIMITS}'
        f'watermark = {{ text = "{texts[name]}", position = "{position}" }}\n\n'
        for name, (_, position) in TENANTS.items())


@pytest.fixture
def tenants(tmp_path, qcimage_server):
    """gunicorn (2 workers) serving three tenants; ``rewrite(**texts)`` changes their marks."""
    keys = {name: secrets.token_urlsafe(24) for name in TENANTS}
    path = tmp_path / "tenants.toml"
    texts = {name: text for name, (text, _) in TENANTS.items()}
    path.write_text(tenants_toml(keys, texts))
    server = qcimage_server(workers=2, QCIMAGE_API_KEYS="", QCIMAGE_TENANTS_FILE=path)

    def rewrite(text: str) -> None:
        path.write_text(text)

    server.keys, server.rewrite, server.texts = keys, rewrite, texts
    return server


def hup(server) -> None:
    """Send HUP and wait until every worker is a new one (the old ones finish and exit)."""
    old = set(server.worker_pids())
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while True:
        now = set(server.worker_pids())
        if len(now) == 2 and not now & old:
            return
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)


def first_images(server) -> dict[str, dict]:
    return {name: look_up(server.url, key)["images"][0] for name, key in server.keys.items()}


class Load:
    """Look-ups and image requests for every tenant from a few threads, recording failures."""

    def __init__(self, server, images: dict[str, dict]):
        self.server, self.images = server, images
        self.stop, self.statuses, self.errors = threading.Event(), [], []
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(3)]

    def run(self, n: int) -> None:
        names = list(self.server.keys)
        i = 0
        while not self.stop.is_set():
            name = names[(i + n) % len(names)]
            try:
                if i % 2:
                    response = requests.get(self.images[name]["watermarked"], timeout=60,
                                            headers={"Connection": "close"})
                else:
                    response = requests.get(
                        f"{self.server.url}/api/qc-images",
                        params={"id": "7494645791", "storePlatform": "WEIDIAN"},
                        headers={"X-API-Key": self.server.keys[name]}, timeout=60)
                self.statuses.append(response.status_code)
            except requests.RequestException as error:
                self.errors.append(repr(error))
            i += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_three_tenants_each_get_their_own_links_and_images(tenants):
    images = first_images(tenants)
    assert {name: dict(parse_qsl(urlsplit(image["watermarked"]).query))["t"]
            for name, image in images.items()} == {name: name for name in TENANTS}
    bodies = {name: requests.get(image["watermarked"], timeout=60)
              for name, image in images.items()}
    assert all(r.status_code == 200 for r in bodies.values())
    assert len({r.content for r in bodies.values()}) == 3
    assert len({r.headers["ETag"] for r in bodies.values()}) == 3


def test_hup_with_a_changed_file_under_load_fails_no_request(tenants):
    images = first_images(tenants)
    before = {name: requests.get(image["watermarked"], timeout=60)
              for name, image in images.items()}
    with Load(tenants, images) as load:
        while len(load.statuses) < 10:
            time.sleep(0.05)
        tenants.rewrite(tenants_toml(tenants.keys, {**tenants.texts, "shop-a": "SHOP-A 2"}))
        hup(tenants)
        served = len(load.statuses)
        while len(load.statuses) < served + 10:
            time.sleep(0.05)
    assert load.errors == [] and set(load.statuses) == {200}, (load.errors, load.statuses)
    after = {name: requests.get(image["watermarked"], timeout=60)
             for name, image in images.items()}
    assert after["shop-a"].headers["ETag"] != before["shop-a"].headers["ETag"]
    assert after["shop-a"].content != before["shop-a"].content
    for name in ("shop-b", "shop-c"):
        assert after[name].headers["ETag"] == before[name].headers["ETag"]
        assert after[name].content == before[name].content
        assert after[name].headers["X-Cache"] == "HIT"


def test_hup_with_a_broken_file_keeps_serving_the_last_good_one(tenants):
    images = first_images(tenants)
    before = {name: requests.get(image["watermarked"], timeout=60).headers["ETag"]
              for name, image in images.items()}
    tenants.rewrite(tenants_toml(tenants.keys, tenants.texts).replace(
        'position = "center"', 'position = "middle"'))
    hup(tenants)
    assert ("tenants file refused on reload; workers keep the previous one: "
            in tenants.log_text())
    assert "tenant 'shop-c', field 'watermark.position'" in tenants.log_text()
    after = {name: requests.get(image["watermarked"], timeout=60)
             for name, image in first_images(tenants).items()}
    assert {name: r.status_code for name, r in after.items()} == {n: 200 for n in TENANTS}
    assert {name: r.headers["ETag"] for name, r in after.items()} == before


def test_three_tenants_showing_one_uncached_image_cost_one_fetch_and_three_renders(tenants,
                                                                                   upstream):
    """QCIMAGE_SOURCE_CACHE_TTL / _MAX_BYTES keep fetched sources in the shared store."""
    images = first_images(tenants)
    assert len({image["original"] for image in images.values()}) == 1
    upstream.reset_stats()
    barrier = threading.Barrier(len(images))
    results = {}

    def fetch(name: str) -> None:
        barrier.wait()
        results[name] = requests.get(images[name]["watermarked"], timeout=60,
                                     headers={"Connection": "close"})

    threads = [threading.Thread(target=fetch, args=(name,)) for name in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {name: r.status_code for name, r in results.items()} == {n: 200 for n in TENANTS}
    assert [r.headers["X-Cache"] for r in results.values()] == ["MISS"] * 3  # 3 renders
    assert len({r.content for r in results.values()}) == 3
    assert upstream.stats()["images"] == {images["shop-a"]["original"]: 1}  # 1 fetch
    # Not only concurrent ones: the fetched source is kept a while for the next brand.
    second = {name: look_up(tenants.url, key)["images"][1] for name, key in tenants.keys.items()}
    upstream.reset_stats()
    for name in TENANTS:
        response = requests.get(second[name]["watermarked"], timeout=60)
        assert response.status_code == 200 and response.headers["X-Cache"] == "MISS"
    assert upstream.stats()["images"] == {second["shop-a"]["original"]: 1}
