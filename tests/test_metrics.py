"""/metrics: what is exported and who may read it."""

from __future__ import annotations

import re

from tests.conftest import add_image, add_product


def sample(text: str, name: str, **labels) -> float:
    """The sum of the samples with these labels in Prometheus text format (0 when absent):
    labels left out (such as ``tenant``) are summed over."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(4))
    return total


def test_requests_are_counted_by_route_and_status(client, api_get, upstream):
    # method too: an earlier test's CORS preflights count as OPTIONS on the same route.
    before = sample(client.get("/metrics").get_data(as_text=True), "qcimage_http_requests_total",
                    route="/api/qc-images", method="GET", status="200")
    add_product(upstream)
    api_get(id="7494645791")
    client.get("/no/such/path")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "qcimage_http_requests_total", route="/api/qc-images", method="GET",
                  status="200") == before + 1
    assert sample(text, "qcimage_http_requests_total", route="unmatched", status="404") >= 1
    assert "/no/such/path" not in text
    assert sample(text, "qcimage_upstream_request_duration_seconds_count",
                  endpoint="product") >= 1


def test_render_cache_and_upstream_metrics(client, upstream, jpeg_source):
    from tests.test_images import base, signed

    add_image(upstream, jpeg_source)
    before = client.get("/metrics").get_data(as_text=True)
    url = signed(base(width="333"))
    client.get(url)
    client.get(url)
    after = client.get("/metrics").get_data(as_text=True)
    for result in ("hit", "miss"):
        assert sample(after, "qcimage_cache_requests_total", cache="render", result=result) == \
            sample(before, "qcimage_cache_requests_total", cache="render", result=result) + 1
    assert sample(after, "qcimage_render_duration_seconds_count", format="webp") == \
        sample(before, "qcimage_render_duration_seconds_count", format="webp") + 1


def test_metrics_are_refused_outside_the_allow_list(client):
    response = client.get("/metrics", environ_overrides={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


def test_metrics_allow_list_is_configurable(env):
    from qcimage import create_app

    env["QCIMAGE_METRICS_ALLOW"] = "10.0.0.0/8"
    client = create_app(env).test_client()
    assert client.get("/metrics", environ_overrides={"REMOTE_ADDR": "10.1.2.3"}
                      ).status_code == 200
    assert client.get("/metrics").status_code == 403
