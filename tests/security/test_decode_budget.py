"""Every source under the byte limit keeps a worker under 300 MB, or is refused (413).

Progressive JPEGs hold their DCT coefficients whole while decoding (6 bytes a pixel at
4:4:4), and a tall source rendered at full width keeps a second full-size copy: both
went past 300 MB with sources inside the pixel limit. Memory is counted, not time.
"""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from qcimage.services.imaging import ImageTooLarge, RenderSpec
from qcimage.services.imaging.engine import ImagingEngine
from qcimage.services.imaging.probe import probe
from tests.services.conftest import default_watermark

MB = 1_000_000
# A worker rests at ~80 MB; these renders may add at most this much (the engine's budget
# plus the model's measured error).
GROWTH_LIMIT = 230 * MB


def detailed(width: int, height: int, fmt: str, **params) -> bytes:
    """A picture with some detail, a few MB at most in any format."""
    img = Image.new("RGB", (width, height), (200, 190, 180))
    draw = ImageDraw.Draw(img)
    for x in range(0, width, 97):
        draw.line([(x, 0), (width - x, height)], fill=(40, 80, 120), width=9)
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


@functools.cache
def jpeg(width: int, height: int, *, progressive: bool) -> bytes:
    """4:4:4: the most coefficients a pixel."""
    return detailed(width, height, "JPEG", quality=90, progressive=progressive,
                    subsampling=0)


def peak_growth(render) -> int:
    """How far this process's peak RSS rose over its RSS during render()."""
    status = Path("/proc/self/status")

    def field(name):
        line = next(line for line in status.read_text().splitlines() if line.startswith(name))
        return int(line.split()[1]) * 1024
    Path("/proc/self/clear_refs").write_text("5")
    before = field("VmRSS")
    render()
    return field("VmHWM") - before


@pytest.fixture(scope="module")
def engine():
    return ImagingEngine(default_watermark(), max_source_pixels=24_000_000)


def test_a_progressive_jpeg_counts_its_coefficients():
    data = jpeg(5600, 4200, progressive=True)
    assert probe(data).coefficient_bytes == 3 * 2 * 5600 * 4200  # 4:4:4, 2 bytes a sample
    assert probe(jpeg(5600, 4200, progressive=False)).coefficient_bytes == 0


@pytest.mark.parametrize("size, progressive, width", [
    ((5600, 4200), True, 2000),   # decoded at 1/2 to fit: was 346 MB over the worker's rest
    ((5600, 4200), False, 2000),  # decoded at 1/2 to fit: was 215 MB
    ((2000, 12000), True, 960),
])
def test_big_sources_render_within_the_budget(engine, size, progressive, width):
    data = bytearray(jpeg(*size, progressive=progressive))
    results = []
    growth = peak_growth(lambda: results.append(engine.render(data, RenderSpec(width, 80,
                                                                               "webp"))))
    assert results[0].width == width
    assert growth < GROWTH_LIMIT, f"grew {growth / MB:.0f} MB"


@pytest.mark.parametrize("progressive", [True, False])
def test_a_source_that_cannot_fit_at_that_width_is_413_before_decoding(engine, progressive):
    # 24 MP, 2000 wide: at width 2000 nothing can be scaled away (was 346-353 MB).
    data = jpeg(2000, 12000, progressive=progressive)
    growth = peak_growth(lambda: pytest.raises(ImageTooLarge, engine.render, data,
                                               RenderSpec(2000, 80, "webp")))
    assert growth < 16 * MB
    # The same source at a width that fits renders.
    assert engine.render(data, RenderSpec(480, 80, "webp")).width == 480


def test_renders_running_at_once_share_the_budget(engine):
    # Two render slots, two big renders at once: the worker stays within one budget,
    # the second render waiting for the first's share (was twice the growth).
    sources = [bytearray(jpeg(5600, 4200, progressive=True)) for _ in range(2)]
    results = []

    def render_both():
        threads = [threading.Thread(target=lambda data=data: results.append(
            engine.render(data, RenderSpec(2000, 80, "webp")))) for data in sources]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    growth = peak_growth(render_both)
    assert [r.width for r in results] == [2000, 2000]
    assert growth < GROWTH_LIMIT, f"grew {growth / MB:.0f} MB"


def test_the_largest_original_keeps_its_pixels_out_of_the_worker(engine):
    # Upstream's largest original, asked for whole (QCIMAGE_SOURCE_WIDTH=5000): a 5000x3750
    # PNG. Its 150 MB of pixels go to a file above the policy's area: was 174 MB over the
    # worker's rest, 355 MiB a worker with two render slots.
    data = bytearray(detailed(5000, 3750, "PNG", compress_level=1))
    source_bytes = len(data)
    results = []
    growth = peak_growth(lambda: results.append(engine.render(data, RenderSpec(960, 80,
                                                                               "webp"))))
    assert results[0].width == 960
    assert growth < source_bytes + 30 * MB, f"grew {growth / MB:.0f} MB"
