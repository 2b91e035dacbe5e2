"""In-process comparisons: our engine against pyvips, source sizing, a per-stage profile."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .metrics import luma, median, psnr, ssim

# EXIF orientation -> the PIL transpose that shows the picture upright (as exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# Names the engine gives its stages today; unknown names are shown as they are.
STAGE_NAMES = {"_read_first_frame": "decode", "_fit": "resize + orient",
               "_apply_watermark": "watermark", "_encode": "strip + encode",
               "probe": "probe header", "_hint_jpeg_size": "JPEG size hint"}


class _NullStore:
    """A render cache that never hits: every render measured here is a cold one."""

    def get(self, key: str, *, tag: str | None = None) -> None:
        return None

    def set(self, key: str, value: bytes, expire: float | None = None, *,
            tag: str | None = None) -> None:
        pass

    def add(self, key: str, value: bytes, expire: float) -> bool:
        return True

    def delete(self, key: str) -> None:
        pass

    def purge(self, tag: str) -> int:
        return 0


class _RecordingClient:
    """The app's upstream client, keeping each fetched body to count and inspect it."""

    def __init__(self, client):
        self.client = client
        self.bodies: list[bytes] = []

    def fetch_image(self, *args, **kwargs):
        source = self.client.fetch_image(*args, **kwargs)
        # A copy: the engine empties the bytearray it is given once it has decoded it.
        self.bodies.append(bytes(source.data))
        return source

    def __getattr__(self, name: str):
        return getattr(self.client, name)


class Pipeline:
    """The app's renderer (source policy, upstream client, engine) as create_app builds it.

    Only its cache is swapped for one that never hits, and its client records bodies.
    """

    def __init__(self, env: dict[str, str], instance: Path):
        from qcimage.wiring import build_services
        from qcimage.config import load_settings
        from qcimage.services.cache import RenderCache
        from qcimage.services.pipeline import ImageRenderer

        services = build_services(load_settings(env), instance)
        app_renderer = services.renderer
        self.engine = app_renderer.engine
        self.client = _RecordingClient(app_renderer.client)
        self.renderer = ImageRenderer(self.client, RenderCache(_NullStore()), self.engine,
                                      source=app_renderer.source,
                                      watermark_fingerprint="bench",
                                      takedowns=app_renderer.takedowns)

    def cold(self, image_id: str, width: int, quality: int, fmt: str) -> dict:
        """One uncached request's work: fetch(es) as the policy says, then render."""
        from qcimage.services.imaging import RenderSpec
        from qcimage.services.pipeline import RenderJob

        self.client.bodies = []
        started = time.perf_counter()
        result = self.renderer.render(RenderJob(image_id, RenderSpec(width, quality, fmt)))
        return {"ms": (time.perf_counter() - started) * 1000,
                "upstream_ms": result.upstream_ms, "render_ms": result.render_ms,
                "output": result.entry.data, "bodies": self.client.bodies}

    def render(self, source: bytes, width: int, quality: int, fmt: str) -> bytes:
        """The engine alone, on a source already in memory."""
        from qcimage.services.imaging import RenderSpec

        return self.engine.render(source, RenderSpec(width=width, quality=quality,
                                                     format=fmt)).data


class VipsRenderer:
    """The same job done the libvips way: shrink-on-load thumbnail, cached text mark, webp."""

    def __init__(self, text: str, font: Path, *, scale: float, opacity: float, margin: float,
                 effort: int):
        # One thread, as our ImageMagick policy allows, and no operation cache: every
        # render must decode its source again, as a cold request does.
        os.environ["VIPS_CONCURRENCY"] = "1"
        import pyvips

        pyvips.cache_set_max(0)
        self.pyvips = pyvips
        self.text, self.font = text, str(font)
        self.scale, self.opacity, self.margin = scale, opacity, margin
        self.effort = effort
        self._marks: dict[int, object] = {}

    def version(self) -> str:
        return ".".join(str(self.pyvips.version(i)) for i in range(3))

    def _mark(self, frame_width: int):
        if frame_width not in self._marks:
            vips = self.pyvips
            family = "DejaVu Sans Bold"
            probe = vips.Image.text(self.text, fontfile=self.font, font=family, dpi=72)
            dpi = max(1, round(72 * self.scale * frame_width / probe.width))
            mask = vips.Image.text(self.text, fontfile=self.font, font=family, dpi=dpi)
            pad = max(2, round(mask.height * 0.2))
            mask = mask.embed(pad, pad, mask.width + 2 * pad, mask.height + 2 * pad)
            # White face over a soft dark halo, like ours: grey level = face, alpha = halo.
            halo = (mask.gaussblur(max(0.5, mask.height * 0.05)) * 2).cast("uchar")
            alpha = ((halo > mask).ifthenelse(halo, mask) * self.opacity).cast("uchar")
            mark = mask.bandjoin([mask, mask, alpha]).copy(interpretation="srgb")
            self._marks[frame_width] = mark.copy_memory()
        return self._marks[frame_width]

    def render(self, source: bytes, width: int, quality: int) -> bytes:
        vips = self.pyvips
        # A tall box: only the width constrains, and "down" never enlarges, as ours.
        img = vips.Image.thumbnail_buffer(source, width, height=100_000, size="down")
        mark = self._mark(img.width)
        margin = round(self.margin * img.width)
        bands = img.bands
        img = img.composite2(mark, "over", x=img.width - mark.width - margin,
                             y=img.height - mark.height - margin)
        if bands in (1, 3):
            img = img.extract_band(0, n=3)
        return img.webpsave_buffer(Q=quality, effort=self.effort, strip=True)


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - started) * 1000, result


