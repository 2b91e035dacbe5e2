"""Read a source's header in pure Python: format, stored size, EXIF orientation.

Nothing reaches ImageMagick before this has passed, and nothing here imports Wand.
"""

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from qcimage.services.imaging import SourceTruncated, UnsupportedImage
from qcimage.services.imaging.png import SIGNATURE as _PNG_SIGNATURE
from qcimage.services.imaging.png import PngLayout, essential_chunks, walk_chunks
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
# EXIF orientations that swap width and height.
_TRANSPOSED_EXIF = frozenset({5, 6, 7, 8})


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


@dataclass(frozen=True)
class Probe:
    """What a source's header says, read once and passed along: never parsed again."""

    format: str
    width: int  # stored, before EXIF orientation
    height: int
    orientation: int = 1  # EXIF 1-8
    png_layout: PngLayout | None = field(default=None, repr=False, compare=False)
    # A progressive JPEG's DCT coefficients, which libjpeg holds whole while it decodes.
    coefficient_bytes: int = field(default=0, compare=False)

    @property
    def transposed(self) -> bool:
        """Whether the orientation swaps width and height when the image is shown."""
        return self.orientation in _TRANSPOSED_EXIF

    @property
    def shown_size(self) -> tuple[int, int]:
        """(width, height) as shown, after EXIF orientation."""
        return (self.height, self.width) if self.transposed else (self.width, self.height)

    def essential(self, data: bytes | bytearray) -> bytes | bytearray:
        """The bytes a decoder may see: a PNG without its costly ancillary chunks."""
        if self.png_layout is None:
            return data
        return essential_chunks(data, self.png_layout)


def probe(data: bytes | bytearray) -> Probe:
    """Read format, stored size and orientation from the headers, decoding nothing.

    UnsupportedImage when the header is not one; SourceTruncated when the header is whole
    but the file ends before its image does (a decoder would fill the rest with grey).
    """
    fmt = sniff_format(data)
    try:
        width, height = _PROBES[fmt](data)
        coefficients = _jpeg_coefficient_bytes(data) if fmt == "jpeg" else 0
    except (IndexError, struct.error) as exc:
        raise UnsupportedImage(f"the {fmt} header is truncated") from exc
    if width < 1 or height < 1:
        raise UnsupportedImage(f"the {fmt} header has no size")
    if fmt == "png":
        layout = walk_chunks(data)
        return Probe(fmt, width, height, _tiff_orientation(layout.exif), layout)
    try:
        _COMPLETE[fmt](data)
    except (IndexError, struct.error):
        raise SourceTruncated(f"the {fmt} source ends before its image does") from None
    return Probe(fmt, width, height, _source_orientation(data, fmt), None, coefficients)


def output_format(data: bytes) -> str | None:
    """The format an encoder wrote, AVIF included; None when it is none we know."""
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    try:
        return sniff_format(data)
    except UnsupportedImage:
        return None


def _source_orientation(data: bytes, fmt: str) -> int:
    """EXIF orientation (1-8) from a JPEG APP1 or WebP EXIF chunk; 1 if none."""
    if fmt == "jpeg":
        return _jpeg_orientation(data)
    return _tiff_orientation(_webp_exif(data) if fmt == "webp" else None)


def _tiff_orientation(tiff: bytes | None) -> int:
    if tiff is None:
        return 1
    try:
        return _exif_orientation(tiff.removeprefix(b"Exif\x00\x00"))
    except (IndexError, struct.error):
        return 1


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


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """Yield (marker, payload, end offset) for each JPEG header segment up to the scan."""
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
        yield marker, data[pos + 2:pos + length], pos + length
        if marker == 0xDA:  # start of scan: no frame header after this
            raise _garbled("jpeg")
        pos += length


def _probe_jpeg(data: bytes) -> tuple[int, int]:
    frame = next(payload for marker, payload, _ in _jpeg_segments(data) if marker in _JPEG_SOF)
    height, width = struct.unpack_from(">HH", frame, 1)
    return width, height


def _jpeg_coefficient_bytes(data: bytes) -> int:
    """Bytes of DCT coefficients a progressive JPEG needs whole (0 for a baseline one):
    128 (64 two-byte coefficients) per 8x8 block of each component, at its sampling."""
    marker, frame = next((m, p) for m, p, _ in _jpeg_segments(data) if m in _JPEG_SOF)
    if marker not in _JPEG_PROGRESSIVE:
        return 0
    height, width, count = struct.unpack_from(">HHB", frame, 1)
    sampling = [frame[7 + 3 * index] for index in range(count)]
    if not sampling:
        raise _garbled("jpeg")
    h_max = max(s >> 4 for s in sampling) or 1
    v_max = max(s & 15 for s in sampling) or 1
    return sum(128 * math.ceil(math.ceil(width * (s >> 4) / h_max) / 8)
               * math.ceil(math.ceil(height * (s & 15) / v_max) / 8) for s in sampling)


def _jpeg_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of a JPEG, 1 when absent or unreadable."""
    try:
        for marker, payload, _ in _jpeg_segments(data):
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


def _jpeg_complete(data: bytes) -> None:
    # Entropy-coded data never holds FF D9 (a data FF is always followed by 00), so an
    # end-of-image marker after the first scan's header means the file was not cut.
    scan = next(end for marker, _, end in _jpeg_segments(data) if marker == 0xDA)
    if data.rfind(b"\xff\xd9", scan) < 0:
        raise IndexError("no end of image")


def _gif_complete(data: bytes) -> None:
    # The first frame is all that is decoded: its image data must be whole.
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extensions: label, then data sub-blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    local = data[pos + 9]
    pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW code size
    while data[pos]:
        pos += data[pos] + 1


def _webp_complete(data: bytes) -> None:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if len(data) < 8 + riff_size:
        raise IndexError("shorter than its RIFF size")


_PROBES = {"jpeg": _probe_jpeg, "png": _probe_png, "gif": _probe_gif, "webp": _probe_webp}
_COMPLETE = {"jpeg": _jpeg_complete, "gif": _gif_complete, "webp": _webp_complete}
