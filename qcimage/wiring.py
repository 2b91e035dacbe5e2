"""The services each worker builds once from its settings, and how a view reaches them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .config import Settings
from .recent import Recent

if TYPE_CHECKING:
    from .services.stores import Store
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
    # Image queries that passed their byte-only checks (images._checked_args).
    checked_image_queries: Recent = field(default_factory=lambda: Recent(4096))
    # Look-ups checked and bodies built lately, by tenant name (products.prepare, .answer);
    # bodies of at most products.MEMO_MAX_IMAGES images, so 256 stay a few MB.
    prepared_lookups: Recent = field(default_factory=lambda: Recent(1024))
    lookup_bodies: Recent = field(default_factory=lambda: Recent(256))


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
    from .services.cache import LookupCache, RenderCache, SourceCache
    from .services.imaging.engine import ImagingEngine
    from .services.pipeline import ImageRenderer, ProductLookup, SourcePolicy
    from .services.signing import Signer
    from .services.renderpool import RenderPool
    from .services.slots import RenderSlots
    from .services.stores import open_source_store, open_store
    from .services.takedown import open_takedown_list
    from .services.upstream import DoppelClient

    brands = build_brands(settings)
    # The engine's own watermark (for jobs naming no tenant): `default`'s, else the first's.
    first = settings.tenants.get(None) or next(iter(settings.tenants.by_name.values()))
    engine = ImagingEngine.from_settings(first.watermark, settings.imaging)
    cache, workers = settings.cache, settings.workers
    default_dir = default_cache_dir(str(instance_path))
    store, shared = open_store(cache, default_dir)
    source_store = open_source_store(cache, default_dir, shared)
    takedowns = open_takedown_list(cache, cache.dir or default_dir, store, shared,
                                   sources=source_store)
    client = DoppelClient.from_settings(settings.upstream, pool_size=workers.threads,
                                        shared=shared)
    upstream = settings.upstream
    # Waiters on a concurrent fetch allow for its deadline plus one last socket read.
    fetch_wait = upstream.read_timeout + upstream.image_timeout
    # Waiting for another's render covers its fetch too: the fetch's deadline, then
    # RENDER_WAIT_TIMEOUT for a render slot and the render.
    renders = RenderCache(store, wait_timeout=fetch_wait + cache.render_wait_timeout,
                          hot_bytes=cache.hot_bytes)
    takedowns.on_change.append(renders.hot.clear)
    return Services(
        settings=settings,
        brands=brands,
        signer=Signer(settings.signing_keys),
        lookup=ProductLookup(client, LookupCache(
            store, ttl=cache.lookup_ttl,
            wait_timeout=upstream.read_timeout + upstream.lookup_timeout), takedowns),
        renderer=ImageRenderer(
            client, renders, engine,
            source=SourcePolicy(upstream.source_width, upstream.source_format,
                                upstream.source_quality),
            watermark_fingerprint=brands[first.name].fingerprint, takedowns=takedowns,
            sources=SourceCache(source_store, ttl=cache.source_ttl,
                                max_bytes=cache.source_max_bytes, wait_timeout=fetch_wait),
            slots=RenderSlots(slots=workers.render_slots, queue=workers.render_queue,
                              slot_timeout=cache.render_wait_timeout,
                              render_timeout=settings.limits.worker_timeout),
            pool=RenderPool(size=workers.render_slots, nice=workers.render_nice)),
        client=client,
        store=store,
        takedowns=takedowns,
    )
