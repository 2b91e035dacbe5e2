"""A product listing far more images than a page can show: the look-up stays bounded."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from qcimage import create_app
from qcimage.config import ConfigError, load_settings
from tests.conftest import API_KEY, PRODUCT_URL

HUGE = 150_000


def listing(count: int) -> dict:
    return {"data": {"qcGroups": [{"media": [{"image": f"img{n:07d}"} for n in range(count)]}]}}


@pytest.fixture(scope="module")
def huge_listing() -> bytes:
    # 150,000 ids is ~3.5 MB of JSON: under the 4 MiB product-body cap, so it is parsed.
    return json.dumps(listing(HUGE)).encode()


def look_up(client):
    return client.get("/api/qc-images", query_string={"id": "7494645791"},
                      headers={"X-API-Key": API_KEY})


def test_a_huge_listing_answers_the_first_200_images_and_says_it_was_cut(
        env, upstream, huge_listing):
    upstream.get(PRODUCT_URL, body=huge_listing, content_type="application/json")
    client = create_app(env).test_client()
    tracemalloc.start()
    try:
        response = look_up(client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200
    body = response.get_json()
    assert body["truncated"] is True and body["totalImages"] == 200
    assert [image["original"] for image in body["images"]] == [f"img{n:07d}" for n in range(200)]
    # 200 images of four signed links each: about 150 KB, where all of them made 92 MiB.
    assert len(response.get_data()) < 256 * 1024
    # Python allocations at the peak: parsing the listing, not 150,000 answers' worth.
    assert peak < 120 * 1024 * 1024, peak


def test_the_cap_is_configurable_and_a_listing_within_it_is_whole(env, upstream):
    upstream.get(PRODUCT_URL, json=listing(5))
    client = create_app({**env, "QCIMAGE_MAX_PRODUCT_IMAGES": "3"}).test_client()
    body = look_up(client).get_json()
    assert (body["totalImages"], body["truncated"]) == (3, True)
    within = create_app({**env, "QCIMAGE_MAX_PRODUCT_IMAGES": "5",
                         "QCIMAGE_CACHE_DIR": env["QCIMAGE_CACHE_DIR"] + "-2"}).test_client()
    body = look_up(within).get_json()
    assert (body["totalImages"], body["truncated"]) == (5, False)


@pytest.mark.parametrize("name, value, message", [
    ("QCIMAGE_MAX_PRODUCT_IMAGES", "0", "MAX_PRODUCT_IMAGES must be between 1 and 1000"),
    ("QCIMAGE_MAX_PRODUCT_IMAGES", "5000", "MAX_PRODUCT_IMAGES must be between 1 and 1000"),
    ("QCIMAGE_SRCSET_WIDTHS", ",".join(str(w) for w in range(100, 1000, 100)),
     "SRCSET_WIDTHS lists at most 8 widths"),
    ("QCIMAGE_SRCSET_WIDTHS", "¹⁰⁰", "SRCSET_WIDTHS entries must be integers 100-2000"),
])
def test_what_bounds_the_answer_is_itself_bounded(env, name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({**env, name: value})
