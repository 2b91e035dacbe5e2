"""Tenants end to end in the app: whose key, whose links, whose watermark, limits and origins."""

from __future__ import annotations

import io
import logging
from urllib.parse import urlencode, urlsplit

import numpy as np
import pytest
from PIL import Image

from qcimage import create_app
from qcimage.keys import hash_api_key
from qcimage.services.signing import Signer
from tests.conftest import SIGNING_KEY, add_image, add_product, photo_bytes, query
from tests.test_metrics import sample

KEYS = {"shop-a": "key-of-shop-a-0123456789", "shop-b": "key-of-shop-b-0123456789",
        "logo-only": "key-of-logo-only-0123456", "tiled": "key-of-tiled-0123456789"}
RED = (220, 20, 20)


def tenants_toml(logo, a_text="SHOP-A", a_extra="") -> str:
    h = {name: hash_api_key(key) for name, key in KEYS.items()}
    return f"""
[tenants.shop-a]
api_keys = ["{h['shop-a']}"]
cors_origins = ["https://shop-a.example"]
referrers = ["shop-a.example"]
lookup_rate_limit = "3 per minute"
image_rate_limit = "40 per minute"
watermark = {{ text = "{a_text}", position = "north_west", scale = 0.3, opacity = 1.0 {a_extra}}}

[tenants.shop-b]
api_keys = ["{h['shop-b']}"]
cors_origins = ["https://shop-b.example"]
lookup_rate_limit = "3 per minute"
watermark = {{ text = "BRAND-B", position = "south_east", scale = 0.3, opacity = 1.0 }}

[tenants.shop-b.defaults]
width = 640
quality = 70
format = "jpeg"
srcset_widths = [640, 320]
link_ttl = 0

[tenants.logo-only]
api_keys = ["{h['logo-only']}"]
watermark = {{ logos = ["{logo}"], position = "center", scale = 0.25, opacity = 1.0 }}

[tenants.tiled]
api_keys = ["{h['tiled']}"]
watermark = {{ text = "TILED", tile = true, scale = 0.15, opacity = 1.0 }}
"""


@pytest.fixture
def logo(tmp_path):
    path = tmp_path / "logo.png"
    Image.new("RGBA", (200, 200), RED + (255,)).save(path)
    return path


@pytest.fixture
def tenants_file(tmp_path, logo):
    path = tmp_path / "tenants.toml"
    path.write_text(tenants_toml(logo))
    return path


@pytest.fixture
def tenant_env(env, tenants_file):
    env = {k: v for k, v in env.items() if k != "QCIMAGE_API_KEYS"}
    env["QCIMAGE_TENANTS_FILE"] = str(tenants_file)
    return env


@pytest.fixture
def client(tenant_env):
    return create_app(tenant_env).test_client()


@pytest.fixture
def source():
    # Wider than 2000 px, so every width renders at its own size.
    return photo_bytes(2400, 1800, fmt="PNG")


def lookup(client, tenant, **params):
    return client.get("/api/qc-images", query_string={"id": "7494645791", **params},
                      headers={"X-API-Key": KEYS[tenant]})


def image_link(client, upstream, tenant, width=480, fmt="png"):
    """The main link a look-up by ``tenant`` returns, as a path."""
    add_product(upstream)
    response = lookup(client, tenant, width=width, format=fmt)
    assert response.status_code == 200, response.get_json()
    url = urlsplit(response.get_json()["images"][0]["watermarked"])
    return f"{url.path}?{url.query}"


def pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.get_json()
    with Image.open(io.BytesIO(response.get_data())) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def reference(source: bytes, width: int) -> np.ndarray:
    with Image.open(io.BytesIO(source)) as img:
        height = round(img.height * width / img.width)
        return np.asarray(img.convert("RGB").resize((width, height), Image.Resampling.BOX),
                          dtype=np.int16)


def marked(render: np.ndarray, plain: np.ndarray, region: str) -> float:
    """Mean difference from the plain photo in a ninth of the image (``north_west`` …)."""
    h, w = render.shape[0] // 3, render.shape[1] // 3
    rows = {"north": 0, "south": 2}
    cols = {"west": 0, "east": 2}
    parts = region.split("_")
    row = next((rows[p] for p in parts if p in rows), 1)
    col = next((cols[p] for p in parts if p in cols), 1)
    window = (slice(row * h, (row + 1) * h), slice(col * w, (col + 1) * w))
    return float(np.abs(render[window] - plain[window]).mean())


