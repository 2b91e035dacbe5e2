"""The API's operations as OpenAPI describes them: parameters, answers, errors, notes."""

from __future__ import annotations

from marshmallow import Schema

from .schemas import ImageQuerySchema, LinkQuerySchema, ProductQuerySchema
from .vocabulary import OUTPUT_FORMATS

# Routes that are not API operations: Flask's static files and the docs page's assets.
UNDOCUMENTED_ENDPOINTS = frozenset({"static", "openapi.asset", "openapi.docs_script",
                                    "gallery.static"})

_SIGNED_URL = """\
The watermarked image behind a link returned by `GET /api/qc-images` (`images[].watermarked`
and `srcset`). Use those URLs as they are; do not build them.

**Signed URLs.** `sig` is an HMAC-SHA256 (base64url, no padding) over `url`, `width`,
`quality`, `format`, `expires` and `t` (the site whose look-up made the link, when the
server hosts several) exactly as written in the URL. A parameter left out is
signed as absent, so changing, adding or dropping any of them (even `width=0960` for
`width=960`) makes the signature wrong: **403**. `expires` is a Unix time in seconds; once
it has passed the URL answers **410** and the client should look the product up again.
URLs signed with an older key keep working for as long as that key stays configured.

The watermark is always applied; there is no way to turn it off. If it cannot be applied the
request fails (5xx): an unwatermarked image is never served."""

_LINK_NOTE = ("Resolved offline by parsing, never fetched: a Weidian, Taobao, Tmall or 1688 "
              "item link, or a buying agent's link to one (the README lists the formats), "
              "with whatever text was pasted around it. A short link (`m.tb.cn`, "
              "`k.weidian.com`, …) or a page that is not an item is 400 `unsupported_link`.")
NOTES = {
    ("/api/qc-images", "id"): "Send `id` (with `storePlatform`) or `link`, not both.",
    ("/api/qc-images", "link"): "Instead of `id` and `storePlatform`. " + _LINK_NOTE,
    ("/api/links/resolve", "link"): _LINK_NOTE,
    ("/api/qc-images", "storePlatform"): "Case-insensitive.",
    ("/api/qc-images", "format"): "Case-insensitive; `jpg` is an alias of `jpeg`. Written "
                                  "into the returned image URLs.",
    ("/api/image", "format"): "`auto` picks the first of the server's preferred formats that "
                              "the `Accept` header lists explicitly (else JPEG), and the "
                              "response then carries `Vary: Accept`.",
    ("/api/image", "expires"): "Unix time (seconds) after which the URL answers 410. Part of "
                               "the signature.",
    ("/api/image", "t"): "The site (tenant) whose look-up made the URL: its watermark is "
                         "drawn. Part of the signature; a site no longer configured, or a page "
                         "its `referrers` do not list, gets 403.",
    ("/api/image", "sig"): "HMAC-SHA256 of the other parameters, base64url without padding; "
                           "missing or wrong: 403.",
}

_ERRORS = {
    400: "Invalid, unknown or repeated parameter; `unsupported_link`: a link that cannot be "
         "resolved offline (the message says what to paste instead).",
    401: "API key missing.",
    403: "API key wrong; image signature missing or wrong; unknown site (`unknown_tenant`); "
         "page not allowed to embed it (`hotlink_refused`).",
    404: "Not found.",
    410: "The signed URL has expired: look the product up again.",
    413: "The upstream image is larger than this server accepts.",
    422: "The upstream image is not a supported image.",
    429: "Rate limit hit; `Retry-After` says when to try again.",
    451: "`taken_down`: the operator removed this image; no URL of it is served.",
    500: "Internal error (quote the `requestId`).",
    502: "Upstream answered with an error or garbage.",
    503: ("Upstream circuit open, a required backing service down, or `overloaded`: too many "
          "image misses queued on the worker; see `Retry-After`."),
    504: "Upstream timed out.",
}

_SHARED_CACHE_HEADERS = ("X-Accel-Expires", "CDN-Cache-Control", "Surrogate-Control")

RATE_HEADERS = {
    "X-RateLimit-Limit": "Requests allowed in the current window.",
    "X-RateLimit-Remaining": "Requests left in the current window.",
    "X-RateLimit-Reset": "Unix time (seconds) when the window resets.",
}


def _json(schema: str | type[Schema], description: str, **extra) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            **extra}


def _errors(*statuses: int, say: dict[int, str] | None = None) -> dict:
    """Error responses, all with the Error body; ``say`` overrides the generic wording."""
    responses = {}
    for status in statuses:
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        if status == 401:
            headers["WWW-Authenticate"] = _header('`Bearer realm="qcimage"`')
        text = (say or {}).get(status, _ERRORS[status])
        responses[str(status)] = _json("Error", text, **({"headers": headers} if headers else {}))
    return responses


def _header(description: str, *, required: bool = True, **schema) -> dict:
    return {"description": description, "required": required,
            "schema": {"type": "string", **schema}}


def _rate_limited(headers: dict) -> dict:
    return {**headers, **{name: {"$ref": f"#/components/headers/{name}"} for name in RATE_HEADERS}}


def _qc_images() -> dict:
    return {
        "summary": "A product's QC photos as signed, watermarked image links",
        "description": "Server to server. Send the API key in `X-API-Key` (or "
                       "`Authorization: Bearer`); keys in the query string are refused (400). "
                       "Image ids keep upstream order, duplicates removed.",
        "operationId": "listQcImages",
        "tags": ["products"],
        "security": [{"apiKey": []}, {"bearer": []}],
        "parameters": [{"in": "query", "schema": ProductQuerySchema}],
        "responses": {
            "200": _json("ProductResponse", "The product's images, each with a signed URL.",
                         headers=_rate_limited({
                             "Cache-Control": _header("`private, no-store`"),
                             "X-Stale": _header("`1` when upstream failed and a cached look-up "
                                                "was served", required=False)})),
            **_errors(400, 401, 403, 404, 429, 500, 502, 503, 504, say={
                404: "The product has no QC photos, or upstream does not know it."}),
        },
    }


