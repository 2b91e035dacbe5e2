"""The two jobs the views ask for: list a product's images, and render one watermarked."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import metrics
from . import ServiceError
from .cache import Entry, LookupCache, RenderCache, SourceCache
from .imaging import RenderSpec, UnsupportedImage
from .imaging.probe import Probe, probe
from .renderpool import RenderPool
from .slots import RenderSlots
from .takedown import TakedownList
from .upstream import DoppelClient, Source

if TYPE_CHECKING:  # the engine loads ImageMagick; the pipeline only holds one
    from .imaging.engine import ImagingEngine
    from .imaging.overlays import WatermarkPainter

log = logging.getLogger(__name__)

# Bump when the pipeline changes its output for the same inputs: old renders go stale.
# 2: cut or corrupt sources are refused (502) instead of rendered with grey rows, so a
# render cached before may be such a partial image.
PIPELINE_VERSION = "2"
# Doppel's originals are at most this wide; asking for more only costs bytes.
MAX_SOURCE_WIDTH = 5000
# Image sizes a worker keeps in memory (about 200 bytes each) before starting afresh.
_KNOWN_SIZES = 50_000


class ProductLookup:
    """Product look-ups through a short-lived cache; stale copies cover upstream outages.

    Images taken down are left out of every answer, cached or not.
    """

    def __init__(self, client: DoppelClient, cache: LookupCache, takedowns: TakedownList):
        self.client = client
        self.cache = cache
        self.takedowns = takedowns

    def image_ids(self, product_id: str, platform: str,
                  tenant: str = "") -> tuple[list[str], str]:
        """(image ids, "hit" | "miss" | "stale"). Raises the upstream errors when nothing
        cached can stand in. ``tenant`` labels the cache metrics only: look-ups are shared."""
        ids, status = self._image_ids(product_id, platform, tenant)
        return self.takedowns.without(ids), status

    def cached_image_ids(self, product_id: str, platform: str) -> list[str] | None:
        """The image ids when a fresh look-up is cached, else None; counted by the caller
        with ``count_hit`` once it answers with them."""
        cached = self.cache.get(f"{platform}:{product_id}")
        if cached is None or not cached[1]:
            return None
        return self.takedowns.without(cached[0])

    @staticmethod
    def count_hit(tenant: str) -> None:
        metrics.CACHE_REQUESTS.labels("lookup", "hit", tenant).inc()

    def _image_ids(self, product_id: str, platform: str,
                   tenant: str) -> tuple[list[str], str]:
        key = f"{platform}:{product_id}"
        cached = self.cache.get(key)
        if cached is not None and cached[1]:
            self.count_hit(tenant)
            return cached[0], "hit"
        metrics.CACHE_REQUESTS.labels("lookup", "miss", tenant).inc()
        try:
            ids, fetched = self.cache.get_or_fetch(
                key, lambda: self.client.product_images(product_id, platform))
        except ServiceError as error:  # a bug of ours is never covered by a stale copy
            if cached is not None and error.status >= 500:
                log.warning("serving stale look-up for %s: upstream failed", key)
                metrics.CACHE_REQUESTS.labels("lookup", "stale", tenant).inc()
                return cached[0], "stale"
            raise
        # Not fetched here: a concurrent request fetched it a moment ago.
        return ids, "miss" if fetched else "hit"


@dataclass(frozen=True, eq=False)
class Brand:
    """One tenant's watermark as rendered: who, what draws it, and its fingerprint for keys."""

    tenant: str
    painter: WatermarkPainter
    fingerprint: str


@dataclass(frozen=True)
class RenderJob:
    """Which image to render and how: everything that decides the output bytes.

    The engine sees only the spec (the output); the pipeline also needs the image id
    (which source to fetch, which cache entry to use).
    """

    image_id: str
    spec: RenderSpec
    brand: Brand | None = None   # None: the engine's own watermark

    @property
    def tenant(self) -> str:
        """For metrics' tenant label."""
        return self.brand.tenant if self.brand else ""


