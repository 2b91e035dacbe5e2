"""The per-worker rate-limit storage: limits' MemoryStorage without a thread per 10 ms."""

from __future__ import annotations

import threading

import limits.storage.memory
from limits import parse
from limits.strategies import MovingWindowRateLimiter

from qcimage import create_app
from qcimage.extensions import SweptMemoryStorage, limiter, limiter_storage_uri


def test_memory_uri_means_the_swept_storage_and_others_pass_through():
    assert limiter_storage_uri("memory://") == "qcimage-memory://"
    assert limiter_storage_uri("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert limiter_storage_uri("redis+sentinel://h:26379/m") == "redis+sentinel://h:26379/m"


def test_the_app_counts_per_worker_limits_in_it(env):
    app = create_app(env)
    with app.app_context():
        assert isinstance(limiter.storage, SweptMemoryStorage)


def test_many_hits_start_one_sweeper_thread_not_one_per_window(monkeypatch):
    started = []
    start = threading.Thread.start

    def counting_start(thread):
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for storage_class, most in ((SweptMemoryStorage, 1), (limits.storage.MemoryStorage, None)):
        strategy = MovingWindowRateLimiter(storage_class())
        started.clear()  # the constructor's own first timer aside
        item = parse("100000 per 1 hour")
        for n in range(3000):
            assert strategy.hit(item, "client", "scope")
            if n % 500 == 0:  # longer than the stock storage's 10 ms timers live
                threading.Event().wait(0.03)
        if most is not None:
            assert len(started) <= most and set(started) <= {"ratelimit-sweeper"}, started
        else:  # what it replaces: a new thread after every pause
            assert len(started) >= 6, started


def test_limits_hold_and_expired_entries_are_swept(monkeypatch):
    now = [1_000_000.0]
    monkeypatch.setattr(limits.storage.memory.time, "time", lambda: now[0])
    storage = SweptMemoryStorage()
    strategy = MovingWindowRateLimiter(storage)
    item = parse("2 per 10 seconds")
    assert strategy.hit(item, "client") and strategy.hit(item, "client")
    assert not strategy.hit(item, "client")
    assert storage.events
    now[0] += 11
    storage.sweep()
    assert not any(storage.events.values())
    assert strategy.hit(item, "client")


def test_a_sweep_that_fails_does_not_end_the_sweeper(monkeypatch):
    # limits' sweep reads keys a request thread may drop meanwhile: a KeyError there
    # once ended the sweeper for good, and expired buckets then stayed forever.
    monkeypatch.setattr(SweptMemoryStorage, "SWEEP_SECONDS", 0.01)
    storage = SweptMemoryStorage()
    sweeps = []

    def flaky_sweep():
        sweeps.append(len(sweeps))
        if len(sweeps) == 1:
            raise KeyError("k1")

    storage.sweep = flaky_sweep
    MovingWindowRateLimiter(storage).hit(parse("5 per 1 second"), "client")
    deadline = threading.Event()
    for _ in range(200):
        if len(sweeps) >= 3:
            break
        deadline.wait(0.01)
    assert len(sweeps) >= 3  # one sweeper ended at the first error would stop at 1
