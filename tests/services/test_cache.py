"""Render cache and look-up cache on a real diskcache directory."""

from __future__ import annotations

import threading

import pytest

from qcimage.services.cache import Entry, LookupCache, RenderCache, SourceCache, hot_renders
from qcimage.services.flight import FlightTimeout
from qcimage.services.stores import DiskStore, RedisStore, TieredStore
from tools import harness


@pytest.fixture
def store(tmp_path):
    disk = DiskStore(tmp_path / "c", size_limit=50 * 1024 * 1024)
    yield disk
    disk.close()


def test_entry_packing_round_trips_without_pickle():
    entry = Entry(b"\x00\nbytes\n", "image/webp")
    assert Entry.unpack(entry.pack()) == entry
    assert Entry.unpack(b"no header") is None


def test_render_once_for_concurrent_misses(store):
    cache = RenderCache(store, wait_timeout=10)
    renders = []
    gate = threading.Event()

    def render():
        gate.wait(1)
        renders.append(1)
        return Entry(b"img", "image/webp")

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_render("k", render)))
               for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(renders) == 1
    assert sorted(cached for _, cached in results) == [False] + [True] * 7
    assert all(entry.data == b"img" for entry, _ in results)


def test_failed_render_releases_the_lock(store):
    cache = RenderCache(store, wait_timeout=2)

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_render("k", broken)
    entry, cached = cache.get_or_render("k", lambda: Entry(b"ok", "image/png"))
    assert (entry.data, cached) == (b"ok", False)


def test_waiting_is_bounded(store):
    cache = RenderCache(store, wait_timeout=0.2)
    store.add("l:k", b"someone else", expire=30)
    with pytest.raises(FlightTimeout):
        cache.get_or_render("k", lambda: Entry(b"never", "image/png"))


def test_a_long_render_keeps_its_lock_past_the_lock_ttl(store):
    cache = RenderCache(store, wait_timeout=5, lock_ttl=0.3)
    renders = []
    started = threading.Event()

    def slow():
        started.set()
        threading.Event().wait(1.0)  # three lock lifetimes
        renders.append(1)
        return Entry(b"img", "image/webp")

    first = threading.Thread(target=cache.get_or_render, args=("k", slow))
    first.start()
    started.wait(2)
    entry, cached = cache.get_or_render("k", slow)
    first.join()
    assert (entry.data, cached, len(renders)) == (b"img", True, 1)
    assert store.get("l:k") is None


def test_a_dead_holders_lock_frees_within_its_ttl(store):
    """A box killed mid-render leaves its lock; waiters render after lock_ttl, not time out."""
    cache = RenderCache(store, wait_timeout=3, lock_ttl=0.5)
    store.add("l:k", b"a holder that died", expire=cache.flight.lock_ttl)
    entry, cached = cache.get_or_render("k", lambda: Entry(b"mine", "image/png"))
    assert (entry.data, cached) == (b"mine", False)


def test_renewing_puts_back_a_lost_lock_but_never_takes_anothers(store):
    assert store.renew("l:k", b"me", expire=30)
    assert store.get("l:k") == b"me"
    store.delete("l:k")  # as a Redis fail-over to a replica that never saw it
    assert store.renew("l:k", b"me", expire=30)
    assert store.get("l:k") == b"me"
    store.set("l:k", b"another", expire=30)
    assert not store.renew("l:k", b"me", expire=30)
    assert store.get("l:k") == b"another"


def test_cache_survives_a_new_process_view(tmp_path):
    first = DiskStore(tmp_path / "c", size_limit=10 ** 7)
    RenderCache(first).get_or_render("k", lambda: Entry(b"kept", "image/png"))
    first.close()
    second = DiskStore(tmp_path / "c", size_limit=10 ** 7)
    assert RenderCache(second).get("k") == Entry(b"kept", "image/png")
    second.close()


def test_lookup_cache_fresh_then_stale():
    now = [1000.0]

    class Memory(dict):
        def get(self, key):
            return super().get(key)

        def set(self, key, value, expire=None):
            self[key] = value

    cache = LookupCache(Memory(), ttl=60, clock=lambda: now[0])
    assert cache.get("p") is None
    cache.set("p", ["a", "b"])
    assert cache.get("p") == (["a", "b"], True)
    now[0] += 61
    assert cache.get("p") == (["a", "b"], False)


def test_lookup_cache_disabled_with_zero_ttl(store):
    cache = LookupCache(store, ttl=0)
    cache.set("p", ["a"])
    assert cache.get("p") is None


