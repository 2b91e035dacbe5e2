"""Settings read from ``QCIMAGE_*`` environment variables, validated once at start-up.

``Settings`` holds what the web layer reads, plus one group per service, each filled by
a small reader (``groups``): ``upstream``, ``cache``, ``imaging``, ``limits`` and
``logging``; ``watermark`` (read here) and ``tenants``. ``load_settings`` reports every
problem at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .envreader import PREFIX, ConfigError, EnvReader
from .groups import (CacheSettings, ImagingSettings, LimitSettings, LoggingSettings,
                     UpstreamSettings, WorkerSettings, read_cache, read_env, read_imaging,
                     read_limits, read_logging, read_upstream, read_workers)
from .keys import KEY_HASH, KEY_NAME, development_secrets, hash_api_key
from .services.imaging.watermark import Watermark, WatermarkLayer
from .vocabulary import GRAVITIES, MAX_WIDTH, MIN_WIDTH

if TYPE_CHECKING:
    from .tenants import Tenants

__all__ = ["PREFIX", "CacheSettings", "ConfigError", "ImagingSettings", "LimitSettings",
           "LoggingSettings", "Settings", "UpstreamSettings", "WorkerSettings", "load_settings",
           "per_worker_limit_problems"]

# From Debian's fonts-dejavu-core (installed by `make`): a file, because ImageMagick
# silently swaps an unknown font *name* for another font.
DEFAULT_WATERMARK_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
DEFAULT_WATERMARK_TEXT = "qcimage"
MAX_SRCSET_WIDTHS = 8


@dataclass(frozen=True)
class Settings:
    env: str
    api_keys: dict[str, str]              # sha256 hex -> key name
    signing_keys: tuple[str, ...]
    public_url: str
    trusted_proxies: int
    forwarded_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    cors_origins: tuple[str, ...]
    force_https: bool
    signed_url_ttl: int
    signed_url_bucket: int
    srcset_widths: tuple[int, ...]
    max_product_images: int
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    upstream: UpstreamSettings
    cache: CacheSettings
    imaging: ImagingSettings
    workers: WorkerSettings
    limits: LimitSettings
    watermark: Watermark
    logging: LoggingSettings
    gallery: bool                         # serve /gallery (a page for people)
    demo_secrets: dict[str, str] = field(default_factory=dict)
    tenants_file: Path | None = None
    tenants: Tenants | None = None     # set by load_settings: the file's, or `default` alone

    @property
    def is_production(self) -> bool:
        return self.env == "production"


def per_worker_limit_problems(settings: Settings, workers: int) -> list[str]:
    """Why production must not start: memory:// would quietly multiply every limit.

    Each worker process counts in its own memory, so N workers let N times each limit
    through. Development (the demo) may; production must share a store or say it accepts.
    """
    limits = settings.limits
    if (not settings.is_production or workers < 2 or limits.per_worker
            or not limits.storage_uri.startswith("memory://")):
        return []
    return [f"{PREFIX}RATELIMIT_STORAGE_URI={limits.storage_uri} counts in each of "
            f"the {workers} workers separately, so every rate limit would let {workers} times "
            f"its value through: set {PREFIX}RATELIMIT_STORAGE_URI=redis://127.0.0.1:6379/0 "
            f"(one count for every worker and box), or {PREFIX}WORKERS=1, or accept per-worker "
            f"limits with {PREFIX}RATELIMIT_PER_WORKER=true"]


def _parse_api_keys(reader: EnvReader) -> dict[str, str]:
    keys: dict[str, str] = {}
    for entry in reader.csv("API_KEYS"):
        name, _, digest = entry.partition(":")
        digest = digest.lower()
        if not KEY_NAME.match(name) or not KEY_HASH.match(digest):
            reader.errors.append(
                f"{PREFIX}API_KEYS entries must be name:sha256hex (64 hex digits); "
                f"entry {name or '?'!r} is not (create one with `qcimage keys create NAME`)")
            continue
        if name in keys.values():
            reader.errors.append(f"{PREFIX}API_KEYS names must be unique; {name!r} repeats")
        keys[digest] = name
    return keys


def _parse_watermark(reader: EnvReader) -> tuple[WatermarkLayer, ...]:
    problems_before = len(reader.errors)
    font = reader.path("WATERMARK_FONT", DEFAULT_WATERMARK_FONT)
    text = reader.str("WATERMARK_TEXT", DEFAULT_WATERMARK_TEXT)
    if text is not None and text.lower() == "none":
        text = None
    logos = [Path(p).expanduser() for p in reader.csv("WATERMARK_LOGOS")]
    bounds = WatermarkLayer.BOUNDS
    common = dict(
        gravity=reader.choice("WATERMARK_POSITION", WatermarkLayer.gravity, GRAVITIES),
        opacity=reader.float("WATERMARK_OPACITY", WatermarkLayer.opacity, *bounds["opacity"]),
        margin=reader.float("WATERMARK_MARGIN", WatermarkLayer.margin, *bounds["margin"]),
        scale=reader.float("WATERMARK_SCALE", WatermarkLayer.scale, *bounds["scale"]),
        tile=reader.bool("WATERMARK_TILE", WatermarkLayer.tile),
    )
    logo_common = {
        **common,
        "gravity": reader.choice("WATERMARK_LOGO_POSITION", common["gravity"], GRAVITIES),
        "scale": reader.float("WATERMARK_LOGO_SCALE", common["scale"], *bounds["scale"]),
    }
    if text is None and not logos:
        reader.errors.append(
            f"a watermark is required: set {PREFIX}WATERMARK_TEXT and/or {PREFIX}WATERMARK_LOGOS")
    if len(reader.errors) > problems_before:
        return ()  # said already; the layers would refuse the same values again
    return watermark_layers(text, font, logos, common, logo_common)


def watermark_layers(text: str | None, font: Path, logos: list[Path], common: dict,
                     logo_common: dict) -> tuple[WatermarkLayer, ...]:
    """The text layer (if any), then one layer per logo: the environment's and a tenant's."""
    layers = [WatermarkLayer(text=text, font=font, **common)] if text is not None else []
    return tuple(layers + [WatermarkLayer(logo=logo, **logo_common) for logo in logos])


def _parse_widths(reader: EnvReader) -> tuple[int, ...]:
    values = reader.csv("SRCSET_WIDTHS") or ("480", "960", "1440")
    if not all(re.fullmatch("[0-9]{1,4}", v) and MIN_WIDTH <= int(v) <= MAX_WIDTH
               for v in values):
        reader.errors.append(
            f"{PREFIX}SRCSET_WIDTHS entries must be integers {MIN_WIDTH}-{MAX_WIDTH}")
        return (480, 960, 1440)
    # Each width is one more signed link per image in every look-up answer.
    if len(set(values)) > MAX_SRCSET_WIDTHS:
        reader.errors.append(f"{PREFIX}SRCSET_WIDTHS lists at most {MAX_SRCSET_WIDTHS} widths")
    return tuple(sorted({int(v) for v in values}))


_WHAT_TO_SET = {
    "API_KEYS": "run `qcimage keys create NAME` and set the line it prints",
    "SIGNING_KEYS": "run `qcimage secrets signing-key` and set the line it prints",
    "PUBLIC_URL": "the base URL browsers reach this service at, e.g. https://qc.example.com",
}


def _refuse_mix_with_tenants_file(reader: EnvReader, problems: list[str]) -> None:
    mixed = sorted(name for name in reader.environ
                   if (name == PREFIX + "API_KEYS" or name.startswith(PREFIX + "WATERMARK_"))
                   and reader.raw(name[len(PREFIX):]) is not None)
    for name in mixed:
        problems.append(f"{name} must be unset when {PREFIX}TENANTS_FILE is set: each "
                        "tenant's keys and watermark come from that file only")


# The validated text of the tenants file, set by the gunicorn master (gunicorn.conf.py) so
# that workers it starts after a HUP with a broken file still get the last good one.
TENANTS_SNAPSHOT = PREFIX + "TENANTS_SNAPSHOT"


def _tenants(reader: EnvReader, settings: Settings, problems: list[str]) -> Tenants:
    from .tenants import LinkDefaults, Tenant, Tenants, single_tenant
    from .tenantsfile import load_tenants, read_tenants_file

    template = Tenant(name="", api_keys=settings.api_keys, watermark=settings.watermark,
                      cors_origins=settings.cors_origins, lookup_limit=settings.limits.lookup,
                      image_limit=settings.limits.image,
                      defaults=LinkDefaults(srcset_widths=settings.srcset_widths,
                                            link_ttl=settings.signed_url_ttl))
    if settings.tenants_file is None:
        return single_tenant(template)
    text = reader.environ.get(TENANTS_SNAPSHOT)
    if text is None:
        text = read_tenants_file(settings.tenants_file, problems)
        if text is None:
            return Tenants({}, from_file=True)
    return load_tenants(text, replace(template, api_keys={}), source=str(settings.tenants_file),
                        errors=problems)


def load_settings(environ: Mapping[str, str] | None = None, *,
                  default_cache_dir: Path | None = None, only_tenants: bool = False) -> Settings:
    """Read and validate the settings; raise ConfigError listing every problem.

    ``default_cache_dir`` is the cache folder when ``QCIMAGE_CACHE_DIR`` is unset.
    ``only_tenants``: raise for the tenants file's problems only (``qcimage tenants``
    checks a file where the service's other settings may not be set).
    """
    tenant_problems: list[str] = []
    reader = EnvReader(os.environ if environ is None else environ)
    env = read_env(reader)
    api_keys = _parse_api_keys(reader)
    signing_keys = reader.csv("SIGNING_KEYS")
    public_url = reader.url("PUBLIC_URL", None)
    demo: dict[str, str] = {}

    cache_dir = reader.path("CACHE_DIR", default_cache_dir)
    tenants_file = reader.path("TENANTS_FILE", None)
    if tenants_file is not None:
        _refuse_mix_with_tenants_file(reader, tenant_problems)

    if env == "production":
        for name, value in (("API_KEYS", api_keys or tenants_file),
                            ("SIGNING_KEYS", signing_keys), ("PUBLIC_URL", public_url)):
            if not value:
                reader.errors.append(f"{PREFIX}{name} is not set: {_WHAT_TO_SET[name]}")
    else:
        # Development invents what is missing and reports it, so `make demo` just works.
        # Invented once per cache folder: every worker, and the next start, agree on them.
        invented, problem = development_secrets(cache_dir)
        if problem:
            reader.errors.append(problem)
        if not api_keys and tenants_file is None:
            demo["api_key"] = reader.str("DEMO_API_KEY", None) or invented["api_key"]
            api_keys = {hash_api_key(demo["api_key"]): "demo"}
        if not signing_keys:
            signing_keys = (invented["signing_key"],)
        if not public_url:
            public_url = "http://127.0.0.1:8000"
    for key in signing_keys:
        if len(key) < 32:
            reader.errors.append(f"{PREFIX}SIGNING_KEYS entries must be at least 32 characters")
            break

    trusted_proxies = reader.int("TRUSTED_PROXIES", 0, 0, 10)
    settings = Settings(
        env=env,
        api_keys=api_keys,
        signing_keys=tuple(signing_keys),
        public_url=public_url or "",
        trusted_proxies=trusted_proxies,
        # The variable gunicorn.conf.py reads too: one list of proxies for both.
        forwarded_allow=reader.networks("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
        cors_origins=reader.csv("CORS_ORIGINS"),
        force_https=reader.bool("FORCE_HTTPS", env == "production" and trusted_proxies > 0),
        signed_url_ttl=reader.int("SIGNED_URL_TTL", 30 * 86400, 0, 10 * 365 * 86400),
        signed_url_bucket=reader.int("SIGNED_URL_BUCKET", 86400, 1, 30 * 86400),
        srcset_widths=_parse_widths(reader),
        max_product_images=reader.int("MAX_PRODUCT_IMAGES", 200, 1, 1000),
        metrics_allow=reader.networks("METRICS_ALLOW", "127.0.0.1/32,::1/128"),
        upstream=read_upstream(reader),
        cache=read_cache(reader, cache_dir),
        imaging=read_imaging(reader),
        workers=read_workers(reader),
        limits=read_limits(reader),
        watermark=Watermark(_parse_watermark(reader)),
        logging=read_logging(reader, env),
        gallery=reader.bool("GALLERY", env == "development"),
        demo_secrets=demo,
        tenants_file=tenants_file,
    )
    settings = replace(settings, tenants=_tenants(reader, settings, tenant_problems))
    if only_tenants:
        if tenant_problems:
            raise ConfigError(tenant_problems)
        return settings
    reader.errors += tenant_problems
    # A slow upstream must end in our 504, never in gunicorn killing the worker: the
    # whole fetch (deadline + one last socket read) plus a render has to fit.
    upstream, worker_timeout = settings.upstream, settings.limits.worker_timeout
    for name, deadline in (("LOOKUP_TIMEOUT", upstream.lookup_timeout),
                           ("IMAGE_FETCH_TIMEOUT", upstream.image_timeout)):
        if deadline + upstream.read_timeout + 3 >= worker_timeout:
            reader.errors.append(
                f"{PREFIX}{name} + {PREFIX}UPSTREAM_READ_TIMEOUT + 3 s must stay under "
                f"{PREFIX}WORKER_TIMEOUT ({worker_timeout} s)")
    if reader.errors:
        raise ConfigError(reader.errors)
    return settings
