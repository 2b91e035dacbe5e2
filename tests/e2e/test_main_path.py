"""The main path end to end: product look-up, then every watermarked image it links to.

Real processes: the upstream stand-in, gunicorn with two workers on our config,
and in the second test nginx on the shipped config in front of it.
"""

import io
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pytest
import requests
from PIL import Image, ImageFilter, ImageOps

from tools.samples import SAMPLES_BY_ID, find_product

from tools import harness

PRODUCT_ID = "7494645791"
PLATFORM = "WEIDIAN"
DEFAULT_WIDTH = 960
MAGIC = {
    "image/webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
    "image/jpeg": lambda data: data[:3] == b"\xff\xd8\xff",
    "image/png": lambda data: data[:8] == b"\x89PNG\r\n\x1a\n",
    "image/avif": lambda data: data[4:12] in (b"ftypavif", b"ftypavis"),
}

pytestmark = pytest.mark.e2e


def expected_ids():
    """What the stand-in's catalogue says, in upstream order without repeats."""
    return find_product(PLATFORM, PRODUCT_ID).image_ids


def parse_srcset(srcset):
    candidates = []
    for candidate in srcset.split(","):
        url, descriptor = candidate.strip().rsplit(" ", 1)
        assert descriptor.endswith("w"), srcset
        candidates.append((url, int(descriptor[:-1])))
    return candidates


def without(url, name):
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != name]
    return urlunsplit(parts._replace(query=urlencode(query)))


def look_up(base_url, api_key, verify=True):
    response = requests.get(f"{base_url}/api/qc-images",
                            params={"id": PRODUCT_ID, "storePlatform": PLATFORM},
                            headers={"X-API-Key": api_key}, timeout=60, verify=verify)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["productId"] == PRODUCT_ID
    assert body["storePlatform"] == PLATFORM
    ids = [image["original"] for image in body["images"]]
    assert ids == expected_ids()
    assert body["totalImages"] == len(ids)
    for image in body["images"]:
        assert image["watermarked"].startswith(f"{base_url}/api/image?")
        query = dict(parse_qsl(urlsplit(image["watermarked"]).query))
        assert query["url"] == image["original"]
        assert int(query["width"]) == DEFAULT_WIDTH
        assert query["sig"]
        candidates = parse_srcset(image["srcset"])
        assert len(candidates) >= 2
        for url, width in candidates:
            assert url.startswith(f"{base_url}/api/image?")
            assert int(dict(parse_qsl(urlsplit(url).query))["width"]) == width
    return body


def fetch_image(url, requested_width, original_id, verify=True):
    """GET one image URL and check everything the contract promises about the answer."""
    response = requests.get(url, timeout=120, verify=verify)
    assert response.status_code == 200, response.text[:500]
    content_type = response.headers["Content-Type"].split(";")[0]
    assert MAGIC[content_type](response.content), (content_type, response.content[:16])
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert Image.MIME[image.format] == content_type
    # SampleSpec.width is the upright (EXIF-applied) width at scale 1, the stand-in's default.
    original_width = SAMPLES_BY_ID[original_id].width
    # Exactly the requested width unless the original is narrower: never enlarged, and a
    # srcset "960w" must really be 960 pixels wide or browsers pick the wrong candidate.
    assert image.width == min(requested_width, original_width), (
        f"{original_id} asked at width {requested_width} came back {image.size}; "
        f"the original is {original_width} wide upright")
    cache_control = [part.strip() for part in response.headers["Cache-Control"].split(",")]
    assert "public" in cache_control
    assert any(part.startswith("max-age=") and int(part[8:]) > 0 for part in cache_control)
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return response, image


def check_revalidation_and_signature(url, etag, verify=True):
    again = requests.get(url, headers={"If-None-Match": etag}, timeout=60, verify=verify)
    assert again.status_code == 304
    assert again.content == b""
    unsigned = requests.get(without(url, "sig"), timeout=60, verify=verify)
    assert unsigned.status_code == 403
    assert unsigned.headers["Content-Type"].startswith("application/json")
    error = unsigned.json()
    assert error["success"] is False and error["error"] and error["requestId"]


