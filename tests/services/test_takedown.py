"""The takedown list on disk and in a real Redis, and a worker's refreshed copy of it."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from qcimage.services.stores import RedisStore
from qcimage.services.takedown import (DiskTakedowns, RedisTakedowns, Takedown, TakedownList,
                                       TakenDown, open_takedowns)
from tools import harness


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = harness.start_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(params=["disk", "redis"])
def open_store(request, tmp_path, redis_url):
    """``open_store()`` → a new view of one takedown store, as another process would open it."""
    if request.param == "disk":
        return lambda: open_takedowns(tmp_path)
    redis.Redis.from_url(redis_url).flushdb()
    return lambda: open_takedowns(tmp_path, RedisStore(redis_url), redis_url)


def record(image_id, reason=""):
    return Takedown(image_id=image_id, reason=reason, at=1_700_000_000.5)


def test_both_stores_are_chosen_as_the_service_configures_them(tmp_path, redis_url):
    assert isinstance(open_takedowns(tmp_path), DiskTakedowns)
    user_url = redis_url.replace("redis://", "redis://user:secret@")
    in_redis = open_takedowns(tmp_path, RedisStore(redis_url), user_url)
    assert isinstance(in_redis, RedisTakedowns)
    assert in_redis.where == f"Redis at {redis_url}" and "secret" not in in_redis.where


def test_every_view_of_the_store_sees_each_change_and_a_new_stamp(open_store):
    writer, reader = open_store(), open_store()
    assert reader.stamp() is None and reader.load() == (None, {})
    writer.add(record("abc", "rights claim"))
    stamp, records = reader.load()
    assert stamp is not None and stamp == reader.stamp()
    assert records == {"abc": record("abc", "rights claim")}
    assert writer.remove("abc") is True
    assert writer.remove("abc") is False
    after = reader.stamp()
    assert reader.load()[1] == {} and after.epoch == stamp.epoch and after != stamp


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_worker_sees_a_change_within_the_refresh_and_purges_once(open_store):
    store, clock, purged = open_store(), FakeClock(), []
    worker = TakedownList(open_store(), refresh=2.0, purge=purged.append, clock=clock)
    worker.check("abc")
    store.add(record("abc"))
    worker.check("abc")  # within the refresh: the copy is not re-read yet
    clock.now += 2.0
    with pytest.raises(TakenDown) as raised:
        worker.check("abc")
    assert (raised.value.status, raised.value.code) == (451, "taken_down")
    assert worker.without(["x", "abc", "y"]) == ["x", "y"]
    clock.now += 2.0
    worker.check("other")
    assert purged == ["abc"]
    store.remove("abc")
    clock.now += 2.0
    worker.check("abc")


def test_a_worker_reads_the_store_only_when_its_version_changed(tmp_path):
    store = DiskTakedowns(tmp_path)
    loads = []
    real_load = store.load
    store.load = lambda: loads.append(1) or real_load()
    worker = TakedownList(store, refresh=0, purge=lambda image_id: None)
    for _ in range(5):
        worker.check("abc")
    store.add(record("abc"))
    with pytest.raises(TakenDown):
        worker.check("abc")
    assert len(loads) == 2


class Unreachable:
    errors = (ConnectionError,)
    where = "nowhere"

    def stamp(self):
        raise ConnectionError("down")

    load = stamp


def test_an_unreachable_store_keeps_the_last_copy_in_force(tmp_path, caplog):
    store = DiskTakedowns(tmp_path)
    store.add(record("abc"))
    worker = TakedownList(store, refresh=0, purge=lambda image_id: None)
    worker.check("other")
    worker.store = Unreachable()
    for _ in range(3):
        with pytest.raises(TakenDown):
            worker.check("abc")
    assert sum("takedown list unreachable" in r.message for r in caplog.records) == 1


def test_a_worker_starting_while_redis_is_down_reads_the_boxs_snapshot(tmp_path):
    snapshot = tmp_path / "takedowns-snapshot.json"
    store = DiskTakedowns(tmp_path / "list")
    store.add(record("abc", "privacy"))
    TakedownList(store, refresh=0, purge=lambda image_id: None, snapshot=snapshot).check("x")
    assert json.loads(snapshot.read_text())["records"] == [
        {"image_id": "abc", "reason": "privacy", "at": 1_700_000_000.5}]
    late = TakedownList(Unreachable(), refresh=0, purge=lambda image_id: None,
                        snapshot=snapshot)
    with pytest.raises(TakenDown):
        late.check("abc")


def test_a_worker_starting_purges_only_what_the_box_has_not_purged_yet(tmp_path):
    snapshot = tmp_path / "takedowns-snapshot.json"
    store = DiskTakedowns(tmp_path / "list")
    store.add(record("old"))
    first = []
    TakedownList(store, refresh=0, purge=first.append, snapshot=snapshot).check("x")
    store.add(record("new"))  # while no worker of this box was looking
    later = []
    TakedownList(store, refresh=0, purge=later.append, snapshot=snapshot).check("x")
    assert (first, later) == (["old"], ["new"])


def test_threads_of_a_worker_wait_for_its_first_copy_and_read_the_store_once(tmp_path):
    store, clock = DiskTakedowns(tmp_path), FakeClock()
    store.add(record("abc"))
    loads, refused = [], []
    real_load = store.load

    def slow_load():
        loads.append(1)
        time.sleep(0.1)
        return real_load()

    store.load = slow_load
    worker = TakedownList(store, refresh=2.0, purge=lambda image_id: None, clock=clock)

    def request():
        try:
            worker.check("abc")
        except TakenDown:
            refused.append(1)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(loads), len(refused)) == (1, 8)


@pytest.fixture
def flushed_redis(redis_url, tmp_path):
    """``(open_store, flush)``: views of the list in Redis, and a Redis restart (empty)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return (lambda: open_takedowns(tmp_path, RedisStore(redis_url), redis_url)), client.flushdb


