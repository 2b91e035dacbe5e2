"""Contract tests for GET /api/qc-images."""

from __future__ import annotations

import io
import time
from urllib.parse import unquote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qcimage import create_app
from qcimage.services import cache
from tests.conftest import (API_KEY, OTHER_KEY, PRODUCT_URL, PUBLIC, add_image, add_product,
                            key_line, photo_bytes, query)


def test_lookup_returns_signed_links_in_upstream_order_without_repeats(api_get, upstream):
    add_product(upstream, data={"qcGroups": [
        {"media": [{"image": "n4EYdIoE"}, {"image": "cR-eVGrQ"}]},
        {"media": [{"image": "n4EYdIoE"}, {"nested": {"deeper": [{"image": "Zz_9-aaB"}]}}]},
        {"image": None, "note": {"image": 42}},
    ]})
    response = api_get(id="7494645791")
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    assert body["productId"] == "7494645791"
    assert body["storePlatform"] == "WEIDIAN"
    assert body["totalImages"] == 3
    assert body["truncated"] is False
    assert [i["original"] for i in body["images"]] == ["n4EYdIoE", "cR-eVGrQ", "Zz_9-aaB"]
    first = body["images"][0]
    assert first["watermarked"].startswith(PUBLIC + "/api/image?")
    params = query(first["watermarked"])
    assert params["url"] == "n4EYdIoE"
    assert (params["width"], params["quality"], params["format"]) == ("960", "80", "webp")
    assert params["sig"] and params["expires"].isdigit()


def test_lookup_links_use_public_url_not_host_header(api_get, upstream):
    add_product(upstream)
    response = api_get(id="7494645791", headers={"Host": "evil.example", "X-Forwarded-Host":
                                                 "evil.example"})
    assert "evil" not in response.get_data(as_text=True)
    assert response.get_json()["images"][0]["watermarked"].startswith(PUBLIC)


def test_srcset_lists_each_configured_width(api_get, upstream):
    add_product(upstream)
    image = api_get(id="7494645791", quality="70", format="png").get_json()["images"][0]
    candidates = [c.strip().rsplit(" ", 1) for c in image["srcset"].split(",")]
    assert [w for _, w in candidates] == ["480w", "960w", "1440w"]
    for url, descriptor in candidates:
        params = query(url)
        assert params["width"] + "w" == descriptor
        assert (params["quality"], params["format"]) == ("70", "png")


def test_parameters_are_passed_to_links(api_get, upstream):
    add_product(upstream, platform="TAOBAO", product_id="abc_DEF-1")
    body = api_get(id="abc_DEF-1", storePlatform="taobao", width="1200", quality="55",
                   format="jpg").get_json()
    assert body["storePlatform"] == "TAOBAO"
    params = query(body["images"][0]["watermarked"])
    assert (params["width"], params["quality"], params["format"]) == ("1200", "55", "jpeg")


@pytest.mark.parametrize("platform", ["weidian", "Taobao", "1688", "tmall", "WEIDIAN"])
def test_platform_is_case_insensitive(api_get, upstream, platform):
    add_product(upstream, platform=platform.upper())
    response = api_get(id="7494645791", storePlatform=platform)
    assert response.status_code == 200
    assert response.get_json()["storePlatform"] == platform.upper()


@pytest.mark.parametrize("params, field", [
    ({}, "id"),
    ({"id": ""}, "id"),
    ({"id": "x" * 51}, "id"),
    ({"id": "abc/def"}, "id"),
    ({"id": "abc def"}, "id"),
    ({"id": "1", "storePlatform": "AMAZON"}, "storePlatform"),
    ({"id": "1", "width": "99"}, "width"),
    ({"id": "1", "width": "2001"}, "width"),
    ({"id": "1", "width": "abc"}, "width"),
    ({"id": "1", "width": "0960"}, "width"),
    ({"id": "1", "width": "960.0"}, "width"),
    ({"id": "1", "quality": "0"}, "quality"),
    ({"id": "1", "quality": "101"}, "quality"),
    ({"id": "1", "format": "gif"}, "format"),
    ({"id": "1", "colour": "red"}, "colour"),
])
def test_invalid_parameters_are_400_with_details(api_get, upstream, params, field):
    response = api_get(**params)
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False
    assert body["error"] == "validation_failed"
    assert field in body["details"]
    assert body["message"].startswith(field)
    assert body["requestId"]
    assert len(upstream.calls) == 0


