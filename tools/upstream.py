"""Local stand-in for the Doppel upstream: QC product look-ups, re-encoded images, stats, faults.

Used by ``make demo``, the end-to-end tests and the benchmarks, because no machine here
reaches the real upstream::

    python -m tools.upstream --host 127.0.0.1 --port 0 [--samples-dir DIR] [--scale S]
                             [--fault SPEC ...] [--cache-mb 512] [-v]

Once listening it prints exactly one line, ``READY http://HOST:PORT``, to stdout. Logs go to
stderr (only warnings unless ``-v``). SIGTERM / SIGINT stop it cleanly. In-process::

    with UpstreamServer("127.0.0.1", 0, samples_dir) as upstream:
        requests.get(upstream.url + "/img", params={"url": "n4EYdIoE", "width": 960})

Endpoints
---------
``GET /api/v1/products/qcMedia?id=ID&storePlatform=PLATFORM``
    200 ``{"success": true, "data": {...}}``; every string ``image`` field under ``data`` is
    an image id (see ``tools.samples.PRODUCTS``). The platform is matched case-sensitively.
    Unknown product: 404 JSON; missing parameter: 400 JSON.
``GET /img?url=IMAGE_ID&width=W&format=F&quality=Q``
    The stored picture, downscaled to ``width`` (aspect kept, never enlarged), encoded as
    ``format`` (``png``, ``jpeg``/``jpg``, ``webp``; default: the stored format) at
    ``quality`` (1-100, default 90). EXIF (including Orientation) is kept. A PNG asked for at
    its own width is served as stored. Unknown image: 404; bad parameter: 400.
``GET /_stats`` / ``DELETE /_stats``
    Request counts since start or the last reset::

        {"total": 7, "endpoints": {"product": 2, "img": 5},
         "products": {"WEIDIAN/7494645791": 2}, "images": {"n4EYdIoE": 5},
         "variants": {"n4EYdIoE:960:webp": 5}, "statuses": {"200": 7},
         "faults": {"delay": 1}, "renders": 1}

    ``variants`` keys are ``id:width:format`` as requested (empty when absent, format
    lower-cased); ``renders`` counts encodes that missed the output cache. Control
    endpoints (``/_stats``, ``/_faults``) are not counted.
``GET /_faults`` / ``POST /_faults`` / ``DELETE /_faults[?id=N]``
    List, add or clear faults (below).

Faults
------
A fault is a JSON object; ``POST /_faults`` takes one, a list, or ``{"faults": [...]}`` and
appends them (the first matching fault wins), answering ``{"faults": [...]}`` with the ids
assigned. ``--fault SPEC`` takes the same JSON, ``@path`` to a JSON file, or the shorthand
``mode[,key=value...]`` where list values are separated by ``|`` (``status,status=503,
paths=img,count=2``). Common keys:

``mode``   one of the modes below (required)
``paths``  ``["img"]``, ``["product"]`` or ``["*"]`` (default ``["*"]``)
``ids``    only for these image ids (img) or product ids (product); default all
``count``  affect this many matching requests, then remove itself; default forever

Modes and their keys:

``delay``        ``ms`` (1000): wait, then answer normally.
``hang``         never answer; ends when the client gives up, the server stops, or after
                 ``ms`` if given (then the connection is closed without a response).
``reset``        send the headers (full ``Content-Length``) and ``bytes`` (1024) of the
                 body, wait ``ms`` (50), then reset the TCP connection (RST).
``status``       ``status`` (503) with an HTML body; ``retry_after`` adds ``Retry-After``.
``garbage``      200 with junk: non-JSON text for product, ``size`` (2048) random bytes for
                 img; ``content_type`` defaults to what the endpoint normally sends.
``wrong_shape``  200 JSON of the wrong shape: ``shape`` = ``no_data`` (default), ``list``
                 (``data`` is a list of numbers), ``null`` or ``string``.
``html200``      200 ``text/html`` error page (a CDN challenge page).
``endless``      200 that never ends: ``chunk`` bytes (1024) every ``interval_ms`` (100),
                 ``chunked`` true (default) or a huge ``Content-Length``.
``oversize``     200 ``image/png`` body of ``size`` bytes (64 MiB) that starts like a PNG;
                 ``content_length`` false sends it close-delimited without a length.
``redirect``     ``status`` (302) to ``location`` (default ``http://203.0.113.1`` + the
                 request path: TEST-NET-3, must never be contacted).
``payload``      ``status`` (200) with ``content_type`` (application/octet-stream) and the
                 body from ``body_b64`` (base64) or ``file`` (path); ``headers`` adds any.

Example: ``{"mode": "status", "status": 503, "retry_after": 2, "paths": ["img"],
"ids": ["n4EYdIoE"], "count": 3}``.
"""
from __future__ import annotations