def upstream_reference(upstream, image_id, size):
    """The stand-in's own plain resize of the same picture, upright, at ``size``."""
    # The stand-in resizes the stored width and keeps EXIF orientation; a photo stored
    # sideways therefore needs the displayed height as its stored width.
    for stored_width in dict.fromkeys(size):
        response = requests.get(f"{upstream.url}/img", timeout=60, params={
            "url": image_id, "width": stored_width, "format": "png", "quality": 100})
        response.raise_for_status()
        reference = ImageOps.exif_transpose(Image.open(io.BytesIO(response.content)))
        if reference.size == size:
            return response.content, reference
    raise AssertionError(f"stand-in has no {size} rendering of {image_id}")


def block_differences(image, reference, grid=10):
    """Mean absolute RGB difference in each cell of a grid×grid split of the frame.

    Both are blurred first: two resamplers (ImageMagick's and Pillow's) and lossy
    encoding disagree about sensor noise and barcode edges, not about the watermark.
    """
    radius = max(1, image.width // 240)
    ours, theirs = (np.asarray(picture.convert("RGB").filter(ImageFilter.GaussianBlur(radius)),
                               dtype=np.float32) for picture in (image, reference))
    diff = np.abs(ours - theirs).mean(axis=2)
    rows = np.array_split(np.arange(diff.shape[0]), grid)
    cols = np.array_split(np.arange(diff.shape[1]), grid)
    return np.array([[diff[np.ix_(r, c)].mean() for c in cols] for r in rows])


def check_watermark(upstream, image_id, response, image):
    plain_bytes, reference = upstream_reference(upstream, image_id, image.size)
    assert response.content != plain_bytes
    blocks = block_differences(image, reference)
    # Default position: bottom-right. Compare that corner with everything else.
    corner = blocks[-3:, -3:]
    rest = np.ones_like(blocks, dtype=bool)
    rest[-3:, -3:] = False
    median_rest, worst_rest = np.median(blocks[rest]), blocks[rest].max()
    assert corner.max() > 4, blocks.round(1)
    assert corner.max() > 5 * median_rest, blocks.round(1)
    assert corner.max() > 2.5 * worst_rest, blocks.round(1)


def check_every_image(body, upstream, verify=True):
    """Fetch every watermarked and srcset URL; return the URLs fetched."""
    fetched = []
    for entry in body["images"]:
        image_id = entry["original"]
        response, image = fetch_image(entry["watermarked"], DEFAULT_WIDTH, image_id, verify)
        check_revalidation_and_signature(entry["watermarked"], response.headers["ETag"], verify)
        check_watermark(upstream, image_id, response, image)
        fetched.append(entry["watermarked"])
        for url, width in parse_srcset(entry["srcset"]):
            response, image = fetch_image(url, width, image_id, verify)
            check_watermark(upstream, image_id, response, image)
            fetched.append(url)
    return fetched


def test_lookup_then_every_image_straight_from_gunicorn(qcimage_server, upstream):
    server = qcimage_server(workers=2)
    assert len(server.worker_pids()) == 2
    body = look_up(server.url, server.api_key)
    check_every_image(body, upstream)
    health = requests.get(server.url + "/health", timeout=10)
    assert health.headers["Server"] == "qcimage"


def test_lookup_then_every_image_through_nginx(qcimage_server, nginx_proxy, upstream):
    https_port = harness.free_port()
    public_url = f"https://127.0.0.1:{https_port}"
    server = qcimage_server(workers=2, public_url=public_url, QCIMAGE_TRUSTED_PROXIES=1)
    nginx = nginx_proxy(int(server.url.rsplit(":", 1)[1]), https_port=https_port)
    body = look_up(nginx.url, server.api_key, verify=nginx.ca_bundle)
    fetched = check_every_image(body, upstream, verify=nginx.ca_bundle)
    for url in fetched:
        again = requests.get(url, timeout=60, verify=nginx.ca_bundle)
        assert again.status_code == 200
        assert again.headers["X-Cache-Status"] == "HIT", url
    lookup_again = requests.get(f"{nginx.url}/api/qc-images", timeout=60, verify=nginx.ca_bundle,
                                params={"id": PRODUCT_ID, "storePlatform": PLATFORM},
                                headers={"X-API-Key": server.api_key})
    assert "X-Cache-Status" not in lookup_again.headers
