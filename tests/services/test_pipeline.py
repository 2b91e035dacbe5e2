"""ImageRenderer and ProductLookup: source sizing, cache keys, stale look-ups."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from PIL import Image

from qcimage.services.cache import LookupCache, RenderCache, SourceCache
from qcimage.config import DEFAULT_WATERMARK_FONT as DEFAULT_FONT
from qcimage.services.imaging import RenderSpec, UnsupportedImage
from qcimage.services.imaging import probe as probe_module
from qcimage.services.imaging.engine import ImagingEngine
from qcimage.services.imaging.watermark import Watermark, WatermarkLayer
from qcimage.services.pipeline import ImageRenderer, ProductLookup, RenderJob, SourcePolicy
from qcimage.services.stores import DiskStore
from qcimage.services.takedown import DiskTakedowns, TakedownList
from qcimage.services.upstream import DoppelClient, UpstreamError

BASE = "https://upstream.test"


def rotated_jpeg(stored_w: int, stored_h: int) -> bytes:
    """A JPEG stored landscape with EXIF Orientation=6 (shown portrait)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (stored_w, stored_h), (120, 130, 140)).save(out, "JPEG", exif=exif)
    return out.getvalue()


@pytest.fixture
def engine():
    return ImagingEngine(Watermark(layers=(WatermarkLayer(text="qc", font=DEFAULT_FONT),)))


@pytest.fixture
def store(tmp_path):
    disk = DiskStore(tmp_path / "c", size_limit=10 ** 8)
    yield disk
    disk.close()


def takedowns_beside(store):
    """The takedown list kept in the store's cache folder, as the app keeps it."""
    return TakedownList(DiskTakedowns(Path(store.cache.directory) / "takedowns"), refresh=0,
                        purge=store.purge)


def renderer(engine, store, source=SourcePolicy(), fingerprint="wm1", sources=None):
    client = DoppelClient(BASE, retries=0)
    return ImageRenderer(client, RenderCache(store), engine, source=source,
                         watermark_fingerprint=fingerprint, takedowns=takedowns_beside(store),
                         sources=sources)


def requested_widths(calls):
    return [int(parse_qs(urlsplit(c.request.url).query)["width"][0]) for c in calls]


@responses.activate
def test_default_policy_asks_upstream_for_the_output_width(engine, store):
    out = io.BytesIO()
    Image.new("RGB", (960, 720), "white").save(out, "JPEG")
    responses.get(BASE + "/img", body=out.getvalue(), content_type="image/jpeg")
    result = renderer(engine, store).render(RenderJob("abc", RenderSpec(960, 80, "webp")))
    assert requested_widths(responses.calls) == [960]
    query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert (query["format"], query["quality"]) == (["jpeg"], ["98"])
    with Image.open(io.BytesIO(result.entry.data)) as img:
        assert img.size == (960, 720)


@responses.activate
def test_rotated_source_is_fetched_again_wide_enough(engine, store):
    responses.get(BASE + "/img", body=rotated_jpeg(960, 720), content_type="image/jpeg")
    responses.get(BASE + "/img", body=rotated_jpeg(1280, 960), content_type="image/jpeg")
    result = renderer(engine, store).render(RenderJob("abc", RenderSpec(960, 80, "webp")))
    assert requested_widths(responses.calls) == [960, 1280]
    with Image.open(io.BytesIO(result.entry.data)) as img:
        assert img.size == (960, 1280)


@pytest.mark.parametrize("bodies, fetches", [
    ([rotated_jpeg(1280, 960)], 1),  # wide enough at once
    ([rotated_jpeg(960, 720), rotated_jpeg(1280, 960)], 2),  # fetched again, wider
])
@responses.activate
def test_each_fetched_source_header_is_parsed_once(engine, store, monkeypatch, bodies,
                                                   fetches):
    parsed = []
    jpeg_size = probe_module._PROBES["jpeg"]
    monkeypatch.setitem(probe_module._PROBES, "jpeg",
                        lambda data: parsed.append(len(data)) or jpeg_size(data))
    for body in bodies:
        responses.get(BASE + "/img", body=body, content_type="image/jpeg")
    renderer(engine, store).render(RenderJob("abc", RenderSpec(960, 80, "webp")))
    assert len(responses.calls) == fetches
    assert parsed == [len(body) for body in bodies]


@responses.activate
def test_rotation_is_remembered_so_other_widths_fetch_once(engine, store):
    responses.get(BASE + "/img", body=rotated_jpeg(960, 720), content_type="image/jpeg")
    responses.get(BASE + "/img", body=rotated_jpeg(1280, 960), content_type="image/jpeg")
    responses.get(BASE + "/img", body=rotated_jpeg(640, 480), content_type="image/jpeg")
    pipeline = renderer(engine, store)
    pipeline.render(RenderJob("abc", RenderSpec(960, 80, "webp")))
    result = pipeline.render(RenderJob("abc", RenderSpec(480, 80, "webp")))
    assert requested_widths(responses.calls) == [960, 1280, 640]
    with Image.open(io.BytesIO(result.entry.data)) as img:
        assert img.size == (480, 640)


