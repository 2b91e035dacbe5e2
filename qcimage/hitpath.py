"""The lean path: what a busy box mostly answers, answered ahead of Flask.

That is cache hits and 304s of ``GET /api/image``, the misses its full render queue
refuses (503 ``overloaded``), and look-ups (``GET /api/qc-images``) the look-up cache
answers. Through Flask most of their CPU went to the machinery around the view (request
context, Flask-Limiter resolving its limits, response finalisation), not to the answer.

Here such a request takes the same steps as its view, through the same code
(``images.prepare`` / ``products.prepare`` and ``products.answer``, the caches, the API
keys, Flask-Limiter's own strategy, storage and bucket, the app's access line and
metrics) and gets the same response (Talisman's headers are asked of Talisman once;
JSON goes through the app's JSON provider). Anything else, an error of any kind
included, goes on to Flask untouched, which answers it as it always did: a request is
counted by the rate limit once, on whichever path answers it.

Left to Flask: requests with an ``Origin`` (CORS), tenants with several limits, a limiter
whose storage is down (Flask-Limiter's fallback), plain HTTP when HTTPS is forced.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from flask import Flask
from limits import parse_many
from limits.errors import StorageError
from redis.exceptions import RedisError
from werkzeug.datastructures import ETags, MIMEAccept, MultiDict
from werkzeug.http import HTTP_STATUS_CODES, parse_accept_header, parse_etags

from . import images, metrics, products
from .auth import RESOLVED_KEY, key_in, key_in_query
from .errors import error_body, log_service_error
from .extensions import limiter, talisman
from .logs import record_request, request_id
from .recent import Recent
from .services.signing import IMAGE_PATH

if TYPE_CHECKING:
    from limits import RateLimitItem

    from .wiring import Services

log = logging.getLogger(__name__)
# Flask-Limiter's scopes: the images blueprint's limit is per endpoint, the look-ups'
# is shared by its blueprint under one name.
_IMAGE_SCOPE = f"{images.bp.name}.{images.image.__name__}"
_LOOKUP_SCOPE = "lookup"
_NO_ETAGS = ETags()
_EMPTY_ACCEPT = MIMEAccept()


# How the caches and the limiter's storage fail when what is behind them is unreachable.
_BACKING_FAILURES = (RedisError, OSError, sqlite3.Error, StorageError)


class NotPlain(Exception):
    """This request is for Flask to answer."""


class Answer:
    """What the lean path answers: status, body, headers, and the access line's extras."""

    def __init__(self, status: int, data: bytes, headers: dict[str, str], *, tenant: str,
                 cache: str | None, api_key: str | None = None):
        self.status, self.data, self.headers = status, data, headers
        self.tenant, self.cache, self.api_key = tenant, cache, api_key


