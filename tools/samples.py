"""Deterministic photo-like QC sample images and the product catalogue the stand-in upstream serves.

The pictures imitate what agents upload: a product (shoe, bag or hoodie) on a table under
uneven lighting, with shading, fabric texture, sensor noise, a printed QC tag and sometimes a
tape measure. They are generated once with fixed seeds into a samples directory (default
``tools/.samples/``, git-ignored) and reused while ``manifest.json`` matches.

    python -m tools.samples [--dir DIR] [--scale 0.1]

``scale`` shrinks every picture (tests use ``SMALL_SCALE``); the default set is full size.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

# Bump when the pictures change so existing sample dirs are regenerated.
SAMPLES_VERSION = 1
DEFAULT_DIR = Path(__file__).resolve().parent / ".samples"
MANIFEST = "manifest.json"
SMALL_SCALE = 0.1

# Smooth parts (lighting, shading, shadows) are computed at 1/LOW of the size and upscaled:
# they have no fine detail, and it keeps a 19-megapixel picture to about a second.
LOW = 8
# The final noise pass works on horizontal bands to bound peak memory.
BAND_ROWS = 512


@dataclass(frozen=True)
class SampleSpec:
    """One sample picture; ``width``/``height`` are the displayed size at scale 1."""

    image_id: str
    subject: str  # shoe | bag | hoodie
    width: int
    height: int
    fmt: str  # JPEG | PNG
    seed: int
    lighting: str = "normal"  # normal | dark | light
    orientation: int = 1  # EXIF Orientation; 6 means stored rotated 90° counter-clockwise
    alpha: bool = False
    quality: int = 92
    tape: bool = False
    tag_lines: tuple[str, ...] = ()
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.image_id}.{'jpg' if self.fmt == 'JPEG' else 'png'}"

    def display_size(self, scale: float) -> tuple[int, int]:
        return max(16, round(self.width * scale)), max(16, round(self.height * scale))

    def stored_size(self, scale: float) -> tuple[int, int]:
        w, h = self.display_size(scale)
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


SAMPLES: tuple[SampleSpec, ...] = (
    SampleSpec(
        "n4EYdIoE", "shoe", 4000, 3000, "JPEG", seed=101, tape=True,
        tag_lines=("QC PHOTO", "ITEM 7494645791", "SIZE EU 42 / US 8.5", "BATCH LJR-2403-A7",
                   "2024-03-02 14:21"),
        colors={"main": (58, 68, 96), "sole": (238, 236, 229), "accent": (214, 62, 40)},
    ),
    SampleSpec(
        "cR-eVGrQ", "bag", 5000, 3750, "PNG", seed=202, tape=True,
        tag_lines=("QC PHOTO", "ITEM 7494645791", "COLOUR TAN", "W 32 H 25 D 12 CM",
                   "2024-03-02 14:24"),
        colors={"main": (122, 74, 42), "flap": (101, 60, 33), "metal": (204, 172, 92)},
    ),
    SampleSpec(
        "Tq3_Hx8w", "hoodie", 3000, 4000, "JPEG", seed=303, orientation=6,
        tag_lines=("QC PHOTO", "ITEM 7494645791", "SIZE L", "GREY HEATHER", "2024-03-03 09:02"),
        colors={"main": (148, 149, 154), "pocket": (132, 133, 138), "string": (236, 236, 232)},
    ),
    SampleSpec(
        "dRk5nT0p", "shoe", 3264, 2448, "JPEG", seed=404, lighting="dark", quality=90,
        tag_lines=("QC PHOTO", "ITEM 684012345678", "SIZE EU 44", "BLACK / RED",
                   "2024-02-11 22:47"),
        colors={"main": (34, 34, 37), "sole": (66, 66, 68), "accent": (92, 22, 22)},
    ),
    SampleSpec(
        "L1ghTw9Q", "shoe", 3264, 2448, "JPEG", seed=505, lighting="light", quality=90,
        tag_lines=("QC PHOTO", "ITEM 684012345678", "SIZE EU 39", "TRIPLE WHITE",
                   "2024-02-12 11:05"),
        colors={"main": (244, 244, 241), "sole": (250, 250, 248), "accent": (229, 230, 236)},
    ),
    SampleSpec(
        "aLph-4Cx", "bag", 2400, 2400, "PNG", seed=606, alpha=True,
        colors={"main": (188, 140, 92), "flap": (170, 124, 80), "metal": (190, 190, 196)},
    ),
)
SAMPLES_BY_ID = {s.image_id: s for s in SAMPLES}


@dataclass(frozen=True)
class QcGroup:
    """One agent's QC upload: the photos of one order, in upload order."""

    agent: str
    date: str
    variant: str
    images: tuple[str, ...]


