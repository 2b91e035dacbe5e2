"""PNG chunks in pure Python: one walk gives the size's chunk, EXIF, completeness and
the few ancillary chunks a decoder may see.

A PNG under the byte limit can still cost gigabytes: zTXt, iTXt and iCCP chunks are
zlib streams that libpng inflates outside ImageMagick's memory policy (a 1 MB file of
zTXt chunks drove a worker to 3 GB). Only the chunks that decide pixels reach the
decoder: the critical ones, and a short allow-list of small ancillary ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from qcimage.services.imaging import SourceTruncated, UnsupportedImage

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks that change how pixels look: transparency, gamma and colour space,
# significant bits, background. Each is a few bytes (tRNS at most 256); anything larger
# is not a valid one and is dropped like every other ancillary chunk (text, zTXt, iTXt,
# iCCP, eXIf, tIME, APNG's frames, private chunks).
KEPT_ANCILLARY = frozenset({b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD"})
KEPT_ANCILLARY_MAX_BYTES = 256
# Real encoders write a few thousand chunks at most (8 KiB IDATs: ~5000 for 40 MB); a
# flood of tiny chunks is refused before walking it costs seconds.
MAX_CHUNKS = 100_000


@dataclass(frozen=True)
class PngLayout:
    """What one walk over a whole PNG found."""

    exif: bytes | None  # the eXIf payload before the first IDAT, for the orientation
    keep: tuple[tuple[int, int], ...] | None  # byte spans to decode; None: all of them


def walk_chunks(data: bytes | bytearray) -> PngLayout:
    """Walk every chunk up to IEND; SourceTruncated when the file ends before it."""
    position = len(SIGNATURE)
    spans: list[tuple[int, int]] = [(0, position)]
    exif = None
    seen_idat = dropped = False
    for count in range(MAX_CHUNKS):
        if position + 12 > len(data):
            raise SourceTruncated("the png source ends before its last chunk")
        length, kind = struct.unpack_from(">I4s", data, position)
        if not kind.isalpha():  # chunk types are four ASCII letters
            raise UnsupportedImage("the png source holds something that is not a chunk")
        end = position + 12 + length
        if end > len(data):
            raise SourceTruncated("the png source ends inside a chunk")
        if kind == b"eXIf" and not seen_idat and exif is None:
            exif = bytes(data[position + 8:end - 4])
        seen_idat = seen_idat or kind == b"IDAT"
        critical = not kind[0] & 0x20  # bit 5 of the first letter: lower case is ancillary
        if critical or (kind in KEPT_ANCILLARY and length <= KEPT_ANCILLARY_MAX_BYTES):
            if spans[-1][1] == position:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((position, end))
        else:
            dropped = True
        if kind == b"IEND":
            return PngLayout(exif, tuple(spans) if dropped else None)
        position = end
    raise UnsupportedImage(f"the png source has more than {MAX_CHUNKS} chunks")


def essential_chunks(data: bytes | bytearray, layout: PngLayout) -> bytes | bytearray:
    """``data`` with only the chunks a decoder may see; ``data`` itself when that is all."""
    if layout.keep is None:
        return data
    kept = bytearray()
    for start, end in layout.keep:
        kept += memoryview(data)[start:end]
    return kept
