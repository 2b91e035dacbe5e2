"""Blueprint for ``GET /api/qc-images``: a product's QC photos as signed image links."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, g, request

from .auth import request_key_name, require_api_key
from .errors import APIError
from . import current_services
from .extensions import client_ip, limiter
from .schemas import ProductQuerySchema, ProductResponseSchema, load_query

bp = Blueprint("products", __name__)
bp.before_request(require_api_key)
_query = ProductQuerySchema()
_response = ProductResponseSchema()


def _rate_limit_key() -> str:
    # The limiter runs before the API-key hook, so it resolves the key itself:
    # valid keys share one bucket per key name, anything else is counted per IP.
    name = request_key_name()
    return f"key:{name}" if name else f"ip:{client_ip()}"


# GET (and HEAD) only: CORS preflights must not spend the budget of the request they precede.
limiter.limit(lambda: current_services().settings.lookup_limit, key_func=_rate_limit_key,
              methods=["GET", "HEAD"])(bp)


def image_url(image_id: str, width: int, quality: int, fmt: str) -> str:
    """An absolute, signed /api/image URL on the configured public base URL."""
    services = current_services()
    settings = services.settings
    params = {"url": image_id, "width": str(width), "quality": str(quality), "format": fmt}
    expires = services.signer.expiry(settings.signed_url_ttl, settings.signed_url_bucket)
    if expires is not None:
        params["expires"] = str(expires)
    params["sig"] = services.signer.sign(params)
    return f"{settings.public_url}/api/image?{urlencode(params)}"


@bp.get("/api/qc-images")
def qc_images():
    args = load_query(_query, request.args)
    services = current_services()
    ids, stale = services.lookup.image_ids(args["id"], args["storePlatform"])
    if not ids:
        raise APIError(404, "no_images", "this product has no QC images")
    widths = services.settings.srcset_widths
    images = [{
        "original": image_id,
        "watermarked": image_url(image_id, args["width"], args["quality"], args["format"]),
        "srcset": ", ".join(
            f"{image_url(image_id, w, args['quality'], args['format'])} {w}w" for w in widths),
    } for image_id in ids]
    body = _response.dump({
        "success": True, "productId": args["id"], "storePlatform": args["storePlatform"],
        "totalImages": len(images), "images": images})
    headers = {"Cache-Control": "private, no-store"}
    if stale:
        headers["X-Stale"] = "1"
        headers["Warning"] = '110 qcimage "Response is stale"'
    g.cache_status = "stale" if stale else g.get("cache_status")
    return body, 200, headers