@responses.activate
def test_configured_source_width_is_used_as_is(engine, store):
    responses.get(BASE + "/img", body=rotated_jpeg(2000, 1500), content_type="image/jpeg")
    policy = SourcePolicy(width=5000, format="png", quality=100)
    renderer(engine, store, policy).render(RenderJob("abc", RenderSpec(960, 80, "webp")))
    query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert (query["width"], query["format"], query["quality"]) == (["5000"], ["png"], ["100"])


def test_cache_key_covers_every_input(engine, store):
    base = renderer(engine, store)
    job = RenderJob("abc", RenderSpec(960, 80, "webp"))
    keys = {base.cache_key(job),
            base.cache_key(RenderJob("abd", RenderSpec(960, 80, "webp"))),
            base.cache_key(RenderJob("abc", RenderSpec(961, 80, "webp"))),
            base.cache_key(RenderJob("abc", RenderSpec(960, 81, "webp"))),
            base.cache_key(RenderJob("abc", RenderSpec(960, 80, "png"))),
            renderer(engine, store, fingerprint="wm2").cache_key(job),
            renderer(engine, store, SourcePolicy(width=5000)).cache_key(job),
            renderer(ImagingEngine(engine.watermark, resize_filter="lanczos"), store
                     ).cache_key(job),
            renderer(ImagingEngine(engine.watermark, webp_method=4), store).cache_key(job)}
    assert len(keys) == 9
    assert base.etag(job) == renderer(engine, store).etag(job)


@responses.activate
def test_stale_lookup_is_served_when_upstream_fails(store):
    now = [1000.0]
    lookup = ProductLookup(DoppelClient(BASE, retries=0),
                           LookupCache(store, ttl=60, clock=lambda: now[0]),
                           takedowns_beside(store))
    responses.get(BASE + "/api/v1/products/qcMedia", json={"data": {"image": "abc"}})
    assert lookup.image_ids("1", "WEIDIAN") == (["abc"], "miss")
    assert lookup.image_ids("1", "WEIDIAN") == (["abc"], "hit")
    now[0] += 120
    responses.replace(responses.GET, BASE + "/api/v1/products/qcMedia", status=503)
    assert lookup.image_ids("1", "WEIDIAN") == (["abc"], "stale")
    with pytest.raises(UpstreamError):
        lookup.image_ids("2", "WEIDIAN")


@responses.activate
def test_other_formats_of_one_image_share_the_fetched_source(engine, store):
    out = io.BytesIO()
    Image.new("RGB", (960, 720), "white").save(out, "JPEG")
    responses.get(BASE + "/img", body=out.getvalue(), content_type="image/jpeg")
    sources = SourceCache(store, ttl=60, max_bytes=10 ** 7, wait_timeout=5)
    pipeline = renderer(engine, store, sources=sources)
    for fmt in ("webp", "jpeg", "png"):
        assert not pipeline.render(RenderJob("abc", RenderSpec(960, 80, fmt))).cached
    assert len(responses.calls) == 1


@responses.activate
def test_a_source_that_is_not_an_image_is_not_kept(engine, store):
    out = io.BytesIO()
    Image.new("RGB", (960, 720), "white").save(out, "JPEG")
    responses.get(BASE + "/img", body=b"\x00garbage" * 100, content_type="image/jpeg")
    responses.get(BASE + "/img", body=out.getvalue(), content_type="image/jpeg")
    pipeline = renderer(engine, store,
                        sources=SourceCache(store, ttl=60, max_bytes=10 ** 7, wait_timeout=5))
    with pytest.raises(UnsupportedImage):
        pipeline.render(RenderJob("abc", RenderSpec(960, 80, "webp")))
    assert not pipeline.render(RenderJob("abc", RenderSpec(960, 80, "webp"))).cached
    assert len(responses.calls) == 2


@responses.activate
def test_a_bug_is_raised_not_covered_by_a_stale_lookup(store, monkeypatch):
    now = [1000.0]
    client = DoppelClient(BASE, retries=0)
    lookup = ProductLookup(client, LookupCache(store, ttl=60, clock=lambda: now[0]),
                           takedowns_beside(store))
    responses.get(BASE + "/api/v1/products/qcMedia", json={"data": {"image": "abc"}})
    assert lookup.image_ids("1", "WEIDIAN") == (["abc"], "miss")
    now[0] += 120

    def broken(*args, **kwargs):
        raise TypeError("a programming error")

    monkeypatch.setattr(client, "product_images", broken)
    with pytest.raises(TypeError):
        lookup.image_ids("1", "WEIDIAN")