@dataclass(frozen=True)
class Product:
    product_id: str
    platform: str
    title: str
    price_cny: float
    groups: tuple[QcGroup, ...]

    @property
    def image_ids(self) -> list[str]:
        """Image ids in upstream order with duplicates removed (what qcimage must return)."""
        return list(dict.fromkeys(i for g in self.groups for i in g.images))


PRODUCTS: dict[tuple[str, str], Product] = {
    (p.platform, p.product_id): p
    for p in (
        Product("7494645791", "WEIDIAN", "Low-top leather sneaker with canvas tote set", 389.0, (
            QcGroup("CSSBuy", "2024-03-02", "Navy / EU 42", ("n4EYdIoE", "cR-eVGrQ")),
            # The same photo re-used by a second agent: callers must de-duplicate.
            QcGroup("Sugargoo", "2024-03-03", "Grey / L", ("Tq3_Hx8w", "n4EYdIoE")),
        )),
        Product("684012345678", "TAOBAO", "Night-run sneaker, black and triple white", 259.0, (
            QcGroup("Pandabuy", "2024-02-11", "Black / EU 44", ("dRk5nT0p",)),
            QcGroup("Pandabuy", "2024-02-12", "White / EU 39", ("L1ghTw9Q",)),
        )),
        Product("1688000001", "1688", "Structured leather handbag (wholesale)", 142.5, (
            QcGroup("Superbuy", "2024-01-20", "Tan", ("aLph-4Cx", "cR-eVGrQ")),
        )),
        Product("800000000001", "TMALL", "Everyday hoodie and sneaker bundle", 499.0, (
            QcGroup("Hoobuy", "2024-04-05", "White / EU 39", ("L1ghTw9Q", "Tq3_Hx8w")),
            QcGroup("Hoobuy", "2024-04-06", "Black / EU 44", ("dRk5nT0p",)),
        )),
        Product("1000000000", "WEIDIAN", "Listing without QC photos yet", 99.0, ()),
    )
}


def find_product(platform: str, product_id: str) -> Product | None:
    """Look a product up the way Doppel does: the platform is matched case-sensitively."""
    return PRODUCTS.get((platform, product_id))


