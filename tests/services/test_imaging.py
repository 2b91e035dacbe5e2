"""Tests of the imaging engine against the real ImageMagick, under our policy."""

import ctypes
import io
import shutil
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps, JpegImagePlugin
from wand.api import library, libmagick
from wand.image import Image as WandImage

from qcimage.config import DEFAULT_WATERMARK_FONT as DEFAULT_FONT
from qcimage.services.imaging import (ImageTooLarge, RenderSpec, SourceTruncated,
                                      UnsupportedImage, WatermarkError)
from qcimage.services.imaging import engine as engine_module
from qcimage.services.imaging.engine import ImagingEngine
from qcimage.services.imaging.policy import (MAX_SIDE, available_output_formats,
                                             imagemagick_version, policy_in_force,
                                             policy_limits, read_first_frame,
                                             resource_limits)
from qcimage.services.imaging.probe import Probe, probe, sniff_format
from qcimage.services.imaging.watermark import Watermark, WatermarkLayer
from qcimage.vocabulary import GRAVITIES, OUTPUT_FORMATS
from tests.services.conftest import default_watermark

MAGIC = {
    "webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
    "jpeg": lambda data: data[:3] == b"\xff\xd8\xff",
    "png": lambda data: data[:8] == b"\x89PNG\r\n\x1a\n",
    "avif": lambda data: data[4:12] == b"ftypavif",
}


