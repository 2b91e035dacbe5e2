"""Hostile clients and upstream answers against real gunicorn and the stand-in upstream.

A "direct client" connects to gunicorn from 127.0.0.2: on this box, but not one of the
proxy addresses gunicorn and qcimage trust by default (127.0.0.1 and ::1).
"""

from __future__ import annotations

import http.client
import json
import secrets

import pytest
import requests

from tests.security.conftest import Case, check_error
from tests.test_images import base, signed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]

STRANGER = "127.0.0.2"


def get_from(address: str, server, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET path from a connection whose source address is ``address``: (status, body)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30,
                                            source_address=(address, 0))
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_direct_client_cannot_spoof_forwarded_headers(qcimage_server):
    server = qcimage_server(workers=1, QCIMAGE_TRUSTED_PROXIES="1", QCIMAGE_FORCE_HTTPS="false",
                            QCIMAGE_IMAGE_RATE_LIMIT="2 per minute",
                            QCIMAGE_RATELIMIT_PER_WORKER="false")
    as_loopback = {"X-Forwarded-For": "127.0.0.1"}
    status, body = get_from(STRANGER, server, "/metrics", as_loopback)
    assert (status, json.loads(body)["error"]) == (403, "forbidden")
    # The proxy's word is taken: nginx says the client is loopback, and it is let in.
    assert get_from("127.0.0.1", server, "/metrics", as_loopback)[0] == 200
    # A new made-up address per request does not buy a new rate-limit budget.
    statuses = [get_from(STRANGER, server, "/api/image?url=abc",
                         {"X-Forwarded-For": f"198.51.100.{n}"})[0] for n in range(3)]
    assert statuses == [403, 403, 429], statuses


# The three shapes the attack pass found, each on an image URL of its own width.
PARTIAL = {"honest": ("jpeg cut short", "640"),
           "short": ("content-length shorter than the image", "720"),
           "none": ("body ends early without content-length", "800")}


def test_a_partial_source_is_502_never_cached_and_fetched_afresh(qcimage_server, upstream):
    key = secrets.token_urlsafe(32)
    server = qcimage_server(workers=1, QCIMAGE_SIGNING_KEYS=key)
    for fetches, (length, (shape, width)) in enumerate(PARTIAL.items()):
        path = signed(base(url="n4EYdIoE", width=width, format="png"), key=key)
        upstream.set_faults({"mode": "truncate", "keep_percent": 60, "length": length,
                             "paths": ["img"], "ids": ["n4EYdIoE"], "count": 1})
        first = requests.get(server.url + path, timeout=30)
        check_error(first.status_code, first.headers, first.content,
                    Case(b"", 502, "upstream_error"))
        # Upstream is whole again: the same URL is fetched afresh and rendered, not served
        # from any cache.
        second = requests.get(server.url + path, timeout=30)
        assert second.status_code == 200 and second.headers["X-Cache"] == "MISS", shape
        assert upstream.stats()["images"]["n4EYdIoE"] == 2 * (fetches + 1), shape


def test_only_the_canonical_image_url_is_served_by_gunicorn(qcimage_server):
    key = secrets.token_urlsafe(32)
    server = qcimage_server(workers=1, QCIMAGE_SIGNING_KEYS=key)
    canonical = signed(base(url="n4EYdIoE", width="480"), key=key)
    query = canonical.split("?", 1)[1]
    status, body = get_from("127.0.0.1", server, canonical, {})
    assert status == 200, body[:200]
    for path in (f"//api/image?{query}", f"/api/%69mage?{query}", f"{canonical}&",
                 canonical.replace("url=n", "url=%6E")):
        status, body = get_from("127.0.0.1", server, path, {})
        assert status == 400, (path, status, body[:200])
        assert canonical in json.loads(body)["message"], body