def test_width_bounds_message_names_the_range(api_get):
    body = api_get(id="1", width="99").get_json()
    assert body["message"] == "width must be an integer between 100 and 2000"


@pytest.mark.parametrize("params", [{"width": "100"}, {"width": "2000"}, {"quality": "1"},
                                    {"quality": "100"}, {"id": "x" * 50}])
def test_boundary_values_are_accepted(api_get, upstream, params):
    product_id = params.pop("id", "7494645791")
    add_product(upstream, product_id=product_id)
    assert api_get(id=product_id, **params).status_code == 200


def test_repeated_parameter_is_400(client):
    response = client.get("/api/qc-images?id=1&id=2", headers={"X-API-Key": API_KEY})
    assert response.status_code == 400
    assert response.get_json()["message"] == "id given more than once"


def test_product_without_images_is_404(api_get, upstream):
    add_product(upstream, data={"qcGroups": []})
    response = api_get(id="7494645791")
    assert response.status_code == 404
    assert response.get_json()["error"] == "no_images"


def test_unknown_product_upstream_404_is_404(api_get, upstream):
    add_product(upstream, status=404, data={})
    assert api_get(id="7494645791").status_code == 404


def test_missing_key_is_401(api_get):
    response = api_get(id="1", key=None)
    assert response.status_code == 401
    assert response.get_json()["error"] == "api_key_missing"


def test_wrong_key_is_403(api_get, upstream):
    response = api_get(id="1", key="not-a-key")
    assert response.status_code == 403
    assert response.get_json()["error"] == "api_key_invalid"
    assert len(upstream.calls) == 0


def test_bearer_token_is_accepted(client, upstream):
    add_product(upstream)
    response = client.get("/api/qc-images?id=7494645791",
                          headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert response.status_code == 200


@pytest.mark.parametrize("name", ["apiKey", "api_key", "key", "token"])
def test_key_in_query_string_is_refused(client, name):
    response = client.get(f"/api/qc-images?id=1&{name}={API_KEY}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "api_key_in_query"
    assert "X-API-Key" in body["message"]


@pytest.mark.parametrize("status, expected", [(500, 502), (503, 502), (418, 502)])
def test_upstream_errors_become_502_without_upstream_body(api_get, upstream, status, expected):
    upstream.get(PRODUCT_URL, body="<html>secret upstream stack</html>", status=status)
    response = api_get(id="7494645791")
    assert response.status_code == expected
    assert "secret" not in response.get_data(as_text=True)
    assert response.get_json()["error"] == "upstream_error"


def test_upstream_timeout_is_504(api_get, upstream):
    upstream.get(PRODUCT_URL, body=requests.exceptions.ReadTimeout("slow"))
    response = api_get(id="7494645791")
    assert response.status_code == 504
    assert response.get_json()["error"] == "upstream_timeout"


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"nodata": 1}', "[" * 100000,
                                  '{"data": null}', '{"data": "x"}', '{"data": [1, 2]}'])
def test_upstream_garbage_is_502(api_get, upstream, body):
    upstream.get(PRODUCT_URL, body=body, content_type="application/json")
    response = api_get(id="7494645791")
    assert response.status_code == 502