def pixels(data: bytes) -> np.ndarray:
    """Decoded RGB pixels as signed ints, so that differences do not wrap."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def difference(a: bytes, b: bytes) -> np.ndarray:
    """Per-pixel largest channel difference between two renders of the same size."""
    return np.abs(pixels(a) - pixels(b)).max(axis=2)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive, of the True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    assert rows.size, "nothing changed"
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size but carries almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def text_layer(**params) -> WatermarkLayer:
    return WatermarkLayer(text=params.pop("text", "QC PHOTO"), font=DEFAULT_FONT, **params)


# --- sizes and orientation ---

@pytest.mark.parametrize("width, expected", [(480, (480, 320)), (960, (960, 640)),
                                             (2000, (2000, 1333))])
def test_output_has_the_requested_width_and_keeps_the_aspect(engine, light_photo, width,
                                                             expected):
    rendered = engine.render(light_photo, RenderSpec(width, 80, "webp"))
    assert rendered.width == expected[0]
    assert abs(rendered.height - expected[1]) <= 1
    with Image.open(io.BytesIO(rendered.data)) as img:
        assert img.size == (rendered.width, rendered.height)


def test_small_sources_are_never_enlarged(engine, small_photo):
    rendered = engine.render(small_photo, RenderSpec(2000, 80, "webp"))
    assert (rendered.width, rendered.height) == (600, 400)


def test_odd_aspect_ratios_round_to_the_nearest_pixel(engine, make_photo, encode_image):
    source = encode_image(make_photo(1000, 333), "PNG")
    rendered = engine.render(source, RenderSpec(480, 80, "png"))
    assert (rendered.width, rendered.height) == (480, 160)


@pytest.mark.parametrize("width", [300, 960])  # 300 takes the jpeg:size shortcut, 960 not
def test_exif_orientation_is_applied(engine, rotated_photo, width):
    rendered = engine.render(rotated_photo, RenderSpec(width, 90, "png"))
    assert (rendered.width, rendered.height) == (width, width * 4 // 3)
    out = pixels(rendered.data)
    with Image.open(io.BytesIO(rotated_photo)) as source:
        expected = np.asarray(ImageOps.exif_transpose(source).resize(
            (rendered.width, rendered.height)).convert("RGB"), dtype=np.int16)

    def red_corner(img: np.ndarray) -> str:
        h, w = img.shape[0] // 10, img.shape[1] // 10
        corners = {"top_left": img[:h, :w], "top_right": img[:h, -w:],
                   "bottom_left": img[-h:, :w], "bottom_right": img[-h:, -w:]}
        return max(corners, key=lambda name: (corners[name][..., 0]
                                              - corners[name][..., 1]).mean())

    # Orientation 6 means "rotate 90 degrees clockwise": the stored top-left goes top-right.
    assert red_corner(out) == red_corner(expected) == "top_right"


@pytest.mark.parametrize("source, width, decoded", [
    ("realistic_photo", 960, (1500, 1125)),  # 3/8 scale: the first >= 1.5 x 960
    ("realistic_photo", 480, (1000, 750)),  # 1/4 scale
    ("realistic_photo", 1200, (2000, 1500)),  # 1/2 scale
    ("realistic_photo", 1440, (4000, 3000)),  # 1/2 would be under 1.5x: a full decode
    ("rotated_photo", 300, (600, 450)),  # hint in stored orientation: 600x450, not 450x600
])
def test_large_jpegs_decode_at_no_less_than_one_and_a_half_times_the_output(
        request, engine, monkeypatch, source, width, decoded):
    sizes = []

    def spy(img, data, fmt):
        read_first_frame(img, data, fmt)
        sizes.append(img.size)

    read_first_frame = engine_module.read_first_frame
    monkeypatch.setattr(engine_module, "read_first_frame", spy)
    engine.render(request.getfixturevalue(source), RenderSpec(width, 80, "webp"))
    assert sizes == [decoded]


def test_only_the_first_gif_frame_is_rendered(engine, animated_gif):
    rendered = engine.render(animated_gif, RenderSpec(960, 90, "png"))
    assert (rendered.width, rendered.height) == (300, 200)
    top_left = pixels(rendered.data)[:50, :50].reshape(-1, 3).mean(axis=0)
    assert np.allclose(top_left, (200, 40, 40), atol=6)


def test_realistic_camera_photo(engine, bare_engine, realistic_photo):
    spec = RenderSpec(960, 80, "webp")
    rendered = engine.render(realistic_photo, spec)
    assert (rendered.width, rendered.height) == (960, 720)
    changed = difference(rendered.data, bare_engine.render(realistic_photo, spec).data) > 40
    left, top, _, _ = bounding_box(changed)
    assert left > 960 / 2 and top > 720 / 2


# --- formats, quality, metadata ---

@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_output_really_is_the_requested_format(engine, small_photo, fmt):
    rendered = engine.render(small_photo, RenderSpec(480, 80, fmt))
    assert MAGIC[fmt](rendered.data)
    assert rendered.format == fmt
    assert rendered.mime == OUTPUT_FORMATS[fmt]
    with Image.open(io.BytesIO(rendered.data)) as img:
        assert img.size == (rendered.width, rendered.height) == (480, 320)


def test_every_output_format_is_available_here():
    assert available_output_formats() == frozenset(OUTPUT_FORMATS)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_lower_quality_makes_smaller_files(engine, small_photo, fmt):
    low = engine.render(small_photo, RenderSpec(600, 30, fmt))
    high = engine.render(small_photo, RenderSpec(600, 90, fmt))
    assert len(low.data) < len(high.data)


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_same_input_gives_the_same_bytes(engine, small_photo, fmt):
    # The cache and strong ETags rely on it: no timestamps, no randomness.
    spec = RenderSpec(480, 80, fmt)
    assert engine.render(small_photo, spec).data == engine.render(small_photo, spec).data


def test_jpeg_output_is_baseline_with_420_chroma(engine, make_photo, encode_image):
    progressive = encode_image(make_photo(800, 600), "JPEG", quality=95, progressive=True,
                               subsampling=0)
    rendered = engine.render(progressive, RenderSpec(480, 95, "jpeg"))
    with Image.open(io.BytesIO(rendered.data)) as img:
        assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0
        assert not img.info.get("progressive")


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_metadata_is_stripped(engine, rotated_photo, fmt):
    rendered = engine.render(rotated_photo, RenderSpec(480, 80, fmt))
    with Image.open(io.BytesIO(rendered.data)) as img:
        assert not img.getexif()
        assert not {"exif", "icc_profile", "comment", "xmp", "XML:com.adobe.xmp"} & set(img.info)
    for needle in (b"QC Camera Co", b"firmware", b"warehouse", b"Exif\x00\x00"):
        assert needle not in rendered.data


def test_png_output_has_no_text_time_or_profile_chunks(engine, opaque_png):
    rendered = engine.render(opaque_png, RenderSpec(480, 80, "png"))
    kinds = set(png_chunk_types(rendered.data))
    assert not kinds & {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"iCCP", b"eXIf"}
    assert b"not for the public" not in rendered.data


def test_opaque_sources_stay_opaque(engine, opaque_png, small_photo):
    for source, fmt in ((opaque_png, "png"), (small_photo, "webp"), (opaque_png, "avif")):
        with Image.open(io.BytesIO(engine.render(source, RenderSpec(480, 80, fmt)).data)) as img:
            assert img.mode == "RGB", fmt


def test_transparency_is_kept_where_the_format_has_it(engine, alpha_png):
    for fmt in ("png", "webp"):
        rendered = engine.render(alpha_png, RenderSpec(500, 90, fmt))
        with Image.open(io.BytesIO(rendered.data)) as img:
            assert img.mode == "RGBA"
            assert img.getpixel((5, 5))[3] == 0


def test_jpeg_output_flattens_transparency_onto_white(engine, alpha_png):
    rendered = engine.render(alpha_png, RenderSpec(500, 90, "jpeg"))
    assert pixels(rendered.data)[:20, :20].min() >= 245


# --- the watermark is really there ---

@pytest.mark.parametrize("source", ["light_photo", "dark_photo"])
@pytest.mark.parametrize("width", [480, 960, 2000])
def test_default_watermark_is_drawn_bottom_right_and_nowhere_else(
        request, engine, bare_engine, source, width):
    data = request.getfixturevalue(source)
    spec = RenderSpec(width, 90, "png")  # lossless, so untouched pixels compare exactly
    marked = engine.render(data, spec)
    diff = difference(marked.data, bare_engine.render(data, spec).data)
    height = marked.height
    layer = default_watermark().layers[0]
    margin = layer.margin * width
    # Where the layer may draw: its width, plus the halo's rounding, in the corner.
    region = np.zeros_like(diff, dtype=bool)
    region[int(height * 0.6):int(height - margin) + 2,
           int(width * (1 - layer.margin - layer.scale)) - 2:int(width - margin) + 2] = True
    assert diff[~region].max() == 0

    left, top, right, bottom = bounding_box(diff > 24)
    assert region[top, left] and region[bottom, right]
    # Sized from the output width, so it reads the same at 480 and 2000 pixels.
    assert 0.8 * layer.scale < (right - left + 1) / width <= layer.scale
    assert diff[top:bottom + 1, left:right + 1].mean() > 25


def test_watermark_survives_lossy_encoding(engine, bare_engine, dark_photo):
    spec = RenderSpec(960, 80, "webp")
    diff = difference(engine.render(dark_photo, spec).data,
                      bare_engine.render(dark_photo, spec).data)
    height, width = diff.shape
    corner = diff[int(height * 0.8):, int(width * 0.7):]
    rest = diff[:int(height * 0.6), :]
    assert corner.mean() > 10 * rest.mean()
    assert rest.mean() < 1.5


@pytest.fixture(scope="module")
def small_photo_bare(bare_engine, small_photo):
    return bare_engine.render(small_photo, RenderSpec(600, 90, "png")).data


@pytest.mark.parametrize("gravity", GRAVITIES)
def test_gravity_places_the_mark(small_photo, small_photo_bare, gravity):
    layer = text_layer(gravity=gravity, margin=0.03)
    rendered = ImagingEngine(Watermark((layer,))).render(small_photo, RenderSpec(600, 90, "png"))
    left, top, right, bottom = bounding_box(difference(rendered.data, small_photo_bare) > 0)
    width, height, margin = 600, 400, 18

    def third(low: int, high: int, size: int) -> str:
        centre = (low + high) / 2
        return ("start", "middle", "end")[min(2, int(3 * centre / size))]

    columns = {"west": "start", "east": "end"}
    rows = {"north": "start", "south": "end"}
    row, col = "middle", "middle"
    for part in gravity.split("_"):
        row = rows.get(part, row)
        col = columns.get(part, col)
    assert third(left, right, width) == col
    assert third(top, bottom, height) == row
    assert margin <= left and right < width - margin + 1
    assert margin <= top and bottom < height - margin + 1


def test_tiled_mark_covers_most_of_the_frame(small_photo, small_photo_bare):
    layer = text_layer(tile=True, scale=0.2, opacity=0.5)
    rendered = ImagingEngine(Watermark((layer,))).render(small_photo, RenderSpec(600, 90, "png"))
    changed = difference(rendered.data, small_photo_bare) > 8
    cells = [cell for band in np.array_split(changed, 4, axis=0)
             for cell in np.array_split(band, 4, axis=1)]
    assert sum(cell.mean() > 0.02 for cell in cells) >= 15


@pytest.fixture
def logo(tmp_path):
    """A 200x80 opaque green badge on a transparent background."""
    img = Image.new("RGBA", (200, 80), (0, 0, 0, 0))
    ImageDraw.Draw(img).rounded_rectangle([4, 4, 195, 75], radius=16, fill=(20, 160, 60, 255))
    path = tmp_path / "logo.png"
    img.save(path)
    return path


def test_logo_layer_is_drawn_at_its_gravity(logo, small_photo, small_photo_bare):
    engine = ImagingEngine(Watermark((WatermarkLayer(logo=logo, gravity="north_west",
                                                     opacity=1.0, scale=0.2),)))
    engine.check_watermark()
    rendered = engine.render(small_photo, RenderSpec(600, 90, "png"))
    left, top, right, bottom = bounding_box(difference(rendered.data, small_photo_bare) > 0)
    assert (left, top) == (12, 12)
    assert right - left + 1 == 120 and bottom - top + 1 == 48
    assert np.allclose(pixels(rendered.data)[40, 60], (20, 160, 60), atol=3)


def test_layers_are_all_drawn(logo, small_photo, small_photo_bare):
    layers = (WatermarkLayer(logo=logo, gravity="north_west"), text_layer(gravity="south_east"))
    rendered = ImagingEngine(Watermark(layers)).render(small_photo, RenderSpec(600, 90, "png"))
    changed = difference(rendered.data, small_photo_bare) > 0
    assert changed[:100, :150].any() and changed[300:, 400:].any()
    assert not changed[150:250, :].any()


def write(path, data: bytes):
    path.write_bytes(data)
    return path


BROKEN_LAYERS = {
    "missing logo": lambda tmp: WatermarkLayer(logo=tmp / "missing.png"),
    "corrupt logo": lambda tmp: WatermarkLayer(
        logo=write(tmp / "corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)),
    "logo not an image": lambda tmp: WatermarkLayer(logo=write(tmp / "logo.txt", b"text")),
    "missing font": lambda tmp: WatermarkLayer(text="QC", font=tmp / "missing.ttf"),
    "corrupt font": lambda tmp: WatermarkLayer(
        text="QC", font=write(tmp / "corrupt.ttf", DEFAULT_FONT.read_bytes()[:2000])),
    "font is a folder": lambda tmp: WatermarkLayer(text="QC", font=tmp),
    "font not a font": lambda tmp: WatermarkLayer(text="QC", font=write(tmp / "f.ttf", b"text")),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LAYERS))
def test_a_broken_watermark_fails_instead_of_serving_a_clean_image(tmp_path, small_photo, case):
    # The broken layer comes second: a good first layer must not make the image servable.
    engine = ImagingEngine(Watermark((text_layer(), BROKEN_LAYERS[case](tmp_path))))
    with pytest.raises(WatermarkError):
        engine.check_watermark()
    with pytest.raises(WatermarkError):
        engine.render(small_photo, RenderSpec(480, 80, "webp"))


def test_an_engine_without_layers_fails_the_start_up_check():
    with pytest.raises(WatermarkError):
        ImagingEngine(Watermark(layers=())).check_watermark()


def test_default_watermark_passes_the_start_up_check(engine):
    engine.check_watermark()


def test_concurrent_renders_share_overlays_safely(engine, small_photo):
    spec = RenderSpec(500, 80, "webp")
    expected = engine.render(small_photo, spec).data
    results = []

    def work():
        results.extend(engine.render(small_photo, spec).data for _ in range(3))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 12


# --- fingerprint ---

def test_fingerprint_is_stable():
    assert default_watermark().fingerprint() == default_watermark().fingerprint()


def test_fingerprint_changes_with_every_parameter():
    base = text_layer()
    variants = [text_layer(opacity=0.5), text_layer(text="OTHER"), text_layer(tile=True),
                text_layer(gravity="north"), text_layer(scale=0.3), text_layer(margin=0.05)]
    prints = {Watermark((layer,)).fingerprint() for layer in [base, *variants]}
    assert len(prints) == len(variants) + 1


def test_fingerprint_changes_with_file_bytes(tmp_path, logo):
    font = tmp_path / "font.ttf"
    shutil.copyfile(DEFAULT_FONT, font)
    watermark = Watermark((WatermarkLayer(logo=logo), WatermarkLayer(text="QC", font=font)))
    before = watermark.fingerprint()
    logo.write_bytes(logo.read_bytes() + png_chunk(b"tEXt", b"v\x002"))
    after_logo = watermark.fingerprint()
    font.write_bytes(font.read_bytes() + b"\x00")
    assert len({before, after_logo, watermark.fingerprint()}) == 3


def test_fingerprint_of_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(WatermarkError):
        Watermark((WatermarkLayer(logo=tmp_path / "gone.png"),)).fingerprint()


# --- sniffing and probing ---

def test_probe_reads_each_allowed_format(make_photo, encode_image, light_photo, opaque_png,
                                         animated_gif, webp_photo, rotated_photo):
    rgba = make_photo(320, 240).convert("RGBA")
    cases = [
        (light_photo, ("jpeg", 2400, 1600)),
        (rotated_photo, ("jpeg", 1600, 1200)),  # the stored size, before orientation
        (opaque_png, ("png", 500, 400)),
        (animated_gif, ("gif", 300, 200)),
        (webp_photo, ("webp", 640, 480)),  # VP8
        (encode_image(rgba, "WEBP", lossless=True), ("webp", 320, 240)),  # VP8L
        (encode_image(rgba, "WEBP", quality=80), ("webp", 320, 240)),  # VP8X
    ]
    for data, expected in cases:
        assert sniff_format(data) == expected[0]
        probed = probe(data)
        assert (probed.format, probed.width, probed.height) == expected


def test_probing_does_not_load_imagemagick():
    code = ("import sys; from qcimage.services.imaging.probe import probe; "
            "from qcimage.services.pipeline import ProductLookup; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wand'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_probe_reads_orientation_and_the_shown_size(rotated_photo, opaque_png):
    assert probe(rotated_photo) == Probe("jpeg", 1600, 1200, orientation=6)
    assert probe(rotated_photo).shown_size == (1200, 1600)
    assert probe(opaque_png).shown_size == (500, 400)


NOT_IMAGES = {
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" '
           b'height="9"><image href="file:///etc/passwd"/></svg>',
    "mvg": b"push graphic-context\nviewbox 0 0 640 480\nimage over 0,0 0,0 '/etc/passwd'\n"
           b"pop graphic-context\n",
    "msl": b'<?xml version="1.0"?><image><read filename="/etc/passwd"/></image>',
    "text": b"just some text\n",
    "ps": b"%!PS-Adobe-3.0\n1 0 0 setrgbcolor\nshowpage\n",
    "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    "html": b"<!doctype html><title>Not found</title>",
    "bmp": b"BM" + b"\x00" * 60,
    "empty": b"",
}


@pytest.mark.parametrize("kind", sorted(NOT_IMAGES))
def test_non_images_are_unsupported(engine, kind):
    data = NOT_IMAGES[kind]
    for check in (sniff_format, probe,
                  lambda data: engine.render(data, RenderSpec(480, 80, "webp"))):
        with pytest.raises(UnsupportedImage):
            check(data)


def with_png_header(png: bytes, width: int, height: int) -> bytes:
    """png with its IHDR size replaced (and a correct CRC)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]


