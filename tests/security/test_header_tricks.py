"""Upstream answers with crafted headers: every one is a clean JSON error, never a 500.

Upstream is mocked with ``responses``; the headers are the ones a hostile upstream (or
a broken proxy in between) can send. Values are Latin-1, as HTTP carries them.
"""

from __future__ import annotations

import itertools

import pytest

from qcimage import create_app
from tests.conftest import API_KEY, IMAGE_URL, PRODUCT_URL, photo_bytes
from tests.security.conftest import Case, check_error
from tests.security.test_hostile_images import environment
from tests.test_images import base, signed

_fresh_ids = (f"header{n}" for n in itertools.count())
BAD_LENGTH = Case(b"", 502, "upstream_error")
# "¹" and "²³" pass str.isdigit() but not int(); the rest are not plain decimal numbers.
MALFORMED_LENGTHS = ["¹", "²³", "-1", "1e3", "0x10", "+5", "5, 5", "5 5", ""]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = environment(tmp_path_factory.mktemp("headers"))
    return create_app({**env, "QCIMAGE_UPSTREAM_RETRIES": "0",
                       "QCIMAGE_BREAKER_FAIL_MAX": "1000"}).test_client()


@pytest.fixture(scope="module")
def photo():
    return photo_bytes(400, 300)


@pytest.mark.parametrize("length", MALFORMED_LENGTHS)
def test_malformed_content_length_on_an_image_is_502(client, upstream, photo, length):
    upstream.get(IMAGE_URL, body=photo, content_type="image/jpeg",
                 headers={"Content-Length": length})
    response = client.get(signed(base(url=next(_fresh_ids))))
    check_error(response.status_code, response.headers, response.get_data(), BAD_LENGTH)


@pytest.mark.parametrize("length", MALFORMED_LENGTHS)
def test_malformed_content_length_on_a_look_up_is_502(client, upstream, length):
    upstream.get(PRODUCT_URL, json={"data": {"image": "n4EYdIoE"}},
                 headers={"Content-Length": length})
    response = client.get("/api/qc-images", query_string={"id": next(_fresh_ids)},
                          headers={"X-API-Key": API_KEY})
    check_error(response.status_code, response.headers, response.get_data(), BAD_LENGTH)


@pytest.mark.parametrize("shift", [-1, 1], ids=["shorter", "longer"])
def test_body_that_disagrees_with_its_content_length_is_502(client, upstream, photo, shift):
    # Over a real socket a shorter Content-Length cuts the image (tests/e2e covers that);
    # whatever arrives, bytes that disagree with the declared length are never rendered.
    upstream.get(IMAGE_URL, body=photo, content_type="image/jpeg",
                 headers={"Content-Length": str(len(photo) + shift)})
    response = client.get(signed(base(url=next(_fresh_ids))))
    check_error(response.status_code, response.headers, response.get_data(), BAD_LENGTH)


def test_a_correct_content_length_is_accepted(client, upstream, photo):
    upstream.get(IMAGE_URL, body=photo, content_type="image/jpeg",
                 headers={"Content-Length": str(len(photo))})
    assert client.get(signed(base(url=next(_fresh_ids)))).status_code == 200


@pytest.mark.parametrize("retry_after", ["¹", "-5", "Thu, 99 Foo 2026", "1e9"])
def test_malformed_retry_after_on_an_upstream_error_is_502(tmp_path, upstream, retry_after):
    # Retries on: urllib3 reads Retry-After to decide how long to wait.
    client = create_app(environment(tmp_path)).test_client()
    upstream.get(IMAGE_URL, body=b"busy", status=503, headers={"Retry-After": retry_after})
    response = client.get(signed(base(url=next(_fresh_ids))))
    check_error(response.status_code, response.headers, response.get_data(), BAD_LENGTH)
