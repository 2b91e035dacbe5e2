"""Image engine: the only package that imports Wand (ImageMagick).

- ``probe``: sniff and read a source's header and EXIF in pure Python (no Wand).
- ``policy``: ImageMagick under our policy.xml: the one way bytes reach a decoder, the
  limits, and the checks that they are in force.
- ``watermark``: what a watermark is: its layers, their bounds, its fingerprint (no Wand).
- ``overlays``: each layer drawn as an overlay, cached by width, composited on a frame.
- ``engine``: ``ImagingEngine``: decode, fit, watermark and encode one image.

This file holds what callers need without loading ImageMagick (the errors and
``RenderSpec``), and points ImageMagick at our policy before any module here loads it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from qcimage.services import ServiceError
from qcimage.vocabulary import OUTPUT_FORMATS

POLICY_DIR = Path(__file__).resolve().parent.parent.parent / "policy"

# MagickCore reads these when it starts, which Wand does lazily on first use (so after
# gunicorn forks, as long as nothing renders before). They must be set before Wand loads
# the library: every module here imports Wand after this package has run. Our folder is
# searched before /etc/ImageMagick-6, so our limits win.
os.environ["MAGICK_CONFIGURE_PATH"] = str(POLICY_DIR)
os.environ["MAGICK_THREAD_LIMIT"] = "1"


class ImagingError(ServiceError):
    """The image could not be produced for a reason that is ours, not the source's."""

    status = 500
    code = "imaging_failed"


class UnsupportedImage(ImagingError):
    """The source is not a JPEG, PNG, GIF or WebP image we can decode."""

    status = 422
    code = "unsupported_image"


class ImageTooLarge(ImagingError):
    """The source has more pixels than we are willing to decode."""

    status = 413
    code = "image_too_large"


class TooSmallToWatermark(UnsupportedImage):
    """The output would be too small or too thin for its watermark to be seen."""


class SourceTruncated(ImagingError):
    """The source ends before its image does: upstream sent part of it.

    Never decoded into an image with missing rows, never cached: the next request
    fetches it afresh. Upstream's fault, so a 502 like any other broken answer.
    """

    status = 502
    code = "upstream_error"


class WatermarkError(ImagingError):
    """The watermark could not be drawn: the image must not be served."""

    status = 500
    code = "watermark_failed"


@dataclass(frozen=True)
class RenderSpec:
    """What the caller asked for; the width is a maximum (sources are never enlarged)."""

    width: int
    quality: int
    format: str

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError("width must be positive")
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be between 1 and 100")
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}")
