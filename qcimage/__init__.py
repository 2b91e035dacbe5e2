"""qcimage: watermarked, web-ready images from marketplace QC photos.

``create_app`` reads like a table of contents: settings, logging, services, request
hooks, extensions, blueprints (each with its guard), error handlers, commands, then the
middleware around Flask (the hit path for cached images, the trusted proxies).
Its ``register_*`` steps import what they wire only when called: the gunicorn master
imports this package for ``startup_report`` and must not load the app (nor ImageMagick)
before it forks the workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from .config import (DEFAULT_WATERMARK_FONT, PREFIX, TENANTS_SNAPSHOT, ConfigError, Settings,
                     load_settings, per_worker_limit_problems)
from .envreader import environment
from .errors import register_error_handlers
from .services.redisconn import limiter_storage_options
from .tenantsfile import read_tenants_file
from .wiring import build_services, default_cache_dir

__all__ = ["create_app", "ConfigError", "pin_tenants_file", "startup_report"]
log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app. ``test_config`` replaces the environment (``QCIMAGE_*`` names)."""
    from .extensions import limiter_storage_uri

    app = Flask(__name__, instance_relative_config=True)
    settings = load_settings(environment(test_config),
                             default_cache_dir=default_cache_dir(app.instance_path))
    app.config.update(
        MAX_CONTENT_LENGTH=64 * 1024,
        RATELIMIT_STORAGE_URI=limiter_storage_uri(settings.limits.storage_uri),
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

    configure_logging(settings.logging.format)
    app.extensions["qcimage"] = build_services(settings, Path(app.instance_path))
    # Hooks first: Flask-Limiter's own before_request answers 429s, and those answers
    # need the request id (and the access line) too.
    register_request_hooks(app)
    register_extensions(app, settings)
    register_blueprints(app, settings)
    register_error_handlers(app)
    register_commands(app)
    register_middleware(app, settings)
    if settings.demo_secrets:
        log.warning("development mode: demo API key %s", settings.demo_secrets["api_key"])
    return app


def startup_report(workers: int = 1) -> str | None:
    """The configuration's problems as one block for a person, or None when it can start.

    For the gunicorn master, which checks once before forking ``workers`` workers: it
    reads what create_app reads and builds nothing (no ImageMagick in the master).
    """
    environ = environment()
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


def pin_tenants_file() -> list[str]:
    """For the gunicorn master, at start and on HUP: validate the tenants file and pin its
    text for the workers forked from now on. Returns the file's problems ([] when pinned);
    with problems the previous pin stays, so new workers keep serving the last good file.
    """
    environ = environment()
    path = environ.get(PREFIX + "TENANTS_FILE", "").strip()
    if not path:
        return []
    problems: list[str] = []
    text = read_tenants_file(Path(path), problems)
    if text is None:
        return problems
    try:
        load_settings({**environ, TENANTS_SNAPSHOT: text}, only_tenants=True)
    except ConfigError as error:
        return error.problems
    os.environ[TENANTS_SNAPSHOT] = text
    return []


def _unreadable_watermark_files(settings: Settings) -> list[str]:
    # Each worker checks the files with ImageMagick too; a missing one is the common case
    # (no fonts-dejavu-core) and is said here once instead of in a traceback per worker.
    problems = []
    # With a tenants file, its fonts and logos were checked with it.
    for layer in () if settings.tenants_file else settings.watermark.layers:
        name, path = ("WATERMARK_LOGOS", layer.logo) if layer.logo else ("WATERMARK_FONT",
                                                                         layer.font)
        if not (path.is_file() and os.access(path, os.R_OK)):
            problems.append(f"QCIMAGE_{name}: {path} is not a readable file"
                            + (" (Debian's fonts-dejavu-core installs the default font)"
                               if path == DEFAULT_WATERMARK_FONT else ""))
    return problems


def register_extensions(app: Flask, settings: Settings) -> None:
    from .extensions import cors, limiter, talisman, tenant_cors_only

    talisman.init_app(
        app,
        force_https=settings.force_https,
        strict_transport_security=True,
        strict_transport_security_max_age=31536000,
        # A JSON and image API: nothing to load, nothing to frame.
        content_security_policy={"default-src": "'none'", "frame-ancestors": "'none'"},
        frame_options="DENY",
        referrer_policy="no-referrer",
    )
    # Registered before Flask-CORS, so it runs after it (after_request runs in reverse).
    app.after_request(tenant_cors_only)
    cors.init_app(app, resources={r"/api/*": {"origins": list(settings.tenants.cors_origins)}},
                  methods=["GET", "HEAD", "OPTIONS"],
                  allow_headers=["X-API-Key", "Authorization", "If-None-Match", "X-Request-ID"],
                  expose_headers=["X-Request-ID", "ETag", "Retry-After", "X-Cache"],
                  max_age=600)
    limiter.init_app(app)
    # The extension object is the module's, shared by every app this process builds (the
    # tests build many): an earlier app's storage outage must not outlive its storage.
    limiter._storage_dead = False


def register_middleware(app: Flask, settings: Settings) -> None:
    """Around Flask: the hit path for cached images, then (outermost, so before everything
    reads remote_addr or the scheme) the forwarded headers of the configured proxies only."""
    from .hitpath import install

    install(app)
    if settings.trusted_proxies:
        from .proxies import TrustedProxyFix

        app.wsgi_app = TrustedProxyFix(app.wsgi_app, hops=settings.trusted_proxies,
                                       allowed=settings.forwarded_allow)


def register_request_hooks(app: Flask) -> None:
    """Around every request: an id and an in-flight count, then its log line and metrics."""
    from .logs import assign_request_id, end_in_flight, log_request

    app.before_request(assign_request_id)
    app.after_request(log_request)
    app.teardown_request(end_in_flight)


def register_blueprints(app: Flask, settings: Settings) -> None:
    """Each blueprint with its guard. Rate limits are declared in each blueprint's module."""
    from . import gallery, health, images, openapi, products
    from .auth import require_api_key

    # Server to server: an API key on every request (browsers never call it).
    _guard(app, products.bp, require_api_key)
    app.register_blueprint(products.bp)
    # Public, embedded in pages: the signature on each link is the guard (in the view).
    app.register_blueprint(images.bp)
    # Probes, metrics (their own address check) and the API's documentation: open.
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    # A page for people (development, or when asked for): it calls the API with a key
    # the person types, so it needs no guard of its own.
    if settings.gallery:
        app.register_blueprint(gallery.bp)


def _guard(app: Flask, bp, hook) -> None:
    """Run ``hook`` before each request to one of ``bp``'s views, in this app only.

    ``bp.before_request`` would do the same for every app the module-level blueprint is
    ever registered with, and Flask refuses it once the blueprint has been registered.
    """
    app.before_request_funcs.setdefault(bp.name, []).append(hook)


def register_commands(app: Flask) -> None:
    from .cli import keys_cli, secrets_cli, takedown_cli, tenants_cli

    app.cli.add_command(keys_cli)
    app.cli.add_command(secrets_cli)
    app.cli.add_command(takedown_cli)
    app.cli.add_command(tenants_cli)