def test_a_lookup_writes_its_tenant_into_every_signed_link(client, upstream):
    add_product(upstream)
    body = lookup(client, "shop-a").get_json()
    links = [body["images"][0]["watermarked"]] + [
        part.split(" ")[0] for part in body["images"][0]["srcset"].split(", ")]
    assert {query(link)["t"] for link in links} == {"shop-a"}


def test_a_tenants_defaults_fill_in_what_the_lookup_leaves_out(client, upstream):
    add_product(upstream)
    image = lookup(client, "shop-b").get_json()["images"][0]
    params = query(image["watermarked"])
    assert (params["width"], params["quality"], params["format"]) == ("640", "70", "jpeg")
    assert "expires" not in params  # link_ttl = 0
    assert [query(p.split(" ")[0])["width"] for p in image["srcset"].split(", ")] == ["320", "640"]
    assert query(lookup(client, "shop-b", width=480).get_json()["images"][0]["watermarked"]
                 )["width"] == "480"


@pytest.mark.parametrize("width", [480, 960, 2000])
def test_two_tenants_draw_their_own_mark_where_their_gravity_says(client, upstream, source,
                                                                  width):
    add_image(upstream, source)
    a = pixels(client.get(image_link(client, upstream, "shop-a", width)))
    b = pixels(client.get(image_link(client, upstream, "shop-b", width)))
    plain = reference(source, width)
    assert a.shape == b.shape == plain.shape
    # A's text sits top left, B's bottom right, and neither elsewhere.
    assert marked(a, plain, "north_west") > 3 * marked(b, plain, "north_west") + 4
    assert marked(b, plain, "south_east") > 3 * marked(a, plain, "south_east") + 4
    for quiet in ("center", "north_east", "south_west"):
        assert marked(a, plain, quiet) < 3 and marked(b, plain, quiet) < 3


@pytest.mark.parametrize("width", [480, 960, 2000])
def test_a_logo_only_tenant_and_a_tiled_tenant(client, upstream, source, width):
    add_image(upstream, source)
    logo = pixels(client.get(image_link(client, upstream, "logo-only", width)))
    tiled = pixels(client.get(image_link(client, upstream, "tiled", width)))
    plain = reference(source, width)
    h, w = logo.shape[0] // 2, logo.shape[1] // 2
    assert tuple(logo[h, w]) == RED  # the opaque logo, centred
    assert marked(logo, plain, "north_west") < 3 and marked(logo, plain, "south_east") < 3
    regions = ("north_west", "north", "north_east", "west", "center", "east", "south_west",
               "south", "south_east")
    assert all(marked(tiled, plain, region) > 4 for region in regions)


def _resign(path: str, **changes) -> str:
    params = dict(query(path))
    params.update(changes)
    params = {k: v for k, v in params.items() if v is not None}
    params["sig"] = Signer([SIGNING_KEY]).sign(params)
    return "/api/image?" + urlencode(params)


def test_tampering_with_the_tenant_is_403(client, upstream, source):
    add_image(upstream, source)
    a_link = image_link(client, upstream, "shop-a")
    b_link = image_link(client, upstream, "shop-b", fmt="jpeg")
    a_sig, b_params = query(a_link)["sig"], dict(query(b_link))
    tampered = {
        "removed": a_link.replace("&t=shop-a", ""),
        "changed": a_link.replace("t=shop-a", "t=shop-b"),
        "repeated": a_link + "&t=shop-b",
        "repeated alike": a_link + "&t=shop-a",
        "A's signature on B's link": "/api/image?" + urlencode({**b_params, "sig": a_sig}),
    }
    for what, path in tampered.items():
        assert path != a_link
        response = client.get(path)
        assert response.status_code == 403, what
        assert response.get_json()["error"] == "invalid_signature", what
    assert client.get(a_link).status_code == 200


def test_a_tenant_that_no_longer_exists_is_403(client, upstream):
    gone = _resign(image_link(client, upstream, "shop-a"), t="shop-gone")
    response = client.get(gone)
    assert response.status_code == 403
    assert response.get_json()["error"] == "unknown_tenant"
    assert len([c for c in upstream.calls if "/img" in c.request.url]) == 0


