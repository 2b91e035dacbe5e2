"""Fuzz every documented operation in-process with schemathesis, generated from the spec."""

from __future__ import annotations

import io
import json
import os
import tempfile
import zlib
from functools import cache
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
import schemathesis
from PIL import Image

from qcimage import create_app
from qcimage.schemas import ImageQuerySchema
from qcimage.services.imaging import RenderSpec
from qcimage.services.imaging.engine import ImagingEngine
from qcimage.services.imaging.watermark import Watermark
from qcimage.services.signing import SIGNED_PARAMS, URL_PARAMS, Signer
from qcimage.vocabulary import OUTPUT_FORMATS

from .conftest import (API_KEY, IMAGE_URL, PRODUCT_URL, PUBLIC, SIGNING_KEY, UPSTREAM, key_line,
                       photo_bytes)

# Some 30-50 s on two cores in `make test`; `make fuzz` sets more for the long run.
EXAMPLES = int(os.environ.get("QCIMAGE_FUZZ_EXAMPLES", "800"))
SOURCE = photo_bytes()
SIGNER = Signer([SIGNING_KEY])
DEFAULT_QUALITY = ImageQuerySchema().fields["quality"].load_default
# How a case presents its key to /api/qc-images. "generated" keeps what schemathesis drew
# for the security schemes (random keys, or none), which must be refused.
KEY_CHOICES = ("X-API-Key", "X-API-Key", "bearer", "wrong", "generated")
# Three in four image URLs signed, so most cases get past the signature to the renderer;
# the rest keep whatever sig schemathesis drew (usually none), which must be a 403.
SIGN_CHOICES = (True, True, True, False)

