"""The hostile-image corpus against real gunicorn (two workers) and the stand-in upstream.

Each body is served by the stand-in's ``payload`` fault for one image id, as
``image/png``. Besides each answer, the tests watch the workers themselves: the same
pids before and after (none crashed or was killed), and their peak resident memory
(VmHWM, reset through /proc/<pid>/clear_refs before each measured request).
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from pathlib import Path

import pytest
import requests

from tests.security.conftest import (
    BOMB_COPIES,
    BOMB_INFLATED,
    GIF_FIRST_FRAME,
    UPSTREAM_SECRET,
    Case,
    check_error,
    check_watermarked_still,
    hostile_corpus,
    png_bomb,
    png_chunk_bomb,
    png_claiming,
)
from tests.test_images import MAGIC, base, signed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_upstream")]

MAX_BYTES = 1024 * 1024
GOOD_ID = "n4EYdIoE"
LARGEST_ID = "cR-eVGrQ"  # the catalogue's largest original: a 5000 x 3750 PNG, 32 MB
MB = 1024 * 1024
# A refused bomb may cost a worker its body (<= MAX_BYTES, held twice while read) and the
# JSON answer, nothing more. Any decode would show: 15000 x 15000 is 225 MB even at one
# byte a pixel (1.8 GB in ImageMagick's Q16 cache), so 32 MB of growth cannot hide one.
BOMB_GROWTH_LIMIT = 32 * MB
# README "Security": a 24 MP source (the default budget) keeps a worker under 300 MB.
PEAK_LIMIT = 300 * MB
_fresh_ids = (f"hostile-{n}" for n in itertools.count())
_fresh_widths = itertools.count(300)


@pytest.fixture
def start(qcimage_server):
    """Start gunicorn (2 workers) with a signing key the test knows; wait for both workers."""
    def start_server(**env):
        key = secrets.token_urlsafe(32)
        server = qcimage_server(workers=2, QCIMAGE_SIGNING_KEYS=key,
                                QCIMAGE_IMAGE_RATE_LIMIT="10000 per minute", **env)
        server.signing_key = key
        for pid in server.worker_pids():
            wait_booted(pid)
        return server
    return start_server


def wait_booted(pid: int, timeout: float = 30.0) -> None:
    """Until the worker has loaded ImageMagick and its memory stopped moving."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        current = memory(pid)["VmRSS"]
        if "libMagickCore" in Path(f"/proc/{pid}/maps").read_text() and current == last:
            return
        last = current
        time.sleep(0.1)
    raise TimeoutError(f"worker {pid} did not settle")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of pid, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def measured(server, call):
    """(result of call(), peak VmHWM of any worker, largest growth of one over its RSS)."""
    pids = server.worker_pids()
    before = {}
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before[pid] = memory(pid)["VmRSS"]
    result = call()
    after = {pid: memory(pid)["VmHWM"] for pid in pids}
    return result, max(after.values()), max(after[pid] - before[pid] for pid in pids)


def get(server, path):
    response = requests.get(server.url + path, timeout=60)
    assert response.headers.get("Server") == "qcimage", response.headers.get("Server")
    return response


def image_path(server, image_id, **params):
    return signed(base(url=image_id, **params), key=server.signing_key)


def ask(server, upstream, fault: dict, **params):
    """Arm fault for a fresh image id, request that id once, disarm it."""
    image_id = next(_fresh_ids)
    upstream.set_faults({"paths": ["img"], "ids": [image_id], **fault})
    try:
        response = get(server, image_path(server, image_id, **params))
    finally:
        upstream.clear_faults()
    assert upstream.stats()["images"].get(image_id) == 1, "fetched more than once"
    return response


def payload(body: bytes, status: int = 200, content_type: str = "image/png") -> dict:
    return {"mode": "payload", "status": status, "content_type": content_type,
            "body_b64": base64.b64encode(body).decode()}


def check_good_render(server, width=None):
    response = get(server, image_path(server, GOOD_ID, width=str(width or next(_fresh_widths))))
    assert response.status_code == 200, response.text[:300]
    assert MAGIC["webp"](response.content)
    return response


def check_case(response, case: Case):
    if case.status != 200:
        check_error(response.status_code, response.headers, response.content, case)
        return
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == f"image/{case.format}"
    flat = GIF_FIRST_FRAME if case.body.startswith(b"GIF") else None
    check_watermarked_still(response.content, case.format, flat=flat, max_width=480)