def test_source_cache_keeps_sources_for_their_ttl_and_within_the_byte_bound(store):
    sources = SourceCache(store, ttl=60, max_bytes=1000, wait_timeout=5)
    fetches = []

    def fetch(size):
        fetches.append(size)
        return bytearray(b"x" * size)

    assert sources.get_or_fetch("a|960", lambda: fetch(10)) == b"x" * 10
    assert sources.get_or_fetch("a|960", lambda: fetch(10)) == b"x" * 10
    sources.get_or_fetch("big|960", lambda: fetch(2000))
    sources.get_or_fetch("big|960", lambda: fetch(2000))
    assert fetches == [10, 2000, 2000]
    assert SourceCache(store, ttl=0, max_bytes=1000, wait_timeout=5).get("a|960") is None


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = harness.start_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def fill(store, tag):
    """Two renders, a size and a hint of ``tag``, and one entry of another image."""
    RenderCache(store).get_or_render("k1", lambda: Entry(b"one", "image/webp"), tag=tag)
    RenderCache(store).get_or_render("k2", lambda: Entry(b"two", "image/png"), tag=tag)
    store.set("d:size", b"480x360", tag=tag)
    store.set("o:hint", b"1.33", tag=tag)
    store.set("r:other", b"kept", tag="otherImage")


@pytest.mark.parametrize("kind", ["disk", "redis", "tiered"])
def test_purge_deletes_every_entry_tagged_with_the_image_and_nothing_else(kind, tmp_path,
                                                                          redis_url):
    disk = DiskStore(tmp_path / "c", size_limit=10 ** 7)
    shared = RedisStore(redis_url, prefix=f"test-{kind}:")
    store = {"disk": disk, "redis": shared, "tiered": TieredStore(disk, shared)}[kind]
    fill(store, "abc")
    assert store.purge("abc") == (8 if kind == "tiered" else 4)
    for key in ("r:k1", "r:k2", "d:size", "o:hint"):
        assert store.get(key) is None
    assert store.get("r:other") == b"kept"
    assert store.purge("abc") == 0
    disk.close()


def test_a_shared_hit_copied_to_the_local_disk_keeps_its_tag(tmp_path, redis_url):
    shared = RedisStore(redis_url, prefix="test-copy:")
    shared.set("r:k", b"from another box", tag="abc")
    disk = DiskStore(tmp_path / "c", size_limit=10 ** 7)
    assert TieredStore(disk, shared).get("r:k", tag="abc") == b"from another box"
    assert disk.get("r:k") == b"from another box"
    assert disk.purge("abc") == 1 and disk.get("r:k") is None
    disk.close()


class CountingStore:
    """A store that counts the renders it was asked for."""

    def __init__(self, store):
        self.inner, self.render_reads = store, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get(self, key, *, tag=None):
        self.render_reads += key.startswith("r:")
        return self.inner.get(key, tag=tag)


def test_a_worker_serves_its_latest_renders_from_memory(store):
    counting = CountingStore(store)
    cache = RenderCache(counting, hot_bytes=1024 ** 2)
    entry, cached = cache.get_or_render("k", lambda: Entry(b"x" * 100, "image/webp"))
    assert not cached
    reads = counting.render_reads
    assert [cache.get("k") for _ in range(5)] == [entry] * 5
    assert counting.render_reads == reads  # the store was not asked again
    # Another worker's render, found in the shared store once, then kept.
    store.set("r:other", Entry(b"y" * 100, "image/png").pack())
    assert cache.get("other").data == b"y" * 100 and cache.get("other").data == b"y" * 100
    assert counting.render_reads == reads + 1


def test_without_a_budget_every_hit_reads_the_store(store):
    counting = CountingStore(store)
    cache = RenderCache(counting, hot_bytes=0)
    cache.get_or_render("k", lambda: Entry(b"x" * 100, "image/webp"))
    reads = counting.render_reads
    for _ in range(3):
        assert cache.get("k").data == b"x" * 100
    assert counting.render_reads == reads + 3


def test_memory_for_renders_stays_within_its_budget_oldest_out_first():
    hot = hot_renders(1000)
    for n in range(20):
        hot.put(f"k{n}", Entry(bytes(100), "image/webp"))
    assert hot.weight <= 1000
    assert hot.get("k19") is not None and hot.get("k0") is None
    hot.put("big", Entry(bytes(200), "image/webp"))  # over an eighth: not kept
    assert hot.get("big") is None
    hot.clear()
    assert hot.weight == 0 and hot.get("k19") is None


def test_a_worker_answers_a_fresh_lookup_without_reading_the_store_until_it_goes_stale(store):
    now = [1000.0]
    counting = CountingStore(store)
    cache = LookupCache(counting, ttl=300, clock=lambda: now[0])
    other_worker = LookupCache(store, ttl=300, clock=lambda: now[0])
    other_worker.set("WEIDIAN:1", ["a", "b"])
    reads = []
    original = counting.get

    def get(key, *, tag=None):
        reads.append(key)
        return original(key, tag=tag)

    counting.get = get
    assert cache.get("WEIDIAN:1") == (["a", "b"], True)
    assert [cache.get("WEIDIAN:1") for _ in range(3)] == [(["a", "b"], True)] * 3
    assert len(reads) == 1  # read once, then answered from memory while fresh
    now[0] += 301
    assert cache.get("WEIDIAN:1") == (["a", "b"], False)  # stale: the store says so
    other_worker.set("WEIDIAN:1", ["c"])  # fetched again by another worker
    assert cache.get("WEIDIAN:1") == (["c"], True)
    assert len(reads) == 3
