"""Contract tests for GET /api/image (upstream mocked, real ImageMagick)."""

from __future__ import annotations

import io
import time
from urllib.parse import urlencode

import pytest
from PIL import Image

from qcimage import create_app
from qcimage.services.imaging import RenderSpec
from qcimage.services.pipeline import RenderJob
from qcimage.services.signing import Signer
from tests.conftest import SIGNING_KEY, add_image, photo_bytes

MAGIC = {"webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
         "jpeg": lambda b: b[:3] == b"\xff\xd8\xff",
         "png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
         "avif": lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"avif", b"avis")}


def signed(params: dict, key: str = SIGNING_KEY) -> str:
    values = {k: str(v) for k, v in params.items()}
    values["sig"] = Signer([key]).sign(values)
    return "/api/image?" + urlencode(values)


def base(**overrides):
    params = {"url": "n4EYdIoE", "width": "480", "quality": "80", "format": "webp",
              "expires": str(int(time.time()) + 3600)}
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def test_signed_url_serves_watermarked_webp_with_contract_headers(client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    response = client.get(signed(base()))
    assert response.status_code == 200
    data = response.get_data()
    assert MAGIC["webp"](data)
    assert response.headers["Content-Type"] == "image/webp"
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (480, 360)
    assert response.headers["Cache-Control"].startswith("public, max-age=")
    assert "immutable" in response.headers["Cache-Control"]
    assert response.headers["ETag"].startswith('"') and not response.headers["ETag"].startswith(
        "W/")
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Vary" not in response.headers or "Accept" not in response.headers["Vary"]


def test_max_age_is_one_day_without_expiry(client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    response = client.get(signed(base(expires=None)))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=86400, immutable"


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "png", "avif"])
def test_each_format_is_what_it_says(client, upstream, jpeg_source, fmt):
    add_image(upstream, jpeg_source)
    response = client.get(signed(base(format=fmt)))
    assert response.status_code == 200
    assert MAGIC[fmt](response.get_data())
    assert response.headers["Content-Type"] == f"image/{fmt}"


def test_never_enlarges(client, upstream):
    add_image(upstream, photo_bytes(400, 300))
    response = client.get(signed(base(width="2000")))
    with Image.open(io.BytesIO(response.get_data())) as img:
        assert img.size == (400, 300)


