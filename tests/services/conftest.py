"""Fixtures for the service tests: photo-like sources built with Pillow, imaging engines."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw, PngImagePlugin

from qcimage.config import DEFAULT_WATERMARK_FONT, DEFAULT_WATERMARK_TEXT
from qcimage.services.imaging.engine import ImagingEngine
from qcimage.services.imaging.watermark import Watermark, WatermarkLayer


def default_watermark() -> Watermark:
    """The watermark the app builds from its default settings."""
    return Watermark(layers=(WatermarkLayer(text=DEFAULT_WATERMARK_TEXT,
                                            font=DEFAULT_WATERMARK_FONT),))


def photo(width: int, height: int, *, dark: bool = False, seed: int = 0) -> Image.Image:
    """Gradients, soft shapes and sensor-like noise, on a light or a dark base."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 45.0 if dark else 205.0
    span = 35.0
    channels = [
        base + span * np.sin(x / (width / 5.0)),
        base + span * np.cos(y / (height / 4.0)),
        base + span * np.sin((x + y) / ((width + height) / 6.0)),
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0.0, 6.0, (height, width, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    shade = (20, 30, 60) if dark else (120, 90, 70)
    draw.ellipse([width // 5, height // 4, width // 2, height * 3 // 4], fill=shade)
    draw.rectangle([width * 3 // 5, height // 6, width * 4 // 5, height // 2],
                   fill=tuple(255 - c for c in shade))
    return img


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="session")
def make_photo():
    """photo(width, height, *, dark=False, seed=0) -> a Pillow RGB image."""
    return photo


@pytest.fixture(scope="session")
def encode_image():
    """encode(image, pillow_format, **save_params) -> bytes."""
    return encode


@pytest.fixture(scope="session")
def light_photo() -> bytes:
    """2400x1600 light JPEG: wide enough for a 2000 px render."""
    return encode(photo(2400, 1600), "JPEG", quality=90)


@pytest.fixture(scope="session")
def dark_photo() -> bytes:
    """2400x1600 dark PNG: a lossless source keeps the dark tones exact."""
    return encode(photo(2400, 1600, dark=True, seed=1), "PNG", compress_level=1)


@pytest.fixture(scope="session")
def small_photo() -> bytes:
    """600x400 JPEG for tests that only need some pixels."""
    return encode(photo(600, 400, seed=2), "JPEG", quality=90)


@pytest.fixture(scope="session")
def realistic_photo() -> bytes:
    """4000x3000 JPEG, the size of a phone camera's photo."""
    return encode(photo(4000, 3000, seed=3), "JPEG", quality=90)


@pytest.fixture(scope="session")
def rotated_photo() -> bytes:
    """Stored landscape 1600x1200 with EXIF Orientation=6 (displayed portrait, rotated
    90 degrees clockwise), a red marker in the stored top-left corner, plus an ICC
    profile, camera EXIF tags and a comment, all of which must be stripped."""
    img = photo(1600, 1200, seed=4)
    ImageDraw.Draw(img).rectangle([0, 0, 199, 199], fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "QC Camera Co"  # Make
    exif[0x0131] = "firmware 1.0"  # Software
    return encode(img, "JPEG", quality=92, exif=exif.tobytes(), icc_profile=srgb_profile(),
                  comment=b"shot at the warehouse")


@pytest.fixture(scope="session")
def opaque_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "not for the public")
    return encode(photo(500, 400, seed=5), "PNG", pnginfo=info, icc_profile=srgb_profile())


@pytest.fixture(scope="session")
def alpha_png() -> bytes:
    """500x400 RGBA: a photo disc on a fully transparent background (top-left corner)."""
    img = photo(500, 400, seed=6).convert("RGBA")
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse([100, 50, 450, 350], fill=255)
    img.putalpha(mask)
    return encode(img, "PNG")


@pytest.fixture(scope="session")
def animated_gif() -> bytes:
    """Three 300x200 flat frames: red (200, 40, 40), then green, then blue."""
    colours = ((200, 40, 40), (40, 200, 40), (40, 40, 200))
    frames = [Image.new("RGB", (300, 200), colour) for colour in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                  loop=0)


@pytest.fixture(scope="session")
def webp_photo() -> bytes:
    return encode(photo(640, 480, seed=7), "WEBP", quality=90)


@pytest.fixture(scope="session")
def engine() -> ImagingEngine:
    """The shipped default watermark."""
    return ImagingEngine(default_watermark())


@pytest.fixture(scope="session")
def bare_engine() -> ImagingEngine:
    """No watermark at all: a reference to compare watermarked renders with (only ever
    constructed in code; check_watermark refuses it)."""
    return ImagingEngine(Watermark(layers=()))
