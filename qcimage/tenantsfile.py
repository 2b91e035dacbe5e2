"""The tenants file (``QCIMAGE_TENANTS_FILE``, TOML read with ``tomllib``): every problem
in it at once, each naming the tenant and the field."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many

from .config import DEFAULT_WATERMARK_FONT, watermark_layers
from .keys import KEY_HASH, KEY_NAME
from .services.imaging.watermark import Watermark, WatermarkLayer
from .tenants import TENANT_NAME, LinkDefaults, Tenant, Tenants
from .vocabulary import GRAVITIES, MAX_WIDTH, MIN_WIDTH, REQUEST_FORMATS

_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z")


def load_tenants(text: str, template: Tenant, *, source: str,
                 errors: list[str]) -> Tenants:
    """Parse a tenants file; append each problem to ``errors`` ("<source>: tenant …, field …").

    Fields a tenant leaves out take ``template``'s value: the environment's.
    """
    def problem(message: str) -> None:
        errors.append(f"{source}: {message}")

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problem(f"not valid TOML: {error}")
        return Tenants({}, from_file=True)
    for key in document:
        if key != "tenants":
            problem(f"unknown top-level field {key!r}: only [tenants.NAME] tables belong here")
    tables = document.get("tenants", {})
    if not isinstance(tables, dict) or not tables:
        problem("defines no tenants: add a [tenants.NAME] table with api_keys")
        return Tenants({}, from_file=True)
    tenants = {}
    owners: dict[str, str] = {}
    for name, table in tables.items():
        fields = _Fields(name, problem)
        if not TENANT_NAME.match(name):
            fields.bad("", "the name must match ^[a-z0-9][a-z0-9-]{0,31}$ (lower case, digits, "
                           "'-'), because it is written into every image link")
        if not isinstance(table, dict):
            fields.bad("", "must be a table ([tenants.NAME])")
            continue
        tenant = _tenant(name, table, template, fields)
        for digest in tenant.api_keys:
            if digest in owners:
                fields.bad("api_keys", f"a key hash also belongs to tenant {owners[digest]!r}: "
                                       "each key belongs to one tenant only")
            owners.setdefault(digest, name)
        tenants[name] = tenant
    return Tenants(tenants, from_file=True)


def read_tenants_file(path: Path, errors: list[str]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        errors.append(f"QCIMAGE_TENANTS_FILE: cannot read {path} ({reason})")
        return None


class _Fields:
    """Typed reads of one tenant's table that record every problem with tenant and field."""

    def __init__(self, tenant: str, problem: Callable[[str], None]):
        self.tenant = tenant
        self.problem = problem

    def bad(self, name: str, message: str) -> None:
        where = f", field {name!r}" if name else ""
        self.problem(f"tenant {self.tenant!r}{where}: {message}")

    def unknown(self, table: dict, known: tuple[str, ...], prefix: str = "") -> None:
        for key in table:
            if key not in known:
                self.bad(prefix + key, f"unknown field (known: {', '.join(known)})")

    def get(self, table: dict, name: str, check: Callable[[Any], str | None], default: Any,
            prefix: str = "") -> Any:
        """``table[name]`` when ``check`` finds nothing wrong with it, else ``default``."""
        if name not in table:
            return default
        value = table[name]
        wrong = check(value)
        if wrong:
            self.bad(prefix + name, f"{wrong}, got {value!r}")
            return default
        return value


def _string_list(item: Callable[[str], bool], what: str) -> Callable[[Any], str | None]:
    def check(value):
        if not isinstance(value, list) or not all(isinstance(v, str) and item(v) for v in value):
            return f"must be a list of {what}"
        return None
    return check


def _number(lo: float, hi: float, kind: type = float) -> Callable[[Any], str | None]:
    accepted = (int, float) if kind is float else int
    what = "a number" if kind is float else "an integer"

    def check(value):
        if isinstance(value, bool) or not isinstance(value, accepted):
            return f"must be {what} from {lo} to {hi}"
        return None if lo <= value <= hi else f"must be from {lo} to {hi}"
    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _rate(value) -> str | None:
    try:
        parse_many(value) if isinstance(value, str) else parse_many("")
    except ValueError:
        return "must be a rate like '100 per 15 minutes'"
    return None


