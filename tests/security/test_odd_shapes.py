"""Odd shapes: the watermark is visibly there at every aspect ratio, or the request fails.

Sources are flat, so every pixel that differs from the flat colour is the watermark's.
"""

from __future__ import annotations

import io
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from qcimage import create_app
from qcimage.services.imaging import RenderSpec, TooSmallToWatermark
from qcimage.services.imaging.engine import ImagingEngine
from qcimage.services.imaging.watermark import Watermark
from tests.security.conftest import Case, check_error, flat_png
from tests.security.test_hostile_images import ask, environment
from tests.services.conftest import default_watermark

FLAT = (90, 120, 160)
# A mark 8 px tall (the smallest placed) changes well over this many pixels.
MIN_CHANGED = 40
RATIOS = [Fraction(40), Fraction(20), Fraction(10), Fraction(5), Fraction(2), Fraction(1),
          Fraction(1, 2), Fraction(1, 5), Fraction(1, 10), Fraction(1, 20), Fraction(1, 40)]


def source(ratio: Fraction) -> bytes:
    """A flat source of ratio width:height, 2000 px on its longer side."""
    if ratio >= 1:
        return flat_png(2000, round(2000 / ratio), FLAT)
    return flat_png(round(2000 * ratio), 2000, FLAT)


def changed_pixels(data: bytes) -> tuple[int, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(pixels - FLAT).max(axis=2) > 24).sum()), img.size


@pytest.fixture(scope="module", params=["placed", "tiled"])
def engine(request):
    watermark = default_watermark()
    if request.param == "tiled":
        watermark = Watermark(layers=(replace(watermark.layers[0], tile=True),))
    return ImagingEngine(watermark)


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"{r.numerator}:{r.denominator}")
@pytest.mark.parametrize("width", [480])
def test_the_watermark_shows_at_every_aspect_ratio(engine, ratio, width):
    rendered = engine.render(source(ratio), RenderSpec(width, 80, "png"))
    changed, size = changed_pixels(rendered.data)
    assert changed >= MIN_CHANGED, f"{size}: only {changed} pixels carry the watermark"


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (8, 8), (16, 16), (10, 100), (300, 6)])
def test_outputs_too_small_for_a_visible_watermark_fail(engine, size):
    with pytest.raises(TooSmallToWatermark):
        engine.render(flat_png(*size, FLAT), RenderSpec(480, 80, "png"))


@pytest.mark.parametrize("size", [(24, 24), (40, 30), (100, 10), (100, 2000)])
def test_small_outputs_that_can_carry_it_are_watermarked(engine, size):
    changed, _ = changed_pixels(engine.render(flat_png(*size, FLAT),
                                              RenderSpec(480, 80, "png")).data)
    assert changed >= 20


def test_a_source_too_small_to_watermark_is_a_422_through_the_api(tmp_path, upstream):
    client = create_app(environment(tmp_path)).test_client()
    response = ask(client, upstream, flat_png(300, 8, FLAT))
    check_error(response.status_code, response.headers, response.get_data(),
                Case(b"", 422, "unsupported_image"))
    assert "too small or too thin" in response.get_json()["message"]