def test_data_as_a_list_of_groups_is_read(api_get, upstream):
    upstream.get(PRODUCT_URL, json={"data": [{"image": "n4EYdIoE"}, [{"image": "cR-eVGrQ"}]]})
    body = api_get(id="7494645791").get_json()
    assert [i["original"] for i in body["images"]] == ["n4EYdIoE", "cR-eVGrQ"]


def test_upstream_redirect_is_not_followed(api_get, upstream):
    upstream.get(PRODUCT_URL, status=302, headers={"Location": "http://203.0.113.1/x"})
    response = api_get(id="7494645791")
    assert response.status_code == 502
    assert len(upstream.calls) == 1


def test_lookup_is_cached_for_the_ttl(api_get, upstream):
    add_product(upstream)
    assert api_get(id="7494645791").status_code == 200
    assert api_get(id="7494645791").status_code == 200
    assert len(upstream.calls) == 1


def test_lookups_are_rate_limited_per_key(env, upstream):
    env["QCIMAGE_LOOKUP_RATE_LIMIT"] = "3 per minute"
    client = create_app(env).test_client()
    add_product(upstream)
    for _ in range(3):
        assert client.get("/api/qc-images?id=7494645791",
                          headers={"X-API-Key": API_KEY}).status_code == 200
    limited = client.get("/api/qc-images?id=7494645791", headers={"X-API-Key": API_KEY})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.get_json()["error"] == "rate_limited"
    # The limiter refuses in its own before_request hook: the request id is set before it.
    assert limited.get_json()["requestId"] == limited.headers["X-Request-ID"]
    assert len(limited.headers["X-Request-ID"]) == 32
    # Another key has its own budget.
    assert client.get("/api/qc-images?id=7494645791",
                      headers={"X-API-Key": OTHER_KEY}).status_code == 200


def test_successful_lookups_carry_no_retry_after(api_get, upstream):
    add_product(upstream)
    response = api_get(id="7494645791")
    assert response.status_code == 200
    assert "Retry-After" not in response.headers
    assert "X-RateLimit-Remaining" in response.headers


def test_plain_options_is_not_an_auth_failure(client):
    assert client.options("/api/qc-images").status_code == 200


def test_second_key_line_is_supported(env, upstream):
    env["QCIMAGE_API_KEYS"] = key_line("solo", "solo-key-000000000000")
    client = create_app(env).test_client()
    add_product(upstream)
    assert client.get("/api/qc-images?id=7494645791",
                      headers={"X-API-Key": "solo-key-000000000000"}).status_code == 200
    assert client.get("/api/qc-images?id=7494645791",
                      headers={"X-API-Key": API_KEY}).status_code == 403


def test_cors_preflights_do_not_spend_the_rate_limit(env, upstream):
    env.update({"QCIMAGE_LOOKUP_RATE_LIMIT": "2 per minute",
                "QCIMAGE_CORS_ORIGINS": "https://shop.example"})
    client = create_app(env).test_client()
    add_product(upstream)
    for _ in range(4):
        preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"}
        client.options("/api/qc-images", headers=preflight)
    for _ in range(2):
        assert client.get("/api/qc-images?id=7494645791",
                          headers={"X-API-Key": API_KEY}).status_code == 200


def test_the_key_is_hashed_once_per_request(api_get, upstream, monkeypatch):
    from qcimage import tenants

    calls = []
    real = tenants.hash_api_key
    monkeypatch.setattr(tenants, "hash_api_key", lambda key: calls.append(key) or real(key))
    add_product(upstream)
    assert api_get(id="7494645791").status_code == 200
    assert len(calls) == 1


def test_lookup_cache_outcome_is_logged(api_get, upstream, caplog):
    import logging

    add_product(upstream)
    with caplog.at_level(logging.INFO, logger="qcimage.access"):
        api_get(id="7494645791")
        api_get(id="7494645791")
    outcomes = [r.cache for r in caplog.records if r.name == "qcimage.access"]
    assert outcomes == ["miss", "hit"]