def decoded(data: bytes) -> Image.Image:
    """An encoded output as RGB, transparency flattened on white as a page would show it."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return img.convert("RGB")


def has_alpha(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def upright_size(source: bytes) -> tuple[int, int]:
    """The source's size as displayed, EXIF orientation applied (PNG eXIf included)."""
    with Image.open(io.BytesIO(source)) as img:
        orientation = img.getexif().get(0x0112, 1)
        width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def orientation_of(source: bytes) -> int:
    with Image.open(io.BytesIO(source)) as img:
        return img.getexif().get(0x0112, 1)


def compare(test: bytes, reference: bytes, reference_source: bytes) -> dict:
    """SSIM and PSNR (luma) of ``test`` against ``reference``, brought to one frame.

    A reference that came out sideways (its source's EXIF orientation not applied) is
    turned upright first, then the larger picture is resized to the smaller one's size.
    """
    ours, ref = decoded(test), decoded(reference)
    notes = []
    up_w, up_h = upright_size(reference_source)
    if (ref.width > ref.height) != (up_w > up_h) and ref.width != ref.height:
        ref = ref.transpose(_UPRIGHT[orientation_of(reference_source)])
        notes.append("reference not upright: rotated before comparing")
    if ours.size != ref.size:
        notes.append(f"sizes {ours.size[0]}x{ours.size[1]} / {ref.size[0]}x{ref.size[1]}: "
                     "larger resized down")
        if ours.width * ours.height > ref.width * ref.height:
            ours = ours.resize(ref.size, Image.Resampling.LANCZOS)
        else:
            ref = ref.resize(ours.size, Image.Resampling.LANCZOS)
    a, b = luma(np.asarray(ours)), luma(np.asarray(ref))
    return {"ssim": ssim(a, b), "psnr": psnr(a, b), "notes": notes}


def engine_vs_vips(pipeline: Pipeline, vips: VipsRenderer, source: bytes, n: int,
                   width: int = 960, quality: int = 80) -> dict:
    """Interleaved renders of one source by both; medians and their ratio."""
    ours_ms, vips_ms = [], []
    ours_out = vips_out = b""
    for i in range(n + 1):
        # Alternating the order spreads the machine's noise (and cache warmth) evenly.
        order = ((ours_ms, pipeline.render, (source, width, quality, "webp")),
                 (vips_ms, vips.render, (source, width, quality)))
        for times, fn, args in (order if i % 2 == 0 else order[::-1]):
            ms, out = _timed(fn, *args)
            if i:  # the first round warms both up (overlay caches, lazy library loads)
                times.append(ms)
            if fn == pipeline.render:
                ours_out = out
            else:
                vips_out = out
    agreement = compare(ours_out, vips_out, source)
    return {"n": n, "ours_ms": median(ours_ms), "vips_ms": median(vips_ms),
            "ratio": median(ours_ms) / median(vips_ms), "ours_bytes": len(ours_out),
            "vips_bytes": len(vips_out), "ssim_ours_vs_vips": agreement["ssim"],
            "ours_samples": ours_ms, "vips_samples": vips_ms}