class HitPath:
    """WSGI middleware around the Flask app's own ``wsgi_app``, inside the proxy fix."""

    def __init__(self, app: Flask, wsgi_app: Callable):
        self.app = app
        self.next = wsgi_app
        self.services: Services = app.extensions["qcimage"]
        self.force_https = self.services.settings.force_https
        # {is https: {name: value}}: what Talisman adds to every response of this app.
        self.security = {secure: _talisman_headers(app, secure) for secure in (False, True)}
        self._limits: dict[str, tuple[RateLimitItem, ...]] = {}
        # As many as products.answer keeps bodies: only bodies still kept are met again.
        self._encoded: Recent[tuple[dict, bytes, str]] = Recent(256)
        self._routes = {IMAGE_PATH: self._image, products.LOOKUP_PATH: self._lookup}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        route = self._routes.get(environ.get("PATH_INFO"))
        if (route is None or environ.get("REQUEST_METHOD") not in ("GET", "HEAD")
                or "HTTP_ORIGIN" in environ):
            return self.next(environ, start_response)
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        try:
            secure = (environ.get("wsgi.url_scheme") == "https"
                      or environ.get("HTTP_X_FORWARDED_PROTO", "http") == "https")
            if self.force_https and not secure:
                raise NotPlain  # Talisman redirects it
            answer = route(environ)
            status, headers, body = self._respond(environ, started, secure, answer)
        except (NotPlain, *_BACKING_FAILURES):
            # A backing service down (Redis, the cache folder): Flask meets it too and
            # degrades as designed, logging the outage once; nothing to add here.
            status = None
        except Exception:  # a bug here must cost speed, never an answer
            log.exception("lean path failed; Flask answers this request")
            status = None
        finally:
            metrics.IN_FLIGHT.dec()
        if status is None:
            return self.next(environ, start_response)
        start_response(status, headers)
        return body

    def _image(self, environ: dict) -> Answer:
        try:
            ask = images.prepare(self.services, partial(_query, environ),
                                 images.raw_path(environ), environ.get("QUERY_STRING", ""),
                                 environ.get("HTTP_REFERER"), partial(_accept, environ))
        except Exception as error:  # refused: Flask says why, in its own words
            raise NotPlain from error
        etags = parse_etags(environ["HTTP_IF_NONE_MATCH"]) if (
            "HTTP_IF_NONE_MATCH" in environ) else _NO_ETAGS
        entry = refusal = None
        if not ask.not_modified(etags):
            renderer = self.services.renderer
            entry = renderer.cached(ask.job)
            if entry is None:
                # A miss: Flask renders it, unless the worker's queue would refuse it
                # anyway. Then it is refused here, at a fraction of the CPU, which is what
                # a box shedding misses is short of.
                if not renderer.slots.full():
                    raise NotPlain
                refusal = renderer.slots.overloaded()
        tenant = ask.tenant
        limit = self._take_limit(tenant.image_limit, _IMAGE_SCOPE,
                                 images.rate_limit_key(tenant, _client_ip(environ)))
        if refusal is not None:
            log_service_error(refusal)
            data, content_type = self._json(error_body(refusal.code, refusal.message,
                                                       _request_id(environ)))
            return Answer(refusal.status, data, {
                **refusal.headers, "Content-Type": content_type,
                "Content-Length": str(len(data)), **limit, "Cache-Control": "no-store"},
                tenant=tenant.name, cache=None)
        if entry is None:
            return Answer(304, b"", {**ask.headers, **limit}, tenant=tenant.name,
                          cache="revalidated")
        return Answer(200, entry.data, {
            **ask.headers, **limit, "X-Cache": "HIT", "Content-Type": _content_type(entry.mime),
            "Content-Length": str(len(entry.data))}, tenant=tenant.name, cache="hit")

    def _lookup(self, environ: dict) -> Answer:
        query = _query(environ)
        key = key_in(environ.get("HTTP_X_API_KEY"), environ.get("HTTP_AUTHORIZATION"))
        if key is None or key_in_query(query):
            raise NotPlain  # 400 / 401: Flask says why
        resolved = environ[RESOLVED_KEY] = self.services.settings.tenants.resolve_key(key)
        if resolved is None:
            raise NotPlain  # 403
        tenant, key_name = resolved
        lookup = self.services.lookup
        try:
            ask = products.prepare(self.services, tenant, lambda: query,
                                   environ.get("QUERY_STRING", ""))
        except Exception as error:
            raise NotPlain from error
        ids = lookup.cached_image_ids(ask.product, ask.platform)
        if not ids:
            raise NotPlain  # not cached (or nothing to show): Flask asks upstream
        body, headers = products.answer(self.services, tenant, ask, ids, "hit")
        limit = self._take_limit(tenant.lookup_limit, _LOOKUP_SCOPE,
                                 products.rate_limit_key(tenant, key_name))
        lookup.count_hit(tenant.name)
        # products.answer gives the same body object for the same inputs: encode it once.
        encoded = self._encoded.get(id(body))
        if encoded is None or encoded[0] is not body:
            encoded = (body, *self._json(body))
            if len(body["images"]) <= products.MEMO_MAX_IMAGES:  # the bodies answer keeps
                self._encoded.put(id(body), encoded)  # holding body: its id stays its own
        _, data, content_type = encoded
        return Answer(200, data, {"Content-Type": content_type,
                                  "Content-Length": str(len(data)), **headers, **limit},
                      tenant=tenant.name, cache="hit", api_key=key_name)

    def _respond(self, environ: dict, started: float, secure: bool, answer: Answer):
        headers = answer.headers
        # Talisman sets its headers over the view's (X-Content-Type-Options is in both).
        headers.update(self.security[secure])
        rid = headers["X-Request-ID"] = _request_id(environ)
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"]
        record_request({
            "method": method, "route": path, "path": path, "status": answer.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "bytes": len(answer.data), "client_ip": _client_ip(environ),
            "user_agent": environ.get("HTTP_USER_AGENT"), "tenant": answer.tenant,
            "api_key": answer.api_key, "cache": answer.cache, "upstream_ms": None,
            "render_ms": None, "request_id": rid,
        })
        body = [answer.data] if answer.data and method != "HEAD" else []
        status = f"{answer.status} {HTTP_STATUS_CODES[answer.status].upper()}"
        return status, list(headers.items()), body

    def _json(self, body: dict) -> tuple[bytes, str]:
        """As the app's JSON provider writes ``body`` (what a view returning it sends)."""
        response = self.app.json.response(body)
        return response.get_data(), response.content_type

    def _take_limit(self, limit: str, scope: str, key: str) -> dict[str, str]:
        """Count the request in the bucket Flask-Limiter uses for it; the X-RateLimit-*
        headers it would send. NotPlain when over the limit (Flask answers the 429
        without counting again) or when Flask-Limiter must handle its storage."""
        items = self._limits.get(limit)
        if items is None:
            items = self._limits[limit] = tuple(parse_many(limit)) if limit else ()
        if not items or not limiter.enabled:
            return {}
        if len(items) > 1 or getattr(limiter, "_storage_dead", False):
            raise NotPlain
        item, strategy = items[0], limiter.limiter
        if not strategy.hit(item, key, scope):
            raise NotPlain
        reset, remaining = strategy.get_window_stats(item, key, scope)
        reset_at = int(reset + 1)
        return {"X-RateLimit-Limit": str(item.amount), "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(reset_at),
                "X-RateLimit-Retry-After": str(int(reset_at - time.time()))}


