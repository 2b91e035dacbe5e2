"""The one place that turns every failure into the JSON error shape (README, 'Errors')."""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .services import ServiceError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    410: "gone",
    413: "payload_too_large",
    414: "uri_too_long",
    429: "rate_limited",
    431: "headers_too_large",
}


class APIError(ServiceError):
    """A ServiceError raised by the web layer, its status and code chosen where raised."""

    def __init__(self, status: int, code: str, message: str, *, details: dict | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message, details=details)
        self.status = status
        self.code = code
        self._headers = headers or {}

    @property
    def headers(self) -> dict[str, str]:
        return self._headers


def error_body(code: str, message: str, request_id: str | None,
               details: dict | None = None) -> dict:
    """The JSON error shape (README, 'Errors')."""
    body = {"success": False, "error": code, "message": message}
    if details:
        body["details"] = details
    body["requestId"] = request_id
    return body


def log_service_error(error: ServiceError) -> None:
    if error.status >= 500:
        log.warning("service error %s: %s", error.code, error.message)


def error_response(status: int, code: str, message: str, *, details: dict | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error_body(code, message, g.get("request_id"), details))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    # Errors are per request: never let a browser keep them. Last, so that a shared cache's
    # own header (X-Accel-Expires) comes first: older nginx reads them in order.
    response.headers["Cache-Control"] = "no-store"
    return response


def _rate_limit_headers() -> dict[str, str]:
    from .extensions import limiter

    current = limiter.current_limit
    if current is None:
        return {"Retry-After": "60"}
    return {"Retry-After": str(max(1, math.ceil(current.reset_at - time.time())))}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def handle_service_error(error: ServiceError):
        log_service_error(error)
        return error_response(error.status, error.code, error.message, details=error.details,
                              headers=error.headers)

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        status = error.code or 500
        headers: dict[str, str] = {}
        if status == 429:
            from .metrics import RATE_LIMITED

            RATE_LIMITED.labels(request.url_rule.rule if request.url_rule else "unmatched").inc()
            headers.update(_rate_limit_headers())
            message = "rate limit exceeded: " + str(error.description)
        elif status == 404:
            message = "no such resource"
        elif status == 405:
            allow = error.get_response().headers.get("Allow")
            if allow:
                headers["Allow"] = allow
            message = "method not allowed" + (f"; use {allow}" if allow else "")
        else:
            message = error.description or error.name
        return error_response(status, _HTTP_CODES.get(status, "http_error"), message,
                              headers=headers)

    # Registered last and catching everything else: a bug becomes a logged 500, never a trace.
    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; quote the requestId")