import argparse
import base64
import collections
import io
import itertools
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from tools.samples import Product, ensure_samples, find_product

log = logging.getLogger("tools.upstream")

PRODUCT_PATH = "/api/v1/products/qcMedia"
IMAGE_PATH = "/img"
FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITY = 90
# TEST-NET-3 (RFC 5737): routable-looking but reserved, so following a redirect there fails.
REDIRECT_HOST = "http://203.0.113.1"
PATH_KINDS = {"img", "product", "*"}


class BadRequest(ValueError):
    """A parameter the real upstream would refuse."""


# --------------------------------------------------------------------------- images


class LRUBytes:
    """A byte-budgeted LRU of encoded outputs, so repeated requests cost no CPU here."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[tuple, tuple[bytes, str]] = \
            collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: tuple[bytes, str]) -> None:
        with self._lock:
            if len(item[0]) > self.max_bytes:
                return
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._items[key] = item
            self._size += len(item[0])
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted[0])


class ImageStore:
    """Re-encodes the sample files on request, like Doppel's ``/img`` resizer."""

    def __init__(self, paths: dict[str, Path], cache_bytes: int, on_render=lambda: None):
        self.paths = paths
        self.cache = LRUBytes(cache_bytes)
        self._on_render = on_render
        self._inflight: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.sizes: dict[str, tuple[int, int, str]] = {}
        for image_id, path in paths.items():
            with Image.open(path) as im:
                self.sizes[image_id] = (im.width, im.height, im.format.lower())

    def render(self, image_id: str, width: int | None, fmt: str | None,
               quality: int) -> tuple[bytes, str]:
        """Return ``(body, content_type)``; KeyError for an unknown image."""
        src_w, src_h, src_fmt = self.sizes[image_id]
        fmt = fmt or src_fmt
        target_w = min(width or src_w, src_w)
        key = (image_id, target_w, fmt, quality if fmt != "png" else None)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        # Concurrent identical misses encode once: the stand-in must not be the bottleneck.
        with self._guard:
            lock = self._inflight.setdefault(key, threading.Lock())
        try:
            with lock:
                hit = self.cache.get(key)
                if hit is None:
                    hit = self._encode(image_id, target_w, fmt, quality), CONTENT_TYPES[fmt]
                    self.cache.put(key, hit)
                    self._on_render()
                return hit
        finally:
            with self._guard:
                if self._inflight.get(key) is lock:
                    del self._inflight[key]

    def _encode(self, image_id: str, target_w: int, fmt: str, quality: int) -> bytes:
        path = self.paths[image_id]
        src_w, src_h, src_fmt = self.sizes[image_id]
        if fmt == src_fmt == "png" and target_w == src_w:
            return path.read_bytes()
        target = (target_w, max(1, round(src_h * target_w / src_w)))
        with Image.open(path) as im:
            exif = im.info.get("exif")
            if target_w < src_w:
                im.draft("RGB", target)  # JPEG DCT scaling: decode big photos at a fraction
                im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            else:
                im.load()
            if fmt == "jpeg" and im.mode not in ("RGB", "L"):
                im = _flatten(im)
            options = {"exif": exif} if exif else {}
            if fmt == "png":
                options["compress_level"] = 3
            else:
                options["quality"] = quality
            buf = io.BytesIO()
            im.save(buf, PIL_FORMATS[fmt], **options)
            return buf.getvalue()


