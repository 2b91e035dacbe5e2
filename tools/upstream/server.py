"""The stand-in's HTTP server: routing, Doppel's two endpoints, stats, and its lifecycle."""
from __future__ import annotations

import collections
import json
import logging
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tools.samples import ensure_samples, find_product
from tools.upstream.catalogue import product_document
from tools.upstream.conditions import Conditions, Network
from tools.upstream.faults import Fault, FaultBoard, FaultPlayer, faults_from_json
from tools.upstream.images import BadRequest, ImageStore, image_params

log = logging.getLogger("tools.upstream")

PRODUCT_PATH = "/api/v1/products/qcMedia"
IMAGE_PATH = "/img"
# Under a bandwidth cap, bodies leave in pieces this big, each when the cap allows it.
_PACE_CHUNK = 16 * 1024


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections under benchmark concurrency.
    request_queue_size = 256

    def __init__(self, address, store: ImageStore, stats: Stats, faults: FaultBoard,
                 network: Network, verbose: bool):
        self.store, self.stats, self.faults, self.verbose = store, stats, faults, verbose
        self.network = network
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


class Handler(FaultPlayer, BaseHTTPRequestHandler):
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
            "/_conditions": {"GET": self._get_conditions,
                             "POST": lambda: self._set_conditions(body),
                             "DELETE": lambda: self._set_conditions(b"{}")},
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
            elif url.path in (PRODUCT_PATH, IMAGE_PATH):
                self._far_away(handlers[method])
            else:
                handlers[method]()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("stand-in bug on %s %s", method, self.path)
            if not self._responded:
                self._json(500, {"success": False, "error": "internal"})
            self.close_connection = True

    def _far_away(self, handler) -> None:
        """Run a Doppel endpoint under the network conditions, counted while in flight."""
        network = self.server.network
        network.enter(self.server.stopping)
        try:
            network.wait_latency("img" if handler == self._image else "product",
                                 self.server.stopping)
            handler()
        finally:
            network.leave()

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
        if self.server.network.conditions.bandwidth is None:
            self.wfile.write(body)
            return
        for start in range(0, len(body), _PACE_CHUNK):
            self.server.network.pace(len(body[start:start + _PACE_CHUNK]))
            self.wfile.write(body[start:start + _PACE_CHUNK])

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
            params = image_params(width, fmt, self.query.get("quality", ""))
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
        self._json(200, {**self.server.stats.snapshot(), **self.server.network.snapshot()})

    def _reset_stats(self) -> None:
        self.server.stats.reset()
        self.server.network.reset_peak()
        self._get_stats()

    def _get_conditions(self) -> None:
        self._json(200, self.server.network.conditions.to_json())

    def _set_conditions(self, body: bytes) -> None:
        try:
            conditions = Conditions.from_json(json.loads(body or b"null"))
        except ValueError as exc:
            self._json(400, {"success": False, "error": "bad_conditions", "message": str(exc)})
            return
        self.server.network.update(conditions)
        self._get_conditions()

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


class UpstreamServer:
    """The stand-in in a background thread: ``start()``, ``url``, ``stop()`` (or ``with``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 samples_dir: str | os.PathLike | None = None, *, scale: float = 1.0,
                 faults: list[Fault] | None = None, cache_bytes: int = 512 * 1024 * 1024,
                 conditions: Conditions | None = None, verbose: bool = False):
        self.stats = Stats()
        self.network = Network(conditions)
        self.faults = FaultBoard()
        self.faults.add(list(faults or []))
        paths = ensure_samples(samples_dir, scale=scale)
        store = ImageStore(paths, cache_bytes, on_render=self.stats.rendered)
        self._server = _Server((host, port), store, self.stats, self.faults, self.network,
                               verbose)
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
