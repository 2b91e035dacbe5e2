"""Redis URLs to clients, against real Sentinel and Cluster deployments (tools/redisha.py).

The shared store, the render locks, the breaker state and the rate limits all reach
Redis through ``redisconn``; these tests break real redis-server processes under them.
"""

from __future__ import annotations

import time

import pytest
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from qcimage.services import redisconn
from qcimage.services.stores import RedisStore
from qcimage.services.redisconn import RedisURLError, parse_redis_url
from qcimage.services.upstream import make_breaker
from tools import redisha


def test_urls_are_read_as_the_limits_library_spells_them():
    sentinel = parse_redis_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/qcimage")
    assert sentinel.is_sentinel and sentinel.service_name == "qcimage"
    assert sentinel.locations == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert sentinel.password == "s3cret"
    cluster = parse_redis_url("redis+cluster://u:p@a.example:7000,b.example:7001")
    assert cluster.is_cluster and cluster.username == "u"
    assert cluster.locations == (("a.example", 7000), ("b.example", 7001))
    single = parse_redis_url("rediss://cache.example:6380/2")
    assert not single.is_sentinel and not single.is_cluster


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://a:1,b:2", "service name"),
    ("redis+sentinel://a:1/svc/0", "service name"),
    ("redis+cluster://a:1/0", "nodes only"),
    ("redis+cluster://a,b:2", "host:port"),
    ("memcached://a:1", "must start with"),
])
def test_unusable_urls_say_what_is_expected(url, says):
    with pytest.raises(RedisURLError, match=says):
        parse_redis_url(url)


def test_limiter_options_bound_every_socket_and_keep_limits_on_the_master():
    assert redisconn.limiter_storage_options("memory://") == {}
    options = redisconn.limiter_storage_options("redis+sentinel://a:1/qcimage")
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.5
    assert options["sentinel_kwargs"]["socket_timeout"] == 0.5
    assert options["use_replicas"] is False
    cluster = storage_from_string("redis+cluster://127.0.0.1:1",
                                  **redisconn.limiter_storage_options("redis+cluster://a:1"))
    # Built without the cluster (a box starts while it is down) and says it is down.
    assert isinstance(cluster, redisconn.LazyClusterLimitsStorage)
    assert not cluster.check()


def test_a_cluster_client_is_built_without_the_cluster(tmp_path):
    """A box starts while the cluster is unreachable, and calls fail as Redis errors."""
    client = redisconn.connect("redis+cluster://127.0.0.1:1")
    with pytest.raises(redisconn.ERRORS):
        client.get("k")
    store = RedisStore("redis+cluster://127.0.0.1:1")
    assert store.get("k") is None and not store.ping()


def limiter_for(url):
    storage = storage_from_string(url, **redisconn.limiter_storage_options(url))
    return MovingWindowRateLimiter(storage)


def hits(limiter, key, n):
    limit = RateLimitItemPerMinute(3)
    return [limiter.hit(limit, key) for _ in range(n)]


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory):
    group = redisha.start_sentinel_group(tmp_path_factory.mktemp("sentinel"))
    yield group
    group.stop()


@pytest.mark.e2e
def test_store_locks_and_limits_follow_the_sentinel_master_through_a_failover(sentinel_group):
    store = RedisStore(sentinel_group.url)
    limiter = limiter_for(sentinel_group.url)
    store.set("r:img", b"rendered")
    assert store.add("l:img", b"me", expire=30)
    assert hits(limiter, "tester", 4) == [True, True, True, False]
    assert store.ping()

    old = sentinel_group.master()
    # Let the replica catch up before the crash, as it normally is within milliseconds.
    old.client().wait(1, 2000)
    old.kill()
    # While Sentinel decides, the store answers as a miss and never raises.
    assert store.get("r:img") is None
    assert not store.ping()
    new = sentinel_group.wait_failover(old)

    deadline = time.monotonic() + 10
    while not store.ping() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.get("r:img") == b"rendered"
    # The lock holder's renewal keeps its lock on the new master; nobody else takes it.
    assert store.renew("l:img", b"me", expire=30)
    assert not store.add("l:img", b"other", expire=30)
    # Counts made before the fail-over still count: the limit stays exact.
    assert hits(limiter, "tester", 1) == [False]
    assert hits(limiter, "fresh", 4) == [True, True, True, False]
    assert new.client().exists("qcimage:r:img")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = redisha.start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.mark.e2e
def test_a_cluster_shares_the_store_breaker_and_limits_and_outlives_a_dead_node(cluster):
    store = RedisStore(cluster.url)
    assert store.is_cluster
    keys = [f"r:image-{n}" for n in range(24)]
    for key in keys:
        store.set(key, key.encode())
    homes = {key: cluster.node_for("qcimage:" + key) for key in keys}
    assert len(set(homes.values())) == 3, "keys did not spread over the nodes"
    limiter = limiter_for(cluster.url)
    assert hits(limiter, "tester", 4) == [True, True, True, False]
    breaker = make_breaker(fail_max=2, redis_client=store.client)
    other_box = make_breaker(fail_max=2, redis_client=store.client)
    for box in (breaker, other_box):
        with pytest.raises(ZeroDivisionError):
            with box.guard():
                1 / 0
    # One failure on each box: the shared count opened the circuit for both.
    assert breaker.current_state() == other_box.current_state() == "open"

    assert store.ping()
    dead = homes[keys[0]]
    dead.kill()
    # Readiness: one primary down is Redis down (its slots are), never "ok".
    assert not store.ping()
    for key in keys:
        expected = None if homes[key] is dead else key.encode()
        assert store.get(key) == expected
    # Whichever node held the breaker's keys, the breaker still answers.
    assert breaker.current_state() == "open"
    dead.start()
    cluster.wait_state("ok")
    # The node came back empty (no persistence) and serves its slots again.
    store.set(keys[0], b"again")
    assert store.get(keys[0]) == b"again"
