"""Hostile upstream bodies: bombs, ImageTragick payloads, truncations and polyglots.

Upstream is mocked with ``responses`` (any other URL raises), ImageMagick is real. Every
body is served as ``image/png``: upstream's Content-Type is never trusted.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from pathlib import Path

import pytest
import responses
from PIL import Image

from qcimage import create_app
from qcimage.config import ConfigError, load_settings
from tests.conftest import API_KEY, IMAGE_URL, PUBLIC, SIGNING_KEY, UPSTREAM, key_line, photo_bytes
from tests.security.conftest import (
    GIF_FIRST_FRAME,
    UPSTREAM_SECRET,
    Case,
    check_error,
    check_watermarked_still,
    corpus_names,
    many_frame_gif,
    oversize_png,
    png_bomb,
)
from tests.test_images import MAGIC, base, signed

MAX_BYTES = 1024 * 1024
MB = 1024 * 1024
GOOD_ID = "n4EYdIoE"
# Apps here live for the module and cache renders: each request gets a fresh id or width.
_fresh_ids = (f"hostile{n}" for n in itertools.count())
_fresh_widths = itertools.count(200)


def environment(folder) -> dict[str, str]:
    return {
        "QCIMAGE_ENV": "production",
        "QCIMAGE_API_KEYS": key_line("tester", API_KEY),
        "QCIMAGE_SIGNING_KEYS": SIGNING_KEY,
        "QCIMAGE_PUBLIC_URL": PUBLIC,
        "QCIMAGE_UPSTREAM_URL": UPSTREAM,
        "QCIMAGE_CACHE_DIR": str(folder / "cache"),
        # Small enough to test the byte cap cheaply; every corpus body stays under it.
        "QCIMAGE_MAX_SOURCE_BYTES": str(MAX_BYTES),
    }


def largest_pixel_budget(env: dict[str, str]) -> int:
    """The most QCIMAGE_MAX_SOURCE_PIXELS accepts, as the config's own refusal states it."""
    try:
        load_settings({**env, "QCIMAGE_MAX_SOURCE_PIXELS": str(10**12)})
    except ConfigError as error:
        return int(re.search(r"MAX_SOURCE_PIXELS must be between \d+ and (\d+)", str(error))[1])
    return 10**12


# Apps built once per module: dozens of requests share one, as they share a worker.
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return create_app(environment(tmp_path_factory.mktemp("hostile"))).test_client()


@pytest.fixture(scope="module")
def lifted_client(tmp_path_factory):
    """The largest pixel budget the config accepts: only the policy stands behind it."""
    env = environment(tmp_path_factory.mktemp("lifted"))
    budget = largest_pixel_budget(env)
    client = create_app({**env, "QCIMAGE_MAX_SOURCE_PIXELS": str(budget)}).test_client()
    client.budget = budget
    return client


@pytest.fixture(scope="module")
def good_photo():
    return photo_bytes(800, 600)


def serve(mock, image_id: str, body: bytes, **kwargs):
    mock.get(IMAGE_URL, body=body, content_type="image/png", match=[
        responses.matchers.query_param_matcher({"url": image_id}, strict_match=False)],
        **kwargs)


def ask(client, upstream, body: bytes, headers=None, **params):
    """Serve body as upstream's answer for a fresh image id and request that id, signed."""
    image_id = next(_fresh_ids)
    serve(upstream, image_id, body, headers=headers or {})
    return client.get(signed(base(url=image_id, **params)))


def check_still_serving(client, upstream, good_photo):
    """The next ordinary request renders: nothing the hostile one did lingers."""
    serve(upstream, GOOD_ID, good_photo)
    response = client.get(signed(base(url=GOOD_ID, width=str(next(_fresh_widths)))))
    assert response.status_code == 200, response.get_data()[:300]
    assert MAGIC["webp"](response.get_data())
    assert response.headers["X-Cache"] == "MISS"


def check_answer(response, case: Case):
    body = response.get_data()
    if case.status != 200:
        check_error(response.status_code, response.headers, body, case)
        return
    assert response.status_code == 200, body[:300]
    assert response.headers["Content-Type"] == f"image/{case.format}"
    check_watermarked_still(body, case.format, max_width=480)


@pytest.mark.parametrize("name", corpus_names())
def test_hostile_source_gets_its_status_and_no_side_effects(
        client, upstream, good_photo, corpus, traps, canary, name):
    case = corpus[name]
    response = ask(client, upstream, case.body, format=case.format)
    check_answer(response, case)
    assert [call.request.url.split("?")[0] for call in upstream.calls] == [IMAGE_URL]
    assert traps.sprung(canary) == []
    check_still_serving(client, upstream, good_photo)


@pytest.mark.parametrize("name", [name for name in corpus_names() if "cut" in name
                                  or "without its end chunk" in name])
