"""Render slots and the bounded queue of misses in front of them."""

from __future__ import annotations

import threading

import pytest

from qcimage.services.slots import Overloaded, RenderSlots
from tests.services.test_flight import run_together


def test_misses_over_the_queue_bound_are_refused_at_once():
    slots = RenderSlots(slots=1, queue=2, slot_timeout=5)
    with slots.admit(), slots.admit():
        with pytest.raises(Overloaded) as refused:
            with slots.admit():
                pass
    assert (refused.value.status, refused.value.code) == (503, "overloaded")
    assert refused.value.headers == {"Retry-After": "1"}
    with slots.admit():
        pass  # places come back


def test_render_slots_bound_renders_at_once():
    slots = RenderSlots(slots=2, queue=10, slot_timeout=5)
    inside, most = [0], [0]
    lock = threading.Lock()

    def render(_):
        with slots.render_slot():
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            threading.Event().wait(0.05)
            with lock:
                inside[0] -= 1

    run_together(6, render)
    assert most[0] == 2


def test_a_render_stuck_past_its_timeout_ends_the_worker(tmp_path):
    # In a child process: the watchdog ends the process it runs in.
    import subprocess
    import sys

    script = ("import time\nfrom qcimage.services.slots import RenderSlots\n"
              "slots = RenderSlots(slots=1, queue=1, slot_timeout=1, render_timeout=0.2)\n"
              "with slots.render_slot():\n    time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 70
    assert "a render has run for 0.2s" in done.stderr
