"""Settings read from ``QCIMAGE_*`` environment variables, validated once at start-up.

``Settings`` holds what the web layer reads, plus one group per service, each filled by
a small reader: ``upstream``, ``cache``, ``imaging``, ``limits``, ``watermark`` and
``logging``. ``load_settings`` reports every problem at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from limits import parse_many

from .envreader import PREFIX, EnvReader
from .keys import KEY_HASH, KEY_NAME, development_secrets, hash_api_key
from .logformat import LOG_FORMATS, default_log_format
from .services.imaging.watermark import Watermark, WatermarkLayer
from .vocabulary import GRAVITIES, MAX_WIDTH, MIN_WIDTH, OUTPUT_FORMATS

if TYPE_CHECKING:
    from .tenants import Tenants

__all__ = ["PREFIX", "ConfigError", "Settings", "load_settings", "per_worker_limit_problems"]

# From Debian's fonts-dejavu-core (installed by `make`): a file, because ImageMagick
# silently swaps an unknown font *name* for another font.
DEFAULT_WATERMARK_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
DEFAULT_WATERMARK_TEXT = "qcimage"
# gunicorn.conf.py reads QCIMAGE_WORKER_TIMEOUT itself, before the app can be imported;
# tests/test_gunicorn_conf.py holds its default and bounds equal to these.
WORKER_TIMEOUT = (30, 1, 3600)
ENVIRONMENTS = ("production", "development")
MAX_SRCSET_WIDTHS = 8


class ConfigError(ValueError):
    """The environment does not describe a service that can start; ``problems`` lists why."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class UpstreamSettings:
    """Doppel: where it is, how long to wait, when to stop asking, what to ask for."""

    url: str
    connect_timeout: float
    read_timeout: float
    lookup_timeout: float
    image_timeout: float
    retries: int
    breaker_fail_max: int
    breaker_reset_timeout: float
    max_source_bytes: int
    source_width: int  # 0: the output width
    source_format: str
    source_quality: int


@dataclass(frozen=True)
class CacheSettings:
    """Where renders and look-ups are kept, for how long, and the shared store."""

    dir: Path | None
    max_bytes: int
    redis_url: str | None
    redis_required: bool
    lookup_ttl: int
    render_wait_timeout: float
    source_ttl: int  # fetched sources (SourceCache); 0 disables
    source_max_bytes: int
    takedown_refresh: float  # seconds a worker may go without checking the takedown list
    shared_cache_ttl: int  # seconds nginx and CDNs may keep an image without asking


@dataclass(frozen=True)
class WorkerSettings:
    """The worker model: threads per worker (as gunicorn runs them), renders at once per
    worker and the bound on misses a worker holds at once."""

    threads: int
    render_slots: int
    render_queue: int


@dataclass(frozen=True)
class ImagingSettings:
    """What the engine accepts and how it renders."""

    max_source_pixels: int
    resize_filter: str
    webp_method: int
    auto_formats: tuple[str, ...]


@dataclass(frozen=True)
class LimitSettings:
    """Rate limits, where they are counted, and the worker timeout deadlines must fit."""

    storage_uri: str
    per_worker: bool
    lookup: str
    image: str
    worker_timeout: int


@dataclass(frozen=True)
class LoggingSettings:
    format: str  # json or text


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


def read_upstream(reader: EnvReader) -> UpstreamSettings:
    return UpstreamSettings(
        url=reader.url("UPSTREAM_URL", "https://doppel.fit") or "",
        connect_timeout=reader.float("UPSTREAM_CONNECT_TIMEOUT", 3.05, 0.1, 30),
        read_timeout=reader.float("UPSTREAM_READ_TIMEOUT", 5.0, 0.1, 120),
        lookup_timeout=reader.float("LOOKUP_TIMEOUT", 8.0, 0.5, 120),
        image_timeout=reader.float("IMAGE_FETCH_TIMEOUT", 15.0, 0.5, 120),
        retries=reader.int("UPSTREAM_RETRIES", 2, 0, 5),
        breaker_fail_max=reader.int("BREAKER_FAIL_MAX", 5, 1, 1000),
        breaker_reset_timeout=reader.float("BREAKER_RESET_TIMEOUT", 30.0, 0.5, 3600),
        max_source_bytes=reader.int("MAX_SOURCE_BYTES", 60 * 1024 * 1024, 1024, 1024 ** 3),
        source_width=reader.int("SOURCE_WIDTH", 0, 0, 10000),
        source_format=reader.choice("SOURCE_FORMAT", "jpeg", ("jpeg", "png", "webp")),
        source_quality=reader.int("SOURCE_QUALITY", 98, 1, 100),
    )


def _check_redis_url(reader: EnvReader, name: str, url: str | None) -> None:
    from .services.redisconn import RedisURLError, parse_redis_url

    if url is None:
        return
    try:
        parse_redis_url(url)
    except RedisURLError as error:
        # The URL may carry a password: name the variable, never echo the value.
        reader.errors.append(f"{PREFIX}{name} {error}")