# Production settings, limits out of the way: a 429 would hide everything behind it.
_CACHE = tempfile.TemporaryDirectory(prefix="qcimage-fuzz-")
ENV = {
    "QCIMAGE_ENV": "production",
    "QCIMAGE_API_KEYS": key_line("tester", API_KEY),
    "QCIMAGE_SIGNING_KEYS": SIGNING_KEY,
    "QCIMAGE_PUBLIC_URL": PUBLIC,
    "QCIMAGE_UPSTREAM_URL": UPSTREAM,
    "QCIMAGE_CACHE_DIR": _CACHE.name,
    "QCIMAGE_LOOKUP_RATE_LIMIT": "100000 per minute",
    "QCIMAGE_IMAGE_RATE_LIMIT": "100000 per minute",
}
CONFIG = schemathesis.Config.from_dict({
    "seed": 20241125,
    "generation": {"max-examples": EXAMPLES, "deterministic": True},
    # Resolving is pure parsing, fuzzed in depth by tests/services/test_links.py: here
    # the API around it needs far fewer cases than the operations that render.
    "operations": [{"include-path": "/api/links/resolve",
                    "generation": {"max-examples": max(50, EXAMPLES // 8),
                                   "deterministic": True}}],
    "checks": {"positive_data_acceptance": {
        # Well formed is not enough for these: a wrong key or signature is refused (401,
        # 403) and an expired signature is gone (410).
        "expected-statuses": ["2xx", "304", "401", "403", "410"]}},
})
# Loaded at import so pytest collects one test per operation (schemathesis' fixture
# loader, from_fixture, fails under pytest 9.2: it writes the removed Node._nodeid).
APP = create_app(ENV)
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", APP, config=CONFIG)
# The app's engine without its watermark: what an unwatermarked image would look like.
_settings = APP.extensions["qcimage"].settings
PLAIN = ImagingEngine.from_settings(Watermark(layers=()), _settings.imaging)


def _wire(value) -> str | None:
    # A scalar as it travels in the query string. Other values fail validation (400)
    # before the signature is looked at, so what they are signed as does not matter.
    if isinstance(value, bool):
        return str(value).lower()
    return None if value is None else str(value)


def sign(query: dict) -> dict:
    params = {name: _wire(query[name]) for name in SIGNED_PARAMS if name in query}
    signed = {**query, "sig": SIGNER.sign(params)}
    # In the order a look-up writes them: any other order is refused (non_canonical_url).
    return {name: signed[name] for name in (*URL_PARAMS, *signed) if name in signed}


def _pick(case, choices: tuple):
    # map_case, unlike flatmap_case, also reaches the coverage phase's boundary cases, but
    # it cannot draw: the choice comes from the case's own content, the same every run.
    content = repr((sorted((case.query or {}).items()), sorted((case.headers or {}).items())))
    return choices[zlib.crc32(content.encode()) % len(choices)]


def _with_key(case, how: str):
    if how == "generated":
        return case
    # Drop what schemathesis drew, so it cannot shadow the key chosen here.
    headers = {name: value for name, value in (case.headers or {}).items()
               if name.lower() not in ("x-api-key", "authorization")}
    if how == "bearer":
        headers["Authorization"] = f"Bearer {API_KEY}"
    else:
        headers["X-API-Key"] = API_KEY if how == "X-API-Key" else "not-" + API_KEY
    case.headers = headers
    return case


# The spec cannot say "exactly one of id or link", nor which text holds a link: a look-up
# keeps one form, and whatever text was drawn for a link is pasted around a real one.
LINKS = ("https://weidian.com/item.html?itemID=7494645791",
         "https://www.sugargoo.com/#/home/productDetail?productLink=https%253A%252F%252F"
         "item.taobao.com%252Fitem.htm%253Fid%253D684012345678",
         "https://hoobuy.com/product/0/612345678901")


def _one_form(case) -> None:
    query = dict(case.query or {})
    if "link" in query and query.get("link") is not None:
        link = _pick(case, LINKS)
        drawn = str(query["link"])
        query["link"] = f"{drawn} {link}" if _pick(case, (True, False)) else f"{link} {drawn}"
        query.pop("id", None)
        query.pop("storePlatform", None)
    elif case.operation.path == "/api/qc-images" and query.get("id") is None:
        query["id"] = "7494645791"
    case.query = query


@schema.hook
def map_case(context, case):
    if case.operation.path == "/api/image" and _pick(case, SIGN_CHOICES):
        case.query = sign(case.query or {})
    elif case.operation.path in ("/api/qc-images", "/api/links/resolve"):
        _one_form(case)
        case = _with_key(case, _pick(case, KEY_CHOICES))
    return case


def _product(request):
    # Upstream knows every product: a photo shared with others, one of its own, a repeat.
    product_id = dict(parse_qsl(urlsplit(request.url).query))["id"]
    media = [{"image": "n4EYdIoE"}, {"image": f"p-{product_id}"}, {"image": "n4EYdIoE"}]
    return 200, {"Content-Type": "application/json"}, json.dumps(
        {"data": {"qcGroups": [{"media": media}]}})


@pytest.fixture(autouse=True)
def fake_upstream(upstream):
    upstream.add_callback("GET", PRODUCT_URL, callback=_product)
    upstream.get(IMAGE_URL, body=SOURCE, content_type="image/jpeg")


@cache
def _unwatermarked(width: int, quality: int, fmt: str) -> np.ndarray:
    # Same source, size, format and quality, so the codec's own noise mostly cancels out.
    rendered = PLAIN.render(SOURCE, RenderSpec(width=width, quality=quality, format=fmt))
    return _pixels(rendered.data)


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def _format_of(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as img:
        return {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "AVIF": "avif"}.get(img.format)


def image_is_watermarked(ctx, response, case):
    """Every image served decodes, is what its Content-Type says, and carries the mark."""
    if (case.operation.path != "/api/image" or response.request.method != "GET"
            or response.status_code != 200):
        return None
    fmt = _format_of(response.content)
    assert OUTPUT_FORMATS.get(fmt) == response.headers["content-type"][0], fmt
    served = _pixels(response.content)
    quality = int(case.query.get("quality", DEFAULT_QUALITY))
    plain = _unwatermarked(served.shape[1], quality, fmt)
    assert served.shape == plain.shape
    height, width = served.shape[:2]
    difference = np.abs(served - plain)
    # The fuzzed app keeps the default mark, bottom right; the top left is untouched.
    marked = difference[height * 4 // 5:, width * 3 // 4:].mean()
    untouched = difference[:height // 5, :width // 4].mean()
    assert marked > 3 * untouched + 2, f"no watermark: {marked:.1f} vs noise {untouched:.1f}"
    return True


@schema.parametrize()
def test_api_conforms_to_spec_and_never_fails(case):
    # The real key goes in as the call's own header: schemathesis then treats it as a real
    # credential and also probes the operation without it and with a wrong one.
    real_key = {name: value for name, value in (case.headers or {}).items()
                if value in (API_KEY, f"Bearer {API_KEY}")}
    case.call_and_validate(headers=real_key or None, additional_checks=[image_is_watermarked])
