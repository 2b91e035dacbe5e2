"""ImageMagick under our policy.xml: the one way bytes reach a decoder, and its limits."""

import ctypes
import logging
from functools import cache
from xml.etree import ElementTree

from wand.api import libmagick, library
from wand.color import Color
from wand.exceptions import WandException, WandRuntimeError
from wand.image import Image
from wand.resource import limits
from wand.version import MAGICK_VERSION

from qcimage.services.imaging import POLICY_DIR, SourceTruncated
from qcimage.services.imaging.probe import output_format
from qcimage.vocabulary import OUTPUT_FORMATS

log = logging.getLogger(__name__)

# Same as the width/height limit in policy/policy.xml ("16KP" is SI: 16000).
MAX_SIDE = 16_000
# ImageMagick's coder for each output format.
CODERS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG", "avif": "AVIF"}
# MagickCore's ResourceType enum: Wand's `limits` stops before list-length.
_LIST_LENGTH_RESOURCE = 11


def read_first_frame(img: Image, data: bytes | bytearray, fmt: str) -> None:
    """Decode data into the empty img with the decoder forced to fmt, first frame only."""
    # Forcing the coder means content never picks its decoder (no SVG/MVG/MSL disguised as
    # a photo), and "[0]" stops GIF/WebP decoders after the first frame.
    library.MagickSetFormat(img.wand, CODERS.get(fmt, fmt.upper()).encode())
    library.MagickSetFilename(img.wand, f"source.{fmt}[0]".encode())
    if isinstance(data, bytearray):
        # Read the caller's buffer in place: Wand would copy it to bytes first, and a
        # 40 MB source copied at the decode's peak is 40 MB more per worker.
        view = (ctypes.c_char * len(data)).from_buffer(data)
        try:
            read = library.MagickReadImageBlob(img.wand, ctypes.addressof(view), len(data))
        finally:
            del view
        if not read:
            img.raise_exception()
            raise WandRuntimeError("the source could not be read")
    else:
        img.read(blob=data)
    # As Wand's own constructor does: a format left on the wand would make every later
    # encode silently produce it again, whatever img.format says.
    library.MagickSetFormat(img.wand, b"")
    missing = _missing_data_warning(img)
    if missing:
        log.warning("decoding a %s source: %s", fmt, missing)
        raise SourceTruncated(f"the {fmt} source is cut short or corrupt")
    # Other warnings (extraneous bytes, unknown chunks) are tolerated and cleared here, so
    # that later checks only see their own step's problems.
    img.get_exception()


class _ExceptionHead(ctypes.Structure):
    """The first fields of MagickCore 6's ExceptionInfo, unchanged since 6.0."""

    _fields_ = [("severity", ctypes.c_int), ("error_number", ctypes.c_int),
                ("reason", ctypes.c_char_p), ("description", ctypes.c_char_p)]


# Decoder warnings that mean rows are missing or made up (libjpeg fills them with grey):
# for a QC photo that is an error, however browsers treat it.
_MISSING_DATA = ("premature end", "truncat", "insufficient image data", "unexpected end",
                 "huffman")
_CORRUPT_IMAGE_WARNING = 325


def _missing_data_warning(img: Image) -> str | None:
    """The decoder's warning that data is missing, if it gave one.

    Coders record warnings on the image, not the wand, where Wand never looks: they are
    read with GetImageException.
    """
    _declare_image_exception_api()
    info = libmagick.AcquireExceptionInfo()
    try:
        libmagick.GetImageException(library.GetImageFromMagickWand(img.wand), info)
        head = ctypes.cast(info, ctypes.POINTER(_ExceptionHead)).contents
        reason = (head.reason or b"").decode("utf-8", "replace").lower()
        if head.severity == _CORRUPT_IMAGE_WARNING and any(w in reason for w in _MISSING_DATA):
            return reason.split(" `")[0]
        return None
    finally:
        libmagick.DestroyExceptionInfo(info)


@cache
def _declare_image_exception_api() -> None:
    # Wand declares the others; GetImageException is MagickCore's and left undeclared.
    libmagick.GetImageException.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libmagick.GetImageException.restype = None


def raise_pending(img: Image) -> None:
    """Raise what ImageMagick recorded on img, warnings included."""
    exc = img.get_exception()
    if exc is not None:
        raise exc


@cache
def available_output_formats() -> frozenset[str]:
    """The output formats this ImageMagick, under our policy, can really write."""
    found = set()
    for fmt in OUTPUT_FORMATS:
        try:
            with Image(width=8, height=8, background=Color("gray50")) as img:
                img.format = CODERS[fmt]
                data = img.make_blob()
        except (WandException, ValueError):  # Wand raises ValueError for unknown formats
            continue
        if output_format(data) == fmt:
            found.add(fmt)
    return frozenset(found)


def imagemagick_version() -> str:
    """ImageMagick's version string, for cache keys."""
    return MAGICK_VERSION


def resource_limits() -> dict[str, int]:
    """The resource limits in force in this process (bytes, pixels or counts)."""
    in_force = {name: limits[name] for name in limits if name != "undefined"}
    in_force["list-length"] = library.MagickGetResourceLimit(_LIST_LENGTH_RESOURCE)
    return in_force


@cache
def policy_limits() -> dict[str, int]:
    """The resource limits our policy.xml sets, in bytes, pixels or counts (its
    temporary-path is a place, not a limit)."""
    units = {"KP": 10**3, "MP": 10**6, "GP": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    found = {}
    for rule in ElementTree.parse(POLICY_DIR / "policy.xml").getroot():
        if rule.get("domain") == "resource" and rule.get("name") != "temporary-path":
            value = rule.get("value")
            unit = next((u for u in units if value.endswith(u)), None)
            found[rule.get("name")] = (int(value[:-len(unit)]) * units[unit] if unit
                                       else int(value))
    return found


def policy_in_force() -> bool:
    """Whether every limit of our policy is the one ImageMagick applies (readiness)."""
    in_force = resource_limits()
    return all(in_force.get(name) == value for name, value in policy_limits().items())