def test_every_hostile_source_is_refused_and_both_workers_keep_serving(start, upstream,
                                                                       traps, canary):
    server = start(QCIMAGE_MAX_SOURCE_BYTES=str(MAX_BYTES))
    pids = server.worker_pids()
    cases = {name: (payload(case.body), case) for name, case in hostile_corpus(traps).items()}
    for declared in (True, False):
        cases[f"oversize, content_length={declared}"] = (
            {"mode": "oversize", "size": 8 * MAX_BYTES, "content_length": declared},
            Case(b"", 413, "image_too_large"))
    cases["upstream 500 with a traceback page"] = (
        payload(f"<pre>Traceback (most recent call last):\n  File \"/srv/app.py\"\n"
                f"{UPSTREAM_SECRET}</pre>".encode(), status=500, content_type="text/html"),
        Case(b"", 502, "upstream_error"))
    failures = []
    for name, (fault, case) in cases.items():
        try:
            check_case(ask(server, upstream, fault, format=case.format), case)
            assert traps.sprung(canary) == []
            check_good_render(server)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert server.worker_pids() == pids, "a worker died or was replaced"
    assert not failures, "\n".join(failures)


BOMBS = {
    "png header claims 100000x100000": lambda: png_claiming(100_000, 100_000),
    "png grey bomb 15000x15000 (219 KB)": lambda: png_bomb(15_000),
    "png 1-bit bomb 15000x15000 (27 KB)": lambda: png_bomb(15_000, bit_depth=1),
}


def test_pixel_bombs_leave_worker_memory_flat(start, upstream, capsys):
    server = start(QCIMAGE_MAX_SOURCE_BYTES=str(MAX_BYTES))
    pids = server.worker_pids()
    for _ in range(4):  # first renders fill per-worker caches (overlays): not the bombs' cost
        check_good_render(server)
    rows = []
    for name, build in BOMBS.items():
        response, peak, growth = measured(server, lambda: ask(server, upstream,
                                                              payload(build())))
        check_error(response.status_code, response.headers, response.content,
                    Case(b"", 413, "image_too_large"))
        rows.append((name, peak, growth))
    # For comparison: the largest bomb the default budget (24 MP) lets through is decoded.
    response, peak, growth = measured(server, lambda: ask(
        server, upstream, payload(png_bomb(4_800, colour_type=2))))
    assert response.status_code == 200, response.text[:300]
    rows.append(("png rgb bomb 4800x4800 = 23 MP, allowed", peak, growth))
    report(capsys, "pixel bombs, default budget", rows)
    assert server.worker_pids() == pids
    for name, peak, growth in rows:
        assert peak < PEAK_LIMIT, f"{name}: peak {peak / MB:.0f} MB"
    for name, peak, growth in rows[:len(BOMBS)]:
        assert growth < BOMB_GROWTH_LIMIT, f"{name}: grew {growth / MB:.0f} MB"


def test_text_chunk_bombs_leave_worker_memory_flat(start, upstream, capsys):
    # 770 KB PNGs whose zTXt/iTXt/iCCP chunks inflate to 768 MiB: served, watermarked,
    # without the chunks ever being inflated (an ImageMagick decode took 3 GB for 1 MB).
    server = start(QCIMAGE_MAX_SOURCE_BYTES=str(MAX_BYTES))
    for _ in range(4):
        check_good_render(server)
    rows = []
    for kind in (b"zTXt", b"iTXt", b"iCCP"):
        body = png_chunk_bomb(kind, BOMB_INFLATED, BOMB_COPIES)
        response, peak, growth = measured(server, lambda: ask(server, upstream, payload(body),
                                                              format="png"))
        check_case(response, Case(body, 200, format="png"))
        rows.append((f"png {kind.decode()} bomb ({len(body) // 1024} KB)", peak, growth))
    report(capsys, "text-chunk bombs", rows)
    for name, peak, growth in rows:
        assert peak < PEAK_LIMIT, f"{name}: peak {peak / MB:.0f} MB"
        assert growth < BOMB_GROWTH_LIMIT, f"{name}: grew {growth / MB:.0f} MB"


def test_largest_allowed_source_for_comparison(start, upstream, capsys):
    # Ask upstream for originals: cR-eVGrQ arrives as its stored 5000 x 3750 PNG (32 MB).
    server = start(QCIMAGE_SOURCE_WIDTH="5000", QCIMAGE_SOURCE_FORMAT="png")
    response, peak, growth = measured(
        server, lambda: get(server, image_path(server, LARGEST_ID, width="960")))
    assert response.status_code == 200, response.text[:300]
    assert MAGIC["webp"](response.content)
    assert upstream.stats()["variants"] == {f"{LARGEST_ID}:5000:png": 1}
    report(capsys, "largest allowed source", [("cR-eVGrQ 5000x3750 PNG, 32 MB", peak, growth)])
    assert peak < PEAK_LIMIT, f"peak {peak / MB:.0f} MB"


def report(capsys, title, rows):
    with capsys.disabled():
        print(f"\n  worker memory: {title}")
        for name, peak, growth in rows:
            print(f"    {name:44} VmHWM {peak / MB:6.1f} MB   growth {growth / MB:6.1f} MB")
