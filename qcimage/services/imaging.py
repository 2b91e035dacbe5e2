"""Image engine: sniff and probe sources, then resize, watermark, strip and encode them."""

import ctypes
import hashlib
import json
import math
import os
import struct
import threading
import zlib
from xml.etree import ElementTree
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from qcimage.services import ServiceError

POLICY_DIR = Path(__file__).resolve().parent.parent / "policy"

# MagickCore reads these when it starts, which Wand does lazily on first use (so after
# gunicorn forks, as long as nothing renders before). They must be set before Wand loads
# the library. Our folder is searched before /etc/ImageMagick-6, so our limits win.
os.environ["MAGICK_CONFIGURE_PATH"] = str(POLICY_DIR)
os.environ["MAGICK_THREAD_LIMIT"] = "1"

from wand.api import library  # noqa: E402
from wand.color import Color  # noqa: E402
from wand.drawing import Drawing  # noqa: E402
from wand.exceptions import (  # noqa: E402
    CacheError,
    CacheFatalError,
    ResourceLimitError,
    ResourceLimitFatalError,
    WandException,
    WandRuntimeError,
)
from wand.image import FILTER_TYPES, Image  # noqa: E402
from wand.resource import limits  # noqa: E402
from wand.version import MAGICK_VERSION  # noqa: E402

__all__ = [
    "GRAVITIES",
    "MAX_SIDE",
    "OUTPUT_FORMATS",
    "ImageTooLarge",
    "ImagingEngine",
    "ImagingError",
    "RenderSpec",
    "Rendered",
    "UnsupportedImage",
    "Watermark",
    "WatermarkError",
    "WatermarkLayer",
    "available_output_formats",
    "displayed_size",
    "imagemagick_version",
    "policy_in_force",
    "policy_limits",
    "probe",
    "resource_limits",
    "sniff_format",
]

OUTPUT_FORMATS: dict[str, str] = {
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "avif": "image/avif",
}
GRAVITIES: tuple[str, ...] = (
    "north_west", "north", "north_east",
    "west", "center", "east",
    "south_west", "south", "south_east",
)
# Same as the width/height limit in policy/policy.xml ("16KP" is SI: 16000).
MAX_SIDE = 16_000


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


class WatermarkError(ImagingError):
    """The watermark could not be drawn: the image must not be served."""

    status = 500
    code = "watermark_failed"


@dataclass(frozen=True)
class WatermarkLayer:
    """One text or logo mark; sizes are fractions of the output width."""

    text: str | None = None
    logo: Path | None = None
    font: Path | None = None
    gravity: str = "south_east"
    opacity: float = 0.7
    margin: float = 0.02
    scale: float = 0.25
    tile: bool = False

    def __post_init__(self) -> None:
        for name in ("logo", "font"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if (self.text is None) == (self.logo is None):
            raise ValueError("a watermark layer needs exactly one of text or logo")
        if self.text is not None and not self.text.strip():
            raise ValueError("watermark text must not be blank")
        if self.text is not None and self.font is None:
            raise ValueError("a text watermark needs a font file")
        if self.logo is not None and self.font is not None:
            raise ValueError("a font applies to text watermarks only")
        if self.gravity not in GRAVITIES:
            raise ValueError(f"gravity must be one of {', '.join(GRAVITIES)}")
        if not 0 < self.opacity <= 1:
            raise ValueError("opacity must be greater than 0 and at most 1")
        if not 0 <= self.margin < 0.5:
            raise ValueError("margin must be at least 0 and less than 0.5")
        if not 0 < self.scale <= 1:
            raise ValueError("scale must be greater than 0 and at most 1")


# Part of the fingerprint: bump it when the way overlays are drawn changes, so that
# cached renders made with the old look are not served as the new one.
_OVERLAY_STYLE = "qcimage-watermark-1"


@dataclass(frozen=True)
class Watermark:
    """The layers drawn, in order, on every rendered image."""

    layers: tuple[WatermarkLayer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))

    def fingerprint(self) -> str:
        """Hex digest of every layer's parameters and of its font or logo file's bytes.

        Reads the files each time: call it once at start-up and keep the result.
        """
        digest = hashlib.sha256(_OVERLAY_STYLE.encode())
        for layer in self.layers:
            params = {
                key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(layer).items()
            }
            digest.update(json.dumps(params, sort_keys=True).encode())
            for path in (layer.font, layer.logo):
                if path is not None:
                    digest.update(hashlib.sha256(_read_asset(path)).digest())
        return digest.hexdigest()


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


