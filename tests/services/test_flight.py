"""Coalescing: one computation per key, in a process and across workers; failures shared."""

from __future__ import annotations

import threading

import pytest

from qcimage.services.stores import DiskStore
from qcimage.services.flight import Flight
from qcimage.services.upstream import UpstreamNotFound, UpstreamTimeout


@pytest.fixture
def store(tmp_path):
    disk = DiskStore(tmp_path / "c", size_limit=50 * 1024 * 1024)
    yield disk
    disk.close()


def run_together(count, target):
    """Run ``target(i)`` on ``count`` threads at once; their results or exceptions."""
    results: list = [None] * count
    start = threading.Barrier(count)

    def run(i):
        start.wait()
        try:
            results[i] = target(i)
        except Exception as error:  # noqa: BLE001 - collected for the assertions
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_one_computation_for_many_callers_in_two_processes(store):
    # Two Flight objects on one store stand for two workers; four threads each.
    workers = [Flight(store, wait_timeout=10), Flight(store, wait_timeout=10)]
    done, calls = {}, []
    release = threading.Event()

    def compute():
        calls.append(1)
        release.wait(5)
        done["k"] = "value"
        return "value"

    def call(i):
        if i == 0:
            threading.Timer(0.3, release.set).start()
        return workers[i % 2].run("k", lambda: done.get("k"), compute)

    results = run_together(8, call)
    assert len(calls) == 1
    assert sorted(computed for _, computed in results) == [False] * 7 + [True]
    assert {value for value, _ in results} == {"value"}


def test_a_failure_is_shared_by_everyone_waiting_and_forgotten_after(store):
    workers = [Flight(store, wait_timeout=10), Flight(store, wait_timeout=10)]
    calls = []
    release = threading.Event()

    def failing():
        calls.append(1)
        release.wait(5)
        raise UpstreamTimeout("upstream image took longer than 2s")

    def call(i):
        if i == 0:
            threading.Timer(0.3, release.set).start()
        return workers[i % 2].run("k", lambda: None, failing)

    results = run_together(8, call)
    assert len(calls) == 1, "waiters fetched again after the failure"
    assert all(isinstance(error, UpstreamTimeout) for error in results), results
    assert {error.status for error in results} == {504}
    # A request arriving after the failure asks again.
    assert workers[0].run("k", lambda: None, lambda: "fresh") == ("fresh", True)


def test_a_shared_failure_keeps_its_class_and_message_across_processes(store):
    holder, waiter = Flight(store, wait_timeout=5), Flight(store, wait_timeout=5)
    entered = threading.Event()
    release = threading.Event()

    def failing():
        entered.set()
        release.wait(5)
        raise UpstreamNotFound("upstream has no such image")

    thread = threading.Thread(target=lambda: pytest.raises(
        UpstreamNotFound, holder.run, "k", lambda: None, failing))
    thread.start()
    entered.wait(5)
    threading.Timer(0.2, release.set).start()
    with pytest.raises(UpstreamNotFound) as shared:
        waiter.run("k", lambda: None, lambda: pytest.fail("waiter computed"))
    thread.join()
    assert (shared.value.status, shared.value.code) == (404, "not_found")
    assert shared.value.message == "upstream has no such image"
