"""Helpers for the resilience tests: timed calls, worker pinning, log reading, fake hosts."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import requests

PRODUCT_ID = "7494645791"
PLATFORM = "WEIDIAN"
OTHER_PRODUCT = ("684012345678", "TAOBAO")
# Short deadlines keep the suite fast; WORKER_TIMEOUT still passes config's own check
# (deadline + read timeout + 3 s < worker timeout).
FAST_ENV = {
    "QCIMAGE_UPSTREAM_CONNECT_TIMEOUT": "1",
    "QCIMAGE_UPSTREAM_READ_TIMEOUT": "1",
    "QCIMAGE_LOOKUP_TIMEOUT": "2",
    "QCIMAGE_IMAGE_FETCH_TIMEOUT": "2",
    "QCIMAGE_WORKER_TIMEOUT": "10",
    "QCIMAGE_BREAKER_RESET_TIMEOUT": "2",
    # Tests that do not study the breaker must not trip it with their own failures.
    "QCIMAGE_BREAKER_FAIL_MAX": "1000",
}
# Pin holds a whole sync worker; a gthread worker (the default) answers other connections
# on its other threads. Tests that visit each worker in turn (per-worker state: breaker,
# Redis fallback) therefore run sync workers; the gthread model has test_worker_model.py.
SYNC_ENV = {"QCIMAGE_THREADS": "1"}
# Machines are noisy: added to every "within N seconds" bound.
MARGIN = 2.5
# What must never reach a client: upstream's bodies and our internals.
LEAKS = ("<html", "<!DOCTYPE", "nginx", "Just a moment", "upstream glitch", "Traceback",
         "/work/", ".py")


def timed(method, *args, **kwargs):
    """(response, seconds) of one ``requests`` call."""
    kwargs.setdefault("timeout", 60)
    started = time.monotonic()
    response = method(*args, **kwargs)
    return response, time.monotonic() - started


def look_up(server, product_id=PRODUCT_ID, platform=PLATFORM, **params):
    """GET /api/qc-images with the server's key: (response, seconds)."""
    return timed(requests.get, f"{server.url}/api/qc-images",
                 params={"id": product_id, "storePlatform": platform, **params},
                 headers={"X-API-Key": server.api_key})


def image_urls(server, product_id=PRODUCT_ID, platform=PLATFORM):
    """{image id: signed default-width URL} from a successful look-up."""
    response, _ = look_up(server, product_id, platform)
    assert response.status_code == 200, response.text
    return {image["original"]: image["watermarked"] for image in response.json()["images"]}


def srcset_url(server, image_id, width, product_id=PRODUCT_ID, platform=PLATFORM):
    """The signed URL of ``image_id`` at ``width`` from the look-up's srcset."""
    response, _ = look_up(server, product_id, platform)
    assert response.status_code == 200, response.text
    entry = next(i for i in response.json()["images"] if i["original"] == image_id)
    for candidate in entry["srcset"].split(","):
        url, descriptor = candidate.strip().rsplit(" ", 1)
        if descriptor == f"{width}w":
            return url
    raise AssertionError(f"no {width}w candidate in {entry['srcset']}")


def assert_error(response, status, code=None):
    """The contract's JSON error shape, with a message that leaks nothing; returns the body."""
    assert response.status_code == status, (
        f"expected {status} {code or ''}, got {response.status_code}: {response.text[:300]}")
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["success"] is False, body
    if code is not None:
        assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert body["requestId"] == response.headers["X-Request-ID"], body
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text)
    return body


def log_records(server):
    """Every JSON line of the gunicorn log (the app's and gunicorn's own)."""
    records = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def worker_pid(server, request_id, timeout=5.0):
    """The pid of the worker that logged the access line of ``request_id``."""
    deadline = time.monotonic() + timeout
    while True:
        for record in log_records(server):
            if record.get("logger") == "qcimage.access" and record.get("request_id") == request_id:
                return record["pid"]
        if time.monotonic() > deadline:
            raise AssertionError(f"no access log line for request {request_id}")
        time.sleep(0.05)


def served_by(server, response):
    return worker_pid(server, response.headers["X-Request-ID"])


class Pin:
    """Hold one sync worker with a half-sent request, so every other request goes elsewhere.

    Gunicorn's sync worker reads a request without a socket timeout, so the worker that
    accepted this connection serves nothing else until ``release()``. Keep pins shorter
    than QCIMAGE_WORKER_TIMEOUT or the arbiter kills the pinned worker.
    """

    def __init__(self, server):
        self.server = server
        self.request_id = "pin-" + uuid.uuid4().hex[:12]
        self.pid = None
        host, port = server.url.rsplit("/", 1)[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(b"GET /health HTTP/1.1\r\nHost: qcimage\r\n"
                          b"X-Request-ID: " + self.request_id.encode() + b"\r\n")
        time.sleep(0.3)  # an idle worker's select() wakes at once; this is ample

    def release(self):
        self.sock.sendall(b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := self.sock.recv(65536):
            answer += chunk
        self.sock.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        self.pid = worker_pid(self.server, self.request_id)
        return self.pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def on_each_worker(server):
    """Iterate twice: requests in the first pass reach one worker, in the second the other.

    Yields the pin holding the worker that is *not* serving; its ``pid`` is known once
    the pass is over.
    """
    first = Pin(server)
    try:
        yield first
        # The first worker is still held, so this pin lands on the one that just served.
        second = Pin(server)
    finally:
        first.release()
    try:
        yield second
    finally:
        second.release()


class Listener:
    """A TCP port that counts the connections it gets (a host that must never be contacted)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


class DripServer:
    """An upstream that answers 200 with an honest Content-Length, then drips the body.

    Every socket read succeeds within the read timeout, so only a real total deadline
    stops it. The stand-in cannot do this: its ``endless`` mode is chunked or declares
    a length over every byte cap.
    """

    def __init__(self, length=200_000, piece=100, interval=0.2, duration=30.0):
        self.length, self.piece, self.interval, self.duration = length, piece, interval, duration
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.requests += 1
            kind = "image/png" if b" /img" in request.split(b"\r\n", 1)[0] else "application/json"
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {self.length}\r\nConnection: close\r\n\r\n")
            try:
                conn.sendall(head.encode())
                started = time.monotonic()
                while time.monotonic() - started < self.duration:
                    conn.sendall(b" " * self.piece)
                    if self._stop.wait(self.interval):
                        return
            except OSError:
                return

    def close(self):
        self._stop.set()
        self.sock.close()


def wait_until(predicate, timeout, interval=0.1, message="condition"):
    """Poll ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout}s")
        time.sleep(interval)