@dataclass(frozen=True)
class Rendered:
    """An encoded, watermarked image."""

    data: bytes
    format: str
    mime: str
    width: int
    height: int


# --- sniffing and probing: pure Python, nothing reaches ImageMagick before this passes ---

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
# EXIF orientations that swap width and height.
_TRANSPOSED_EXIF = frozenset({5, 6, 7, 8})
_TRANSPOSED_IM = frozenset({"left_top", "right_top", "right_bottom", "left_bottom"})
# EXIF orientation 1-8 as ImageMagick names it.
_IM_ORIENTATIONS = (None, "top_left", "top_right", "bottom_right", "bottom_left",
                    "left_top", "right_top", "right_bottom", "left_bottom")


def sniff_format(data: bytes) -> str:
    """Name the format from its magic bytes: jpeg, png, gif or webp, else UnsupportedImage."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise UnsupportedImage("the source is not a JPEG, PNG, GIF or WebP image")


def probe(data: bytes) -> tuple[str, int, int]:
    """Read (format, width, height) from the header alone, without decoding anything."""
    fmt = sniff_format(data)
    try:
        width, height = _PROBES[fmt](data)
    except (IndexError, struct.error) as exc:
        raise UnsupportedImage(f"the {fmt} header is truncated") from exc
    if width < 1 or height < 1:
        raise UnsupportedImage(f"the {fmt} header has no size")
    return fmt, width, height


def displayed_size(data: bytes) -> tuple[int, int]:
    """(width, height) as shown, after EXIF orientation, from the header alone."""
    fmt, width, height = probe(data)
    if source_orientation(data, fmt) in _TRANSPOSED_EXIF:
        return height, width
    return width, height


def source_orientation(data: bytes, fmt: str) -> int:
    """EXIF orientation (1-8) from a JPEG APP1, PNG eXIf or WebP EXIF chunk; 1 if none."""
    if fmt == "jpeg":
        return _jpeg_orientation(data)
    try:
        tiff = _png_exif(data) if fmt == "png" else _webp_exif(data) if fmt == "webp" else None
        if tiff is not None:
            return _exif_orientation(tiff.removeprefix(b"Exif\x00\x00"))
    except (IndexError, struct.error):
        pass
    return 1


def _png_exif(data: bytes) -> bytes | None:
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"eXIf":
            return bytes(data[position + 8:position + 8 + length])
        if kind in (b"IDAT", b"IEND"):
            return None  # eXIf must come before the pixels to count
        position += 12 + length
    return None


def _webp_exif(data: bytes) -> bytes | None:
    position = 12
    while position + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, position)
        if kind == b"EXIF":
            return bytes(data[position + 8:position + 8 + length])
        position += 8 + length + (length & 1)
    return None


def _garbled(fmt: str) -> UnsupportedImage:
    return UnsupportedImage(f"the {fmt} header is not valid")


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (marker, payload) for each JPEG header segment up to the scan data."""
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise _garbled("jpeg")
        while data[pos] == 0xFF:  # markers may be padded with fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > len(data):
            raise _garbled("jpeg")
        yield marker, data[pos + 2:pos + length]
        if marker == 0xDA:  # start of scan: no frame header after this
            raise _garbled("jpeg")
        pos += length


def _probe_jpeg(data: bytes) -> tuple[int, int]:
    frame = next(payload for marker, payload in _jpeg_segments(data) if marker in _JPEG_SOF)
    height, width = struct.unpack_from(">HH", frame, 1)
    return width, height


