"""Read a source's header in pure Python: format, stored size, EXIF orientation.

Nothing reaches ImageMagick before this has passed, and nothing here imports Wand.
"""

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from qcimage.services.imaging import UnsupportedImage

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
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

    @property
    def transposed(self) -> bool:
        """Whether the orientation swaps width and height when the image is shown."""
        return self.orientation in _TRANSPOSED_EXIF

    @property
    def shown_size(self) -> tuple[int, int]:
        """(width, height) as shown, after EXIF orientation."""
        return (self.height, self.width) if self.transposed else (self.width, self.height)


def probe(data: bytes | bytearray) -> Probe:
    """Read format, stored size and orientation from the header alone, decoding nothing."""
    fmt = sniff_format(data)
    try:
        width, height = _PROBES[fmt](data)
    except (IndexError, struct.error) as exc:
        raise UnsupportedImage(f"the {fmt} header is truncated") from exc
    if width < 1 or height < 1:
        raise UnsupportedImage(f"the {fmt} header has no size")
    return Probe(fmt, width, height, _source_orientation(data, fmt))


def output_format(data: bytes) -> str | None:
    """The format an encoder wrote, AVIF included; None when it is none we know."""
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    try:
        return sniff_format(data)
    except UnsupportedImage:
        return None


def _source_orientation(data: bytes, fmt: str) -> int:
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
