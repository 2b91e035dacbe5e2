"""The circuit breaker: calls run side by side; only the state is locked."""

from __future__ import annotations

import threading

import pytest

from qcimage.services.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fail(breaker, error=RuntimeError("upstream down")):
    with pytest.raises(type(error)):
        with breaker.guard():
            raise error


def test_calls_inside_the_breaker_run_at_the_same_time():
    breaker = CircuitBreaker(fail_max=3, reset_timeout=30)
    inside = threading.Barrier(8, timeout=5)

    def call():
        with breaker.guard():
            # Every thread must be inside at once, or the barrier breaks (pybreaker's call
            # held one lock for the whole call: this would time out).
            inside.wait()

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not inside.broken
    assert breaker.current_state() == CLOSED


def test_opens_after_fail_max_failures_in_a_row_and_fails_fast():
    clock = Clock()
    breaker = CircuitBreaker(fail_max=3, reset_timeout=30, clock=clock)
    fail(breaker)
    fail(breaker)
    with breaker.guard():
        pass  # a success in between starts the count over
    for _ in range(3):
        fail(breaker)
    assert breaker.current_state() == OPEN
    ran = []
    with pytest.raises(CircuitOpen) as refused:
        with breaker.guard():
            ran.append(1)
    assert ran == []
    assert refused.value.retry_after == 30
    clock.now += 12.5
    assert breaker.retry_after() == 18


def test_healthy_answers_are_not_failures():
    breaker = CircuitBreaker(fail_max=1, reset_timeout=30)
    with pytest.raises(LookupError):
        with breaker.guard(healthy=lambda error: isinstance(error, LookupError)):
            raise LookupError("no such image")
    assert breaker.current_state() == CLOSED


def test_half_open_lets_one_probe_through_and_its_outcome_decides():
    clock = Clock()
    breaker = CircuitBreaker(fail_max=1, reset_timeout=10, clock=clock)
    fail(breaker)
    clock.now += 10
    assert breaker.current_state() == HALF_OPEN
    with breaker.guard():
        # While the probe is out, everyone else still fails fast.
        with pytest.raises(CircuitOpen):
            with breaker.guard():
                pass
    assert breaker.current_state() == CLOSED

    fail(breaker)
    clock.now += 10
    fail(breaker)  # the probe failed: open for another period
    assert breaker.current_state() == OPEN
    assert breaker.retry_after() == 10