def test_changing_one_tenants_watermark_rerenders_its_images_only(tenant_env, tenants_file,
                                                                  logo, upstream, source):
    add_image(upstream, source)
    before = create_app(tenant_env).test_client()
    links = {t: image_link(before, upstream, t) for t in ("shop-a", "shop-b")}
    first = {t: before.get(link) for t, link in links.items()}
    tenants_file.write_text(tenants_toml(logo, a_text="SHOP-A NEW"))
    after = create_app(tenant_env).test_client()  # what a worker started after HUP builds
    second = {t: after.get(link) for t, link in links.items()}
    assert second["shop-a"].headers["ETag"] != first["shop-a"].headers["ETag"]
    assert second["shop-a"].get_data() != first["shop-a"].get_data()
    assert second["shop-a"].headers["X-Cache"] == "MISS"
    assert second["shop-b"].headers["ETag"] == first["shop-b"].headers["ETag"]
    assert second["shop-b"].get_data() == first["shop-b"].get_data()
    assert second["shop-b"].headers["X-Cache"] == "HIT"


def test_one_tenant_exhausting_its_lookup_limit_leaves_the_others(client, upstream):
    add_product(upstream)
    assert [lookup(client, "shop-a").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert lookup(client, "shop-b").status_code == 200
    assert lookup(client, "logo-only").status_code == 200  # the environment's 100 per 15 min


def test_images_count_per_tenant_and_client_ip(tenant_env, logo, tenants_file, upstream,
                                               source):
    tenants_file.write_text(tenants_toml(logo).replace('"40 per minute"', '"2 per minute"'))
    client = create_app(tenant_env).test_client()
    add_image(upstream, source)
    a_link = image_link(client, upstream, "shop-a")
    b_link = image_link(client, upstream, "shop-b")
    assert [client.get(a_link).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get(a_link, environ_overrides={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    assert client.get(b_link).status_code == 200


def test_cors_answers_a_tenants_images_for_its_origins_only(client, upstream, source):
    add_image(upstream, source)
    a_link = image_link(client, upstream, "shop-a")
    own = client.get(a_link, headers={"Origin": "https://shop-a.example"})
    assert own.headers["Access-Control-Allow-Origin"] == "https://shop-a.example"
    other = client.get(a_link, headers={"Origin": "https://shop-b.example"})
    assert other.status_code == 200
    assert not [h for h in other.headers.keys() if h.lower().startswith("access-control-")]
    # A preflight names no tenant: every tenant's origin may ask.
    preflight = client.options(a_link, headers={"Origin": "https://shop-b.example",
                                                "Access-Control-Request-Method": "GET"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop-b.example"
    add_product(upstream)
    looked_up = client.get("/api/qc-images?id=7494645791", headers={
        "X-API-Key": KEYS["shop-b"], "Origin": "https://shop-a.example"})
    assert looked_up.status_code == 200
    assert "Access-Control-Allow-Origin" not in looked_up.headers


@pytest.mark.parametrize("referer, status", [
    (None, 200), ("https://shop-a.example/product/7", 200),
    ("https://elsewhere.example/copied", 403)])
def test_referrers_refuse_other_sites_pages(client, upstream, source, referer, status):
    add_image(upstream, source)
    headers = {"Referer": referer} if referer else {}
    response = client.get(image_link(client, upstream, "shop-a"), headers=headers)
    assert response.status_code == status
    if status == 403:
        assert response.get_json()["error"] == "hotlink_refused"
    # shop-b lists no referrers: any page may embed its images.
    b = client.get(image_link(client, upstream, "shop-b"), headers=headers)
    assert b.status_code == 200


def test_the_tenant_is_in_the_access_log_and_on_metrics(client, upstream, source, caplog):
    add_image(upstream, source)
    link = image_link(client, upstream, "tiled", width=333)
    with caplog.at_level(logging.INFO, logger="qcimage.access"):
        caplog.clear()
        client.get(link)
        client.get(link)
    assert [r.tenant for r in caplog.records if r.name == "qcimage.access"] == ["tiled"] * 2
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "qcimage_http_requests_total", route="/api/image", status="200",
                  tenant="tiled") >= 2
    assert sample(text, "qcimage_http_requests_total", route="/api/qc-images", status="200",
                  tenant="tiled") >= 1
    assert sample(text, "qcimage_render_duration_seconds_count", tenant="tiled") >= 1
    for result in ("hit", "miss"):
        assert sample(text, "qcimage_cache_requests_total", cache="render", result=result,
                      tenant="tiled") >= 1