def _query(environ: dict) -> MultiDict:
    """The query as Werkzeug parses request.args: invalid bytes stay percent-encoded."""
    raw = environ.get("QUERY_STRING", "")
    try:
        return MultiDict(parse_qsl(raw.encode("latin-1").decode(), keep_blank_values=True,
                                   errors="werkzeug.url_quote"))
    except UnicodeError as error:
        raise NotPlain from error


def _client_ip(environ: dict) -> str:
    return environ.get("REMOTE_ADDR") or "unknown"


def _request_id(environ: dict) -> str:
    # Worked out once per request: the error body and the header must agree.
    if "qcimage.request_id" not in environ:
        environ["qcimage.request_id"] = request_id(environ.get("HTTP_X_REQUEST_ID"))
    return environ["qcimage.request_id"]


def _accept(environ: dict) -> MIMEAccept:
    # Asked for only when it decides something: format=auto.
    if "HTTP_ACCEPT" not in environ:
        return _EMPTY_ACCEPT
    return parse_accept_header(environ["HTTP_ACCEPT"], MIMEAccept)


def _content_type(mime: str) -> str:
    # As Werkzeug writes it: text types get their charset.
    return f"{mime}; charset=utf-8" if mime.startswith("text/") else mime


def _talisman_headers(app: Flask, secure: bool) -> dict[str, str]:
    """The headers Talisman adds to a response of this app, asked of Talisman itself."""
    base = "https://qcimage.invalid" if secure else "http://qcimage.invalid"
    with app.test_request_context(IMAGE_PATH, base_url=base):
        response = app.response_class()
        before = set(response.headers.keys())
        talisman._set_response_headers(response)
        return {name: value for name, value in response.headers.items()
                if name not in before}


def install(app: Flask) -> None:
    """Put the lean path in front of the app's Flask ``wsgi_app`` (before any proxy fix)."""
    app.wsgi_app = HitPath(app, app.wsgi_app)


__all__ = ["HitPath", "install"]