def test_quality_changes_size(client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    low = client.get(signed(base(quality="20", width="960"))).get_data()
    high = client.get(signed(base(quality="95", width="960"))).get_data()
    assert len(low) < len(high)


def test_matching_if_none_match_is_304_without_upstream_call(client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    url = signed(base())
    first = client.get(url)
    calls = len(upstream.calls)
    second = client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert second.status_code == 304
    assert second.get_data() == b""
    assert second.headers["ETag"] == first.headers["ETag"]
    assert len(upstream.calls) == calls
    fresh = client.get(signed(base(width="481")), headers={"If-None-Match": first.headers["ETag"]})
    assert fresh.status_code == 200


def test_304_needs_no_render_even_when_uncached(client, upstream, app):
    url = signed(base())
    etag = app.extensions["qcimage"].renderer.etag(
        RenderJob("n4EYdIoE", RenderSpec(480, 80, "webp")))
    response = client.get(url, headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert len(upstream.calls) == 0


def test_second_request_is_a_cache_hit(client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    url = signed(base())
    first = client.get(url)
    second = client.get(url)
    assert first.headers["X-Cache"] == "MISS" and second.headers["X-Cache"] == "HIT"
    assert first.get_data() == second.get_data()
    assert len(upstream.calls) == 1


def test_missing_signature_is_403(client, upstream):
    params = base()
    response = client.get("/api/image?" + urlencode(params))
    assert response.status_code == 403
    assert response.get_json()["error"] == "invalid_signature"
    assert len(upstream.calls) == 0


@pytest.mark.parametrize("name, value", [("url", "cR-eVGrQ"), ("width", "960"),
                                         ("quality", "81"), ("format", "png"),
                                         ("expires", str(int(time.time()) + 7200))])
def test_tampering_with_any_signed_parameter_is_403(client, upstream, name, value):
    url = signed(base())
    tampered = url.replace(f"{name}={base()[name]}", f"{name}={value}")
    assert tampered != url
    response = client.get(tampered)
    assert response.status_code == 403
    assert len(upstream.calls) == 0


@pytest.mark.parametrize("name", ["width", "quality", "format", "expires"])
def test_dropping_a_signed_parameter_is_403(client, name):
    params = base()
    values = dict(params)
    values["sig"] = Signer([SIGNING_KEY]).sign(params)
    del values[name]
    assert client.get("/api/image?" + urlencode(values)).status_code == 403


def test_signature_from_another_key_is_403(client):
    assert client.get(signed(base(), key="x" * 40)).status_code == 403


def test_old_signing_key_still_verifies_after_rotation(env, upstream, jpeg_source):
    env["QCIMAGE_SIGNING_KEYS"] = "n" * 40 + "," + SIGNING_KEY
    add_image(upstream, jpeg_source)
    assert create_app(env).test_client().get(signed(base())).status_code == 200


def test_expired_url_is_410(client, upstream):
    response = client.get(signed(base(expires=str(int(time.time()) - 1))))
    assert response.status_code == 410
    assert response.get_json()["error"] == "url_expired"
    assert len(upstream.calls) == 0


def test_a_link_served_before_still_expires(app, client, upstream, jpeg_source):
    # The checks that depend only on the URL's bytes are remembered after the first
    # request; the expiry must still be checked on every one.
    add_image(upstream, jpeg_source)
    url = signed(base(expires=str(int(time.time()) + 60)))
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 200
    app.extensions["qcimage"].signer._clock = lambda: time.time() + 120
    response = client.get(url)
    assert response.status_code == 410
    assert response.get_json()["error"] == "url_expired"


def test_a_link_accepted_under_one_signing_key_is_refused_under_another(
        env, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    url = signed(base())
    assert create_app(env).test_client().get(url).status_code == 200
    other = create_app({**env, "QCIMAGE_SIGNING_KEYS": "o" * 40}).test_client()
    response = other.get(url)
    assert response.status_code == 403
    assert response.get_json()["error"] == "invalid_signature"


@pytest.mark.parametrize("query", ["url=n4EYdIoE&url=cR-eVGrQ", "url=n4EYdIoE&width=480&width=4",
                                   "url=n4EYdIoE&watermark=0", "url=../etc", "url=a%2fb",
                                   "url=http:x", "width=480", "url=n4EYdIoE&width=0480"])
def test_bad_image_queries_are_400(client, upstream, query):
    response = client.get("/api/image?" + query)
    assert response.status_code == 400
    assert response.get_json()["error"] == "validation_failed"
    assert len(upstream.calls) == 0


def test_auto_format_follows_accept_and_varies(client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    url = signed(base(format="auto"))
    webp = client.get(url, headers={"Accept": "image/avif,image/webp,image/*,*/*;q=0.8"})
    assert webp.headers["Content-Type"] == "image/webp"
    assert MAGIC["webp"](webp.get_data())
    assert "Accept" in webp.headers["Vary"]
    plain = client.get(url, headers={"Accept": "*/*"})
    assert plain.headers["Content-Type"] == "image/jpeg"
    assert MAGIC["jpeg"](plain.get_data())
    assert plain.headers["ETag"] != webp.headers["ETag"]


def test_upstream_missing_image_is_404(client, upstream):
    add_image(upstream, b"{}", content_type="application/json", status=404)
    assert client.get(signed(base())).status_code == 404


def test_upstream_error_is_502_and_not_cached(client, upstream, jpeg_source):
    add_image(upstream, b"<h1>boom</h1>", content_type="text/html", status=500)
    response = client.get(signed(base()))
    assert response.status_code == 502
    assert "boom" not in response.get_data(as_text=True)


def test_upstream_non_image_is_422(client, upstream):
    add_image(upstream, b"<svg xmlns='http://www.w3.org/2000/svg'/>", content_type="image/png")
    response = client.get(signed(base()))
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/json"


def test_images_are_rate_limited_per_client_ip(env, upstream, jpeg_source):
    env["QCIMAGE_IMAGE_RATE_LIMIT"] = "2 per minute"
    client = create_app(env).test_client()
    add_image(upstream, jpeg_source)
    url = signed(base())
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 200
    limited = client.get(url)
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers
    other = client.get(url, environ_overrides={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 200


def test_a_link_copied_from_html_source_says_so(client):
    url = signed(base()).replace("&", "&amp;")
    response = client.get(url)
    assert response.status_code == 400
    assert response.get_json()["message"] == (
        "amp;expires is not a known parameter: the link was copied from HTML source, where & "
        "is written &amp;. Replace each &amp; with & (or copy the link as the look-up's JSON "
        "or the page shows it)")


def test_an_image_id_with_a_space_says_what_an_id_may_contain(client):
    response = client.get(signed(base(url="n4EY dIoE")))
    assert response.status_code == 400
    assert response.get_json()["message"] == (
        "url is an image id: it may only contain letters, digits, '_' and '-' (1-64 characters)")


def test_misses_over_the_render_queue_get_503_overloaded_while_hits_answer(
        env, upstream, jpeg_source):
    app = create_app({**env, "QCIMAGE_RENDER_QUEUE": "1"})
    client = app.test_client()
    add_image(upstream, jpeg_source)
    cached = signed(base())
    assert client.get(cached).headers["X-Cache"] == "MISS"
    with app.extensions["qcimage"].renderer.slots.admit():  # the one place is taken
        refused = client.get(signed(base(width="960")))
        assert refused.status_code == 503
        assert refused.get_json()["error"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["Cache-Control"] == "no-store"
        hit = client.get(cached)
        assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    assert len(upstream.calls) == 1  # the refused miss asked upstream nothing
    assert client.get(signed(base(width="960"))).status_code == 200


def test_a_logo_watermark_set_in_the_environment_is_drawn(env, tmp_path, upstream, jpeg_source):
    logo = tmp_path / "logo.png"
    Image.new("RGBA", (200, 80), (255, 0, 0, 255)).save(logo)
    env.update({"QCIMAGE_WATERMARK_TEXT": "none", "QCIMAGE_WATERMARK_LOGOS": str(logo),
                "QCIMAGE_WATERMARK_LOGO_POSITION": "north_west",
                "QCIMAGE_WATERMARK_OPACITY": "1"})
    add_image(upstream, jpeg_source)
    response = create_app(env).test_client().get(signed(base(format="png")))
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.get_data())) as img:
        red, green, blue = img.convert("RGB").getpixel((30, 20))
    assert red > 200 and green < 60 and blue < 60