def test_authorization_without_bearer_says_how_to_send_the_key(api_get):
    response = api_get(key=None, headers={"Authorization": API_KEY})
    assert response.status_code == 401
    assert response.get_json()["error"] == "api_key_missing"
    assert response.get_json()["message"] == (
        "the Authorization header needs the Bearer scheme: send 'Authorization: Bearer <key>', "
        "or the key alone in the X-API-Key header")
    assert api_get(key=None, headers={"Authorization": f"Bearer {API_KEY}"}).status_code != 401


@pytest.mark.parametrize("product_id", ["749 4645791", "7494645791 ", "74946/45791"])
def test_an_id_with_spaces_says_what_an_id_may_contain(api_get, product_id):
    response = api_get(id=product_id)
    assert response.status_code == 400
    assert response.get_json()["message"] == (
        "id may only contain letters, digits, '_' and '-' (1-50 characters)")


def test_a_missing_id_asks_for_an_id_or_a_link(api_get):
    response = api_get()
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("id or link is required: send id")


@pytest.mark.parametrize("name, message", [
    ("storeplatform", "storeplatform is not a known parameter; did you mean storePlatform?"),
    ("store_platform", "store_platform is not a known parameter; did you mean storePlatform?"),
    ("widht", "widht is not a known parameter; did you mean width?"),
    ("colour", "colour is not a known parameter"),
])
def test_an_unknown_parameter_suggests_the_close_spelling(api_get, name, message):
    response = api_get(id="7494645791", **{name: "x"})
    assert response.status_code == 400
    assert response.get_json()["message"] == message


def test_a_lookup_url_copied_from_html_source_says_so(client):
    response = client.get("/api/qc-images?id=7494645791&amp;storePlatform=TAOBAO",
                          headers={"X-API-Key": API_KEY})
    assert response.status_code == 400
    assert response.get_json()["message"].startswith(
        "amp;storePlatform is not a known parameter: the link was copied from HTML source")


def test_a_product_not_found_names_the_platform_searched(api_get, upstream):
    upstream.get(PRODUCT_URL, status=404, json={"success": False})
    response = api_get(id="7494645791", storePlatform="taobao")
    assert response.status_code == 404
    assert response.get_json() | {"requestId": None} == {
        "success": False, "error": "not_found", "requestId": None,
        "message": "product 7494645791 was not found on TAOBAO; if it is listed elsewhere, "
                   "set storePlatform (WEIDIAN, 1688, TMALL)"}


def test_a_product_without_photos_names_itself(api_get, upstream):
    add_product(upstream, ids=())
    response = api_get(id="7494645791")
    assert response.status_code == 404
    assert response.get_json()["message"] == "product 7494645791 on WEIDIAN has no QC images"


def test_lookup_gives_rendered_sizes_once_known_and_never_guesses(api_get, client, upstream):
    add_product(upstream, ids=("n4EYdIoE", "cR-eVGrQ"))
    add_image(upstream, photo_bytes(1600, 1200))
    first = api_get(id="7494645791").get_json()["images"]
    assert all("width" not in image and "height" not in image for image in first)
    link = first[0]["watermarked"]
    rendered = client.get(link.removeprefix(PUBLIC))
    assert rendered.status_code == 200
    size = Image.open(io.BytesIO(rendered.data)).size
    assert size == (960, 720)
    again = api_get(id="7494645791").get_json()["images"]
    assert (again[0]["width"], again[0]["height"]) == size
    assert "width" not in again[1]  # not rendered yet
    # Another width or format: the size is known only for what was rendered.
    assert "width" not in api_get(id="7494645791", width="480").get_json()["images"][0]
    png = api_get(id="7494645791", format="png").get_json()["images"][0]
    assert (png["width"], png["height"]) == size