def source_sizing(default: Pipeline, full: Pipeline, image_ids: list[str], n: int,
                  budget_s: float, width: int = 960, quality: int = 80) -> list[dict]:
    """Per image: bytes fetched, fetch+render ms and output quality, default vs full source."""
    deadline = time.monotonic() + budget_s
    rows = []
    for image_id in image_ids:
        runs: dict[str, list[dict]] = {"default": [], "full": []}
        for i in range(n):
            if i and time.monotonic() > deadline:
                break
            pair = (("default", default), ("full", full))
            for name, pipeline in (pair if i % 2 == 0 else pair[::-1]):
                runs[name].append(pipeline.cold(image_id, width, quality, "webp"))
        last_d, last_f = runs["default"][-1], runs["full"][-1]
        src_f = last_f["bodies"][-1]
        served = compare(last_d["output"], last_f["output"], src_f)
        # Lossless outputs isolate what the source costs from the encoder's own loss.
        lossless = compare(default.cold(image_id, width, quality, "png")["output"],
                           full.cold(image_id, width, quality, "png")["output"], src_f)
        notes = sorted(set(served["notes"] + lossless["notes"]))
        for name, last in (("default", last_d), ("full", last_f)):
            if len(last["bodies"]) > 1:
                notes.append(f"{name}: {len(last['bodies'])} upstream fetches")
        fetched = {name: sum(len(body) for body in runs[name][-1]["bodies"]) for name in runs}
        ms = {name: median([run["ms"] for run in runs[name]]) for name in runs}
        rows.append({
            "image_id": image_id, "n": len(runs["default"]),
            "default_bytes": fetched["default"], "full_bytes": fetched["full"],
            "bytes_ratio": fetched["full"] / fetched["default"],
            "default_fetch_ms": median([run["upstream_ms"] for run in runs["default"]]),
            "default_render_ms": median([run["render_ms"] for run in runs["default"]]),
            "full_fetch_ms": median([run["upstream_ms"] for run in runs["full"]]),
            "full_render_ms": median([run["render_ms"] for run in runs["full"]]),
            "default_ms": ms["default"], "full_ms": ms["full"],
            "speedup": ms["full"] / ms["default"],
            "ssim": served["ssim"], "psnr": served["psnr"],
            "ssim_lossless": lossless["ssim"], "psnr_lossless": lossless["psnr"],
            "default_size": decoded(last_d["output"]).size,
            "full_size": decoded(last_f["output"]).size,
            "default_alpha": has_alpha(last_d["output"]),
            "full_alpha": has_alpha(last_f["output"]),
            "source_alpha": has_alpha(src_f),
            "notes": notes,
            # A sideways reference puts its watermark in another corner: not a quality test.
            "comparable": not any("not upright" in note for note in served["notes"]),
        })
    return rows


def _callees(stats: pstats.Stats, parent: tuple) -> dict[tuple, float]:
    """Cumulative seconds spent in each function called directly from ``parent``."""
    return {func: callers[parent][3] for func, (*_, callers) in stats.stats.items()
            if parent in callers}


def stage_profile(pipeline: Pipeline, source: bytes, n: int, width: int = 960,
                  quality: int = 80, fmt: str = "webp") -> dict:
    """ms per render in each function the engine's render() calls (cProfile, n renders)."""
    pipeline.render(source, width, quality, fmt)  # warm: overlay cache, coder modules
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        pipeline.render(source, width, quality, fmt)
    profile.disable()
    stats = pstats.Stats(profile)
    root = next(func for func in stats.stats
                if func[2] == "render" and func[0].endswith("imaging/engine.py"))
    total = stats.stats[root][3]
    children = _callees(stats, root)
    # A refactor may put one wrapper of ours between render() and the stages: look
    # through it (never into Wand, whose calls into ImageMagick cProfile cannot see).
    while children:
        wrapper = max(children, key=children.get)
        grand = _callees(stats, wrapper)
        if (children[wrapper] < 0.8 * total or wrapper[2] in STAGE_NAMES
                or "/imaging/" not in wrapper[0]
                or sum(grand.values()) < 0.8 * children[wrapper]):
            break
        rest = {f: s for f, s in children.items() if f != wrapper}
        children = {**rest, **grand}
    stages = {}
    for func, seconds in sorted(children.items(), key=lambda item: -item[1]):
        name = STAGE_NAMES.get(func[2], func[2])
        if seconds / total >= 0.01:
            stages[name] = stages.get(name, 0.0) + seconds * 1000 / n
    stages["other"] = total * 1000 / n - sum(stages.values())
    return {"total_ms": total * 1000 / n, "stages": stages, "n": n}