def _jpeg_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of a JPEG, 1 when absent or unreadable."""
    try:
        for marker, payload in _jpeg_segments(data):
            if marker in _JPEG_SOF:
                break
            if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
                return _exif_orientation(payload[6:])
    except (IndexError, struct.error, UnsupportedImage):
        pass
    return 1


def _exif_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None:
        return 1
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for index in range(count):
        tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * index)
        if tag == 0x0112 and kind == 3:  # Orientation, SHORT
            return value if 1 <= value <= 8 else 1
    return 1


def _probe_png(data: bytes) -> tuple[int, int]:
    length, chunk = struct.unpack_from(">I4s", data, 8)
    if length != 13 or chunk != b"IHDR":
        raise _garbled("png")
    width, height = struct.unpack_from(">II", data, 16)
    (crc,) = struct.unpack_from(">I", data, 29)
    if zlib.crc32(data[12:29]) != crc:
        raise _garbled("png")
    return width, height


def _probe_gif(data: bytes) -> tuple[int, int]:
    # The decoder allocates the first frame, whose size may differ from the screen's.
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        block = data[pos]
        if block == 0x2C:  # image descriptor
            _, _, width, height = struct.unpack_from("<HHHH", data, pos + 1)
            return width, height
        if block != 0x21:  # only extensions may come before the first frame
            raise _garbled("gif")
        pos += 2
        while data[pos]:  # skip the extension's data sub-blocks
            pos += data[pos] + 1
        pos += 1


def _probe_webp(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        if len(data) < 30:
            raise _garbled("webp")
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _garbled("webp")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _garbled("webp")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise _garbled("webp")


_PROBES = {"jpeg": _probe_jpeg, "png": _probe_png, "gif": _probe_gif, "webp": _probe_webp}


# --- ImageMagick ---

_CODERS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG", "avif": "AVIF"}
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
_RESOURCE_ERRORS = (ResourceLimitError, ResourceLimitFatalError, CacheError, CacheFatalError)

# Text overlays: sizes relative to the font size.
_REF_POINTS = 100.0
_HALO_STROKE = 0.14
_HALO_SIGMA = 0.05
_PAD = _HALO_STROKE / 2 + 3 * _HALO_SIGMA
_MIN_POINTS = 6.0
# Tiled layers: distance between marks, as multiples of the mark's own size.
_TILE_STEP_X = 1.6
_TILE_STEP_Y = 2.2
_OVERLAY_CACHE_SIZE = 32
_FONT_MAGIC = (b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf")


def _read_asset(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WatermarkError(f"watermark file {path.name!r} cannot be read") from exc


def _checked_font(path: Path) -> str:
    # ImageMagick silently draws with a fallback font when the file is missing: refuse
    # anything that is not a readable TrueType/OpenType file before handing it over.
    if not _read_asset(path).startswith(_FONT_MAGIC):
        raise WatermarkError(f"watermark font {path.name!r} is not a TrueType/OpenType file")
    return str(path)


def _read_first_frame(img: Image, data: bytes | bytearray, fmt: str) -> None:
    """Decode data into the empty img with the decoder forced to fmt, first frame only."""
    # Forcing the coder means content never picks its decoder (no SVG/MVG/MSL disguised as
    # a photo), and "[0]" stops GIF/WebP decoders after the first frame.
    library.MagickSetFormat(img.wand, _CODERS.get(fmt, fmt.upper()).encode())
    library.MagickSetFilename(img.wand, f"source.{fmt}[0]".encode())
    if isinstance(data, bytearray):
        # Read the caller's buffer in place: Wand would copy it to bytes first, and a
        # 40 MB source copied at the decode's peak is 40 MB more per worker.
        view = (ctypes.c_char * len(data)).from_buffer(data)
        try:
            read = library.MagickReadImageBlob(img.wand, ctypes.addressof(view), len(data))
        finally:
            del view
        if not read:
            img.raise_exception()
            raise WandRuntimeError("the source could not be read")
    else:
        img.read(blob=data)
    # As Wand's own constructor does: a format left on the wand would make every later
    # encode silently produce it again, whatever img.format says.
    library.MagickSetFormat(img.wand, b"")
    # Warnings (for example a truncated JPEG, decoded partly, as browsers do) are tolerated
    # and cleared here, so that later checks only see their own step's problems.
    img.get_exception()


def _raise_pending(img: Image) -> None:
    """Raise what ImageMagick recorded on img, warnings included."""
    exc = img.get_exception()
    if exc is not None:
        raise exc


def _hint_jpeg_size(img: Image, source: bytes, width: int, height: int,
                    max_width: int) -> bool:
    """Ask libjpeg for a scaled-down decode when it pays; say whether it was asked."""
    # libjpeg-turbo decodes at 1/2, 3/8, 1/4 or 1/8 scale for a fraction of the cost
    # (ImageMagick asks for 1/n and libjpeg-turbo picks the smallest m/8 >= 1/n). We pick
    # the smallest scale that keeps at least 1.5x the output, leaving the last reduction
    # to the area-averaging resize: letting the DCT scaling do it all aliases on fine
    # textures such as fabric. Measured on a 4000x3000 photo to 960 px against a full
    # decode resized with Lanczos: 1/2 (2000 px) 68.6 ms, 42.8 dB; 3/8 (1500 px) 58.5 ms,
    # 42.4 dB; on a fabric-like texture 29.9 and 32.1 dB.
    transposed = _jpeg_orientation(source) in _TRANSPOSED_EXIF
    out_w, out_h = (height, width) if transposed else (width, height)
    needed = 1.5 * min(max_width, out_w)
    denominator = next((n for n, scale in _JPEG_SCALES if out_w * scale >= needed), 1)
    if denominator == 1:
        return False
    hint_w = out_w // denominator
    hint_h = max(1, out_h // denominator)
    stored = (hint_h, hint_w) if transposed else (hint_w, hint_h)
    img.options["jpeg:size"] = "{}x{}".format(*stored)
    return True


# (n asked of ImageMagick, the scale libjpeg-turbo then decodes at), smallest first.
_JPEG_SCALES = ((8, 1 / 8), (4, 1 / 4), (3, 3 / 8), (2, 1 / 2))


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
        self._overlays: OrderedDict[tuple[WatermarkLayer, int], Image] = OrderedDict()
        self._overlays_lock = threading.Lock()

    def check_watermark(self) -> None:
        """Draw every layer once on a small canvas; WatermarkError if any cannot be drawn."""
        if not self.watermark.layers:
            raise WatermarkError("no watermark layers are configured")
        with Image(width=480, height=320, background=Color("gray50")) as canvas:
            self._apply_watermark(canvas, cached=False)

    def render(self, source: bytes | bytearray, spec: RenderSpec) -> Rendered:
        """Decode source, fit it to spec.width, watermark, strip and encode it.

        A bytearray source is consumed: it is emptied once decoded, so the encoded
        bytes are not kept alive next to the decoded pixels during the resize.
        """
        fmt, width, height = probe(source)
        if max(width, height) > MAX_SIDE or width * height > self.max_source_pixels:
            raise ImageTooLarge(
                f"the source is {width}x{height}: at most {self.max_source_pixels} pixels "
                f"and {MAX_SIDE} on a side are accepted")
        if spec.format not in available_output_formats():
            raise ImagingError(f"this server cannot write {spec.format}")
        with Image() as img:
            try:
                hinted = fmt == "jpeg" and _hint_jpeg_size(
                    img, source, width, height, spec.width)
                orientation = source_orientation(source, fmt)
                _read_first_frame(img, source, fmt)
                if isinstance(source, bytearray):
                    source.clear()
                if img.orientation == "undefined" and orientation != 1:
                    # ImageMagick 6 reads orientation from JPEG EXIF only; a PNG's eXIf or
                    # a WebP's EXIF chunk would leave the photo sideways.
                    img.orientation = _IM_ORIENTATIONS[orientation]
                had_alpha = img.alpha_channel
                self._fit(img, spec.width, (width, height) if hinted else None)
            except _RESOURCE_ERRORS as exc:
                raise ImageTooLarge("the source needs more memory than allowed") from exc
            except WandException as exc:
                raise UnsupportedImage(f"the {fmt} source cannot be decoded") from exc
            self._apply_watermark(img, cached=True)
            return self._encode(img, spec, had_alpha)

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

    def _apply_watermark(self, img: Image, *, cached: bool) -> None:
        try:
            for layer in self.watermark.layers:
                if cached:
                    overlay = self._overlay(layer, img.width)
                else:
                    overlay = _build_overlay(layer, img.width)
                # A clone shares the cached pixels copy-on-write, so a concurrent render
                # (or an eviction) never sees this one's changes.
                with overlay.clone() as mark:
                    if layer.tile:
                        _composite_tiled(img, mark)
                    else:
                        _composite_placed(img, mark, layer)
                _raise_pending(img)
        except WandException as exc:
            raise WatermarkError("the watermark could not be drawn") from exc

    def _overlay(self, layer: WatermarkLayer, width: int) -> Image:
        key = (layer, width)
        with self._overlays_lock:
            overlay = self._overlays.get(key)
            if overlay is not None:
                self._overlays.move_to_end(key)
                return overlay
        # Drawn outside the lock: two threads may both draw a missing overlay, which is
        # cheaper than serialising every miss. Evicted overlays are not destroyed here:
        # another thread may still hold one, and Wand frees it with the last reference.
        overlay = _build_overlay(layer, width)
        with self._overlays_lock:
            self._overlays[key] = overlay
            while len(self._overlays) > _OVERLAY_CACHE_SIZE:
                self._overlays.popitem(last=False)
        return overlay

    def settings_key(self) -> str:
        """The engine settings that change output bytes, for cache keys."""
        return f"{self.resize_filter}|webp-m{self.webp_method}"

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
            img.format = _CODERS[spec.format]
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
        if not data or _output_format(data) != spec.format:
            raise ImagingError(f"the encoder did not produce {spec.format}")
        return Rendered(data=data, format=spec.format, mime=OUTPUT_FORMATS[spec.format],
                        width=img.width, height=img.height)


def _output_format(data: bytes) -> str | None:
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    try:
        return sniff_format(data)
    except UnsupportedImage:
        return None


def _build_overlay(layer: WatermarkLayer, frame_width: int) -> Image:
    """Draw one layer's mark for a frame frame_width wide; the caller owns the result."""
    target_w = max(1, round(layer.scale * frame_width))
    if layer.text is not None:
        overlay = _text_overlay(layer.text, _checked_font(layer.font), target_w)
    else:
        overlay = _logo_overlay(_read_asset(layer.logo), target_w)
    try:
        overlay.evaluate("multiply", layer.opacity, channel="alpha")
        _raise_pending(overlay)
        with overlay.clone() as alpha:
            alpha.alpha_channel = "extract"
            visible = alpha.maxima > 0.01 * alpha.quantum_range
    except BaseException:
        overlay.close()
        raise
    if not visible:
        overlay.close()
        raise WatermarkError("the watermark draws nothing visible")
    return overlay