def ensure_samples(directory: str | os.PathLike | None = None, *,
                   scale: float = 1.0) -> dict[str, Path]:
    """Generate missing or stale samples into ``directory``; return ``{image_id: path}``."""
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(directory)
    fresh = manifest.get("version") == SAMPLES_VERSION and manifest.get("scale") == scale
    known = manifest.get("images", {}) if fresh else {}
    todo = [s for s in SAMPLES if not _is_current(directory, s, known.get(s.image_id))]
    if todo:
        workers = min(len(todo), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = pool.map(lambda s: _write_sample(directory, s, scale), todo)
            known = {**known, **dict(zip((s.image_id for s in todo), done))}
        _write_atomic(directory / MANIFEST, json.dumps({
            "version": SAMPLES_VERSION, "scale": scale,
            "images": {s.image_id: known[s.image_id] for s in SAMPLES},
        }, indent=2).encode())
    return {s.image_id: directory / s.filename for s in SAMPLES}


def _read_manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _is_current(directory: Path, spec: SampleSpec, entry: dict | None) -> bool:
    if not entry or entry.get("file") != spec.filename:
        return False
    try:
        # A size check catches truncated files from an interrupted run without rereading them.
        return (directory / spec.filename).stat().st_size == entry.get("bytes")
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    # Concurrent generators (parallel test runs) write identical bytes; rename keeps it safe.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_sample(directory: Path, spec: SampleSpec, scale: float) -> dict:
    image = render(spec, scale)
    buf = io.BytesIO()
    if spec.fmt == "JPEG":
        exif = Image.Exif()
        exif[0x010F] = "Xiaomi"  # Make
        exif[0x0110] = "Redmi Note 12"  # Model
        exif[0x0131] = "MIUI Camera"  # Software
        exif[0x0132] = "2024:03:02 14:21:07"  # DateTime
        if spec.orientation != 1:
            exif[0x0112] = spec.orientation
        image.save(buf, "JPEG", quality=spec.quality, exif=exif.tobytes())
    else:
        # A low level keeps generation fast; the files stay photo-sized because of the noise.
        image.save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    _write_atomic(directory / spec.filename, data)
    return {"file": spec.filename, "bytes": len(data), "width": image.width,
            "height": image.height, "format": spec.fmt, "mode": image.mode,
            "orientation": spec.orientation}


def render(spec: SampleSpec, scale: float = 1.0) -> Image.Image:
    """Render the picture as stored on disk (rotated when the EXIF orientation says so)."""
    rng = np.random.default_rng(spec.seed)
    w, h = spec.display_size(scale)
    box = _object_box(spec, w, h, rng)
    mask = Image.new("L", (w, h), 0)
    layer = Image.new("RGB", (w, h), spec.colors["main"])
    _SUBJECTS[spec.subject](ImageDraw.Draw(mask), ImageDraw.Draw(layer), box, spec.colors)
    mask = mask.filter(ImageFilter.BoxBlur(max(1, w // 2500)))  # anti-aliased edges

    lw, lh = max(4, w // LOW), max(4, h // LOW)
    mask_low = mask.resize((lw, lh), Image.Resampling.BOX)
    shade, highlight = _shading(mask_low, [c / LOW for c in box], rng)
    layer = ImageChops.multiply(layer, shade.resize((w, h), Image.Resampling.BICUBIC))
    layer = ImageChops.screen(layer, highlight.resize((w, h), Image.Resampling.BICUBIC))

    bg_low, shadow_low = _background(spec, mask_low, [c / LOW for c in box], rng)
    picture = bg_low.resize((w, h), Image.Resampling.BICUBIC)
    picture.paste(layer, (0, 0), mask)
    if spec.tape:
        _draw_tape(picture, w, h, rng)
    if spec.tag_lines:
        _paste_tag(picture, spec, w, h, rng)
    picture = _add_noise(picture, spec, mask, box, rng)

    if spec.alpha:
        shadow = shadow_low.resize((w, h), Image.Resampling.BICUBIC)
        alpha = Image.fromarray(np.maximum(np.asarray(mask), np.asarray(shadow)))
        picture.putalpha(alpha)
    if spec.orientation == 6:
        picture = picture.transpose(Image.Transpose.ROTATE_90)
    return picture


def _object_box(spec: SampleSpec, w: int, h: int, rng) -> tuple[float, float, float, float]:
    aspect = {"shoe": 2.5, "bag": 1.2, "hoodie": 0.85}[spec.subject]
    if w >= h:
        bh = h * (0.36 if spec.subject == "shoe" else 0.60)
    else:
        bh = h * 0.72
    bw = bh * aspect
    if bw > w * 0.7:
        bw, bh = w * 0.7, w * 0.7 / aspect
    cx = w * ((0.40 if w >= h else 0.5) + rng.uniform(-0.02, 0.02))
    cy = h * (0.50 + rng.uniform(-0.03, 0.03))
    return cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2


def _mapper(box):
    x0, y0, x1, y1 = box

    def to_px(points):
        return [(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in points]
    return to_px


def _smooth(points, steps: int = 10):
    """Closed Catmull-Rom curve through ``points``: product outlines have no sharp corners."""
    p = np.asarray(points, dtype=float)
    n = len(p)
    t = np.linspace(0, 1, steps, endpoint=False)[:, None]
    out = []
    for i in range(n):
        p0, p1, p2, p3 = p[i - 1], p[i], p[(i + 1) % n], p[(i + 2) % n]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return [tuple(q) for q in np.concatenate(out)]


def _shade(color, factor):
    return tuple(max(0, min(255, round(c * factor))) for c in color)


def _draw_shoe(mask: ImageDraw.ImageDraw, layer: ImageDraw.ImageDraw, box, colors) -> None:
    px = _mapper(box)
    bw = box[2] - box[0]
    upper = _smooth([(0.03, 0.78), (0.01, 0.50), (0.04, 0.28), (0.12, 0.18), (0.24, 0.22),
                     (0.33, 0.30), (0.40, 0.10), (0.47, 0.06), (0.52, 0.16), (0.56, 0.34),
                     (0.70, 0.44), (0.84, 0.52), (0.95, 0.60), (0.99, 0.70), (0.97, 0.80)])
    sole = _smooth([(0.00, 0.74), (0.50, 0.76), (0.99, 0.70), (1.00, 0.80), (0.97, 0.90),
                    (0.60, 0.93), (0.20, 0.95), (0.03, 0.92)], steps=6)
    for part in (upper, sole):
        mask.polygon(px(part), fill=255)
    main = colors["main"]
    layer.polygon(px(sole), fill=colors["sole"])
    layer.polygon(px(_smooth([(0.08, 0.25), (0.20, 0.22), (0.31, 0.31), (0.21, 0.34),
                              (0.10, 0.31)], steps=6)), fill=_shade(main, 0.35))
    layer.polygon(px(_smooth([(0.22, 0.66), (0.55, 0.58), (0.86, 0.50), (0.60, 0.64),
                              (0.30, 0.72)], steps=6)), fill=colors["accent"])
    layer.polygon(px([(0.02, 0.40), (0.09, 0.36), (0.10, 0.70), (0.03, 0.72)]),
                  fill=_shade(main, 0.8))
    lace = _shade(colors["sole"], 0.95)
    for i in range(6):
        u = 0.41 + i * 0.035
        layer.line(px([(u - 0.02, 0.16 + i * 0.045), (u + 0.05, 0.20 + i * 0.045)]),
                   fill=lace, width=max(1, round(bw * 0.008)))
    stitch = _shade(main, 1.35)
    for i in range(40):
        u = 0.05 + i * 0.023
        layer.line(px([(u, 0.70 - 0.06 * u), (u + 0.012, 0.70 - 0.06 * (u + 0.012))]),
                   fill=stitch, width=max(1, round(bw * 0.0025)))


def _draw_bag(mask: ImageDraw.ImageDraw, layer: ImageDraw.ImageDraw, box, colors) -> None:
    px = _mapper(box)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    body = [(0.10, 0.33), (0.50, 0.31), (0.90, 0.33), (0.93, 0.62), (0.97, 0.94),
            (0.50, 0.97), (0.03, 0.94), (0.07, 0.62)]
    mask.polygon(px(_smooth(body, steps=8)), fill=255)
    handle_box = [x0 + 0.27 * bw, y0 + 0.02 * bh, x0 + 0.73 * bw, y0 + 0.62 * bh]
    thick = max(2, round(bw * 0.045))
    mask.arc(handle_box, 180, 360, fill=255, width=thick)
    layer.arc(handle_box, 180, 360, fill=_shade(colors["flap"], 0.9), width=thick)
    flap = _smooth([(0.09, 0.34), (0.50, 0.32), (0.91, 0.34), (0.90, 0.60), (0.50, 0.70),
                    (0.10, 0.60)], steps=8)
    layer.polygon(px(flap), fill=colors["flap"])
    layer.line(px(flap + flap[:1]), fill=_shade(colors["flap"], 0.7),
               width=max(1, round(bw * 0.004)))
    layer.rectangle(px([(0.45, 0.62), (0.55, 0.72)]), fill=colors["metal"],
                    outline=_shade(colors["metal"], 0.6), width=max(1, round(bw * 0.003)))
    stitch = _shade(colors["main"], 1.45)
    for i in range(36):
        u = 0.12 + i * 0.021
        v = 0.58 + 0.1 * (1 - abs(u - 0.5) * 2)
        layer.line(px([(u, v), (u + 0.01, v)]), fill=stitch, width=max(1, round(bw * 0.003)))


def _draw_hoodie(mask: ImageDraw.ImageDraw, layer: ImageDraw.ImageDraw, box, colors) -> None:
    px = _mapper(box)
    bw = box[2] - box[0]
    body = [(0.22, 0.18), (0.38, 0.12), (0.62, 0.12), (0.78, 0.18), (0.98, 0.62), (0.88, 0.66),
            (0.78, 0.42), (0.78, 0.98), (0.22, 0.98), (0.22, 0.42), (0.12, 0.66), (0.02, 0.62)]
    hood = px([(0.31, 0.0), (0.69, 0.24)])
    mask.polygon(px(body), fill=255)
    mask.ellipse(hood, fill=255)
    layer.ellipse(px([(0.39, 0.04), (0.61, 0.21)]), fill=_shade(colors["main"], 0.45))
    layer.polygon(px([(0.32, 0.70), (0.68, 0.70), (0.74, 0.88), (0.26, 0.88)]),
                  fill=colors["pocket"], outline=_shade(colors["main"], 0.7),
                  width=max(1, round(bw * 0.004)))
    rib = _shade(colors["main"], 0.85)
    for i in range(60):
        u = 0.22 + i * 0.0093
        layer.line(px([(u, 0.93), (u, 0.98)]), fill=rib, width=max(1, round(bw * 0.002)))
    for u0, u1 in ((0.45, 0.44), (0.55, 0.56)):
        layer.line(px([(u0, 0.20), (u1, 0.46)]), fill=colors["string"],
                   width=max(1, round(bw * 0.008)))


_SUBJECTS = {"shoe": _draw_shoe, "bag": _draw_bag, "hoodie": _draw_hoodie}


def _shading(mask_low: Image.Image, box_low, rng) -> tuple[Image.Image, Image.Image]:
    """Return (multiply, screen) maps that make the flat silhouette look lit and rounded."""
    x0, y0, x1, y1 = box_low
    bw, bh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    soft = mask_low.filter(ImageFilter.GaussianBlur(max(1.0, 0.07 * min(bw, bh))))
    m = np.asarray(soft, dtype=np.float32) / 255
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]].astype(np.float32)
    u, v = (xx - x0) / bw, (yy - y0) / bh
    bulge = 0.55 + 0.45 * np.sqrt(np.clip(m * 1.6, 0, 1))
    key = 1.0 + 0.18 * (0.5 - u) + 0.22 * (0.5 - v)  # key light from the upper left
    shade = np.clip(bulge * key * 0.92, 0, 1) * 255
    hx, hy = rng.uniform(0.28, 0.4), rng.uniform(0.22, 0.32)
    glare = 70 * np.exp(-(((u - hx) / 0.16) ** 2 + ((v - hy) / 0.1) ** 2)) * m
    return (Image.fromarray(shade.astype(np.uint8)).convert("RGB"),
            Image.fromarray(glare.astype(np.uint8)).convert("RGB"))


_LIGHTING = {
    # (wall colour, table colour, light falloff, shadow strength)
    "normal": ((206, 201, 192), (168, 160, 149), 0.30, 0.45),
    "dark": ((52, 47, 43), (30, 27, 25), 0.55, 0.55),
    "light": ((252, 252, 250), (238, 238, 236), 0.06, 0.18),
}


def _background(spec: SampleSpec, mask_low: Image.Image, box_low, rng):
    """Table-top scene at low resolution with the object's contact shadow baked in."""
    wall, table, falloff, strength = _LIGHTING[spec.lighting]
    lw, lh = mask_low.size
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    u, v = xx / lw, yy / lh
    horizon = rng.uniform(0.28, 0.36)
    t = np.clip((v - horizon) / 0.08 + 0.5, 0, 1)[..., None]
    base = (1 - t) * np.array(wall, np.float32) + t * np.array(table, np.float32)
    lx, ly = rng.uniform(0.2, 0.45), rng.uniform(0.1, 0.3)
    light = 1 - falloff * np.clip(((u - lx) ** 2 + (v - ly) ** 2) / 0.6, 0, 1.4)
    x0, y0, x1, y1 = box_low
    bw, bh = x1 - x0, y1 - y0
    contact = Image.new("L", (lw, lh), 0)
    ImageDraw.Draw(contact).ellipse(
        [x0 + 0.04 * bw, y1 - 0.1 * bh, x1 + 0.06 * bw, y1 + 0.08 * bh], fill=255)
    cast = Image.new("L", (lw, lh), 0)
    cast.paste(mask_low, (round(0.05 * bw), round(0.04 * bh)))
    shadow = np.maximum(
        np.asarray(contact.filter(ImageFilter.GaussianBlur(max(1.0, 0.05 * bh))), np.float32),
        0.6 * np.asarray(cast.filter(ImageFilter.GaussianBlur(max(1.0, 0.09 * bh))), np.float32),
    ) / 255
    rgb = base * (light * (1 - strength * shadow))[..., None]
    shadow_img = Image.fromarray((shadow * 150).astype(np.uint8))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), shadow_img


def _font(size: int):
    return ImageFont.load_default(size=max(6, size))


def _draw_tape(picture: Image.Image, w: int, h: int, rng) -> None:
    """A tape measure along the bottom: agents add one for scale, and it has fine detail."""
    draw = ImageDraw.Draw(picture)
    y0, th = round(h * 0.885), max(6, round(h * 0.045))
    x0, x1 = round(w * rng.uniform(0.03, 0.06)), round(w * 0.68)
    draw.rectangle([x0, y0, x1, y0 + th], fill=(236, 196, 46), outline=(150, 118, 20))
    mm = max(1.0, (x1 - x0) / 300)
    font = _font(round(th * 0.38))
    for i in range(int((x1 - x0) / mm)):
        x = x0 + i * mm
        length = th * (0.45 if i % 10 == 0 else 0.28 if i % 5 == 0 else 0.16)
        draw.line([(x, y0), (x, y0 + length)], fill=(30, 26, 20), width=1)
        if i % 10 == 0 and i:
            draw.text((x + 2, y0 + th * 0.5), str(i // 10), fill=(30, 26, 20), font=font)


def _paste_tag(picture: Image.Image, spec: SampleSpec, w: int, h: int, rng) -> None:
    """A printed QC tag with small text and a barcode, slightly rotated as if dropped there."""
    tw = round(min(w, h) * 0.30)
    th = round(tw * 0.62)
    paper = (250, 249, 244) if spec.lighting != "dark" else (170, 168, 160)
    ink = (24, 24, 28)
    tag = Image.new("RGBA", (tw, th), paper + (255,))
    draw = ImageDraw.Draw(tag)
    pad, line_h = round(tw * 0.06), th * 0.11
    for i, text in enumerate(spec.tag_lines):
        size = round(line_h * (1.25 if i == 0 else 0.85))
        draw.text((pad, pad + i * line_h * 1.2), text, fill=ink, font=_font(size))
    x, bar_top, bar_bottom = pad, round(th * 0.74), th - pad
    while x < tw - pad:
        bar = int(rng.integers(1, 4)) * max(1, tw // 300)
        if rng.random() < 0.55:
            draw.rectangle([x, bar_top, x + bar - 1, bar_bottom], fill=ink)
        x += bar
    draw.rectangle([0, 0, tw - 1, th - 1], outline=(200, 198, 190), width=max(1, tw // 200))
    tag = tag.rotate(rng.uniform(-9, 9), resample=Image.Resampling.BICUBIC, expand=True)
    if w >= h:
        pos = (round(w * 0.75), round(h * 0.58))
    else:
        pos = (round(w * 0.05), round(h * 0.82))
    picture.paste(tag, pos, tag)


def _noise_lut(sigma: float) -> np.ndarray:
    # Mapping uniform random bytes through the inverse normal CDF is ~10x faster than drawing
    # normals, and generation time is dominated by the noise of 19-megapixel pictures.
    nd = NormalDist()
    return np.array([round(sigma * nd.inv_cdf((i + 0.5) / 256)) for i in range(256)],
                    dtype=np.int16)


def _add_noise(picture: Image.Image, spec: SampleSpec, mask: Image.Image, box, rng):
    """Sensor noise everywhere plus a knit/grain texture on the object."""
    luma_sigma, chroma_sigma = {"normal": (2.6, 1.2), "dark": (4.5, 2.5), "light": (1.8, 0.8)}[
        spec.lighting]
    luma_lut, chroma_lut = _noise_lut(luma_sigma), _noise_lut(chroma_sigma)
    arr = np.array(picture)
    m = np.asarray(mask)
    h, w = m.shape
    period = max(2.5, (box[2] - box[0]) / 260)
    amp = 3.0 if spec.subject != "shoe" else 1.5
    sx = np.sin(np.arange(w, dtype=np.float32) * (2 * math.pi / period))
    sy = np.sin(np.arange(h, dtype=np.float32) * (2 * math.pi / (period * 1.3)))
    for y0 in range(0, h, BAND_ROWS):
        y1 = min(h, y0 + BAND_ROWS)
        rows = y1 - y0
        band = arr[y0:y1].astype(np.int16)
        luma = luma_lut[np.frombuffer(rng.bytes(rows * w), np.uint8)].reshape(rows, w, 1)
        chroma = chroma_lut[np.frombuffer(rng.bytes(rows * w * 3), np.uint8)].reshape(rows, w, 3)
        texture = (np.outer(sy[y0:y1], sx) * amp).astype(np.int16) * (m[y0:y1] > 127)
        band += luma + chroma + texture[..., None]
        arr[y0:y1] = np.clip(band, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    paths = ensure_samples(args.dir, scale=args.scale)
    for image_id, path in paths.items():
        with Image.open(path) as im:
            print(f"{image_id}  {im.format:4} {im.mode:4} {im.width}x{im.height}  "
                  f"{path.stat().st_size / 1e6:6.1f} MB  {path}")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
