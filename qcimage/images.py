"""Blueprint for ``GET /api/image``: one signed, watermarked image, fetched by browsers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Response, g, request
from werkzeug.datastructures import ETags, MIMEAccept, MultiDict

from .errors import APIError, error_response
from .extensions import client_ip, limiter
from .schemas import ImageQuerySchema, load_query
from .services.imaging import RenderSpec
from .services.pipeline import RenderJob
from .services.signing import IMAGE_PATH, SIGNED_PARAMS, URL_PARAMS, canonical_image_url
from .tenants import Tenant
from .services.takedown import TakenDown
from .vocabulary import OUTPUT_FORMATS
from .wiring import Services, current_services

bp = Blueprint("images", __name__)
_query = ImageQuerySchema()
_MAX_AGE = 86400


def _named_tenant() -> Tenant | None:
    # Before the signature is checked: only which bucket counts. A made-up t is counted
    # in the shared "-" bucket of its client IP, and then refused.
    return current_services().settings.tenants.get(request.args.get("t"))


def _rate_limit() -> str:
    tenant = _named_tenant()
    return tenant.image_limit if tenant else current_services().settings.limits.image


def rate_limit_key(tenant: Tenant | None, ip: str) -> str:
    """The limiter's bucket of an image request: per tenant named (or "-") and client IP."""
    return f"{tenant.name if tenant else '-'}/{ip}"


def _rate_limit_key() -> str:
    return rate_limit_key(_named_tenant(), client_ip())


limiter.limit(_rate_limit, key_func=_rate_limit_key, methods=["GET", "HEAD"])(bp)


def negotiate(requested: str, preferences: tuple[str, ...], accept: MIMEAccept) -> str:
    """``auto``: the first preferred format the client lists explicitly in ``Accept``.

    Only explicit types count: ``*/*`` says nothing about WebP support. The last
    preference (jpeg or png, which every browser reads) is the fallback.
    """
    if requested != "auto":
        return requested
    accepted = {value.lower() for value, quality in accept if quality > 0}
    for fmt in preferences[:-1]:
        if OUTPUT_FORMATS[fmt] in accepted:
            return fmt
    return preferences[-1]


def caching_headers(args: dict, etag: str, shared_ttl: int) -> dict[str, str]:
    max_age = _MAX_AGE
    if args["expires"] is not None:
        max_age = max(0, min(_MAX_AGE, args["expires"] - int(time.time())))
    shared = min(max_age, shared_ttl)
    headers = {
        # Shared caches (nginx, CDNs) ask again every few minutes, so a takedown reaches
        # them (DESIGN §7). nginx honours X-Accel-Expires over Cache-Control and does not
        # pass it on; CDNs read the targeted CDN-Cache-Control or Surrogate-Control.
        "X-Accel-Expires": str(shared),
        "CDN-Cache-Control": f"public, max-age={shared}",
        "Surrogate-Control": f"max-age={shared}",
        # Signed URLs never change meaning: browsers need not revalidate them.
        "Cache-Control": f"public, max-age={max_age}, immutable",
        "ETag": etag,
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }
    if args["format"] == "auto":
        headers["Vary"] = "Accept"
    return headers


@dataclass(frozen=True)
class ImageRequest:
    """What a request for an image comes to once every check passed: the view and the hit
    path (``hitpath``) both work it out with ``prepare``."""

    args: dict
    tenant: Tenant
    job: RenderJob
    etag: str
    headers: dict[str, str]

    def not_modified(self, if_none_match: ETags) -> bool:
        return if_none_match.contains_weak(self.etag.strip('"')) or if_none_match.star_tag


def prepare(services: Services, query: Callable[[], MultiDict], raw_path: str,
            raw_query: str, referer: str | None,
            accept: Callable[[], MIMEAccept]) -> ImageRequest:
    """Check an image request and say what it asks for; raises the APIError or
    ServiceError (403, 410, 451...) that refuses it. Reads no Flask state.

    ``query`` and ``accept`` are asked for only when needed: a query checked before
    (see ``_checked_args``) is not parsed again, and Accept decides only ``format=auto``.
    """
    args = _checked_args(services, query, raw_path, raw_query)
    # Before the 304: a shared cache revalidating its copy must hear of the takedown.
    services.takedowns.check(args["url"])
    tenant = _signed_tenant(services, args["t"], referer)
    fmt = args["format"]
    if fmt == "auto":
        fmt = negotiate(fmt, services.settings.imaging.auto_formats, accept())
    job = RenderJob(args["url"], RenderSpec(args["width"], args["quality"], fmt),
                    brand=services.brands[tenant.name])
    etag = services.renderer.etag(job)
    return ImageRequest(args, tenant, job, etag,
                        caching_headers(args, etag, services.settings.cache.shared_cache_ttl))


