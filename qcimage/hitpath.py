"""The lean path: cache hits, 304s and shed misses of ``GET /api/image``, ahead of Flask.

A hit is most of what a busy box answers, and through Flask most of its CPU went to the
machinery around the view (request context, Flask-Limiter's limit resolution, response
finalisation), not to the hit. Here a plain hit takes the same steps as the view, through
the same code (``images.prepare``, the renderer's cache, the limiter's own storage and
bucket, the app's access line and metrics) and answers with the same headers (Talisman's
are read off Talisman itself once). A miss that the worker's render queue would refuse
is refused here too (503 ``overloaded``, Flask's JSON error): shedding load must cost
little. Anything else, an error of any kind included, goes on to Flask untouched, which
answers it as it always did: a request is counted by the rate limit once, on whichever
path answers it.

Left to Flask: requests with an ``Origin`` (CORS), tenants with several limits, a limiter
whose storage is down (Flask-Limiter's fallback), plain HTTP when HTTPS is forced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from flask import Flask
from limits import parse_many
from werkzeug.datastructures import ETags, MIMEAccept, MultiDict
from werkzeug.http import HTTP_STATUS_CODES, parse_accept_header, parse_etags

from . import metrics
from .errors import error_body, log_service_error
from .extensions import limiter, talisman
from .images import ImageRequest, image, prepare, rate_limit_key, raw_path
from .logs import record_request, request_id
from .services.signing import IMAGE_PATH

if TYPE_CHECKING:
    from limits import RateLimitItem

    from .tenants import Tenant
    from .wiring import Services

log = logging.getLogger(__name__)
# Flask-Limiter's scope for the images blueprint's limit: its endpoint's name.
_SCOPE = f"images.{image.__name__}"
_NO_ETAGS = ETags()
_EMPTY_ACCEPT = MIMEAccept()


class NotPlain(Exception):
    """This request is for Flask to answer."""


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

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != IMAGE_PATH
                or environ.get("REQUEST_METHOD") not in ("GET", "HEAD")
                or "HTTP_ORIGIN" in environ):
            return self.next(environ, start_response)
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        try:
            answer = self._answer(environ, started)
        except NotPlain:
            answer = None
        except Exception:  # a bug here must cost speed, never an answer
            log.exception("hit path failed; Flask answers this request")
            answer = None
        finally:
            metrics.IN_FLIGHT.dec()
        if answer is None:
            return self.next(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return body

    def _answer(self, environ: dict, started: float):
        secure = (environ.get("wsgi.url_scheme") == "https"
                  or environ.get("HTTP_X_FORWARDED_PROTO", "http") == "https")
        if self.force_https and not secure:
            raise NotPlain  # Talisman redirects it
        raw_query = environ.get("QUERY_STRING", "")
        try:
            # As Werkzeug parses request.args: invalid bytes stay percent-encoded.
            query = MultiDict(parse_qsl(raw_query.encode("latin-1").decode(),
                                        keep_blank_values=True, errors="werkzeug.url_quote"))
            ask = prepare(self.services, query, raw_path(environ), raw_query,
                          environ.get("HTTP_REFERER"), _accept(environ, query))
        except Exception as error:  # refused: Flask says why, in its own words
            raise NotPlain from error
        etags = parse_etags(environ["HTTP_IF_NONE_MATCH"]) if (
            "HTTP_IF_NONE_MATCH" in environ) else _NO_ETAGS
        refusal = entry = None
        if ask.not_modified(etags):
            cache = "revalidated"
        else:
            entry, cache = self.services.renderer.cached(ask.job), "hit"
            if entry is None:
                # A miss: Flask renders it, unless the worker's queue would refuse it
                # anyway. Then it is refused here, at a fraction of the CPU, which is
                # what a box shedding misses is short of.
                slots = self.services.renderer.slots
                if not slots.full():
                    raise NotPlain
                refusal, cache = slots.overloaded(), None
        client_ip = environ.get("REMOTE_ADDR") or "unknown"
        limit = self._take_limit(ask.tenant, client_ip)
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        if refusal is not None:
            log_service_error(refusal)
            response = self.app.json.response(error_body(refusal.code, refusal.message, rid))
            status, data = refusal.status, response.get_data()
            headers = {**refusal.headers, "Content-Type": response.content_type,
                       "Content-Length": str(len(data)), **limit, "Cache-Control": "no-store"}
        elif entry is not None:
            status, data = 200, entry.data
            headers = {**ask.headers, **limit, "X-Cache": "HIT",
                       "Content-Type": _content_type(entry.mime),
                       "Content-Length": str(len(data))}
        else:
            status, data, headers = 304, b"", {**ask.headers, **limit}
        # Talisman sets its headers over the view's (X-Content-Type-Options is in both).
        headers.update(self.security[secure])
        headers["X-Request-ID"] = rid
        method = environ["REQUEST_METHOD"]
        record_request({
            "method": method, "route": IMAGE_PATH, "path": IMAGE_PATH, "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "bytes": len(data), "client_ip": client_ip,
            "user_agent": environ.get("HTTP_USER_AGENT"), "tenant": ask.tenant.name,
            "api_key": None, "cache": cache, "upstream_ms": None, "render_ms": None,
            "request_id": rid,
        })
        body = [data] if data and method != "HEAD" else []
        return f"{status} {HTTP_STATUS_CODES[status].upper()}", list(headers.items()), body

    def _take_limit(self, tenant: Tenant, client_ip: str) -> dict[str, str]:
        """Count the request in the bucket Flask-Limiter uses for it; the X-RateLimit-*
        headers it would send. NotPlain when over the limit (Flask answers the 429
        without counting again) or when Flask-Limiter must handle its storage."""
        items = self._limits.get(tenant.image_limit)
        if items is None:
            items = self._limits[tenant.image_limit] = tuple(parse_many(tenant.image_limit))
        if not items or not limiter.enabled:
            return {}
        if len(items) > 1 or getattr(limiter, "_storage_dead", False):
            raise NotPlain
        item, strategy = items[0], limiter.limiter
        key = rate_limit_key(tenant, client_ip)
        if not strategy.hit(item, key, _SCOPE):
            raise NotPlain
        reset, remaining = strategy.get_window_stats(item, key, _SCOPE)
        reset_at = int(reset + 1)
        return {"X-RateLimit-Limit": str(item.amount), "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(reset_at),
                "X-RateLimit-Retry-After": str(int(reset_at - time.time()))}


def _accept(environ: dict, query: MultiDict) -> MIMEAccept:
    # Parsed only when it decides something: format=auto.
    if query.get("format") != "auto" or "HTTP_ACCEPT" not in environ:
        return _EMPTY_ACCEPT
    return parse_accept_header(environ["HTTP_ACCEPT"], MIMEAccept)


def _content_type(mime: str) -> str:
    # As Werkzeug writes it: text types get their charset.
    return f"{mime}; charset=utf-8" if mime.startswith("text/") else mime


def _talisman_headers(app: Flask, secure: bool) -> dict[str, str]:
    """The headers Talisman adds to an image response, asked of Talisman itself."""
    base = "https://qcimage.invalid" if secure else "http://qcimage.invalid"
    with app.test_request_context(IMAGE_PATH, base_url=base):
        response = app.response_class()
        before = set(response.headers.keys())
        talisman._set_response_headers(response)
        return {name: value for name, value in response.headers.items()
                if name not in before}


def install(app: Flask) -> None:
    """Put the hit path in front of the app's Flask ``wsgi_app`` (before any proxy fix)."""
    app.wsgi_app = HitPath(app, app.wsgi_app)


__all__ = ["HitPath", "ImageRequest", "install"]
