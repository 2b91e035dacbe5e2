"""What a watermark is: its text and logo layers, their bounds, and its fingerprint.

Plain Python, so the settings can build and check layers without loading ImageMagick;
``overlays`` draws them.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from qcimage.services.imaging import WatermarkError
from qcimage.vocabulary import GRAVITIES


@dataclass(frozen=True)
class WatermarkLayer:
    """One text or logo mark; sizes are fractions of the output width."""

    text: str | None = None
    logo: Path | None = None
    font: Path | None = None
    gravity: str = "south_east"
    opacity: float = 0.7
    margin: float = 0.02
    scale: float = 0.22
    tile: bool = False
    # Inclusive bounds of each number; the settings that set them read these.
    BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {
        "opacity": (0.05, 1.0), "margin": (0.0, 0.25), "scale": (0.02, 1.0)}

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
        for name, (lo, hi) in self.BOUNDS.items():
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}")


# Part of the fingerprint: bump it when the way overlays are drawn changes, so that
# cached renders made with the old look are not served as the new one.
# 2: margins yield on very wide frames; marks too small to see fail the request instead.
_OVERLAY_STYLE = "qcimage-watermark-2"


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
                    digest.update(hashlib.sha256(read_asset(path)).digest())
        return digest.hexdigest()


def read_asset(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WatermarkError(f"watermark file {path.name!r} cannot be read") from exc
