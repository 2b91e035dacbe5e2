"""redis/qcimage.conf: the sample Redis keeps the shared render tier bounded by evicting."""

import logging

import pytest

from qcimage.services.cache import Entry, RenderCache
from qcimage.services.stores import RedisStore
from tools.harness import ROOT, Redis, clean_env, free_port

SAMPLE = ROOT / "redis" / "qcimage.conf"


@pytest.fixture
def sample_redis(tmp_path):
    port = free_port()
    # The sample as shipped, on a test port and with room for a handful of renders.
    argv = ["redis-server", SAMPLE, "--port", port, "--bind", "127.0.0.1", "--dir", tmp_path,
            "--maxmemory", "4mb"]
    server = Redis("redis", argv, cwd=tmp_path, env=clean_env(), log_path=tmp_path / "redis.log")
    server.port = port
    server.wait_ready()
    yield server
    server.stop()


@pytest.mark.e2e
def test_renders_beyond_maxmemory_evict_old_ones_instead_of_failing(sample_redis, caplog):
    store = RedisStore(f"redis://127.0.0.1:{sample_redis.port}/0")
    cache = RenderCache(store)
    image = bytes(range(256)) * 400  # ~100 KB, like a 960 px WebP
    with caplog.at_level(logging.ERROR, logger="qcimage.services.cache"):
        for n in range(80):  # twice maxmemory
            cache.get_or_render(f"image-{n}", lambda: Entry(image, "image/webp"))
    assert not caplog.records, "a write failed instead of evicting"
    info = store.client.info()
    assert info["maxmemory_policy"] == "allkeys-lru"
    assert info["evicted_keys"] > 0
    assert info["used_memory"] <= 4 * 1024 * 1024 * 1.1
    assert cache.get("image-79") == Entry(image, "image/webp")
    kept = sum(cache.get(f"image-{n}") is not None for n in range(80))
    assert 10 < kept < 60, kept
