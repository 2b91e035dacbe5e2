"""qcimage: watermarked, web-ready images from marketplace QC photos."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .config import (DEFAULT_WATERMARK_FONT, ConfigError, Settings, load_settings,
                     per_worker_limit_problems)
from .services.redisconn import limiter_storage_options

if TYPE_CHECKING:
    from .services.cache import Store
    from .services.pipeline import ImageRenderer, ProductLookup
    from .services.signing import Signer
    from .services.takedown import TakedownList
    from .services.upstream import DoppelClient

__all__ = ["create_app", "ConfigError", "current_services", "startup_report"]
log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the views use, built once per process from the settings."""

    settings: Settings
    signer: Signer
    lookup: ProductLookup
    renderer: ImageRenderer
    client: DoppelClient
    store: Store
    takedowns: TakedownList


def current_services() -> Services:
    """The services of the app handling the current request."""
    return current_app.extensions["qcimage"]


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app. ``test_config`` replaces the environment (``QCIMAGE_*`` names)."""
    app = Flask(__name__, instance_relative_config=True)
    settings = load_settings(_environment(test_config),
                             default_cache_dir=default_cache_dir(app.instance_path))
    app.config.update(
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=64 * 1024,
        RATELIMIT_STORAGE_URI=settings.limits.storage_uri,
        RATELIMIT_STORAGE_OPTIONS=limiter_storage_options(settings.limits.storage_uri),
        RATELIMIT_HEADERS_ENABLED=True,
        # Flask-Limiter would put its window's end in Retry-After on every response,
        # overriding the circuit breaker's; ours is set on 429s by the error handler.
        RATELIMIT_HEADER_RETRY_AFTER="X-RateLimit-Retry-After",
        RATELIMIT_STRATEGY="moving-window",
        # Storage down: keep limiting per process instead of failing requests.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
    )
    app.json.sort_keys = False

    from .logs import configure_logging

    configure_logging(app, settings.logging.format)
    # Before everything else reads remote_addr / scheme: trust only configured proxies.
    if settings.trusted_proxies:
        from .proxies import TrustedProxyFix

        app.wsgi_app = TrustedProxyFix(app.wsgi_app, hops=settings.trusted_proxies,
                                       allowed=settings.forwarded_allow)
    app.extensions["qcimage"] = build_services(settings, Path(app.instance_path))
    register_extensions(app, settings)
    register_blueprints(app, settings)
    register_errorhandlers(app)
    register_commands(app)
    if settings.demo_secrets:
        log.warning("development mode: demo API key %s", settings.demo_secrets["api_key"])
    return app


def default_cache_dir(instance_path: str | None = None) -> Path:
    """The cache folder when ``QCIMAGE_CACHE_DIR`` is unset (the app's instance path's)."""
    if instance_path is None:
        instance_path = Flask(__name__, instance_relative_config=True).instance_path
    return Path(instance_path) / "cache"


def startup_report(workers: int = 1) -> str | None:
    """The configuration's problems as one block for a person, or None when it can start.

    For the gunicorn master, which checks once before forking ``workers`` workers: it
    reads what create_app reads and builds nothing (no ImageMagick in the master).
    """
    environ = _environment(None)
    try:
        settings = load_settings(environ, default_cache_dir=default_cache_dir())
    except ConfigError as error:
        problems = error.problems
    else:
        problems = (_unreadable_watermark_files(settings)
                    + per_worker_limit_problems(settings, workers))
    if not problems:
        return None
    env = environ.get("QCIMAGE_ENV", "").strip() or "production"
    lines = [f"qcimage cannot start (QCIMAGE_ENV={env}): "
             f"{len(problems)} problem(s) in the configuration"]
    lines += [f"  - {problem}" for problem in problems]
    lines.append("Set these QCIMAGE_* variables in the service's environment and start "
                 "again; README 'Configuration' lists them all. Trying it out locally? "
                 "QCIMAGE_ENV=development invents demo keys.")
    return "\n".join(lines)


def _unreadable_watermark_files(settings: Settings) -> list[str]:
    # Each worker checks the files with ImageMagick too; a missing one is the common case
    # (no fonts-dejavu-core) and is said here once instead of in a traceback per worker.
    problems = []
    for layer in settings.watermark.layers:
        name, path = ("WATERMARK_LOGOS", layer.logo) if layer.logo else ("WATERMARK_FONT",
                                                                         layer.font)
        if not (path.is_file() and os.access(path, os.R_OK)):
            problems.append(f"QCIMAGE_{name}: {path} is not a readable file"
                            + (" (Debian's fonts-dejavu-core installs the default font)"
                               if path == DEFAULT_WATERMARK_FONT else ""))
    return problems


def _environment(test_config: Mapping[str, str] | None) -> Mapping[str, str]:
    if test_config is not None:
        return test_config
    environ = dict(os.environ)
    # .env is a development convenience, read only when the real environment asks for
    # development: a stray file must never turn production (the default) into development.
    if environ.get("QCIMAGE_ENV", "").strip().lower() == "development" and Path(".env").is_file():
        from dotenv import dotenv_values

        file_values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
        # The real environment wins, QCIMAGE_ENV included: the file cannot say production.
        environ = {**file_values, **environ}
    return environ


def build_services(settings: Settings, instance_path: Path) -> Services:
    from .services.cache import LookupCache, RenderCache, open_store
    from .services.imaging.engine import ImagingEngine
    from .services.pipeline import ImageRenderer, ProductLookup, SourcePolicy
    from .services.signing import Signer
    from .services.takedown import open_takedown_list
    from .services.upstream import DoppelClient

    engine = ImagingEngine.from_settings(settings.watermark, settings.imaging)
    # A missing font or logo stops the worker from booting instead of failing each image.
    engine.check_watermark()
    cache = settings.cache
    default_dir = default_cache_dir(str(instance_path))
    store, shared = open_store(cache, default_dir)
    takedowns = open_takedown_list(cache, cache.dir or default_dir, store, shared)
    client = DoppelClient.from_settings(settings.upstream, shared=shared)
    upstream = settings.upstream
    return Services(
        settings=settings,
        signer=Signer(settings.signing_keys),
        lookup=ProductLookup(client, LookupCache(store, ttl=cache.lookup_ttl), takedowns),
        renderer=ImageRenderer(
            client, RenderCache(store, wait_timeout=cache.render_wait_timeout), engine,
            source=SourcePolicy(upstream.source_width, upstream.source_format,
                                upstream.source_quality),
            watermark_fingerprint=settings.watermark.fingerprint(), takedowns=takedowns),
        client=client,
        store=store,
        takedowns=takedowns,
    )


def register_extensions(app: Flask, settings: Settings) -> None:
    from .extensions import cors, limiter, talisman

    talisman.init_app(
        app,
        force_https=settings.force_https,
        strict_transport_security=True,
        strict_transport_security_max_age=31536000,
        # A JSON and image API: nothing to load, nothing to frame.
        content_security_policy={"default-src": "'none'", "frame-ancestors": "'none'"},
        frame_options="DENY",
        referrer_policy="no-referrer",
        session_cookie_secure=settings.is_production,
    )
    cors.init_app(app, resources={r"/api/*": {"origins": list(settings.cors_origins)}},
                  methods=["GET", "HEAD", "OPTIONS"],
                  allow_headers=["X-API-Key", "Authorization", "If-None-Match", "X-Request-ID"],
                  expose_headers=["X-Request-ID", "ETag", "Retry-After", "X-Cache"],
                  max_age=600)
    limiter.init_app(app)


def register_blueprints(app: Flask, settings: Settings) -> None:
    from . import gallery, health, images, openapi, products

    app.register_blueprint(products.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    if settings.gallery:
        app.register_blueprint(gallery.bp)


def register_errorhandlers(app: Flask) -> None:
    from .errors import register_error_handlers

    register_error_handlers(app)


def register_commands(app: Flask) -> None:
    from .cli import keys_cli, secrets_cli, takedown_cli

    app.cli.add_command(keys_cli)
    app.cli.add_command(secrets_cli)
    app.cli.add_command(takedown_cli)