def test_renders_cached_before_sizes_were_kept_get_theirs_on_a_hit(api_get, client, app,
                                                                   upstream):
    add_product(upstream)
    add_image(upstream, photo_bytes(1600, 1200))
    link = api_get(id="7494645791").get_json()["images"][0]["watermarked"]
    assert client.get(link.removeprefix(PUBLIC)).headers["X-Cache"] == "MISS"
    renderer = app.extensions["qcimage"].renderer
    renderer.cache.store.delete(cache._SIZE + renderer._size_key("n4EYdIoE", 960))
    assert "width" not in api_get(id="7494645791").get_json()["images"][0]
    assert client.get(link.removeprefix(PUBLIC)).headers["X-Cache"] == "HIT"
    image = api_get(id="7494645791").get_json()["images"][0]
    assert (image["width"], image["height"]) == (960, 720)


WEIDIAN_LINK = "https://weidian.com/item.html?itemID=7494645791"
AGENT_LINK = "https://cnfans.com/product/?shop_type=taobao&id=684012345678"


def test_a_link_looks_up_the_product_it_names(api_get, upstream):
    add_product(upstream, product_id="684012345678", platform="TAOBAO", ids=("a1", "b2"))
    response = api_get(link=f"W2C? <{AGENT_LINK}>", width="480")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["productId"], body["storePlatform"], body["totalImages"]) == (
        "684012345678", "TAOBAO", 2)
    assert query(body["images"][0]["watermarked"])["width"] == "480"


def test_a_link_gives_the_same_answer_as_its_id(api_get, upstream):
    add_product(upstream)
    by_id = api_get(id="7494645791", storePlatform="WEIDIAN").get_json()
    assert api_get(link=WEIDIAN_LINK).get_json() == by_id


@pytest.mark.parametrize("params", [
    {},
    {"id": "7494645791", "link": WEIDIAN_LINK},
    {"link": WEIDIAN_LINK, "storePlatform": "WEIDIAN"},
    {"link": ""},
    {"link": WEIDIAN_LINK + "&x=" + "a" * 2048},
])
def test_exactly_one_of_id_or_link_is_sent(api_get, upstream, params):
    response = api_get(**params)
    assert response.status_code == 400
    assert response.get_json()["error"] == "validation_failed"
    assert not upstream.calls


@pytest.mark.parametrize("link", ["https://m.tb.cn/h.5abcD", "https://example.com/item/1234567"])
def test_a_link_that_cannot_be_resolved_is_400_unsupported_link(api_get, upstream, link):
    response = api_get(link=link)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "unsupported_link" and "paste" in body["message"]
    assert not upstream.calls


def test_a_short_link_is_never_fetched(api_get, upstream):
    upstream.get("https://m.tb.cn/h.5abcD", status=302,
                 headers={"Location": "https://item.taobao.com/item.htm?id=684012345678"})
    assert api_get(path="/api/links/resolve", link="https://m.tb.cn/h.5abcD").status_code == 400
    assert not upstream.calls


@pytest.mark.parametrize("link, platform, product_id", [
    (WEIDIAN_LINK, "WEIDIAN", "7494645791"),
    (AGENT_LINK, "TAOBAO", "684012345678"),
    ("https://www.sugargoo.com/#/home/productDetail?productLink=https%253A%252F%252F"
     "detail.1688.com%252Foffer%252F1688000001.html", "1688", "1688000001"),
])
def test_resolve_answers_platform_and_id_without_calling_upstream(api_get, upstream, link,
                                                                  platform, product_id):
    response = api_get(path="/api/links/resolve", link=link)
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "storePlatform": platform,
                                   "productId": product_id}
    assert response.headers["Cache-Control"] == "private, no-store"
    assert not upstream.calls


def test_resolve_needs_the_api_key(api_get):
    assert api_get(path="/api/links/resolve", key=None, link=WEIDIAN_LINK).status_code == 401
    assert api_get(path="/api/links/resolve", key="wrong", link=WEIDIAN_LINK).status_code == 403


