"""The services each worker builds once from its settings, and how a view reaches them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .config import Settings

if TYPE_CHECKING:
    from .services.cache import Store
    from .services.pipeline import Brand, ImageRenderer, ProductLookup
    from .services.signing import Signer
    from .services.takedown import TakedownList
    from .services.upstream import DoppelClient


@dataclass
class Services:
    """What the views use, built once per process from the settings."""

    settings: Settings
    brands: dict[str, Brand]          # tenant name -> its watermark as rendered
    signer: Signer
    lookup: ProductLookup
    renderer: ImageRenderer
    client: DoppelClient
    store: Store
    takedowns: TakedownList


def current_services() -> Services:
    """The services of the app handling the current request."""
    return current_app.extensions["qcimage"]


def default_cache_dir(instance_path: str | None = None) -> Path:
    """The cache folder when ``QCIMAGE_CACHE_DIR`` is unset (the app's instance path's)."""
    if instance_path is None:
        instance_path = Flask("qcimage", instance_relative_config=True).instance_path
    return Path(instance_path) / "cache"


def build_brands(settings: Settings) -> dict[str, Brand]:
    """Each tenant's watermark, drawn once on a canvas: a missing font or logo stops the
    worker from booting instead of failing each image. Tenants with the same watermark
    share one painter, and so its overlays."""
    from .services.imaging.overlays import WatermarkPainter
    from .services.imaging.watermark import Watermark
    from .services.pipeline import Brand

    painters: dict[Watermark, tuple[WatermarkPainter, str]] = {}
    brands = {}
    for name, tenant in settings.tenants.by_name.items():
        if tenant.watermark not in painters:
            painter = WatermarkPainter(tenant.watermark)
            painter.check()
            painters[tenant.watermark] = (painter, tenant.watermark.fingerprint())
        brands[name] = Brand(name, *painters[tenant.watermark])
    return brands


def build_services(settings: Settings, instance_path: Path) -> Services:
    """Every service a worker needs, each built from its group of the settings."""
    # Imported here, in the worker: the gunicorn master imports this package to check
    # the configuration and must not load ImageMagick (or anything else) before forking.
    from .services.cache import LookupCache, RenderCache, open_store
    from .services.imaging.engine import ImagingEngine
    from .services.pipeline import ImageRenderer, ProductLookup, SourcePolicy
    from .services.signing import Signer
    from .services.takedown import open_takedown_list
    from .services.upstream import DoppelClient

    brands = build_brands(settings)
    # The engine's own watermark (for jobs naming no tenant): `default`'s, else the first's.
    first = settings.tenants.get(None) or next(iter(settings.tenants.by_name.values()))
    engine = ImagingEngine.from_settings(first.watermark, settings.imaging)
    cache = settings.cache
    default_dir = default_cache_dir(str(instance_path))
    store, shared = open_store(cache, default_dir)
    takedowns = open_takedown_list(cache, cache.dir or default_dir, store, shared)
    client = DoppelClient.from_settings(settings.upstream, shared=shared)
    upstream = settings.upstream
    return Services(
        settings=settings,
        brands=brands,
        signer=Signer(settings.signing_keys),
        lookup=ProductLookup(client, LookupCache(store, ttl=cache.lookup_ttl), takedowns),
        renderer=ImageRenderer(
            client, RenderCache(store, wait_timeout=cache.render_wait_timeout), engine,
            source=SourcePolicy(upstream.source_width, upstream.source_format,
                                upstream.source_quality),
            watermark_fingerprint=brands[first.name].fingerprint, takedowns=takedowns),
        client=client,
        store=store,
        takedowns=takedowns,
    )
