"""Blueprint for the look-ups: ``/api/qc-images`` (signed image links), ``/api/links/resolve``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, g, request
from werkzeug.datastructures import MultiDict

from .auth import request_key
from .errors import APIError
from .extensions import client_ip, limiter
from .schemas import (LinkQuerySchema, LinkResponseSchema, ProductQuerySchema,
                      ProductResponseSchema, load_query)
from .services.links import resolve
from .services.signing import Signer, canonical_image_url
from .services.upstream import UpstreamNotFound
from .tenants import Tenant
from .vocabulary import PLATFORMS
from .wiring import Services, current_services

# Guarded by the API-key hook, attached where it is registered (create_app).
bp = Blueprint("products", __name__)
LOOKUP_PATH = "/api/qc-images"
# Bodies of products with more images than this are not kept (see answer).
MEMO_MAX_IMAGES = 64
_query = ProductQuerySchema()
_response = ProductResponseSchema()
_link_query = LinkQuerySchema()
_link_response = LinkResponseSchema()


def rate_limit_key(tenant: Tenant, key_name: str) -> str:
    """The limiter's bucket of a valid key: one per tenant and key name."""
    return f"key:{tenant.name}/{key_name}"


def _rate_limit_key() -> str:
    # The limiter runs before the API-key hook, so it resolves the key itself: valid keys
    # share one bucket per tenant and key name, anything else is counted per IP.
    resolved = request_key()
    return rate_limit_key(*resolved) if resolved else f"ip:{client_ip()}"


def _rate_limit() -> str:
    resolved = request_key()
    return resolved[0].lookup_limit if resolved else current_services().settings.limits.lookup


# GET (and HEAD) only: CORS preflights must not spend the budget of the request they precede.
# One budget per tenant and key for the whole blueprint: link resolutions count as look-ups.
limiter.shared_limit(_rate_limit, scope="lookup", key_func=_rate_limit_key,
                     methods=["GET", "HEAD"])(bp)


def link_maker(services: Services, tenant: Tenant, quality: int, fmt: str,
               expires: int | None):
    """``link(image_id, width)``: absolute signed /api/image URLs on the public base URL,
    carrying the tenant (``t``) whose watermark they show.

    ``expires`` is worked out once per look-up and rounded to a bucket, so the same
    links come back look-up after look-up and each is signed once per bucket.
    """
    settings = services.settings
    t = settings.tenants.link_name(tenant)

    def link(image_id: str, width: int) -> str:
        return _signed_link(services.signer, settings.public_url, image_id, width, quality,
                            fmt, expires, t)

    return link


@functools.lru_cache(maxsize=16384)
def _signed_link(signer: Signer, public_url: str, image_id: str, width: int, quality: int,
                 fmt: str, expires: int | None, t: str | None) -> str:
    params = {"url": image_id, "width": str(width), "quality": str(quality), "format": fmt}
    if expires is not None:
        params["expires"] = str(expires)
    if t is not None:
        params["t"] = t
    params["sig"] = signer.sign(params)
    return public_url + canonical_image_url(params)


@dataclass(frozen=True)
class LookupRequest:
    """A checked look-up: what it asks for, with the tenant's defaults filled in."""

    args: dict
    product: str
    platform: str


def prepare(services: Services, tenant: Tenant, query: Callable[[], MultiDict],
            raw_query: str) -> LookupRequest:
    """Check a look-up's query (raises the 400 that explains what is wrong); no Flask state.

    What a query asks depends only on its bytes and the tenant's defaults: a query that
    passed is remembered (``Services.prepared_lookups``, read-only) and not parsed again."""
    key = (tenant.name, raw_query)
    ask = services.prepared_lookups.get(key)
    if ask is None:
        ask = _prepare(tenant, query())
        services.prepared_lookups.put(key, ask)
    return ask


def _prepare(tenant: Tenant, query: MultiDict) -> LookupRequest:
    args = load_query(_query, query)
    # The tenant's defaults stand in for what was not sent.
    args.update({name: getattr(tenant.defaults, name) for name in ("width", "quality", "format")
                 if name not in query})
    if "link" in args:
        resolved = resolve(args["link"])
        return LookupRequest(args, resolved.product_id, resolved.platform)
    return LookupRequest(args, args["id"], args["storePlatform"])


def answer(services: Services, tenant: Tenant, ask: LookupRequest, ids: list[str],
           cache_status: str) -> tuple[dict, dict[str, str]]:
    """(JSON body, headers) of a look-up that found ``ids``.

    The body is a function of the request, the ids, the links' expiry bucket and the
    sizes known so far: the same inputs give the same body object (``Services.
    lookup_bodies``, read-only), so a warm look-up neither signs nor dumps again."""
    if not ids:
        raise APIError(404, "no_images",
                       f"product {ask.product} on {ask.platform} has no QC images")
    # A product listing thousands of ids must not make a look-up unbounded in time,
    # memory and bytes: the first max_product_images, in upstream order, and say so.
    args = ask.args
    shown = tuple(ids[:services.settings.max_product_images])
    truncated = len(ids) > len(shown)
    sizes = tuple(services.renderer.known_size(image_id, args["width"]) for image_id in shown)
    expires = services.signer.expiry(tenant.defaults.link_ttl,
                                     services.settings.signed_url_bucket)
    key = (tenant.name, ask.product, ask.platform, args["width"], args["quality"],
           args["format"], shown, truncated, sizes, expires)
    body = services.lookup_bodies.get(key)
    if body is None:
        body = _body(services, tenant, ask, shown, truncated, sizes, expires)
        if len(shown) <= MEMO_MAX_IMAGES:  # a big product's body is built each time
            services.lookup_bodies.put(key, body)
    headers = {"Cache-Control": "private, no-store"}
    if cache_status == "stale":
        headers["X-Stale"] = "1"
        headers["Warning"] = '110 qcimage "Response is stale"'
    return body, headers


def _body(services: Services, tenant: Tenant, ask: LookupRequest, shown: tuple[str, ...],
          truncated: bool, sizes: tuple, expires: int | None) -> dict:
    args = ask.args
    link = link_maker(services, tenant, args["quality"], args["format"], expires)
    images = []
    for image_id, size in zip(shown, sizes):
        image = {
            "original": image_id,
            "watermarked": link(image_id, args["width"]),
            "srcset": ", ".join(f"{link(image_id, w)} {w}w"
                                for w in tenant.defaults.srcset_widths),
        }
        if size:
            image["width"], image["height"] = size
        images.append(image)
    return _response.dump({
        "success": True, "productId": ask.product, "storePlatform": ask.platform,
        "totalImages": len(images), "truncated": truncated, "images": images})


@bp.get(LOOKUP_PATH)
def qc_images():
    tenant = g.tenant
    services = current_services()
    ask = prepare(services, tenant, lambda: request.args,
                  request.query_string.decode("latin-1"))
    try:
        ids, g.cache_status = services.lookup.image_ids(ask.product, ask.platform, tenant.name)
    except UpstreamNotFound:
        others = ", ".join(p for p in PLATFORMS if p != ask.platform)
        raise APIError(404, "not_found", f"product {ask.product} was not found on "
                       f"{ask.platform}; if it is listed elsewhere, set storePlatform "
                       f"({others})") from None
    body, headers = answer(services, tenant, ask, ids, g.cache_status)
    return body, 200, headers


@bp.get("/api/links/resolve")
def resolve_link():
    resolved = resolve(load_query(_link_query, request.args)["link"])
    body = _link_response.dump({"success": True, "storePlatform": resolved.platform,
                                "productId": resolved.product_id})
    return body, 200, {"Cache-Control": "private, no-store"}