def _text_overlay(text: str, font: str, target_w: int) -> Image:
    """White text over a soft dark halo, about target_w wide including the halo."""
    with Drawing() as draw, Image(width=1, height=1) as scratch:
        draw.font = font
        draw.font_size = _REF_POINTS
        ref = draw.get_font_metrics(scratch, text)
        points = max(_MIN_POINTS,
                     target_w * _REF_POINTS / (ref.text_width + 2 * _PAD * _REF_POINTS))
        draw.font_size = points
        metrics = draw.get_font_metrics(scratch, text)
    pad = math.ceil(_PAD * points)
    width = math.ceil(metrics.text_width) + 2 * pad
    height = math.ceil(metrics.ascender - metrics.descender) + 2 * pad
    baseline = pad + metrics.ascender
    overlay = Image(width=width, height=height, background=Color("rgba(0,0,0,0)"))
    try:
        with Drawing() as halo:
            halo.font = font
            halo.font_size = points
            halo.fill_color = Color("black")
            halo.stroke_color = Color("black")
            halo.stroke_width = _HALO_STROKE * points
            halo.text(pad, round(baseline), text)
            halo(overlay)
        _raise_pending(overlay)
        overlay.blur(sigma=_HALO_SIGMA * points, channel="alpha")
        with Drawing() as face:
            face.font = font
            face.font_size = points
            face.fill_color = Color("white")
            face.text(pad, round(baseline), text)
            face(overlay)
        _raise_pending(overlay)
    except BaseException:
        overlay.close()
        raise
    return overlay


