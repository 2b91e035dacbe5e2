"""The settings groups handed one each to the services, and the small reader of each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from limits import parse_many

from .envreader import PREFIX, ConfigError, EnvReader
from .logformat import LOG_FORMATS, default_log_format
from .vocabulary import OUTPUT_FORMATS

# gunicorn.conf.py reads QCIMAGE_WORKER_TIMEOUT itself, before the app can be imported;
# tests/test_gunicorn_conf.py holds its default and bounds equal to these.
WORKER_TIMEOUT = (30, 1, 3600)
ENVIRONMENTS = ("production", "development")


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
    hot_bytes: int  # renders each worker keeps in memory (RenderCache.hot); 0: none
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
    render_nice: int


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
        hot_bytes=reader.int("HOT_CACHE_MB", 16, 0, 4096) * 1024 ** 2,
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
        render_slots=reader.int("RENDER_SLOTS", 2, 1, 64),
        # Leave threads for hits, 304s, look-ups and /health when misses pile up.
        render_queue=reader.int("RENDER_QUEUE", max(1, threads - 8), 1, 4096),
        # Renders yield the CPU to requests (services/renderpool.py); 0 renders in the
        # request's own thread at its priority.
        render_nice=reader.int("RENDER_NICE", 10, 0, 19),
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
