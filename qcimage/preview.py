"""A tenant's watermark on light, dark and busy sample photos, as one contact sheet.

Rendered by the real engine, so the sheet shows exactly what browsers will get. The
sample photos come from the source checkout's ``tools/samples.py`` (Pillow, NumPy).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from .services.imaging.watermark import Watermark

WIDTHS = (480, 960, 2000)
# (label, sample image id): the stand-in upstream's photos in bright light, in the dark,
# and the busiest one (tape measure, printed tag, fabric texture).
SAMPLES = (("light", "L1ghTw9Q"), ("dark", "dRk5nT0p"), ("busy", "n4EYdIoE"))
# Each render is shown at most this wide, so one sheet fits a screen; narrower ones at 1:1.
CELL_WIDTH = 640
_GAP = 16
_LABEL = 28
_BACKGROUND = (246, 246, 244)


class PreviewUnavailable(RuntimeError):
    """The sample photos cannot be made here (no source checkout, or no Pillow)."""


def _sample_sources() -> list[tuple[str, bytes]]:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "tools" / "samples.py").is_file() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))  # an editable install: the checkout is right there
    try:
        from PIL import Image  # noqa: F401
        from tools import samples
    except ImportError as error:
        raise PreviewUnavailable(
            f"tenants preview draws on the sample photos of the source checkout ({error}): "
            "run it from the repository with the dev extras installed "
            "(pip install -e '.[dev]')") from None
    sources = []
    for label, image_id in SAMPLES:
        spec = samples.SAMPLES_BY_ID[image_id]
        picture = samples.render(spec, scale=max(WIDTHS) / spec.width)
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=95)
        sources.append((label, out.getvalue()))
    return sources


def contact_sheet(name: str, watermark: Watermark, out: Path) -> None:
    """Write the sheet for tenant ``name`` to ``out`` (PNG, JPEG or WebP by its suffix)."""
    from PIL import Image, ImageDraw, ImageFont

    from .services.imaging import RenderSpec
    from .services.imaging.engine import ImagingEngine

    engine = ImagingEngine(watermark)
    engine.check_watermark()
    rows = []
    for label, source in _sample_sources():
        row = []
        for width in WIDTHS:
            rendered = engine.render(source, RenderSpec(width=width, quality=92, format="png"))
            with Image.open(io.BytesIO(rendered.data)) as img:
                shown = img.convert("RGB")
            if shown.width > CELL_WIDTH:
                shown = shown.resize((CELL_WIDTH, round(shown.height * CELL_WIDTH / shown.width)),
                                     Image.Resampling.LANCZOS)
            caption = f"{label}, {width} px" + ("" if shown.width == width else
                                                f" (shown at {shown.width})")
            row.append((caption, shown))
        rows.append(row)
    columns = [max(row[i][1].width for row in rows) for i in range(len(WIDTHS))]
    heights = [max(cell.height for _, cell in row) + _LABEL for row in rows]
    sheet = Image.new("RGB", (sum(columns) + _GAP * (len(columns) + 1),
                              sum(heights) + _GAP * (len(rows) + 1) + _LABEL), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=18)
    draw.text((_GAP, _GAP // 2), f"tenant {name}", fill=(20, 20, 20), font=font)
    top = _GAP + _LABEL
    for row, height in zip(rows, heights):
        left = _GAP
        for (caption, cell), column in zip(row, columns):
            draw.text((left, top), caption, fill=(60, 60, 60), font=font)
            sheet.paste(cell, (left, top + _LABEL))
            left += column + _GAP
        top += height + _GAP
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=85) if out.suffix.lower() in (".jpg", ".jpeg", ".webp") else \
        sheet.save(out)