GARBLED = {
    "jpeg cut before its frame header": lambda jpeg, png, gif, webp: jpeg[:20],
    "jpeg scan before frame header":
        lambda jpeg, png, gif, webp: b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,
    "jpeg segment running past the end":
        lambda jpeg, png, gif, webp: b"\xff\xd8\xff\xe0\xff\xf0" + b"\x00" * 10,
    "jpeg junk between segments":
        lambda jpeg, png, gif, webp: b"\xff\xd8\xff\xe0\x00\x04\x00\x00\x42" + b"\x00" * 20,
    "png cut inside IHDR": lambda jpeg, png, gif, webp: png[:20],
    "png IHDR with a bad crc": lambda jpeg, png, gif, webp: flip_byte(png, 20),
    "png with zero width": lambda jpeg, png, gif, webp: with_png_header(png, 0, 400),
    "png without IHDR first": lambda jpeg, png, gif, webp: png[:12] + b"IDAT" + png[16:],
    "gif cut in the screen descriptor": lambda jpeg, png, gif, webp: gif[:9],
    "gif ending before any frame": lambda jpeg, png, gif, webp: gif[:13] + b"\x3b",
    "webp cut in the frame header": lambda jpeg, png, gif, webp: webp[:24],
    "webp with an unknown chunk": lambda jpeg, png, gif, webp: webp[:12] + b"VP9 " + webp[16:],
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_truncated_or_garbled_headers_are_unsupported(engine, small_photo, opaque_png,
                                                      animated_gif, webp_photo, case):
    data = GARBLED[case](small_photo, opaque_png, animated_gif, webp_photo)
    with pytest.raises(UnsupportedImage):
        probe(data)
    with pytest.raises(UnsupportedImage):
        engine.render(data, RenderSpec(480, 80, "webp"))


def test_a_body_that_is_not_what_the_header_says_is_unsupported(engine):
    # A valid PNG header followed by garbage reaches the decoder, which must fail cleanly.
    data = png_header_only(64, 64)[:33] + png_chunk(b"IDAT", b"garbage") + png_chunk(b"IEND", b"")
    with pytest.raises(UnsupportedImage):
        engine.render(data, RenderSpec(480, 80, "webp"))


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 6_000),
                                           (MAX_SIDE + 1, 10)])
