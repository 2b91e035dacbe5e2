"""The stand-in's pictures: sample files re-encoded on request, with a byte-budgeted cache."""
from __future__ import annotations

import collections
import io
import struct
import threading
import zlib
from pathlib import Path

from PIL import Image

FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITY = 90


class BadRequest(ValueError):
    """A parameter the real upstream would refuse."""


class LRUBytes:
    """A byte-budgeted LRU of encoded outputs, so repeated requests cost no CPU here."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[tuple, tuple[bytes, str]] = \
            collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: tuple[bytes, str]) -> None:
        with self._lock:
            if len(item[0]) > self.max_bytes:
                return
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._items[key] = item
            self._size += len(item[0])
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted[0])


class ImageStore:
    """Re-encodes the sample files on request, like Doppel's ``/img`` resizer."""

    def __init__(self, paths: dict[str, Path], cache_bytes: int, on_render=lambda: None):
        self.paths = paths
        self.cache = LRUBytes(cache_bytes)
        self._on_render = on_render
        self._inflight: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.sizes: dict[str, tuple[int, int, str]] = {}
        for image_id, path in paths.items():
            with Image.open(path) as im:
                self.sizes[image_id] = (im.width, im.height, im.format.lower())

    def render(self, image_id: str, width: int | None, fmt: str | None,
               quality: int) -> tuple[bytes, str]:
        """Return ``(body, content_type)``; KeyError for an unknown image."""
        src_w, src_h, src_fmt = self.sizes[image_id]
        fmt = fmt or src_fmt
        target_w = min(width or src_w, src_w)
        key = (image_id, target_w, fmt, quality if fmt != "png" else None)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        # Concurrent identical misses encode once: the stand-in must not be the bottleneck.
        with self._guard:
            lock = self._inflight.setdefault(key, threading.Lock())
        try:
            with lock:
                hit = self.cache.get(key)
                if hit is None:
                    hit = self._encode(image_id, target_w, fmt, quality), CONTENT_TYPES[fmt]
                    self.cache.put(key, hit)
                    self._on_render()
                return hit
        finally:
            with self._guard:
                if self._inflight.get(key) is lock:
                    del self._inflight[key]

    def _encode(self, image_id: str, target_w: int, fmt: str, quality: int) -> bytes:
        path = self.paths[image_id]
        src_w, src_h, src_fmt = self.sizes[image_id]
        if fmt == src_fmt == "png" and target_w == src_w:
            return path.read_bytes()
        target = (target_w, max(1, round(src_h * target_w / src_w)))
        with Image.open(path) as im:
            exif = im.info.get("exif")
            if target_w < src_w:
                im.draft("RGB", target)  # JPEG DCT scaling: decode big photos at a fraction
                im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            else:
                im.load()
            if fmt == "jpeg" and im.mode not in ("RGB", "L"):
                im = _flatten(im)
            options = {"exif": exif} if exif else {}
            if fmt == "png":
                options["compress_level"] = 3
            else:
                options["quality"] = quality
            buf = io.BytesIO()
            im.save(buf, PIL_FORMATS[fmt], **options)
            return buf.getvalue()


def _flatten(im: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite on white as image CDNs do."""
    rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR, so sniffers believe what follows is an image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def image_params(width: str, fmt: str, quality: str) -> tuple[int | None, str | None, int]:
    if width and (not width.isdigit() or int(width) < 1):
        raise BadRequest("width must be a positive integer")
    if fmt and fmt not in FORMATS:
        raise BadRequest(f"unsupported format {fmt!r}")
    if quality and (not quality.isdigit() or not 1 <= int(quality) <= 100):
        raise BadRequest("quality must be an integer between 1 and 100")
    return (int(width) if width else None, FORMATS.get(fmt),
            int(quality) if quality else DEFAULT_QUALITY)