def _flatten(im: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite on white as image CDNs do."""
    rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


# --------------------------------------------------------------------------- products


def product_document(product: Product) -> dict:
    """The product as Doppel's qcMedia endpoint shapes it (nested, with distractors)."""
    groups = []
    for n, group in enumerate(product.groups, 1):
        media = [{"image": image_id, "type": "photo", "sort": i}
                 for i, image_id in enumerate(group.images)]
        # Videos carry "image": null; parsers must skip non-string image fields.
        media.append({"image": None, "type": "video",
                      "video": f"https://cdn.doppel.example/v/{product.product_id}-{n}.mp4"})
        groups.append({
            "id": f"{product.product_id}-{n}",
            "agent": group.agent,
            "date": group.date,
            "variant": group.variant,
            "note": "Approved by buyer",
            "media": media,
        })
    return {
        "product": {
            "id": product.product_id,
            "storePlatform": product.platform,
            "title": product.title,
            "price": {"amount": product.price_cny, "currency": "CNY"},
            "url": _listing_url(product),
            # An object under "image": not an id, and must not break a recursive scan.
            "image": {"src": f"https://img.doppel.example/p/{product.product_id}.jpg",
                      "width": 800, "height": 800},
            "imageCount": sum(len(g.images) for g in product.groups),
        },
        "qcGroups": groups,
        "meta": {"source": "doppel", "cached": False, "version": "v1"},
    }


def _listing_url(product: Product) -> str:
    return {
        "WEIDIAN": f"https://weidian.com/item.html?itemID={product.product_id}",
        "TAOBAO": f"https://item.taobao.com/item.htm?id={product.product_id}",
        "1688": f"https://detail.1688.com/offer/{product.product_id}.html",
        "TMALL": f"https://detail.tmall.com/item.htm?id={product.product_id}",
    }[product.platform]


# --------------------------------------------------------------------------- stats


class Stats:
    """Thread-safe request counters behind ``/_stats``."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._data = {name: collections.Counter() for name in (
                "endpoints", "products", "images", "variants", "statuses", "faults")}
            self._total = 0
            self._renders = 0

    def count(self, **keys: str) -> None:
        with self._lock:
            if "endpoints" in keys:
                self._total += 1
            for name, key in keys.items():
                self._data[name][key] += 1

    def rendered(self) -> None:
        with self._lock:
            self._renders += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": self._total, "renders": self._renders,
                    **{name: dict(counter) for name, counter in self._data.items()}}


# --------------------------------------------------------------------------- faults


_MODE_DEFAULTS: dict[str, dict] = {
    "delay": {"ms": 1000},
    "hang": {"ms": None},
    "reset": {"bytes": 1024, "ms": 50},
    "status": {"status": 503, "retry_after": None},
    "garbage": {"size": 2048, "content_type": None},
    "wrong_shape": {"shape": "no_data"},
    "html200": {},
    "endless": {"chunk": 1024, "interval_ms": 100, "chunked": True},
    "oversize": {"size": 64 * 1024 * 1024, "content_length": True},
    "redirect": {"status": 302, "location": None},
    "payload": {"status": 200, "content_type": "application/octet-stream",
                "body_b64": None, "file": None, "headers": {}},
}
_SHAPES = {"no_data", "list", "null", "string"}
_NUMBERS = {"ms", "bytes", "status", "size", "chunk", "interval_ms"}


@dataclass
class Fault:
    mode: str
    paths: frozenset[str]
    ids: frozenset[str] | None
    count: int | None
    options: dict
    id: int = 0
    hits: int = 0
    body: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, spec: object) -> Fault:
        """Validate a fault object; ValueError says what is wrong."""
        if not isinstance(spec, dict):
            raise ValueError("a fault must be a JSON object")
        spec = dict(spec)
        mode = spec.pop("mode", None)
        if mode not in _MODE_DEFAULTS:
            raise ValueError(f"mode must be one of {sorted(_MODE_DEFAULTS)}")
        paths = spec.pop("paths", ["*"])
        if isinstance(paths, str):
            paths = [paths]
        if not paths or not set(paths) <= PATH_KINDS:
            raise ValueError('paths must be a list of "img", "product", "*"')
        ids = spec.pop("ids", None)
        if isinstance(ids, str):
            ids = [ids]
        if ids is not None and not all(isinstance(i, str) for i in ids):
            raise ValueError("ids must be a list of strings")
        count = spec.pop("count", None)
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        spec.pop("id", None)
        spec.pop("hits", None)
        unknown = set(spec) - set(_MODE_DEFAULTS[mode])
        if unknown:
            raise ValueError(f"unknown keys for {mode}: {sorted(unknown)}")
        for key in _NUMBERS & set(spec):
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
        if not 100 <= spec.get("status", 200) <= 599:
            raise ValueError("status must be between 100 and 599")
        fault = cls(mode, frozenset(paths), frozenset(ids) if ids is not None else None,
                    count, {**_MODE_DEFAULTS[mode], **spec})
        fault.body = fault._payload_body() if mode == "payload" else None
        if mode == "endless" and fault.options["chunk"] < 1:
            raise ValueError("chunk must be at least 1 (an empty chunk ends the body)")
        if mode == "wrong_shape" and fault.options["shape"] not in _SHAPES:
            raise ValueError(f"shape must be one of {sorted(_SHAPES)}")
        return fault

    def _payload_body(self) -> bytes:
        # Read once when the fault is set, so a bad path fails the POST, not a later request.
        if self.options["body_b64"] is not None:
            try:
                return base64.b64decode(self.options["body_b64"], validate=True)
            except ValueError as exc:
                raise ValueError(f"body_b64 is not base64: {exc}") from None
        if self.options["file"] is not None:
            try:
                return Path(self.options["file"]).read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read file: {exc}") from None
        raise ValueError("payload needs body_b64 or file")

    def matches(self, kind: str, ident: str | None) -> bool:
        if "*" not in self.paths and kind not in self.paths:
            return False
        return self.ids is None or ident in self.ids

    def to_json(self) -> dict:
        return {"id": self.id, "mode": self.mode, "paths": sorted(self.paths),
                "ids": sorted(self.ids) if self.ids is not None else None,
                "count": self.count, "hits": self.hits,
                **{k: v for k, v in self.options.items() if k != "body_b64"}}


def parse_fault_spec(text: str) -> list[Fault]:
    """Parse a ``--fault`` value: JSON, ``@file.json`` or ``mode,key=value,...``."""
    text = text.strip()
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    if text[:1] in "[{":
        return faults_from_json(json.loads(text))
    mode, *pairs = text.split(",")
    spec: dict = {"mode": mode}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {pair!r}")
        spec[key] = _shorthand_value(key, value)
    return [Fault.from_json(spec)]


def _shorthand_value(key: str, value: str):
    if key in ("paths", "ids"):
        return value.split("|")
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value)
    except ValueError:
        return value


def faults_from_json(data: object) -> list[Fault]:
    if isinstance(data, dict) and "faults" in data:
        data = data["faults"]
    items = data if isinstance(data, list) else [data]
    return [Fault.from_json(item) for item in items]


class FaultBoard:
    """The active faults; ``take`` consumes one use of the first that matches."""

    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, faults: list[Fault]) -> None:
        with self._lock:
            for fault in faults:
                fault.id = next(self._ids)
                self._faults.append(fault)

    def clear(self, fault_id: int | None = None) -> None:
        with self._lock:
            self._faults = [f for f in self._faults
                            if fault_id is not None and f.id != fault_id]

    def take(self, kind: str, ident: str | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(kind, ident):
                    fault.hits += 1
                    if fault.count is not None and fault.hits >= fault.count:
                        self._faults.remove(fault)
                    return fault
            return None

    def to_json(self) -> dict:
        with self._lock:
            return {"faults": [f.to_json() for f in self._faults]}


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections under benchmark concurrency.
    request_queue_size = 256

    def __init__(self, address, store: ImageStore, stats: Stats, faults: FaultBoard,
                 verbose: bool):
        self.store, self.stats, self.faults, self.verbose = store, stats, faults, verbose
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def finish_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive, hang or endless connections."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # Client disconnects are routine here (timeouts, resets are the point of the faults).
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        log.exception("error handling request from %s", client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK
    # would add ~40 ms to every response.
    disable_nagle_algorithm = True
    server_version = "doppel-standin/1.0"
    sys_version = ""
    # Idle keep-alive connections and stalled writes give up after this many seconds.
    timeout = 120
    server: _Server
    # Set per request in _dispatch; defaults cover send_error() on malformed requests.
    _kind: str | None = None
    _responded = False

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format, *args):
        if self.server.verbose:
            log.info("%s %s", self.address_string(), format % args)

    def send_response(self, code, message=None):
        self._responded = True
        if self._kind is not None:
            self.server.stats.count(statuses=str(code))
        super().send_response(code, message)

    # -- dispatch

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._kind = None
        self._responded = False
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True  # without a usable length the framing is lost
            self._json(400, {"success": False, "error": "bad_request",
                             "message": "invalid Content-Length"})
            return
        routes = {
            PRODUCT_PATH: {"GET": self._product},
            IMAGE_PATH: {"GET": self._image},
            "/_stats": {"GET": self._get_stats, "DELETE": self._reset_stats},
            "/_faults": {"GET": self._get_faults, "POST": lambda: self._add_faults(body),
                         "DELETE": self._clear_faults},
        }
        handlers = routes.get(url.path)
        try:
            if handlers is None:
                self._kind = "other"
                self.server.stats.count(endpoints="other")
                self._json(404, {"success": False, "error": "not_found",
                                 "message": "no such path"})
            elif method not in handlers:
                self._json(405, {"success": False, "error": "method_not_allowed"},
                           {"Allow": ", ".join(handlers)})
            else:
                handlers[method]()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("stand-in bug on %s %s", method, self.path)
            if not self._responded:
                self._json(500, {"success": False, "error": "internal"})
            self.close_connection = True

    def _read_body(self) -> bytes:
        # Always drain a request body, or its bytes would be parsed as the next request.
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    # -- responses

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    # -- Doppel endpoints

    def _product(self) -> None:
        self._kind = "product"
        product_id = self.query.get("id", "")
        platform = self.query.get("storePlatform", "")
        self.server.stats.count(endpoints="product", products=f"{platform}/{product_id}")
        if self._apply_fault("product", product_id):
            return
        if not product_id or not platform:
            self._json(400, {"success": False, "error": "bad_request",
                             "message": "id and storePlatform are required"})
            return
        product = find_product(platform, product_id)
        if product is None:
            self._json(404, {"success": False, "error": "PRODUCT_NOT_FOUND",
                             "message": "No QC media found for this product", "data": None})
            return
        self._json(200, {"success": True, "data": product_document(product)})

    def _image(self) -> None:
        self._kind = "img"
        image_id = self.query.get("url", "")
        width = self.query.get("width", "")
        fmt = self.query.get("format", "").lower()
        self.server.stats.count(endpoints="img", images=image_id,
                                variants=f"{image_id}:{width}:{fmt}")
        if self._apply_fault("img", image_id):
            return
        try:
            params = _image_params(width, fmt, self.query.get("quality", ""))
        except BadRequest as exc:
            self._json(400, {"success": False, "error": "bad_request", "message": str(exc)})
            return
        if image_id not in self.server.store.sizes:
            self._json(404, {"success": False, "error": "IMAGE_NOT_FOUND"})
            return
        body, content_type = self.server.store.render(image_id, *params)
        self._send(200, body, content_type, {"Cache-Control": "public, max-age=31536000"})

    # -- instrumentation

    def _get_stats(self) -> None:
        self._json(200, self.server.stats.snapshot())

    def _reset_stats(self) -> None:
        self.server.stats.reset()
        self._json(200, self.server.stats.snapshot())

    def _get_faults(self) -> None:
        self._json(200, self.server.faults.to_json())

    def _add_faults(self, body: bytes) -> None:
        try:
            faults = faults_from_json(json.loads(body or b"null"))
        except ValueError as exc:
            self._json(400, {"success": False, "error": "bad_fault", "message": str(exc)})
            return
        self.server.faults.add(faults)
        self._json(200, self.server.faults.to_json())

    def _clear_faults(self) -> None:
        fault_id = self.query.get("id")
        if fault_id is not None and not fault_id.isdigit():
            self._json(400, {"success": False, "error": "bad_request",
                             "message": "id must be an integer"})
            return
        self.server.faults.clear(int(fault_id) if fault_id is not None else None)
        self._json(200, self.server.faults.to_json())

    # -- faults

    def _apply_fault(self, kind: str, ident: str) -> bool:
        """Play the matching fault; True when it produced the whole response."""
        fault = self.server.faults.take(kind, ident)
        if fault is None:
            return False
        self.server.stats.count(faults=fault.mode)
        log.info("fault %s on %s", fault.mode, self.path)
        play = getattr(self, f"_fault_{fault.mode}")
        return play(kind, fault.options, fault) is not False

    def _fault_delay(self, kind, opts, fault) -> bool:
        self.server.stopping.wait(opts["ms"] / 1000)
        return False

    def _fault_hang(self, kind, opts, fault) -> None:
        limit = None if opts["ms"] is None else opts["ms"] / 1000
        waited = 0.0
        while not self._client_gone() and (limit is None or waited < limit):
            if self.server.stopping.wait(0.05):
                break
            waited += 0.05
        self.close_connection = True

    def _client_gone(self) -> bool:
        # A non-blocking peek reads b"" only once the client has closed its end.
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _fault_reset(self, kind, opts, fault) -> None:
        body = self._normal_body(kind)
        self.send_response(200)
        self.send_header("Content-Type", _content_type(kind))
        self.send_header("Content-Length", str(max(len(body), opts["bytes"] + 1)))
        self.end_headers()
        self.wfile.write(body[:opts["bytes"]])
        self.server.stopping.wait(opts["ms"] / 1000)
        # SO_LINGER 0 makes close() send RST instead of FIN: a reset, not a clean EOF.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _normal_body(self, kind: str) -> bytes:
        if kind == "img":
            image_id = self.query.get("url", "")
            if image_id in self.server.store.sizes:
                return self.server.store.render(image_id, 256, "png", DEFAULT_QUALITY)[0]
            return b"\x89PNG\r\n\x1a\n" + bytes(4096)
        product = find_product(self.query.get("storePlatform", ""), self.query.get("id", ""))
        doc = product_document(product) if product else {"product": None, "qcGroups": []}
        return json.dumps({"success": True, "data": doc}).encode() + b" " * 2048

    def _fault_status(self, kind, opts, fault) -> None:
        status = int(opts["status"])
        headers = {}
        if opts["retry_after"] is not None:
            headers["Retry-After"] = opts["retry_after"]
        body = (f"<html><head><title>{status} {self.responses.get(status, ('Error',))[0]}"
                f"</title></head><body><center><h1>{status}</h1></center><hr>"
                f"<center>nginx</center></body></html>").encode()
        self._send(status, body, "text/html", headers)

    def _fault_garbage(self, kind, opts, fault) -> None:
        content_type = opts["content_type"] or _content_type(kind)
        if kind == "img":
            body = random.Random(fault.id).randbytes(opts["size"])
        else:
            body = b"<?xml version='1.0'?>\x00{{{ upstream glitch: not json \xff\xfe"
        self._send(200, body, content_type)

    def _fault_wrong_shape(self, kind, opts, fault) -> None:
        payload = {
            "no_data": {"success": True, "result": {"items": [], "image": "n4EYdIoE"}},
            "list": {"success": True, "data": [1, 2, 3]},
            "null": {"success": True, "data": None},
            "string": {"success": True, "data": "n4EYdIoE"},
        }[opts["shape"]]
        self._json(200, payload)

    def _fault_html200(self, kind, opts, fault) -> None:
        body = (b"<!DOCTYPE html><html lang=en><head><title>Just a moment...</title></head>"
                b"<body><h1>Checking your browser before accessing doppel.fit</h1>"
                b"<p>Please enable JavaScript and cookies to continue.</p></body></html>")
        self._send(200, body, "text/html; charset=UTF-8")

    def _fault_endless(self, kind, opts, fault) -> None:
        chunk = (b"\x89PNG\r\n\x1a\n" if kind == "img" else b'{"data": {"qcGroups": [')
        filler = b" " if kind == "product" else b"\x00"
        self.send_response(200)
        self.send_header("Content-Type", _content_type(kind))
        if opts["chunked"]:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(10 ** 12))
        self.end_headers()
        self.close_connection = True
        while not self.server.stopping.is_set():
            data = chunk.ljust(opts["chunk"], filler)
            chunk = b""
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if opts["chunked"] else data)
            self.server.stopping.wait(opts["interval_ms"] / 1000)

    def _fault_oversize(self, kind, opts, fault) -> None:
        size = int(opts["size"])
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if opts["content_length"]:
            self.send_header("Content-Length", str(size))
        else:
            # HTTP/1.1 without a length or chunking: the body ends when the connection closes.
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        block = bytes(64 * 1024)
        first = _png_header(30000, 30000) + block
        sent = 0
        while sent < size and not self.server.stopping.is_set():
            data = (block if sent else first)[:min(len(block), size - sent)]
            self.wfile.write(data)
            sent += len(data)

    def _fault_redirect(self, kind, opts, fault) -> None:
        location = opts["location"] or REDIRECT_HOST + self.path
        self._send(int(opts["status"]), b"", "text/html", {"Location": location})

    def _fault_payload(self, kind, opts, fault) -> None:
        self._send(int(opts["status"]), fault.body, opts["content_type"], opts["headers"])


def _content_type(kind: str) -> str:
    return "image/png" if kind == "img" else "application/json"


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR, so sniffers believe what follows is an image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _image_params(width: str, fmt: str, quality: str) -> tuple[int | None, str | None, int]:
    if width and (not width.isdigit() or int(width) < 1):
        raise BadRequest("width must be a positive integer")
    if fmt and fmt not in FORMATS:
        raise BadRequest(f"unsupported format {fmt!r}")
    if quality and (not quality.isdigit() or not 1 <= int(quality) <= 100):
        raise BadRequest("quality must be an integer between 1 and 100")
    return (int(width) if width else None, FORMATS.get(fmt),
            int(quality) if quality else DEFAULT_QUALITY)


# --------------------------------------------------------------------------- lifecycle


class UpstreamServer:
    """The stand-in in a background thread: ``start()``, ``url``, ``stop()`` (or ``with``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 samples_dir: str | os.PathLike | None = None, *, scale: float = 1.0,
                 faults: list[Fault] | None = None, cache_bytes: int = 512 * 1024 * 1024,
                 verbose: bool = False):
        self.stats = Stats()
        self.faults = FaultBoard()
        self.faults.add(list(faults or []))
        paths = ensure_samples(samples_dir, scale=scale)
        store = ImageStore(paths, cache_bytes, on_render=self.stats.rendered)
        self._server = _Server((host, port), store, self.stats, self.faults, verbose)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> UpstreamServer:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="upstream-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--samples-dir", type=Path, default=None,
                        help="where sample photos are generated and reused "
                             "(default tools/.samples)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="sample size factor; 0.1 gives small, fast samples")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="JSON fault, @file.json, or mode,key=value,...; repeatable")
    parser.add_argument("--cache-mb", type=int, default=512)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        faults = [f for spec in args.fault for f in parse_fault_spec(spec)]
    except (ValueError, OSError) as exc:
        parser.error(f"--fault: {exc}")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = UpstreamServer(args.host, args.port, args.samples_dir, scale=args.scale,
                            faults=faults, cache_bytes=args.cache_mb * 1024 * 1024,
                            verbose=args.verbose)
    server.start()
    print(f"READY {server.url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