def test_oversized_sources_are_refused_before_decoding(engine, width, height):
    # These PNGs carry (almost) no pixel data: decoding them would fail differently.
    data = png_header_only(width, height)
    assert probe(data) == Probe("png", width, height)
    with pytest.raises(ImageTooLarge):
        engine.render(data, RenderSpec(480, 80, "webp"))


def test_the_pixel_budget_is_configurable(small_photo):
    with pytest.raises(ImageTooLarge):
        ImagingEngine(default_watermark(), max_source_pixels=1000).render(
            small_photo, RenderSpec(480, 80, "webp"))


def test_imagemagick_resource_limits_are_reported_as_too_large():
    # With our own pixel budget lifted, the policy's area and disk limits still stop an
    # 80 MP source: its pixel cache may neither stay in memory nor spill to disk.
    engine = ImagingEngine(default_watermark(), max_source_pixels=10**9)
    with pytest.raises(ImageTooLarge) as caught:
        engine.render(png_header_only(16_000, 5_000), RenderSpec(480, 80, "webp"))
    assert type(caught.value.__cause__).__name__ == "CacheError"


# --- the policy in force ---

def test_our_resource_limits_are_in_force():
    ours = policy_limits()
    assert {"width", "height", "area", "memory", "map", "disk", "thread"} <= set(ours)
    assert "time" not in ours
    in_force = resource_limits()
    assert {name: in_force[name] for name in ours} == ours
    assert in_force["time"] >= 2**62  # unlimited: a time limit would kill long-lived workers
    assert MAX_SIDE == ours["width"] == ours["height"]
    assert policy_in_force()