def read_cache(reader: EnvReader, directory: Path | None) -> CacheSettings:
    cache = CacheSettings(
        dir=directory,
        # At least 64 MiB: a cache that evicts a render as it is stored would leave the
        # requests waiting for that render with nothing to read.
        max_bytes=reader.int("CACHE_MAX_BYTES", 2 * 1024 ** 3, 64 * 1024 ** 2, 1024 ** 4),
        redis_url=reader.str("REDIS_URL", None),
        redis_required=reader.bool("REDIS_REQUIRED", False),
        lookup_ttl=reader.int("LOOKUP_CACHE_TTL", 300, 0, 86400),
        render_wait_timeout=reader.float("RENDER_WAIT_TIMEOUT", 10.0, 0.1, 120),
        source_ttl=reader.int("SOURCE_CACHE_TTL", 60, 0, 3600),
        source_max_bytes=reader.int("SOURCE_CACHE_MAX_BYTES", 256 * 1024 ** 2,
                                    16 * 1024 ** 2, 1024 ** 4),
        # A takedown is in force on every worker within this (DESIGN §7: within 5 s).
        takedown_refresh=reader.float("TAKEDOWN_REFRESH", 2.0, 0.0, 5.0),
        # A takedown reaches nginx within this, a CDN in front of it within twice this:
        # at most 10 minutes in all (DESIGN §7).
        shared_cache_ttl=reader.int("SHARED_CACHE_TTL", 240, 0, 300),
    )
    _check_redis_url(reader, "REDIS_URL", cache.redis_url)
    return cache


def load_cache_settings(environ: Mapping[str, str], *,
                        default_cache_dir: Path | None = None) -> CacheSettings:
    """The cache group alone (all ``qcimage takedown`` needs: no secrets required)."""
    reader = EnvReader(environ)
    cache = read_cache(reader, reader.path("CACHE_DIR", default_cache_dir))
    if reader.errors:
        raise ConfigError(reader.errors)
    return cache


def read_imaging(reader: EnvReader) -> ImagingSettings:
    auto_formats = tuple(f.lower() for f in reader.csv("AUTO_FORMATS")) or ("webp", "jpeg")
    for fmt in auto_formats:
        if fmt not in OUTPUT_FORMATS:
            reader.errors.append(f"{PREFIX}AUTO_FORMATS entries must be among "
                                 f"{', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    if auto_formats[-1] not in ("jpeg", "png"):
        reader.errors.append(f"{PREFIX}AUTO_FORMATS must end with a format every browser reads "
                             "(jpeg or png): the last one is the fallback")
    return ImagingSettings(
        # 40 MP at most: ImageMagick's PNG reader needs 18 bytes a pixel for grey images,
        # and the policy's 768 MiB memory limit must hold the largest allowed source.
        max_source_pixels=reader.int("MAX_SOURCE_PIXELS", 24_000_000, 10_000, 40_000_000),
        resize_filter=reader.choice("RESIZE_FILTER", "area",
                                    ("area", "triangle", "lanczos", "mitchell", "catrom", "box")),
        webp_method=reader.int("WEBP_METHOD", 2, 0, 6),
        auto_formats=auto_formats,
    )


def read_workers(reader: EnvReader) -> WorkerSettings:
    # gunicorn.conf.py exports the thread count it runs with; outside gunicorn, one.
    threads = reader.int("THREADS", 1, 1, 256)
    return WorkerSettings(
        threads=threads,
        # One: the engine's decode budget keeps one render (and so a worker) under 300 MB;
        # workers = cores already give the box one render per core.
        render_slots=reader.int("RENDER_SLOTS", 1, 1, 64),
        # Leave threads for hits, 304s, look-ups and /health when misses pile up.
        render_queue=reader.int("RENDER_QUEUE", max(1, threads - 8), 1, 4096),
    )


def read_limits(reader: EnvReader) -> LimitSettings:
    limits = LimitSettings(
        storage_uri=reader.str("RATELIMIT_STORAGE_URI", "memory://") or "memory://",
        per_worker=reader.bool("RATELIMIT_PER_WORKER", False),
        lookup=reader.str("LOOKUP_RATE_LIMIT", "100 per 15 minutes") or "",
        image=reader.str("IMAGE_RATE_LIMIT", "300 per 15 minutes") or "",
        worker_timeout=reader.int("WORKER_TIMEOUT", *WORKER_TIMEOUT),
    )
    if limits.storage_uri.startswith("redis"):
        _check_redis_url(reader, "RATELIMIT_STORAGE_URI", limits.storage_uri)
    for name, value in (("LOOKUP_RATE_LIMIT", limits.lookup),
                        ("IMAGE_RATE_LIMIT", limits.image)):
        try:
            parse_many(value)
        except ValueError:
            # Flask-Limiter would only log this per request and apply no limit at all.
            reader.errors.append(f"{PREFIX}{name} must be a rate like '100 per 15 minutes', "
                                 f"got {value!r}")
    return limits


def read_env(reader: EnvReader) -> str:
    return reader.choice("ENV", "production", ENVIRONMENTS)


def read_logging(reader: EnvReader, env: str) -> LoggingSettings:
    return LoggingSettings(
        format=reader.choice("LOG_FORMAT", default_log_format(env), LOG_FORMATS))


def logging_settings(environ: Mapping[str, str]) -> LoggingSettings:
    """The logging group alone, for gunicorn's master; load_settings reports bad values."""
    reader = EnvReader(environ)
    return read_logging(reader, read_env(reader))


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
