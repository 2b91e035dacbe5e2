"""Three boxes behind the shipped balancer, sharing Redis, on hosts of their own, broken under load.

One farm (tools/scaleout.py) for the module: the stand-in upstream, a Redis Sentinel group
(master, replica, three sentinels) and a three-node Redis Cluster, three boxes running
gunicorn.conf.py as shipped, and nginx/qcimage-lb.conf, each in its own network namespace
with its own address; this machine is the client. The tests run in order and each leaves
the farm whole for the next: the boxes use the Sentinel group until the rolling restart
moves them onto the cluster.

Each fault runs under a bounded load (``LOAD_SECONDS``, 32 connections, half image hits,
three tenths look-ups, two tenths misses) and counts every answer that is not a 200.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tools import scaleout
from tools.netns import NetnsUnavailable, check_available
from tools.scaleout import CATALOGUE, LOOKUP_LIMIT, Farm, Load, path_of

pytestmark = pytest.mark.e2e

# Shorter than the issue's ~30 s so the whole module stays within its budget;
# `make bench` runs the same faults for 30 s each.
LOAD_SECONDS = float(os.environ.get("QCIMAGE_SCALEOUT_LOAD_SECONDS", "8"))


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    try:
        check_available()
    except NetnsUnavailable as error:
        pytest.fail(f"the scale-out tests need network namespaces: {error}")
    # One worker a box (gunicorn.conf.py's threads): boots, and so restarts, cost half.
    farm = Farm(tmp_path_factory.mktemp("farm"), workers=1, redis=("sentinel", "cluster"))
    yield farm
    farm.close()


@pytest.fixture(scope="module")
def load(farm):
    """The first load, hit pool rendered; ``load.again()`` gives the next one."""
    return Load(farm, seconds=LOAD_SECONDS).warm()


def served(farm, route):
    """How many 200s each box answered on ``route``."""
    return {name: farm.served(name, route, "200") for name in farm.box_names}


def assert_lookups_exact(farm, key):
    """N+1 look-ups over all boxes: exactly N 200s, then 429, and every box took some."""
    before = served(farm, "/api/qc-images")
    statuses = [farm.look_up(key).status_code for _ in range(LOOKUP_LIMIT + 1)]
    assert statuses == [200] * LOOKUP_LIMIT + [429], statuses
    after = served(farm, "/api/qc-images")
    assert all(after[name] > before[name] for name in farm.box_names), (before, after)


def wait_limits_shared(farm, timeout=60.0):
    """Until every worker that fell back to counting in memory counts in Redis again.

    Flask-Limiter asks Redis again only when a limited request comes, at growing
    intervals, and logs each change; a throwaway key nudges every worker.
    """
    deadline = time.monotonic() + timeout
    while True:
        pending = [name for name in farm.box_names
                   if farm.box_logs(name).count("falling back to in-memory storage")
                   > farm.box_logs(name).count("storage recovered")]
        if not pending:
            return
        assert time.monotonic() < deadline, f"limits still per worker on {pending}"
        for _ in range(6):
            farm.look_up("load63")
        time.sleep(0.5)


def test_lookup_limits_are_exact_across_all_boxes(farm):
    assert_lookups_exact(farm, "exact0")


def test_concurrent_identical_misses_on_every_box_fetch_once(farm):
    product = CATALOGUE[1]
    path = path_of(farm.look_up("exact1", product, width=777).json()["images"][0]["watermarked"])
    fetches = farm.upstream.stats()["endpoints"].get("img", 0)
    boxes = [farm.box_names[n % 3] for n in range(32)]
    barrier = threading.Barrier(32)

    def fetch(name):
        barrier.wait()
        return farm.box_get(name, path)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(fetch, boxes))
    assert [a.status_code for a in answers] == [200] * 32
    assert len({a.content for a in answers}) == 1
    assert farm.upstream.stats()["endpoints"].get("img", 0) - fetches == 1


def test_kill_9_of_a_box_fails_no_request_and_it_takes_traffic_again(farm, load):
    report = scaleout.kill_box(farm, load, "box2")
    assert not report.failed, report.summary()


def test_sentinel_failover_fails_no_request_and_limits_are_exact_after(farm, load):
    report = scaleout.sentinel_failover(farm, load.again())
    assert not report.server_errors, report.summary()
    assert not report.failed, report.summary()
    wait_limits_shared(farm)
    assert_lookups_exact(farm, "exact2")


def test_redis_gone_entirely_degrades_without_5xx_and_recovers(farm, load):
    report, seen = scaleout.redis_gone(farm, load.again())
    assert not report.server_errors, report.summary()
    assert not report.failed, report.summary()
    assert set(seen) == set(farm.box_names)
    for name, body in seen.items():
        assert body["status"] == "degraded" and body["checks"]["redis"] == "down", (name, body)
    deadline = time.monotonic() + 30
    while any(body["status"] != "ready" for body in farm.readiness().values()):
        assert time.monotonic() < deadline, farm.readiness()
        time.sleep(0.5)
    wait_limits_shared(farm)
    assert_lookups_exact(farm, "exact3")
    # Shared again: what one box renders, another serves from Redis.
    path = path_of(farm.look_up("exact4", CATALOGUE[2], width=555).json()["images"][0][
        "watermarked"])
    assert farm.box_get("box1", path).headers["X-Cache"] == "MISS"
    assert farm.box_get("box3", path).headers["X-Cache"] == "HIT"


def test_rolling_restart_onto_the_cluster_fails_no_request(farm, load):
    report = scaleout.rolling_restart(farm, load.again(), redis_url=farm.cluster.url)
    assert len(report.answers) > 100, report.summary()
    assert not report.failed, report.summary()
    assert all(b["checks"]["redis"] == "ok" for b in farm.readiness().values())
    assert_lookups_exact(farm, "exact5")


def test_a_dead_cluster_node_fails_no_request(farm, load):
    assert farm.redis_url == farm.cluster.url
    report = scaleout.cluster_node_dies(farm, load.again())
    assert not report.server_errors, report.summary()
    assert not report.failed, report.summary()
    assert all(b["status"] == "degraded" and b["checks"]["redis"] == "down"
               for b in farm.readiness().values())