def test_a_list_redis_lost_is_put_back_by_the_workers_that_knew_it(flushed_redis):
    open_store, flush = flushed_redis
    cli = open_store()
    cli.add(record("gone"))
    cli.add(record("kept", "rights claim"))
    cli.remove("gone")
    worker = TakedownList(open_store(), refresh=0, purge=lambda image_id: None)
    worker.check("other")
    flush()  # Redis restarted without persistence, or evicted the list
    with pytest.raises(TakenDown):
        worker.check("kept")
    assert cli.load()[1] == {"kept": record("kept", "rights claim")}
    worker.check("gone")


def test_a_list_begun_again_after_a_loss_is_merged_with_what_workers_knew(flushed_redis):
    open_store, flush = flushed_redis
    cli = open_store()
    cli.add(record("old"))
    worker = TakedownList(open_store(), refresh=0, purge=lambda image_id: None)
    worker.check("other")
    flush()
    cli.add(record("new"))  # before any worker noticed the loss
    assert worker.without(["old", "new", "ok"]) == ["ok"]
    assert set(cli.load()[1]) == {"old", "new"}


def test_a_worker_starting_after_a_loss_puts_back_the_boxs_snapshot(flushed_redis, tmp_path):
    open_store, flush = flushed_redis
    snapshot = tmp_path / "takedowns-snapshot.json"
    open_store().add(record("abc"))
    TakedownList(open_store(), refresh=0, purge=lambda image_id: None,
                 snapshot=snapshot).check("x")
    flush()
    restarted = TakedownList(open_store(), refresh=0, purge=lambda image_id: None,
                             snapshot=snapshot)
    with pytest.raises(TakenDown):
        restarted.check("abc")
    assert set(open_store().load()[1]) == {"abc"}


def test_a_purge_that_fails_does_not_fail_the_request(tmp_path):
    store = DiskTakedowns(tmp_path)
    store.add(record("abc"))

    def broken(image_id):
        raise OSError("disk gone")

    with pytest.raises(TakenDown):
        TakedownList(store, refresh=0, purge=broken).check("abc")