def test_a_partial_source_is_502_never_cached_and_fetched_afresh(client, upstream, good_photo,
                                                                 corpus, name):
    image_id = next(_fresh_ids)
    url = signed(base(url=image_id, format="png"))
    serve(upstream, image_id, corpus[name].body)
    first = client.get(url)
    check_error(first.status_code, first.headers, first.get_data(), corpus[name])
    # Upstream sends the whole image this time: the same URL renders it, fresh.
    upstream.replace(responses.GET, IMAGE_URL, body=good_photo, content_type="image/jpeg")
    second = client.get(url)
    assert second.status_code == 200 and second.headers["X-Cache"] == "MISS"
    assert len([c for c in upstream.calls if image_id in c.request.url]) == 2


def test_text_chunk_bombs_are_dropped_before_decoding(client, upstream, corpus):
    """Count bytes: the test process's peak RSS may grow by far less than one bomb inflates."""
    clear_refs = Path("/proc/self/clear_refs")
    for kind in ("zTXt", "iTXt", "iCCP"):
        case = corpus[f"png {kind} bomb"]
        clear_refs.write_text("5")  # VmHWM := VmRSS
        before = memory()["VmRSS"]
        response = ask(client, upstream, case.body, format="png")
        growth = memory()["VmHWM"] - before
        check_answer(response, case)
        assert growth < 64 * MB, f"{kind}: peak grew {growth / MB:.0f} MB"


def memory() -> dict[str, int]:
    """This process's VmRSS and VmHWM in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.mark.parametrize("name", ["gif with 200 frames", "gif with a 65535x65535 second frame"])
def test_only_the_first_gif_frame_is_rendered(client, upstream, corpus, name):
    response = ask(client, upstream, corpus[name].body, format="png")
    assert response.status_code == 200
    check_watermarked_still(response.get_data(), "png", flat=GIF_FIRST_FRAME, max_width=480)


@pytest.mark.parametrize("fmt", ["webp", "avif", "jpeg"])
def test_animated_gif_becomes_a_still_of_the_requested_format(client, upstream, fmt):
    response = ask(client, upstream, many_frame_gif(), format=fmt)
    assert response.status_code == 200
    data = response.get_data()
    assert MAGIC[fmt](data)
    assert response.headers["Content-Type"] == f"image/{fmt}"
    assert b"ANIM" not in data[:64] and b"ANMF" not in data  # WebP animation chunks
    with Image.open(io.BytesIO(data)) as img:
        assert getattr(img, "n_frames", 1) == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_body_over_the_byte_limit_is_413(client, upstream, good_photo, declared):
    body = oversize_png(4 * MAX_BYTES)
    headers = {"Content-Length": str(len(body))} if declared else {}
    response = ask(client, upstream, body, headers=headers)
    check_error(response.status_code, response.headers, response.get_data(),
                Case(b"", 413, "image_too_large"))
    check_still_serving(client, upstream, good_photo)


def test_declared_length_over_the_limit_is_refused_before_reading(client, upstream, good_photo):
    # The body is a valid small image: only the declared length can have refused it.
    response = ask(client, upstream, good_photo, headers={"Content-Length": str(MAX_BYTES + 1)})
    check_error(response.status_code, response.headers, response.get_data(),
                Case(b"", 413, "image_too_large"))


@pytest.mark.parametrize("status, content_type, body, expected", [
    (500, "text/html", f"<h1>500</h1><pre>Traceback (most recent call last):\n"
                       f"  File \"/usr/lib/python3/site-packages/x.py\"\n{UPSTREAM_SECRET}</pre>",
     Case(b"", 502, "upstream_error")),
    (404, "application/json", f'{{"error": "IMAGE_NOT_FOUND", "debug": "{UPSTREAM_SECRET}"}}',
     Case(b"", 404, "not_found")),
])
def test_upstream_error_text_is_never_passed_on(client, upstream, status, content_type, body,
                                                expected):
    upstream.get(IMAGE_URL, body=body, status=status, content_type=content_type)
    response = client.get(signed(base(url=next(_fresh_ids))))
    check_error(response.status_code, response.headers, response.get_data(), expected)


# --- pixel budget vs. the ImageMagick policy -------------------------------------------

@pytest.mark.parametrize("name", ["png header claims 100000x100000", "png grey bomb 15000x15000",
                                  "png 1-bit bomb 15000x15000"])
def test_bombs_are_413_under_the_largest_budget_too(lifted_client, upstream, good_photo, corpus,
                                                    name):
    response = ask(lifted_client, upstream, corpus[name].body)
    check_error(response.status_code, response.headers, response.get_data(), corpus[name])
    check_still_serving(lifted_client, upstream, good_photo)


@pytest.mark.parametrize("colour_type, bit_depth", [(0, 8), (3, 1)], ids=["grey", "palette-1bit"])
def test_well_formed_png_within_the_budget_is_never_called_unsupported(
        lifted_client, upstream, colour_type, bit_depth):
    # The largest square within the budget (49 MP at most, to bound this test's memory):
    # a well-formed PNG the budget admits must render, or at worst be refused as too large
    # (413) by ImageMagick's limits; it is never "not a supported image" (422).
    side = math.isqrt(min(lifted_client.budget, 49_000_000))
    response = ask(lifted_client, upstream,
                   png_bomb(side, colour_type=colour_type, bit_depth=bit_depth))
    assert response.status_code in (200, 413), (side, response.get_data()[:300])
