"""Operators' view under real gunicorn: JSON logs, request ids, metrics summed over workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.test_metrics import sample

pytestmark = pytest.mark.e2e
LOOKUP = "/api/qc-images?id=7494645791&storePlatform=WEIDIAN"


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def thread_nices(pid: int) -> set[int]:
    """The nice values of a process's threads (field 19 of /proc/PID/task/TID/stat)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            values.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
        except (OSError, IndexError, ValueError):
            pass  # the thread ended meanwhile
    return values


def test_every_log_line_is_json_with_request_fields(qcimage_server):
    server = qcimage_server(workers=2)
    headers = {"X-API-Key": server.api_key, "X-Request-ID": "ops-test-1"}
    body = requests.get(server.url + LOOKUP, headers=headers, timeout=30).json()
    image_url = body["images"][0]["watermarked"]
    requests.get(image_url, timeout=60)
    requests.get(server.url + "/api/qc-images?id=1", headers={"X-API-Key": "bad"}, timeout=10)
    # The worker that rendered did so on a thread niced below its request threads.
    nices = [thread_nices(pid) for pid in server.worker_pids()]
    assert any(10 in n and 0 in n for n in nices), nices
    time.sleep(0.5)
    server.stop()
    text = server.log_text()
    for line in text.splitlines():
        if line.strip():
            json.loads(line)  # gunicorn's own lines included: one format for all
    records = json_lines(text)
    lookup = next(r for r in records if r.get("logger") == "qcimage.access"
                  and r.get("request_id") == "ops-test-1")
    for field in ("method", "route", "status", "duration_ms", "bytes", "client_ip", "api_key",
                  "cache", "upstream_ms", "render_ms", "request_id"):
        assert field in lookup
    assert lookup["api_key"] == "e2e" and lookup["status"] == 200
    image = next(r for r in records if r.get("logger") == "qcimage.access"
                 and r.get("route") == "/api/image")
    assert image["cache"] == "miss" and image["render_ms"] > 0 and image["upstream_ms"] > 0
    # One access line per request: gunicorn's own is off unless asked for (below).
    assert [r["logger"] for r in records if r.get("request_id") == "ops-test-1"
            and r.get("logger", "").endswith(".access")] == ["qcimage.access"]
    assert lookup["user_agent"].startswith("python-requests/")
    # Secrets never reach the logs: neither the key nor any signature.
    sig = image_url.rsplit("sig=", 1)[1]
    assert server.api_key not in text and sig not in text and "bad" not in json.dumps(
        [r.get("api_key") for r in records])


def test_gunicorn_access_lines_when_asked_for_are_json_without_the_query(qcimage_server):
    server = qcimage_server(workers=1, QCIMAGE_ACCESS_LOG="-")
    requests.get(server.url + LOOKUP, timeout=30,
                 headers={"X-API-Key": server.api_key, "X-Request-ID": "ops-test-2"})
    time.sleep(0.5)
    server.stop()
    line = next(r for r in json_lines(server.log_text())
                if r.get("logger") == "gunicorn.access" and r.get("request_id") == "ops-test-2")
    assert line["path"] == "/api/qc-images" and line["status"] == 200


def test_request_id_round_trip_and_generation(qcimage_server):
    server = qcimage_server(workers=1)
    kept = requests.get(server.url + "/nope", headers={"X-Request-ID": "abc.123"}, timeout=10)
    assert kept.headers["X-Request-ID"] == "abc.123"
    assert kept.json()["requestId"] == "abc.123"
    made = requests.get(server.url + "/nope", headers={"X-Request-ID": "bad id!"}, timeout=10)
    assert made.headers["X-Request-ID"] != "bad id!"
    assert made.json()["requestId"] == made.headers["X-Request-ID"]


def test_metrics_sum_requests_over_both_workers(qcimage_server):
    server = qcimage_server(workers=2)
    total = 0
    # Whichever worker accepts first answers; go on until both have answered some.
    while total < 400:
        for _ in range(20):
            requests.get(server.url + "/nope", timeout=10, headers={"Connection": "close"})
        total += 20
        served_by = {r["pid"] for r in json_lines(server.log_text())
                     if r.get("logger") == "qcimage.access" and r.get("path") == "/nope"}
        if len(served_by) == 2:
            break
    assert len(served_by) == 2, "one worker answered everything; cannot test the sum"
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert sample(text, "qcimage_http_requests_total", route="unmatched",
                  status="404") == total
    assert sample(text, "qcimage_http_requests_in_flight") >= 1  # the scrape itself


def test_metrics_are_refused_to_other_addresses_even_through_a_proxy(qcimage_server):
    server = qcimage_server(workers=1, QCIMAGE_TRUSTED_PROXIES="1")
    refused = requests.get(server.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.7"},
                           timeout=10)
    assert refused.status_code == 403
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 200
