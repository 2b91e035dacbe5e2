"""Watermark overlays: each layer drawn once per frame width, then composited on frames."""

import math
import threading
from collections import OrderedDict
from pathlib import Path

from wand.color import Color
from wand.drawing import Drawing
from wand.exceptions import WandException
from wand.image import Image

from qcimage.services.imaging import TooSmallToWatermark, UnsupportedImage, WatermarkError
from qcimage.services.imaging.policy import raise_pending, read_first_frame
from qcimage.services.imaging.probe import sniff_format
from qcimage.services.imaging.watermark import Watermark, WatermarkLayer, read_asset

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
# A placed mark is never smaller than this on either side (text then has ~4 px letters):
# below it the request fails instead of serving an image whose mark cannot be seen.
MIN_MARK_SIDE = 8
# On frames far wider than tall the vertical margin is at most this share of the height.
_MARGIN_SHARE = 8
_FONT_MAGIC = (b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf")


class WatermarkPainter:
    """Draws a watermark's layers on frames; keeps recent overlays, safe between threads."""

    def __init__(self, watermark: Watermark) -> None:
        self.watermark = watermark
        self._overlays: OrderedDict[tuple[WatermarkLayer, int], Image] = OrderedDict()
        self._overlays_lock = threading.Lock()

    def check(self) -> None:
        """Draw every layer once on a small canvas; WatermarkError if any cannot be drawn."""
        if not self.watermark.layers:
            raise WatermarkError("no watermark layers are configured")
        with Image(width=480, height=320, background=Color("gray50")) as canvas:
            self.apply(canvas, cached=False)

    def apply(self, img: Image, *, cached: bool = True) -> None:
        """Composite every layer on img, in order; WatermarkError if one cannot be drawn."""
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
                raise_pending(img)
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


def _checked_font(path: Path) -> str:
    # ImageMagick silently draws with a fallback font when the file is missing: refuse
    # anything that is not a readable TrueType/OpenType file before handing it over.
    if not read_asset(path).startswith(_FONT_MAGIC):
        raise WatermarkError(f"watermark font {path.name!r} is not a TrueType/OpenType file")
    return str(path)


def _build_overlay(layer: WatermarkLayer, frame_width: int) -> Image:
    """Draw one layer's mark for a frame frame_width wide; the caller owns the result."""
    target_w = max(1, round(layer.scale * frame_width))
    if layer.text is not None:
        overlay = _text_overlay(layer.text, _checked_font(layer.font), target_w)
    else:
        overlay = _logo_overlay(read_asset(layer.logo), target_w)
    try:
        overlay.evaluate("multiply", layer.opacity, channel="alpha")
        raise_pending(overlay)
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
        raise_pending(overlay)
        overlay.blur(sigma=_HALO_SIGMA * points, channel="alpha")
        with Drawing() as face:
            face.font = font
            face.font_size = points
            face.fill_color = Color("white")
            face.text(pad, round(baseline), text)
            face(overlay)
        raise_pending(overlay)
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
        read_first_frame(overlay, data, fmt)
        overlay.reset_coords()
        if overlay.colorspace != "srgb":
            overlay.transform_colorspace("srgb")
        overlay.alpha_channel = "set"
        target_h = max(1, round(overlay.height * target_w / overlay.width))
        overlay.resize(target_w, target_h, filter="lanczos")
        raise_pending(overlay)
    except BaseException:
        overlay.close()
        raise
    return overlay


def _composite_placed(img: Image, mark: Image, layer: WatermarkLayer) -> None:
    margin_x = round(layer.margin * img.width)
    # The margin is a fraction of the width; on a frame far wider than tall it would eat
    # the whole height (a 40:1 frame kept no room for the mark), so it yields there.
    margin_y = min(margin_x, img.height // _MARGIN_SHARE)
    _fit_mark(img, mark, img.width - 2 * margin_x, img.height - 2 * margin_y)
    sides = set(layer.gravity.split("_"))
    x, y = (img.width - mark.width) // 2, (img.height - mark.height) // 2
    if "west" in sides:
        x = margin_x
    elif "east" in sides:
        x = img.width - mark.width - margin_x
    if "north" in sides:
        y = margin_y
    elif "south" in sides:
        y = img.height - mark.height - margin_y
    img.composite(mark, left=x, top=y, operator="over")


def _fit_mark(img: Image, mark: Image, room_w: int, room_h: int) -> None:
    """Shrink mark into room_w x room_h; TooSmallToWatermark when it would not show."""
    if mark.width > room_w or mark.height > room_h:  # very wide, very tall or tiny frames
        shrink = max(0.0, min(room_w / mark.width, room_h / mark.height))
        width, height = round(mark.width * shrink), round(mark.height * shrink)
        if min(width, height) < MIN_MARK_SIDE:
            raise TooSmallToWatermark(
                f"the {img.width}x{img.height} output is too small or too thin to carry a "
                "visible watermark")
        mark.resize(width, height)


def _composite_tiled(img: Image, mark: Image) -> None:
    _fit_mark(img, mark, img.width, img.height)
    # A brick pattern: every other row is shifted by half a step, so marks line up
    # diagonally and no straight crop avoids them.
    step_x = max(1, round(mark.width * _TILE_STEP_X))
    step_y = max(1, round(mark.height * _TILE_STEP_Y))
    # Rows start half a step above the frame; a frame lower than a step gets one row
    # in its middle instead, or no mark would be inside it.
    first = -step_y // 2 if img.height >= step_y else (img.height - mark.height) // 2
    for row, top in enumerate(range(first, img.height, step_y)):
        shift = step_x // 2 if row % 2 else 0
        for left in range(shift - step_x, img.width, step_x):
            if left + mark.width > 0:
                img.composite(mark, left=left, top=top, operator="over")