# MagickCore 6's CacheType: where an image's pixels are kept.
_MEMORY_CACHE, _MAP_CACHE, _DISK_CACHE = 1, 2, 3


def pixel_cache_type(data: bytes, fmt: str) -> int:
    """Where ImageMagick keeps the pixels of ``data`` once decoded under our policy."""
    libmagick.GetImagePixelCacheType.argtypes = [ctypes.c_void_p]
    libmagick.GetImagePixelCacheType.restype = ctypes.c_int
    with WandImage() as img:
        read_first_frame(img, data, fmt)
        return libmagick.GetImagePixelCacheType(library.GetImageFromMagickWand(img.wand))


@pytest.fixture(scope="module")
def big_png(make_photo, encode_image) -> bytes:
    """3400x2450 PNG: 8.3 MP, just above the policy's area."""
    return encode_image(make_photo(3400, 2450, seed=9), "PNG", compress_level=1)


def test_a_source_above_the_policy_area_keeps_its_pixels_in_a_file(big_png, light_photo):
    # In memory its pixels would add 67 MB (8 bytes a pixel) to the worker; in a file read
    # and written in rows (never memory-mapped, whose pages would count again) they add none.
    assert pixel_cache_type(big_png, "png") == _DISK_CACHE
    assert pixel_cache_type(light_photo, "jpeg") == _MEMORY_CACHE


