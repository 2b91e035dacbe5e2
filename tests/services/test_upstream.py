"""DoppelClient against a mocked upstream: ids, errors, limits, no redirects."""

from __future__ import annotations

import pytest
import requests
import responses

from qcimage.services.upstream import (DoppelClient, SourceTooLarge, UpstreamError,
                                       UpstreamNotFound, UpstreamTimeout, collect_image_ids)

BASE = "https://upstream.test"


@pytest.fixture
def client():
    return DoppelClient(BASE, max_image_bytes=1000, retries=0)


def test_collects_every_image_string_in_document_order():
    data = {"a": [{"image": "one"}, {"x": {"image": "two", "more": [{"image": "one"}]}}],
            "image": "zero", "b": {"image": ["not", "a", "string"], "c": {"image": "three"}}}
    assert collect_image_ids(data) == ["zero", "one", "two", "three"]


def test_skips_ids_that_are_not_safe():
    assert collect_image_ids([{"image": "../etc"}, {"image": "ok_1"}, {"image": "a b"}]) == ["ok_1"]


@responses.activate
def test_product_request_has_the_right_query(client):
    responses.get(BASE + "/api/v1/products/qcMedia", json={"data": {"image": "abc"}})
    assert client.product_images("123", "TAOBAO") == ["abc"]
    assert responses.calls[0].request.url.endswith("qcMedia?id=123&storePlatform=TAOBAO")


@responses.activate
def test_image_request_encodes_parameters(client):
    responses.get(BASE + "/img", body=b"x" * 10, content_type="image/jpeg")
    source = client.fetch_image("cR-eVGrQ", width=960, fmt="jpeg", quality=95)
    assert source.data == b"x" * 10
    assert responses.calls[0].request.url == (
        BASE + "/img?url=cR-eVGrQ&quality=95&format=jpeg&width=960")


def test_image_ids_are_checked_before_building_urls(client):
    with pytest.raises(ValueError):
        client.fetch_image("a/../b", width=960, fmt="jpeg", quality=95)


@responses.activate
@pytest.mark.parametrize("headers", [{}, {"Content-Length": "5"}])
def test_body_over_the_limit_is_refused_while_streaming(client, headers):
    responses.get(BASE + "/img", body=b"x" * 5000, content_type="image/png",
                  auto_calculate_content_length=not headers)
    with pytest.raises(SourceTooLarge):
        client.fetch_image("abc", width=960, fmt="jpeg", quality=95)


@responses.activate
def test_declared_length_over_the_limit_is_refused_before_reading(client):
    responses.get(BASE + "/img", body=b"x" * 5000, content_type="image/png")
    with pytest.raises(SourceTooLarge):
        client.fetch_image("abc", width=960, fmt="jpeg", quality=95)


@responses.activate
@pytest.mark.parametrize("status, error", [(404, UpstreamNotFound), (500, UpstreamError),
                                           (301, UpstreamError), (204, UpstreamError)])
def test_statuses_map_to_service_errors(client, status, error):
    responses.get(BASE + "/img", status=status, headers={"Location": "http://203.0.113.1/"})
    with pytest.raises(error):
        client.fetch_image("abc", width=960, fmt="jpeg", quality=95)
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("exc, error", [(requests.ConnectTimeout(), UpstreamTimeout),
                                        (requests.ReadTimeout(), UpstreamTimeout),
                                        (requests.ConnectionError(), UpstreamError)])
def test_transport_failures_map_to_service_errors(client, exc, error):
    responses.get(BASE + "/api/v1/products/qcMedia", body=exc)
    with pytest.raises(error):
        client.product_images("1", "WEIDIAN")


@responses.activate
def test_garbage_answers_count_as_failures_for_the_breaker():
    from qcimage.services.upstream import UpstreamUnavailable, make_breaker

    client = DoppelClient(BASE, retries=0, breaker=make_breaker(fail_max=2, reset_timeout=60))
    responses.get(BASE + "/api/v1/products/qcMedia", body="<html>login</html>")
    for _ in range(2):
        with pytest.raises(UpstreamError):
            client.product_images("1", "WEIDIAN")
    with pytest.raises(UpstreamUnavailable):
        client.product_images("1", "WEIDIAN")
    assert len(responses.calls) == 2