@dataclass(frozen=True)
class SourcePolicy:
    """What to ask upstream for. width 0 = the output width (upstream resizes for us)."""

    width: int = 0
    format: str = "jpeg"
    quality: int = 98

    def params(self, job: RenderJob) -> tuple[int, str, int]:
        return (self.width or job.spec.width, self.format, self.quality)


@dataclass
class RenderResult:
    entry: Entry
    cached: bool
    upstream_ms: float | None = None
    render_ms: float | None = None


class ImageRenderer:
    """Cache → (one worker) fetch source → render with watermark → cache.

    A miss holds a place in the worker's bounded queue (``slots``) from start to end and
    one of its render slots only while ImageMagick works; sources come through a
    short-lived shared cache that also makes concurrent fetches of one source one. Every
    entry is stored tagged with its image id, so a takedown purges them all.
    """

    def __init__(self, client: DoppelClient, cache: RenderCache, engine: ImagingEngine, *,
                 source: SourcePolicy, watermark_fingerprint: str, takedowns: TakedownList,
                 sources: SourceCache | None = None, slots: RenderSlots | None = None,
                 pool: RenderPool | None = None):
        self.client = client
        self.cache = cache
        self.engine = engine
        self.source = source
        self.sources = sources or SourceCache(cache.store, ttl=0, max_bytes=0,
                                              wait_timeout=cache.flight.wait_timeout)
        self.slots = slots or RenderSlots(slots=1, queue=1024,
                                          slot_timeout=cache.flight.wait_timeout)
        self.pool = pool or RenderPool(size=self.slots.slots, nice=0)
        self.takedowns = takedowns
        # Everything outside the request that changes the bytes: a new watermark, a new
        # ImageMagick or a new pipeline never serves an old render. Each tenant's renders
        # are keyed by its own watermark's fingerprint: changing one re-renders its only.
        self._key_prefix = "|".join((PIPELINE_VERSION, engine.settings_key()))
        self._fingerprint = watermark_fingerprint
        self._sizes: dict[str, tuple[int, int]] = {}

    def cache_key(self, job: RenderJob) -> str:
        src_width, src_format, src_quality = self.source.params(job)
        spec = job.spec
        fingerprint = job.brand.fingerprint if job.brand else self._fingerprint
        material = "|".join((self._key_prefix, fingerprint, job.image_id, str(spec.width),
                             str(spec.quality), spec.format, str(src_width), src_format,
                             str(src_quality)))
        return hashlib.sha256(material.encode()).hexdigest()

    def _size_key(self, image_id: str, width: int) -> str:
        # Any format or quality comes out the same size; the source asked for may not.
        return "|".join((PIPELINE_VERSION, image_id, str(width),
                         str(self.source.width or width)))

    def known_size(self, image_id: str, width: int) -> tuple[int, int] | None:
        """(width, height) of ``image_id`` rendered at ``width``, once a render showed it.

        Asked on every look-up and hit; a size once known never changes (the image id
        names the bytes), so this process keeps it instead of reading the store again.
        """
        key = self._size_key(image_id, width)
        size = self._sizes.get(key)
        if size is None:
            size = self.cache.rendered_size(key)
            if size is not None:
                if len(self._sizes) >= _KNOWN_SIZES:
                    self._sizes.clear()
                self._sizes[key] = size
        return size

    def _remember_size(self, job: RenderJob, width: int, height: int) -> None:
        # For look-ups, so pages can reserve the space before the image loads.
        self.cache.remember_size(self._size_key(job.image_id, job.spec.width), width, height,
                                 tag=job.image_id)

    def etag(self, job: RenderJob) -> str:
        """Strong ETag known before rendering: same inputs, same bytes."""
        return '"' + self.cache_key(job)[:40] + '"'

    def _fetch(self, image_id: str, *, width: int, fmt: str,
               quality: int) -> tuple[Source, Probe, str]:
        """(source, its probe, its key) through the shared source cache.

        Each caller gets its own copy, as the engine empties what it is given; a source
        that does not even probe is dropped from the cache at once.
        """
        key = f"{image_id}|{width}|{fmt}|{quality}"
        data = self.sources.get_or_fetch(
            key, lambda: self.client.fetch_image(image_id, width=width, fmt=fmt,
                                                 quality=quality).data, tag=image_id)
        source = Source(bytearray(data))
        try:
            return source, probe(source.data), key
        except ServiceError:
            self.sources.forget(key)
            raise

    def _fetch_source(self, job: RenderJob) -> tuple[Source, Probe, str]:
        """The source to render from, its probe and its source-cache key."""
        width, fmt, quality = self.source.params(job)
        if self.source.width:
            return self._fetch(job.image_id, width=width, fmt=fmt, quality=quality)
        # Upstream sizes the *stored* pixels: an EXIF-rotated portrait asked for at 960
        # comes back 960 tall and only 720 wide once upright. Ask once more, wide enough,
        # and remember the image's stored/shown ratio so other widths ask right at once.
        ratio = self.cache.width_ratio(job.image_id)
        asked = min(MAX_SOURCE_WIDTH, math.ceil(width * ratio))
        source, probed, key = self._fetch(job.image_id, width=asked, fmt=fmt,
                                          quality=quality)
        shown_width, _ = probed.shown_size
        if shown_width < job.spec.width and probed.width >= asked:
            ratio = probed.width / shown_width
            self.cache.remember_width_ratio(job.image_id, ratio)
            wider = min(MAX_SOURCE_WIDTH, math.ceil(job.spec.width * ratio))
            return self._fetch(job.image_id, width=wider, fmt=fmt, quality=quality)
        return source, probed, key

    def render(self, job: RenderJob) -> RenderResult:
        timings: dict[str, float] = {}

        def produce() -> Entry:
            started = time.perf_counter()
            source, probed, source_key = self._fetch_source(job)
            timings["upstream_ms"] = (time.perf_counter() - started) * 1000
            with self.slots.render_slot():
                started = time.perf_counter()
                try:
                    rendered = self.pool.run(self.engine.render, source.data, job.spec,
                                             probed, job.brand.painter if job.brand else None)
                except ServiceError:
                    # Not an image, truncated, too many pixels: nobody may render it again.
                    self.sources.forget(source_key)
                    raise
                timings["render_ms"] = (time.perf_counter() - started) * 1000
            metrics.RENDER_SECONDS.labels(job.spec.format, job.tenant).observe(
                timings["render_ms"] / 1000)
            # Taken down while this render ran: neither stored nor served.
            self.takedowns.check(job.image_id)
            self._remember_size(job, rendered.width, rendered.height)
            return Entry(data=rendered.data, mime=rendered.mime)

        entry = self.cached(job)
        if entry is not None:
            return RenderResult(entry, True)
        with self.slots.admit():
            entry, cached = self.cache.get_or_render(self.cache_key(job), produce,
                                                     tag=job.image_id)
        self._count(job, entry, cached)
        return RenderResult(entry, cached, timings.get("upstream_ms"), timings.get("render_ms"))

    def cached(self, job: RenderJob) -> Entry | None:
        """The rendered entry when the cache holds it (counted as a hit), else None."""
        entry = self.cache.get(self.cache_key(job), tag=job.image_id)
        if entry is not None:
            self._count(job, entry, cached=True)
        return entry

    def _count(self, job: RenderJob, entry: Entry, cached: bool) -> None:
        metrics.CACHE_REQUESTS.labels("render", "hit" if cached else "miss", job.tenant).inc()
        if not cached:
            return
        metrics.CACHE_BYTES.labels(job.tenant).inc(len(entry.data))
        if self.known_size(job.image_id, job.spec.width) is None:
            # Rendered before sizes were kept: read it off the header, once.
            try:
                rendered = probe(entry.data)
            except UnsupportedImage:
                pass  # AVIF: no header reader here; known after its next render
            else:
                self._remember_size(job, rendered.width, rendered.height)