def test_a_source_decoded_into_a_file_is_watermarked_like_any_other(
        engine, bare_engine, big_png):
    spec = RenderSpec(960, 90, "png")  # lossless, so untouched pixels compare exactly
    marked = engine.render(big_png, spec)
    diff = difference(marked.data, bare_engine.render(big_png, spec).data)
    assert (marked.width, marked.height) == (960, round(2450 * 960 / 3400))
    left, top, _, _ = bounding_box(diff > 0)  # the halo's faintest pixels included
    assert left > 0.6 * marked.width and top > 0.6 * marked.height
    left, top, right, bottom = bounding_box(diff > 24)
    assert diff[top:bottom + 1, left:right + 1].mean() > 25


@pytest.mark.parametrize("coder, data", [
    ("svg", NOT_IMAGES["svg"]), ("mvg", NOT_IMAGES["mvg"]), ("msl", NOT_IMAGES["msl"]),
    ("txt", NOT_IMAGES["text"]), ("ps", NOT_IMAGES["ps"]), ("xc", b"red"),
    ("label", b"hello"), ("inline", b"data:image/gif;base64,R0lGODlhAQABAAAAACw=")])
def test_policy_refuses_other_coders_even_when_forced(engine, coder, data):
    # Sniffing never lets these through; pretend it did, to test the policy behind it.
    with pytest.raises(UnsupportedImage) as caught:
        engine.render(data, RenderSpec(480, 80, "png"), Probe(coder, 10, 10))
    assert "security policy" in str(caught.value.__cause__)