def _logo_overlay(data: bytes, target_w: int) -> Image:
    try:
        fmt = sniff_format(data)
    except UnsupportedImage as exc:
        raise WatermarkError("the watermark logo is not a PNG, JPEG, GIF or WebP image") from exc
    overlay = Image()
    try:
        _read_first_frame(overlay, data, fmt)
        overlay.reset_coords()
        if overlay.colorspace != "srgb":
            overlay.transform_colorspace("srgb")
        overlay.alpha_channel = "set"
        target_h = max(1, round(overlay.height * target_w / overlay.width))
        overlay.resize(target_w, target_h, filter="lanczos")
        _raise_pending(overlay)
    except BaseException:
        overlay.close()
        raise
    return overlay


def _composite_placed(img: Image, mark: Image, layer: WatermarkLayer) -> None:
    margin = round(layer.margin * img.width)
    room_w = max(1, img.width - 2 * margin)
    room_h = max(1, img.height - 2 * margin)
    if mark.width > room_w or mark.height > room_h:  # very wide or tiny frames
        shrink = min(room_w / mark.width, room_h / mark.height)
        mark.resize(max(1, round(mark.width * shrink)), max(1, round(mark.height * shrink)))
    sides = set(layer.gravity.split("_"))
    x, y = (img.width - mark.width) // 2, (img.height - mark.height) // 2
    if "west" in sides:
        x = margin
    elif "east" in sides:
        x = img.width - mark.width - margin
    if "north" in sides:
        y = margin
    elif "south" in sides:
        y = img.height - mark.height - margin
    img.composite(mark, left=x, top=y, operator="over")


