"""Render threads: niced below the request threads, errors and results passed through."""

from __future__ import annotations

import os
import threading

import pytest

from qcimage.services.renderpool import RenderPool


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_renders_run_on_their_own_threads_niced_below_the_callers():
    pool = RenderPool(size=2, nice=5)
    mine = nice_of_this_thread()
    theirs, thread = pool.run(lambda: (nice_of_this_thread(), threading.get_native_id()))
    assert theirs == min(19, mine + 5) and thread != threading.get_native_id()
    assert nice_of_this_thread() == mine  # the request's thread keeps its priority


def test_the_pool_has_as_many_threads_as_render_slots():
    pool = RenderPool(size=2, nice=3)
    started, release = threading.Barrier(3, timeout=10), threading.Event()

    def render():
        started.wait()
        release.wait(10)
        return threading.get_native_id()

    callers = [threading.Thread(target=lambda: seen.append(pool.run(render))) for _ in range(2)]
    seen: list[int] = []
    for caller in callers:
        caller.start()
    started.wait()  # both renders run at once, on two threads
    release.set()
    for caller in callers:
        caller.join(10)
    assert len(set(seen)) == 2


def test_nice_zero_renders_in_the_callers_thread():
    assert RenderPool(size=2, nice=0).run(threading.get_native_id) == threading.get_native_id()


def test_a_render_error_reaches_the_caller():
    def broken():
        raise ValueError("corrupt source")

    with pytest.raises(ValueError, match="corrupt source"):
        RenderPool(size=1, nice=2).run(broken)