def test_imagemagick_version_names_the_library():
    assert imagemagick_version().startswith("ImageMagick 6.")


# --- argument checks ---

@pytest.mark.parametrize("params", [
    {}, {"text": "QC", "logo": DEFAULT_FONT, "font": DEFAULT_FONT}, {"text": "QC"},
    {"text": "   ", "font": DEFAULT_FONT}, {"logo": DEFAULT_FONT, "font": DEFAULT_FONT},
    {"text": "QC", "font": DEFAULT_FONT, "gravity": "top"},
    {"text": "QC", "font": DEFAULT_FONT, "opacity": 0},
    {"text": "QC", "font": DEFAULT_FONT, "opacity": 1.5},
    {"text": "QC", "font": DEFAULT_FONT, "scale": 0},
    {"text": "QC", "font": DEFAULT_FONT, "margin": 0.5}])
def test_invalid_layers_are_refused(params):
    with pytest.raises(ValueError):
        WatermarkLayer(**params)


@pytest.mark.parametrize("width, quality, fmt", [(0, 80, "webp"), (480, 0, "webp"),
                                                 (480, 101, "webp"), (480, 80, "jpg"),
                                                 (480, 80, "gif")])
def test_invalid_render_specs_are_refused(width, quality, fmt):
    with pytest.raises(ValueError):
        RenderSpec(width, quality, fmt)


def test_unknown_resize_filter_is_refused():
    with pytest.raises(ValueError):
        ImagingEngine(default_watermark(), resize_filter="bogus")


def test_webp_method_trades_time_for_bytes(light_photo):
    small = ImagingEngine(default_watermark(), webp_method=6)
    fast = ImagingEngine(default_watermark(), webp_method=0)
    spec = RenderSpec(960, 80, "webp")
    assert len(small.render(light_photo, spec).data) < len(fast.render(light_photo, spec).data)
    with pytest.raises(ValueError):
        ImagingEngine(default_watermark(), webp_method=7)