def _resolve_link() -> dict:
    return {
        "summary": "A store or agent link to its platform and product id (no upstream call)",
        "description": "Server to server, with the same API key as `/api/qc-images` and "
                       "counted against the same per-key look-up limit.",
        "operationId": "resolveLink",
        "tags": ["products"],
        "security": [{"apiKey": []}, {"bearer": []}],
        "parameters": [{"in": "query", "schema": LinkQuerySchema}],
        "responses": {
            "200": _json("LinkResponse", "The item's platform and id.", headers=_rate_limited({
                "Cache-Control": _header("`private, no-store`")})),
            **_errors(400, 401, 403, 429, 500),
        },
    }


def _image() -> dict:
    image_headers = {
        "ETag": _header("Strong validator: same parameters, same bytes."),
        "Cache-Control": _header("`public, max-age=N, immutable`: N is at most 86400 and never "
                                 "beyond `expires`."),
        "Vary": _header("`Accept`, only when `format=auto`.", required=False),
        "X-Accel-Expires": _header("Seconds nginx may keep the image before asking again "
                                   "(`QCIMAGE_SHARED_CACHE_TTL`), so a takedown reaches it; "
                                   "nginx does not pass it on."),
        "CDN-Cache-Control": _header("`public, max-age=S`: the same lifetime for CDNs."),
        "Surrogate-Control": _header("`max-age=S`: the same, for CDNs that read this one."),
        "Cross-Origin-Resource-Policy": _header("`cross-origin`: embeddable from any site."),
        "X-Content-Type-Options": _header("`nosniff`"),
        "X-Cache": _header("`HIT` or `MISS` in the rendered-image cache.",
                           enum=["HIT", "MISS"]),
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "summary": "One watermarked image (public; signed URL)",
        "description": _SIGNED_URL,
        "operationId": "getImage",
        "tags": ["images"],
        "parameters": [
            {"in": "query", "schema": ImageQuerySchema},
            {"in": "header", "name": "If-None-Match", "required": False,
             "description": "An `ETag` from an earlier answer: 304 when it still matches.",
             "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "The watermarked image; `Content-Type` matches its bytes.",
                    "headers": _rate_limited(image_headers),
                    "content": {mime: binary for mime in OUTPUT_FORMATS.values()}},
            "304": {"description": "`If-None-Match` matched: use the copy you have.",
                    "headers": {name: image_headers[name] for name in
                                ("ETag", "Cache-Control", "Vary", *_SHARED_CACHE_HEADERS)}},
            **_errors(400, 403, 404, 410, 413, 422, 429, 451, 500, 502, 503, 504, say={
                400: "Invalid, unknown or repeated parameter; `non_canonical_url`: the URL is "
                     "not spelled exactly as the look-up wrote it (the message gives that "
                     "spelling).",
                403: "Signature missing or wrong.",
                422: "The upstream image is not a supported image, or the output would be "
                     "too small or too thin to carry a visible watermark.",
                502: "Upstream answered with an error or garbage, or sent an image cut short.",
                404: "Upstream does not know the image.",
                500: "The image could not be produced or watermarked; it is not served."}),
        },
    }


def _health() -> dict:
    return {
        "summary": "Liveness: cheap, no upstream call",
        "operationId": "health",
        "tags": ["operations"],
        "responses": {"200": _json("Health", "The process serves requests.")},
    }


def _ready() -> dict:
    return {
        "summary": "Readiness: required backing services reachable",
        "operationId": "ready",
        "tags": ["operations"],
        "responses": {
            "200": _json("Readiness", "Ready to take traffic (`degraded`: an optional backing "
                                      "service is down)."),
            **_errors(503, say={503: "Not ready: `details` has the checks, `Retry-After` "
                                     "when to look again."}),
        },
    }


def _metrics() -> dict:
    return {
        "summary": "Prometheus metrics",
        "operationId": "metrics",
        "tags": ["operations"],
        "description": "Only from the networks in `QCIMAGE_METRICS_ALLOW`.",
        "responses": {
            "200": {"description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(403, say={403: "Not from an allowed network."}),
        },
    }


def _openapi_json() -> dict:
    return {
        "summary": "This OpenAPI document",
        "operationId": "openapi",
        "tags": ["operations"],
        "responses": {"200": {"description": "OpenAPI 3 document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }


def _html_page(operation_id: str, summary: str, **extra) -> dict:
    return {
        "summary": summary,
        **extra,
        "operationId": operation_id,
        "tags": ["operations"],
        "responses": {"200": {"description": "An HTML page.",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }


def _docs_page() -> dict:
    return _html_page("docs", "This API's documentation, for people")


def _gallery_page() -> dict:
    return _html_page("gallery", "A page for people: paste a link, see the photos, copy the "
                                 "embed snippet",
                      description="Served when `QCIMAGE_GALLERY` is on (the default in "
                                  "development). The page calls this API with a key the "
                                  "person types.")


# Keyed by the url_map rule: a route the app does not have (say /metrics before it is
# wired) is left out, and one missing here fails tests/test_openapi.py.
OPERATIONS = {
    "/api/qc-images": _qc_images,
    "/api/links/resolve": _resolve_link,
    "/api/image": _image,
    "/health": _health,
    "/health/ready": _ready,
    "/metrics": _metrics,
    "/api/openapi.json": _openapi_json,
    "/docs": _docs_page,
    "/gallery": _gallery_page,
}