def _checked_args(services: Services, query: Callable[[], MultiDict], raw_path: str,
                  raw_query: str) -> dict:
    """The query's values once the schema, the signature and the canonical form passed.

    Those three depend on nothing but the request's bytes (and the signer's keys), and a
    cache hit repeats them for the same URL thousands of times a second: a query that
    passed is remembered (``Services.checked_image_queries``, read-only), and only
    its expiry is checked again. A query that failed is not: it is checked every time.
    """
    signer, checked = services.signer, services.checked_image_queries
    key = (raw_path, raw_query)
    args = checked.get(key)
    if args is not None:
        signer.check_current(args["expires"])
        return args
    values = query()
    args = load_query(_query, values)
    signer.verify({name: values.get(name) for name in SIGNED_PARAMS}, args["sig"])
    _require_canonical_url(values, raw_path, raw_query)
    checked.put(key, args)
    return args


def raw_path(environ: dict) -> str:
    """The path as sent. QUERY_STRING is always the raw query; the raw path only survives
    in RAW_URI or REQUEST_URI (gunicorn sets both), else the decoded path is all there is."""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw_uri.split("?", 1)[0] if raw_uri else environ.get("PATH_INFO", "")


def _require_canonical_url(query: MultiDict, path: str, raw_query: str) -> None:
    """400 unless the URL is, byte for byte, the one a look-up wrote for these values.

    Reordered or percent-encoded parameters, a trailing ``&``, ``//api/image`` or
    ``/api/%69mage`` would serve the same bytes under another URL: another entry in
    every cache in front. Checked on the request as sent, before any decoding.
    """
    canonical = canonical_image_url({name: query.get(name) for name in URL_PARAMS})
    if f"{path}?{raw_query}" != canonical:
        raise APIError(400, "non_canonical_url",
                       f"use the image URL exactly as the look-up returned it: {canonical} "
                       "(parameters in that order, nothing added, re-encoded or reordered)")


def _signed_tenant(services: Services, name: str | None, referer: str | None) -> Tenant:
    """The tenant a verified link names, if it may be shown on the page asking."""
    tenant = services.settings.tenants.get(name)
    if tenant is None:
        raise APIError(403, "unknown_tenant", "this image link belongs to a site that is not "
                       "configured here (any more); look the product up again")
    if not tenant.allows_referrer(referer):
        raise APIError(403, "hotlink_refused", "this image may only be shown on the pages of "
                       "the site it was made for")
    return tenant


@bp.errorhandler(TakenDown)
def taken_down(error: TakenDown):
    # nginx keeps the 451 in place of the image it cached, so it stops serving that copy
    # even while the app is down (proxy_cache_use_stale). nginx before 1.23 honours
    # X-Accel-Expires only ahead of Cache-Control: no-store, which error_response puts last.
    ttl = current_services().settings.cache.shared_cache_ttl
    return error_response(error.status, error.code, error.message,
                          headers={"X-Accel-Expires": str(ttl)})


@bp.get(IMAGE_PATH)
def image():
    services = current_services()
    ask = prepare(services, lambda: request.args, raw_path(request.environ),
                  request.query_string.decode("latin-1"), request.headers.get("Referer"),
                  lambda: request.accept_mimetypes)
    g.tenant = ask.tenant
    if ask.not_modified(request.if_none_match):
        g.cache_status = "revalidated"
        return Response(status=304, headers=ask.headers)
    result = services.renderer.render(ask.job)
    g.cache_status = "hit" if result.cached else "miss"
    g.upstream_ms = result.upstream_ms
    g.render_ms = result.render_ms
    headers = {**ask.headers, "X-Cache": "HIT" if result.cached else "MISS"}
    return Response(result.entry.data, status=200, mimetype=result.entry.mime, headers=headers)