def test_bytearray_source_is_decoded_in_place_and_consumed(light_photo):
    engine = ImagingEngine(default_watermark())
    spec = RenderSpec(480, 80, "png")
    owned = bytearray(light_photo)
    rendered = engine.render(owned, spec)
    assert owned == bytearray()
    assert rendered.data == engine.render(light_photo, spec).data


def test_bytearray_garbage_is_still_unsupported(opaque_png):
    with pytest.raises(UnsupportedImage):
        ImagingEngine(default_watermark()).render(
            bytearray(opaque_png[:100] + b"\x00" * 5000), RenderSpec(480, 80, "png"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_for_every_source_format(fmt):
    # Stored landscape with a red stored-top-left corner; orientation 6 shows it
    # rotated 90 degrees clockwise, so red lands top right in a portrait frame.
    stored = Image.new("RGB", (800, 600), (40, 90, 160))
    ImageDraw.Draw(stored).rectangle([0, 0, 120, 120], fill=(230, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, fmt, exif=exif.tobytes(), quality=95)
    source = buffer.getvalue()
    assert probe(source).shown_size == (600, 800)
    rendered = ImagingEngine(default_watermark()).render(source, RenderSpec(300, 90, "png"))
    assert (rendered.width, rendered.height) == (300, 400)
    with Image.open(io.BytesIO(rendered.data)) as out:
        red, green, _ = out.convert("RGB").getpixel((290, 10))
        assert red > 180 and green < 80, (fmt, out.getpixel((290, 10)))


def test_area_resize_is_close_to_lanczos(light_photo):
    spec = RenderSpec(480, 100, "png")

    def luma(filter_name):
        rendered = ImagingEngine(Watermark(layers=()), resize_filter=filter_name).render(
            light_photo, spec)
        with Image.open(io.BytesIO(rendered.data)) as img:
            return np.asarray(img.convert("L"), dtype=np.float64)

    reference, area = luma("lanczos"), luma("area")
    assert area.shape == reference.shape
    psnr = 10 * np.log10(255 ** 2 / ((area - reference) ** 2).mean())
    assert psnr > 38, psnr


def test_only_critical_and_small_pixel_chunks_reach_the_decoder():
    # A palette PNG with transparency, gamma, a text chunk, a profile and a private chunk.
    img = Image.new("P", (64, 48), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    out = io.BytesIO()
    img.save(out, "PNG", transparency=0)
    data = out.getvalue()
    extra = (png_chunk(b"gAMA", struct.pack(">I", 45455)) + png_chunk(b"tEXt", b"a\x00b")
             + png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(4096)))
             + png_chunk(b"prVt", bytes(600)) + png_chunk(b"bKGD", bytes(1024)))
    data = data[:33] + extra + data[33:]
    probed = probe(data)
    kept = probed.essential(data)
    assert png_chunk_types(kept) == [b"IHDR", b"gAMA", b"PLTE", b"tRNS", b"IDAT", b"IEND"]
    assert probe(kept) == probed
    # Nothing to drop: the very same bytes, not a copy.
    plain = bytearray(opaque := out.getvalue())
    assert probe(opaque).essential(plain) is plain


def test_a_png_flooded_with_chunks_is_refused_before_walking_them_all():
    flood = png_header_only(64, 64)[:33] + png_chunk(b"tEXt", b"") * 100_001
    with pytest.raises(UnsupportedImage):
        probe(flood)


def test_missing_data_the_header_walk_cannot_see_is_caught_from_the_decoder(engine,
                                                                            light_photo):
    # Cut in the scan, then given an end marker: probe() finds it whole, libjpeg does not
    # (it would paint the rest grey and only warn).
    cut = light_photo[:len(light_photo) // 2] + b"\xff\xd9"
    assert probe(cut).format == "jpeg"
    with pytest.raises(SourceTruncated):
        engine.render(bytearray(cut), RenderSpec(480, 80, "webp"))


@pytest.mark.parametrize("cut", ["scan", "end marker"])
def test_a_jpeg_cut_short_is_truncated_not_unsupported(light_photo, cut):
    data = light_photo[:len(light_photo) // 2] if cut == "scan" else light_photo[:-2]
    with pytest.raises(SourceTruncated):
        probe(data)