def _composite_tiled(img: Image, mark: Image) -> None:
    # A brick pattern: every other row is shifted by half a step, so marks line up
    # diagonally and no straight crop avoids them.
    step_x = max(1, round(mark.width * _TILE_STEP_X))
    step_y = max(1, round(mark.height * _TILE_STEP_Y))
    for row, top in enumerate(range(-step_y // 2, img.height, step_y)):
        shift = step_x // 2 if row % 2 else 0
        for left in range(shift - step_x, img.width, step_x):
            if left + mark.width > 0:
                img.composite(mark, left=left, top=top, operator="over")


@cache
def available_output_formats() -> frozenset[str]:
    """The keys of OUTPUT_FORMATS this ImageMagick, under our policy, can really write."""
    found = set()
    for fmt, coder in _CODERS.items():
        try:
            with Image(width=8, height=8, background=Color("gray50")) as img:
                img.format = coder
                data = img.make_blob()
        except (WandException, ValueError):  # Wand raises ValueError for unknown formats
            continue
        if _output_format(data) == fmt:
            found.add(fmt)
    return frozenset(found)


def imagemagick_version() -> str:
    """ImageMagick's version string, for cache keys."""
    return MAGICK_VERSION


# MagickCore's ResourceType enum: Wand's `limits` stops before list-length.
_LIST_LENGTH_RESOURCE = 11


def resource_limits() -> dict[str, int]:
    """The resource limits in force in this process (bytes, pixels or counts)."""
    in_force = {name: limits[name] for name in limits if name != "undefined"}
    in_force["list-length"] = library.MagickGetResourceLimit(_LIST_LENGTH_RESOURCE)
    return in_force


@cache
def policy_limits() -> dict[str, int]:
    """The resource limits our policy.xml sets, in bytes, pixels or counts."""
    units = {"KP": 10**3, "MP": 10**6, "GP": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    found = {}
    for rule in ElementTree.parse(POLICY_DIR / "policy.xml").getroot():
        if rule.get("domain") == "resource":
            value = rule.get("value")
            unit = next((u for u in units if value.endswith(u)), None)
            found[rule.get("name")] = (int(value[:-len(unit)]) * units[unit] if unit
                                       else int(value))
    return found


def policy_in_force() -> bool:
    """Whether every limit of our policy is the one ImageMagick applies (readiness)."""
    in_force = resource_limits()
    return all(in_force.get(name) == value for name, value in policy_limits().items())