@pytest.mark.parametrize("params", [{}, {"link": WEIDIAN_LINK, "id": "7494645791"}])
def test_resolve_takes_a_link_only(api_get, params):
    assert api_get(path="/api/links/resolve", **params).status_code == 400


def test_resolutions_and_lookups_share_the_key_s_budget(env, upstream):
    env["QCIMAGE_LOOKUP_RATE_LIMIT"] = "3 per minute"
    client = create_app(env).test_client()
    add_product(upstream)
    headers = {"X-API-Key": API_KEY}
    for path in ("/api/links/resolve", "/api/qc-images", "/api/links/resolve"):
        assert client.get(path, query_string={"link": WEIDIAN_LINK},
                          headers=headers).status_code == 200
    for path in ("/api/links/resolve", "/api/qc-images"):
        limited = client.get(path, query_string={"link": WEIDIAN_LINK}, headers=headers)
        assert limited.status_code == 429
        assert limited.get_json()["error"] == "rate_limited"
    assert client.get("/api/links/resolve", query_string={"link": WEIDIAN_LINK},
                      headers={"X-API-Key": OTHER_KEY}).status_code == 200


@pytest.fixture
def unlimited_client(env):
    return create_app({**env, "QCIMAGE_LOOKUP_RATE_LIMIT": "100000 per minute"}).test_client()


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=300))
def test_arbitrary_link_text_is_a_200_or_a_clear_400_never_a_500(unlimited_client, text):
    def get(path):
        return unlimited_client.get(path, query_string={"link": text},
                                    headers={"X-API-Key": API_KEY})

    resolved = get("/api/links/resolve")
    body = resolved.get_json()
    if resolved.status_code == 200:
        assert body["productId"] in unquote(text)
        return
    assert resolved.status_code == 400, body
    assert body["error"] in ("unsupported_link", "validation_failed") and body["message"]
    # A look-up refuses the same text the same way, before any upstream call.
    looked_up = get("/api/qc-images")
    assert (looked_up.status_code, looked_up.get_json()["error"]) == (400, body["error"])


def test_warm_lookups_move_to_the_next_expiry_bucket(api_get, app, upstream):
    # Warm look-ups reuse the body they built; the links' expiry still moves on.
    add_product(upstream, ids=("n4EYdIoE",))
    first = api_get(id="7494645791").get_json()
    assert api_get(id="7494645791").get_json() == first
    signer = app.extensions["qcimage"].signer
    later = time.time() + 2 * app.extensions["qcimage"].settings.signed_url_bucket
    signer._clock = lambda: later
    moved = api_get(id="7494645791").get_json()
    old, new = (query(body["images"][0]["watermarked"]) for body in (first, moved))
    assert int(new["expires"]) > int(old["expires"]) and new["sig"] != old["sig"]


def test_two_apps_in_one_process_never_share_a_lookup_body(env, upstream):
    add_product(upstream, ids=("n4EYdIoE",))
    bodies = []
    for public in ("https://a.example", "https://b.example"):
        client = create_app({**env, "QCIMAGE_PUBLIC_URL": public}).test_client()
        bodies.append(client.get("/api/qc-images?id=7494645791",
                                 headers={"X-API-Key": API_KEY}).get_json())
    assert bodies[0]["images"][0]["watermarked"].startswith("https://a.example/")
    assert bodies[1]["images"][0]["watermarked"].startswith("https://b.example/")


def test_bodies_of_big_products_are_not_kept(api_get, app, upstream):
    from qcimage.products import MEMO_MAX_IMAGES

    services = app.extensions["qcimage"]
    add_product(upstream, ids=tuple(f"img{n:05d}" for n in range(MEMO_MAX_IMAGES + 1)))
    add_product(upstream, product_id="7494645792", ids=("n4EYdIoE",))
    api_get(id="7494645791")
    assert len(services.lookup_bodies) == 0  # 65 images: built each time, never held
    api_get(id="7494645792")
    assert len(services.lookup_bodies) == 1