def _is_origin(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and value == \
        f"{parts.scheme}://{parts.netloc}"


# Checked here, in the gunicorn master (which must not load ImageMagick), so that a HUP
# with a wrong file is refused instead of failing every new worker's watermark check.
_FONT_MAGIC = (b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF")


def _starts_with(value: str, magic: tuple[bytes, ...]) -> bool:
    path = Path(value).expanduser()
    try:
        with path.open("rb") as file:
            return file.read(16).startswith(magic)
    except OSError:
        return False


def _readable_image(value: str) -> bool:
    return _starts_with(value, _IMAGE_MAGIC)


_TENANT_FIELDS = ("api_keys", "cors_origins", "referrers", "lookup_rate_limit",
                  "image_rate_limit", "watermark", "defaults")
_WATERMARK_FIELDS = ("text", "font", "logos", "position", "logo_position", "opacity", "margin",
                     "scale", "logo_scale", "tile")
_DEFAULTS_FIELDS = ("width", "quality", "format", "srcset_widths", "link_ttl")


def _tenant(name: str, table: dict, template: Tenant, fields: _Fields) -> Tenant:
    fields.unknown(table, _TENANT_FIELDS)
    tenant = Tenant(
        name=name,
        api_keys=_api_keys(name, table, fields),
        watermark=(Watermark(_watermark(table["watermark"], fields)) if "watermark" in table
                   else template.watermark),
        cors_origins=tuple(fields.get(table, "cors_origins", _string_list(
            _is_origin, "origins like 'https://shop.example' (no path)"),
            template.cors_origins)),
        referrers=tuple(h.lower() for h in fields.get(table, "referrers", _string_list(
            lambda h: bool(_HOST.match(h.lower())),
            "host names like 'shop.example' or '*.shop.example'"), template.referrers)),
        lookup_limit=fields.get(table, "lookup_rate_limit", _rate, template.lookup_limit),
        image_limit=fields.get(table, "image_rate_limit", _rate, template.image_limit),
        defaults=_defaults(table.get("defaults"), template.defaults, fields),
    )
    for layer in tenant.watermark.layers:
        if layer.text is not None and not _starts_with(str(layer.font), _FONT_MAGIC):
            fields.bad("watermark.font", f"{layer.font} is not a readable TrueType/OpenType "
                       "file"
                       + (" (Debian's fonts-dejavu-core installs it)"
                          if layer.font == DEFAULT_WATERMARK_FONT else ""))
            break
    return tenant


def _api_keys(name: str, table: dict, fields: _Fields) -> dict[str, str]:
    """``"sha256hex"`` (named after the tenant, so a key and its replacement share one
    rate-limit budget) or ``"name:sha256hex"`` as ``qcimage keys create`` prints it."""
    entries = table.get("api_keys")
    if not isinstance(entries, list) or not entries:
        fields.bad("api_keys", "at least one SHA-256 hex key hash is required "
                               "(`qcimage keys create NAME` prints one)")
        return {}
    keys: dict[str, str] = {}
    for entry in entries:
        key_name, _, digest = entry.rpartition(":") if isinstance(entry, str) else ("", "", "")
        key_name = key_name or name
        if not KEY_HASH.match(digest.lower()) or not KEY_NAME.match(key_name):
            fields.bad("api_keys", f"entries must be 'sha256hex' or 'name:sha256hex' (64 hex "
                                   f"digits), got {entry!r}")
            continue
        if digest.lower() in keys:
            fields.bad("api_keys", "the same key hash is listed twice")
        keys[digest.lower()] = key_name
    return keys


def _watermark(table: Any, fields: _Fields) -> tuple[WatermarkLayer, ...]:
    if not isinstance(table, dict):
        fields.bad("watermark", "must be a table ([tenants.NAME.watermark])")
        return ()
    p = "watermark."
    fields.unknown(table, _WATERMARK_FIELDS, p)
    files = "readable PNG, JPEG, GIF or WebP files"
    font = fields.get(table, "font", lambda v: None if isinstance(v, str) and v.strip()
                      else "must be the path of a font file", str(DEFAULT_WATERMARK_FONT), p)
    bounds, layer = WatermarkLayer.BOUNDS, WatermarkLayer
    common = dict(
        gravity=fields.get(table, "position", _choice(GRAVITIES), layer.gravity, p),
        tile=fields.get(table, "tile", lambda v: None if isinstance(v, bool)
                        else "must be true or false", layer.tile, p),
        **{name: fields.get(table, name, _number(*bounds[name]), getattr(layer, name), p)
           for name in ("opacity", "margin", "scale")},
    )
    logo_common = {
        **common,
        "gravity": fields.get(table, "logo_position", _choice(GRAVITIES), common["gravity"], p),
        "scale": fields.get(table, "logo_scale", _number(*bounds["scale"]), common["scale"], p),
    }
    layers = watermark_layers(
        # Omitted text: no text layer (a logo-only watermark).
        fields.get(table, "text", lambda v: None if isinstance(v, str) and v.strip()
                   else "must be non-blank text", None, p),
        Path(font).expanduser(),
        [Path(v).expanduser() for v in fields.get(table, "logos",
                                                  _string_list(_readable_image, files), [], p)],
        common, logo_common)
    if not layers and table.get("text") is None and not table.get("logos"):
        fields.bad("watermark", "draws nothing: set text and/or logos")
    return layers


def _defaults(table: Any, template: LinkDefaults, fields: _Fields) -> LinkDefaults:
    if table is None:
        return template
    if not isinstance(table, dict):
        fields.bad("defaults", "must be a table ([tenants.NAME.defaults])")
        return template
    p = "defaults."
    fields.unknown(table, _DEFAULTS_FIELDS, p)
    width = _number(MIN_WIDTH, MAX_WIDTH, int)
    widths = fields.get(table, "srcset_widths", lambda v: None if isinstance(v, list) and v and all(
        width(w) is None for w in v) else f"must be a list of integers from {MIN_WIDTH} to "
        f"{MAX_WIDTH}", list(template.srcset_widths), p)
    return LinkDefaults(
        width=fields.get(table, "width", width, template.width, p),
        quality=fields.get(table, "quality", _number(1, 100, int), template.quality, p),
        format=fields.get(table, "format", _choice(REQUEST_FORMATS), template.format, p),
        srcset_widths=tuple(sorted(set(widths))),
        link_ttl=fields.get(table, "link_ttl", _number(0, 10 * 365 * 86400, int),
                            template.link_ttl, p),
    )
