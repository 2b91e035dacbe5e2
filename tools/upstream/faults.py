"""Faults the stand-in can play: their JSON specs, the board of active ones, and the plays."""
from __future__ import annotations

import base64
import itertools
import json
import logging
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tools.samples import find_product
from tools.upstream.catalogue import product_document
from tools.upstream.images import DEFAULT_QUALITY, image_params, png_header

log = logging.getLogger("tools.upstream")

# TEST-NET-3 (RFC 5737): routable-looking but reserved, so following a redirect there fails.
REDIRECT_HOST = "http://203.0.113.1"
PATH_KINDS = {"img", "product", "*"}

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
    # The image as asked for, cut to keep_percent of its bytes. length: "honest" declares
    # the cut length, "short" declares it but sends the whole image after it, "none"
    # declares nothing and closes the connection after the cut.
    "truncate": {"keep_percent": 50, "length": "honest"},
}
_TRUNCATE_LENGTHS = {"honest", "short", "none"}
_SHAPES = {"no_data", "list", "null", "string"}
_NUMBERS = {"ms", "bytes", "status", "size", "chunk", "interval_ms", "keep_percent"}


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
        if mode == "truncate" and (fault.options["length"] not in _TRUNCATE_LENGTHS
                                   or not 0 <= fault.options["keep_percent"] < 100):
            raise ValueError(f"length must be one of {sorted(_TRUNCATE_LENGTHS)} and "
                             "keep_percent below 100")
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


class FaultPlayer:
    """Handler mix-in: plays the matching fault in place of the normal response."""

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
        first = png_header(30000, 30000) + block
        sent = 0
        while sent < size and not self.server.stopping.is_set():
            data = (block if sent else first)[:min(len(block), size - sent)]
            self.wfile.write(data)
            sent += len(data)

    def _fault_truncate(self, kind, opts, fault) -> None:
        if kind == "img":
            params = image_params(self.query.get("width", ""),
                                  self.query.get("format", "").lower(),
                                  self.query.get("quality", ""))
            body, content_type = self.server.store.render(self.query.get("url", ""), *params)
        else:
            body, content_type = self._normal_body(kind), _content_type(kind)
        cut = body[:len(body) * int(opts["keep_percent"]) // 100]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if opts["length"] == "none":
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(cut)))
        self.end_headers()
        # "short": the rest follows where the next response would start; then close.
        self.wfile.write(body if opts["length"] == "short" else cut)
        self.close_connection = True

    def _fault_redirect(self, kind, opts, fault) -> None:
        location = opts["location"] or REDIRECT_HOST + self.path
        self._send(int(opts["status"]), b"", "text/html", {"Location": location})

    def _fault_payload(self, kind, opts, fault) -> None:
        self._send(int(opts["status"]), fault.body, opts["content_type"], opts["headers"])


def _content_type(kind: str) -> str:
    return "image/png" if kind == "img" else "application/json"
