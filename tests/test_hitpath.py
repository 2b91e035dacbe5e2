"""The hit path (qcimage/hitpath.py): cache hits and 304s answered ahead of Flask, with the
response Flask would give, the same rate-limit bucket, the same access line and metrics;
everything else left to Flask."""

from __future__ import annotations

import json
import logging
import time
import types

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from werkzeug.test import Client
from werkzeug.wrappers import Response

from qcimage import create_app, images
from qcimage.hitpath import HitPath
from tests.conftest import API_KEY, add_image, add_product
from tests.test_images import base, signed
from tests.test_metrics import sample

# Differ from one request to the next whoever answers.
_PER_REQUEST = {"X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                "X-RateLimit-Retry-After", "Date"}


@pytest.fixture(autouse=True)
def frozen_max_age(monkeypatch):
    """max-age counts down to the link's expiry by the second: both paths must read one
    clock, or a pair of requests straddling a second differs by one."""
    now = time.time()
    monkeypatch.setattr(images, "time", types.SimpleNamespace(time=lambda: now))


def spy(app) -> tuple[HitPath, list[str]]:
    """The app's hit path, and a list that gets the path of each request Flask answers."""
    hit_path = app.wsgi_app if isinstance(app.wsgi_app, HitPath) else app.wsgi_app.app
    assert isinstance(hit_path, HitPath)
    flask_app, answered = hit_path.next, []

    def counting(environ, start_response):
        answered.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    hit_path.next = counting
    return hit_path, answered


@pytest.fixture
def cached(env, upstream, jpeg_source):
    """(app, client, its Flask-only client, Flask's answers, url of a cached render)."""
    def make(headers=None, **params):
        app = create_app(env)
        add_image(upstream, jpeg_source)
        hit_path, answered = spy(app)
        client = app.test_client()
        url = signed(base(**params))
        # Rendered by Flask, for the format these headers negotiate.
        assert client.get(url, headers=headers).headers["X-Cache"] == "MISS"
        answered.clear()
        return app, client, FlaskOnly(hit_path.next), answered, url
    return make


class FlaskOnly(Client):
    """A client of the Flask app behind the hit path, from the test client's address."""

    def __init__(self, wsgi_app):
        super().__init__(wsgi_app, Response)

    def open(self, *args, **kwargs):
        kwargs.setdefault("environ_overrides", {"REMOTE_ADDR": "127.0.0.1"})
        return super().open(*args, **kwargs)


def headers_of(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in _PER_REQUEST}


@pytest.mark.parametrize("method, params, headers", [
    ("GET", {}, {}),
    ("HEAD", {}, {}),
    ("GET", {"expires": None}, {}),
    ("GET", {"format": "auto"}, {"Accept": "image/avif,image/webp,*/*;q=0.8"}),
    ("GET", {}, {"X-Forwarded-Proto": "https"}),  # Talisman's HSTS
    ("GET", {}, {"User-Agent": "Mozilla/5.0", "Referer": "https://shop.example/p/1"}),
])
def test_a_hit_is_answered_without_flask_exactly_as_flask_answers_it(cached, method, params,
                                                                     headers):
    _, client, flask_only, answered, url = cached(headers, **params)
    lean = client.open(url, method=method, headers=headers)
    assert answered == []
    full = flask_only.open(url, method=method, headers=headers)
    assert answered == ["/api/image"]
    assert (lean.status, lean.get_data()) == (full.status, full.get_data())
    assert lean.headers["X-Cache"] == "HIT" and headers_of(lean) == headers_of(full)
    if method == "HEAD":
        assert lean.get_data() == b"" and int(lean.headers["Content-Length"]) > 0
    # One bucket for both paths: Flask's answer, one request later, has one less left.
    assert int(full.headers["X-RateLimit-Remaining"]) == int(
        lean.headers["X-RateLimit-Remaining"]) - 1


def test_a_304_is_answered_without_flask_exactly_as_flask_answers_it(cached):
    _, client, flask_only, answered, url = cached()
    etag = client.get(url).headers["ETag"]
    answered.clear()
    for condition in (etag, "*", f'W/{etag}, "other"'):
        lean = client.get(url, headers={"If-None-Match": condition})
        full = flask_only.get(url, headers={"If-None-Match": condition})
        assert lean.status_code == full.status_code == 304
        assert headers_of(lean) == headers_of(full) and lean.get_data() == b""
    assert answered == ["/api/image"] * 3  # the Flask-only client's three


def test_every_other_request_is_left_to_flask(cached, upstream, jpeg_source):
    app, client, _, answered, url = cached()
    wrong_sig = url[:-4] + "AAAA"
    cases = [
        (signed(base(width="960")), {}, 200),  # a miss: Flask renders
        (wrong_sig, {}, 403),
        (url.replace("&", "&amp;"), {}, 400),
        (url + "&x=1", {}, 400),
        (url, {"Origin": "https://elsewhere.example"}, 200),  # CORS is Flask-CORS's
    ]
    for target, headers, status in cases:
        answered.clear()
        response = client.get(target, headers=headers)
        assert (response.status_code, answered) == (status, ["/api/image"]), target
        assert b"Traceback" not in response.get_data()


def test_the_rate_limit_counts_each_request_once_on_either_path(env, upstream, jpeg_source):
    app = create_app({**env, "QCIMAGE_IMAGE_RATE_LIMIT": "3 per minute"})
    add_image(upstream, jpeg_source)
    _, answered = spy(app)
    client = app.test_client()
    url = signed(base())
    remaining = [client.get(url).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    assert answered == ["/api/image"]  # the first, a miss; the two hits went past Flask
    refused = client.get(url)
    assert refused.status_code == 429 and refused.get_json()["error"] == "rate_limited"
    assert answered == ["/api/image"] * 2  # Flask says why
    other = client.get(url, environ_overrides={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 200 and other.headers["X-Cache"] == "HIT"


def test_a_hit_writes_one_access_line_and_counts_in_the_metrics(cached):
    app, client, _, answered, url = cached()
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append
    access = logging.getLogger("qcimage.access")
    before = client.get("/metrics").get_data(as_text=True)
    answered.clear()
    access.addHandler(handler)
    try:
        response = client.get(url, headers={"X-Request-ID": "hit-1", "User-Agent": "ua/1"})
    finally:
        access.removeHandler(handler)
    assert answered == []
    assert len(lines) == 1
    line = lines[0]
    assert (line.request_id, line.route, line.status, line.cache, line.tenant) == (
        "hit-1", "/api/image", 200, "hit", "default")
    assert line.bytes == len(response.get_data()) and line.user_agent == "ua/1"
    assert "sig=" not in json.dumps(line.__dict__, default=str)
    after = client.get("/metrics").get_data(as_text=True)
    counted = (("qcimage_http_requests_total", {"route": "/api/image", "status": "200"}),
               ("qcimage_cache_requests_total", {"cache": "render", "result": "hit"}))
    for name, labels in counted:
        assert sample(after, name, **labels) - sample(before, name, **labels) == 1, name


@pytest.mark.parametrize("fault, logged", [
    (RuntimeError("a bug"), True),
    (RedisConnectionError("Redis is down"), False),  # Flask meets it and says so once
    (OSError("the cache folder went away"), False),
])
def test_a_fault_in_the_hit_path_costs_speed_not_the_answer(cached, monkeypatch, fault,
                                                            logged):
    app, client, _, answered, url = cached()

    def broken(*args):
        raise fault

    monkeypatch.setattr(spy(app)[0], "_take_limit", broken)
    answered = spy(app)[1]
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append
    logging.getLogger("qcimage.hitpath").addHandler(handler)
    try:
        response = client.get(url)
    finally:
        logging.getLogger("qcimage.hitpath").removeHandler(handler)
    assert response.status_code == 200 and answered == ["/api/image"]
    assert bool(lines) is logged


def test_a_miss_the_full_queue_refuses_is_refused_without_flask_as_flask_refuses_it(
        env, upstream, jpeg_source):
    app = create_app({**env, "QCIMAGE_RENDER_QUEUE": "1"})
    add_image(upstream, jpeg_source)
    hit_path, answered = spy(app)
    client, flask_only = app.test_client(), FlaskOnly(hit_path.next)
    miss = signed(base(width="960"))
    with app.extensions["qcimage"].renderer.slots.admit():  # the one place is taken
        lean = client.get(miss, headers={"X-Request-ID": "shed-1"})
        assert answered == []
        full = flask_only.get(miss, headers={"X-Request-ID": "shed-1"})
        assert answered == ["/api/image"]
    assert lean.status_code == full.status_code == 503
    assert lean.get_json() == full.get_json()
    assert lean.get_json()["error"] == "overloaded" and lean.get_json()["requestId"] == "shed-1"
    assert headers_of(lean) == headers_of(full)
    assert lean.headers["Retry-After"] == "1" and lean.headers["Cache-Control"] == "no-store"
    assert len(upstream.calls) == 0
    # Room again: the miss goes to Flask and is rendered.
    assert client.get(miss).headers["X-Cache"] == "MISS" and answered[-1] == "/api/image"


@pytest.fixture
def warm_lookup(env, upstream):
    """(app, client, its Flask-only client, Flask's answers, look-up path): cache warm."""
    def make(**extra_env):
        app = create_app({**env, **extra_env})
        add_product(upstream, ids=("n4EYdIoE", "cR-eVGrQ"))
        hit_path, answered = spy(app)
        client = app.test_client()
        path = "/api/qc-images?id=7494645791&storePlatform=WEIDIAN&width=480"
        assert client.get(path, headers={"X-API-Key": API_KEY}).status_code == 200
        assert answered == ["/api/qc-images"]  # the miss: Flask asked upstream
        answered.clear()
        return app, client, FlaskOnly(hit_path.next), answered, path
    return make


@pytest.mark.parametrize("method, headers", [
    ("GET", {"X-API-Key": API_KEY}),
    ("GET", {"Authorization": f"Bearer {API_KEY}", "X-Forwarded-Proto": "https"}),
    ("HEAD", {"X-API-Key": API_KEY}),
])
def test_a_cached_lookup_is_answered_without_flask_exactly_as_flask_answers_it(
        warm_lookup, upstream, method, headers):
    _, client, flask_only, answered, path = warm_lookup()
    lean = client.open(path, method=method, headers=headers)
    assert answered == []
    full = flask_only.open(path, method=method, headers=headers)
    assert answered == ["/api/qc-images"]
    assert (lean.status_code, lean.get_data()) == (full.status_code, full.get_data())
    assert headers_of(lean) == headers_of(full)
    assert int(full.headers["X-RateLimit-Remaining"]) == int(
        lean.headers["X-RateLimit-Remaining"]) - 1
    if method == "GET":
        assert [i["original"] for i in lean.get_json()["images"]] == ["n4EYdIoE", "cR-eVGrQ"]
    assert len(upstream.calls) == 1  # the first look-up's only


def test_lookups_the_cache_cannot_answer_or_that_fail_are_left_to_flask(warm_lookup, upstream):
    app, client, _, answered, path = warm_lookup()
    add_product(upstream, product_id="111", ids=("L1ghTw9Q",))
    cases = [
        (path, {}, 401),
        (path, {"X-API-Key": "wrong-key-0123456789"}, 403),
        (path + "&apikey=x", {"X-API-Key": API_KEY}, 400),
        (path + "&width=7", {"X-API-Key": API_KEY}, 400),
        (path, {"X-API-Key": API_KEY, "Origin": "https://elsewhere.example"}, 200),
        ("/api/qc-images?id=111", {"X-API-Key": API_KEY}, 200),  # not cached yet
    ]
    for target, headers, status in cases:
        answered.clear()
        response = client.get(target, headers=headers)
        assert (response.status_code, answered) == (status, ["/api/qc-images"]), target


def test_a_cached_lookup_counts_in_the_lookup_bucket_once(warm_lookup):
    app, client, _, answered, path = warm_lookup(QCIMAGE_LOOKUP_RATE_LIMIT="3 per minute")
    remaining = [client.get(path, headers={"X-API-Key": API_KEY}).headers["X-RateLimit-Remaining"]
                 for _ in range(2)]
    assert remaining == ["1", "0"] and answered == []
    refused = client.get(path, headers={"X-API-Key": API_KEY})
    assert refused.status_code == 429 and answered == ["/api/qc-images"]


def test_a_taken_down_image_leaves_a_cached_lookup_at_once(warm_lookup, monkeypatch):
    app, client, _, answered, path = warm_lookup()
    takedowns = app.extensions["qcimage"].takedowns
    monkeypatch.setattr(takedowns, "current", lambda: frozenset({"n4EYdIoE"}))
    body = client.get(path, headers={"X-API-Key": API_KEY}).get_json()
    assert [i["original"] for i in body["images"]] == ["cR-eVGrQ"] and answered == []
