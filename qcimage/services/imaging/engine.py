"""ImagingEngine: decode a probed source, fit it, watermark it, and encode it."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wand.color import Color
from wand.exceptions import (
    CacheError,
    CacheFatalError,
    ResourceLimitError,
    ResourceLimitFatalError,
    WandException,
)
from wand.image import FILTER_TYPES, Image

from qcimage.services.imaging import ImageTooLarge, ImagingError, RenderSpec, UnsupportedImage
from qcimage.services.imaging.policy import (CODERS, MAX_SIDE, available_output_formats,
                                             imagemagick_version, read_first_frame)
from qcimage.services.imaging.probe import Probe, output_format, probe
from qcimage.services.imaging.overlays import WatermarkPainter
from qcimage.services.imaging.watermark import Watermark
from qcimage.vocabulary import OUTPUT_FORMATS

if TYPE_CHECKING:
    from qcimage.groups import ImagingSettings

# Fast settings that still compress well. PNG ignores the quality: zlib level 3 with
# adaptive filtering is most of the size of level 9 for a fraction of the time.
# WebP at quality 100 would switch to lossless (huge, slow on photos) unless told not to.
_ENCODER_OPTIONS = {
    "webp": {"webp:lossless": "false"},
    "jpeg": {"jpeg:sampling-factor": "2x2,1x1,1x1"},
    "png": {"png:compression-level": "3", "png:compression-filter": "5"},
    "avif": {},
}
# ImageMagick's HEIC coder makes quality 100 lossless (4:4:4, several times bigger and
# slower); like WebP, our quality scale stays lossy. This ImageMagick (6.9.11-60) has no
# encoder speed option, so libheif's default AV1 speed applies.
_AVIF_MAX_QUALITY = 99
# The decode budget's model (ImagingEngine._decode_scale), in bytes a pixel.
_DECODED_BYTES_PER_PIXEL = 8
_OUTPUT_BYTES_PER_PIXEL = 6
# What the renders running at once may add to a worker (~80 MB at rest) that must stay
# under 300 MB; pixel caches above the policy's area, in files, count too, which keeps
# those files within the policy's disk limit.
_DECODE_BUDGET = 220_000_000
_RESOURCE_ERRORS = (ResourceLimitError, ResourceLimitFatalError, CacheError, CacheFatalError)
_TRANSPOSED_IM = frozenset({"left_top", "right_top", "right_bottom", "left_bottom"})
# EXIF orientation 1-8 as ImageMagick names it.
_IM_ORIENTATIONS = (None, "top_left", "top_right", "bottom_right", "bottom_left",
                    "left_top", "right_top", "right_bottom", "left_bottom")


@dataclass(frozen=True)
class Rendered:
    """An encoded, watermarked image."""

    data: bytes
    format: str
    mime: str
    width: int
    height: int


class ImagingEngine:
    """Renders watermarked images; one per worker process, safe to share between threads."""

    def __init__(self, watermark: Watermark, *, max_source_pixels: int = 50_000_000,
                 resize_filter: str = "area", webp_method: int = 2) -> None:
        # "area" is ImageMagick's ScaleImage, which averages the source pixels under each
        # output pixel: for our downscales it is faster than resize() with any filter and
        # closer to Lanczos (2000->960 px: 28 ms and 43.9 dB, triangle 42 ms and 40.9 dB).
        if resize_filter != "area" and resize_filter not in FILTER_TYPES:
            raise ValueError(f"unknown resize filter {resize_filter!r}")
        if not 0 <= webp_method <= 6:
            raise ValueError("webp_method must be 0-6")
        # libwebp's effort: 2 encodes a 960 px photo ~2x faster than 4 for ~3% more
        # bytes at the same quality (BENCHMARKS.md); 6 is smallest and slowest.
        self.webp_method = webp_method
        self.watermark = watermark
        self.max_source_pixels = max_source_pixels
        self.resize_filter = resize_filter
        self._painter = WatermarkPainter(watermark)
        # Shared by the renders this worker runs at once (QCIMAGE_RENDER_SLOTS), so the
        # worker, not each render, stays within it.
        self._memory = MemoryBudget(max(_DECODE_BUDGET,
                                        _DECODED_BYTES_PER_PIXEL * max_source_pixels))

    @classmethod
    def from_settings(cls, watermark: Watermark, imaging: ImagingSettings) -> ImagingEngine:
        return cls(watermark, max_source_pixels=imaging.max_source_pixels,
                   resize_filter=imaging.resize_filter, webp_method=imaging.webp_method)

    def check_watermark(self) -> None:
        """Draw every layer once on a small canvas; WatermarkError if any cannot be drawn."""
        self._painter.check()

    def render(self, source: bytes | bytearray, spec: RenderSpec,
               probed: Probe | None = None, painter: WatermarkPainter | None = None) -> Rendered:
        """Decode source, fit it to spec.width, watermark, strip and encode it.

        probed is the source's probe() when the caller has it, so the header is read once.
        painter draws another watermark than the engine's own (a tenant's).
        A bytearray source is consumed: it is emptied once decoded, so the encoded bytes
        are not kept alive next to the decoded pixels during the resize.
        """
        probed = probed or probe(source)
        width, height = probed.width, probed.height
        if max(width, height) > MAX_SIDE or width * height > self.max_source_pixels:
            raise ImageTooLarge(
                f"the source is {width}x{height}: at most {self.max_source_pixels} pixels "
                f"and {MAX_SIDE} on a side are accepted")
        if spec.format not in available_output_formats():
            raise ImagingError(f"this server cannot write {spec.format}")
        scale, cost = self._decode_plan(probed, spec.width, len(source))
        with self._memory.hold(cost):
            return self._decode_and_encode(source, spec, probed, scale, painter)

    def _decode_and_encode(self, source: bytes | bytearray, spec: RenderSpec, probed: Probe,
                           scale: int, painter: WatermarkPainter | None) -> Rendered:
        """The render itself, decoding at 1/scale: within its share of the budget."""
        width, height = probed.width, probed.height
        decoded = probed.essential(source)
        if decoded is not source and isinstance(source, bytearray):
            source.clear()  # consumed: only the essential copy stays for the decoder
        with Image() as img:
            try:
                hinted = scale > 1 and _hint_jpeg_size(img, probed, scale)
                read_first_frame(img, decoded, probed.format)
                if isinstance(decoded, bytearray):
                    decoded.clear()
                if img.orientation == "undefined" and probed.orientation != 1:
                    # ImageMagick 6 reads orientation from JPEG EXIF only; a PNG's eXIf or
                    # a WebP's EXIF chunk would leave the photo sideways.
                    img.orientation = _IM_ORIENTATIONS[probed.orientation]
                had_alpha = img.alpha_channel
                self._fit(img, spec.width, (width, height) if hinted else None)
            except _RESOURCE_ERRORS as exc:
                raise ImageTooLarge("the source needs more memory than allowed") from exc
            except WandException as exc:
                raise UnsupportedImage(
                    f"the {probed.format} source cannot be decoded") from exc
            (painter or self._painter).apply(img)
            return self._encode(img, spec, had_alpha)

    def _decode_plan(self, probed: Probe, max_width: int,
                     source_bytes: int) -> tuple[int, int]:
        """(n, bytes): decode at 1/n of the stored size, costing that much at its peak;
        ImageTooLarge when no n fits the budget.

        A render's peak over the worker's baseline is, measured within ~10 MB: the source
        bytes, 8 bytes a decoded pixel (ImageMagick's Q16 cache: in memory up to the
        policy's area, 8 MP, in a file above it), and the larger of a progressive JPEG's
        coefficients (held while it decodes) and ~6 bytes an output pixel (the resized
        copy and the encoder's buffers). The budget keeps a worker (~80 MB at rest) under
        300 MB and its cache files under the policy's disk limit; a larger
        QCIMAGE_MAX_SOURCE_PIXELS raises it to 8 bytes a pixel of that.
        """
        shown_w, shown_h = probed.shown_size
        target_w = min(max_width, shown_w)
        output = _OUTPUT_BYTES_PER_PIXEL * target_w * max(1, round(shown_h * target_w / shown_w))
        scales = dict(_JPEG_SCALES)
        for n in _jpeg_denominators(probed, target_w) if probed.format == "jpeg" else [1]:
            scale = scales.get(n, 1)
            decoded = math.ceil(probed.width * scale) * math.ceil(probed.height * scale)
            cost = (source_bytes + _DECODED_BYTES_PER_PIXEL * decoded
                    + max(probed.coefficient_bytes, output))
            if cost <= self._memory.total:
                return n, cost
        raise ImageTooLarge(
            f"the {probed.width}x{probed.height} source would need more memory than allowed "
            f"to render at width {target_w}; ask for a smaller width")

    def _fit(self, img: Image, max_width: int, full_size: tuple[int, int] | None) -> None:
        """Resize to the output size, then apply EXIF orientation and drop page offsets.

        full_size is the source's stored size when the decode was scaled down.
        """
        # Resizing before orienting rotates the small image instead of the source.
        transposed = img.orientation in _TRANSPOSED_IM
        width, height = img.size
        source_w = (full_size or img.size)[1 if transposed else 0]
        if transposed:
            width, height = height, width
        target_w = min(max_width, source_w)
        target_h = max(1, round(height * target_w / width))
        stored = (target_h, target_w) if transposed else (target_w, target_h)
        if img.size != stored:
            if self.resize_filter == "area":
                img.scale(*stored)
            else:
                img.resize(*stored, filter=self.resize_filter)
        img.auto_orient()
        img.reset_coords()
        if img.colorspace != "srgb":  # CMYK and gray JPEGs: watermark and encode as sRGB
            img.transform_colorspace("srgb")
        img.get_exception()  # warnings tolerated, as for the decode

    def settings_key(self) -> str:
        """ImageMagick's version and the engine settings that change output bytes."""
        return f"{imagemagick_version()}|{self.resize_filter}|webp-m{self.webp_method}"

    def _encode(self, img: Image, spec: RenderSpec, had_alpha: bool) -> Rendered:
        try:
            if spec.format == "jpeg" and had_alpha:
                img.background_color = Color("white")
                img.alpha_channel = "remove"
            if spec.format == "jpeg" or not had_alpha:
                # Semi-transparent marks switch alpha on; an opaque source stays opaque.
                img.alpha_channel = "off"
            img.strip()
            img.depth = 8
            # Progressive/interlaced sources would otherwise pass it on to the output.
            img.interlace_scheme = "no"
            img.format = CODERS[spec.format]
            if spec.format != "png":
                quality = spec.quality
                if spec.format == "avif":
                    quality = min(quality, _AVIF_MAX_QUALITY)
                img.compression_quality = quality
            for key, value in _ENCODER_OPTIONS[spec.format].items():
                img.options[key] = value
            if spec.format == "webp":
                img.options["webp:method"] = str(self.webp_method)
            data = img.make_blob()
        except WandException as exc:
            raise ImagingError(f"the image could not be encoded as {spec.format}") from exc
        if not data or output_format(data) != spec.format:
            raise ImagingError(f"the encoder did not produce {spec.format}")
        return Rendered(data=data, format=spec.format, mime=OUTPUT_FORMATS[spec.format],
                        width=img.width, height=img.height)


class MemoryBudget:
    """Bytes the renders running at once may add to the worker; a render waits its turn."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._free >= amount)
            self._free -= amount
        try:
            yield
        finally:
            with self._changed:
                self._free += amount
                self._changed.notify_all()


def _hint_jpeg_size(img: Image, probed: Probe, denominator: int) -> bool:
    """Ask libjpeg for a decode at 1/denominator of the stored size."""
    out_w, out_h = probed.shown_size
    hint_w = out_w // denominator
    hint_h = max(1, out_h // denominator)
    stored = (hint_h, hint_w) if probed.transposed else (hint_w, hint_h)
    img.options["jpeg:size"] = "{}x{}".format(*stored)
    return True


def _jpeg_denominators(probed: Probe, target_w: int) -> list[int]:
    """Decode scales (1/n) worth trying for a JPEG shown target_w wide, best first."""
    # libjpeg-turbo decodes at 1/2, 3/8, 1/4 or 1/8 scale for a fraction of the cost
    # (ImageMagick asks for 1/n and libjpeg-turbo picks the smallest m/8 >= 1/n). We pick
    # the smallest scale that keeps at least 1.5x the output, leaving the last reduction
    # to the area-averaging resize: letting the DCT scaling do it all aliases on fine
    # textures such as fabric. Measured on a 4000x3000 photo to 960 px against a full
    # decode resized with Lanczos: 1/2 (2000 px) 68.6 ms, 42.8 dB; 3/8 (1500 px) 58.5 ms,
    # 42.4 dB; on a fabric-like texture 29.9 and 32.1 dB. Smaller scales that still give
    # the whole output width come after it, for sources the memory budget refuses whole.
    out_w = probed.shown_size[0]
    best = next((n for n, scale in _JPEG_SCALES if out_w * scale >= 1.5 * target_w), 1)
    coarser = [n for n, scale in reversed(_JPEG_SCALES)
               if n > best and out_w * scale >= target_w]
    return [best, *coarser]


# (n asked of ImageMagick, the scale libjpeg-turbo then decodes at), smallest first.
_JPEG_SCALES = ((8, 1 / 8), (4, 1 / 4), (3, 3 / 8), (2, 1 / 2))
