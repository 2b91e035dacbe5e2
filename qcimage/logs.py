"""Logging set-up, and the request hooks that give each request an id and a log line."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Response, g, has_request_context, request

from . import metrics
from .logformat import EscapingFormatter, json_formatter

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
access_log = logging.getLogger("qcimage.access")


class _RequestContextFilter(logging.Filter):
    """Stamp every record with the current request id, when there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        return True


def _limiter_outages_only(record: logging.LogRecord) -> bool:
    # Flask-Limiter says at INFO when its storage is back (limits shared again after
    # counting per worker) and also every 429 (the metrics count those): keep the first.
    return record.levelno >= logging.WARNING or "recovered" in record.getMessage()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def configure_logging(log_format: str) -> None:
    """One handler on stderr, JSON or text, for our loggers and the libraries' warnings."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(EscapingFormatter(
            "%(asctime)s %(levelname)-7s %(name)s %(process)d [%(request_id)s] %(message)s"))
    handler.addFilter(_RequestContextFilter())
    # Libraries whose warnings operators need (storage fallbacks) log
    # through the same handler, so every line has one format.
    for name in ("qcimage", "flask-limiter"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.getLogger("flask-limiter").filters[:] = [_limiter_outages_only]


def request_id(incoming: str | None) -> str:
    """A valid incoming ``X-Request-ID``, else a fresh one."""
    return incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def assign_request_id() -> None:
    """before_request: start the clock, count the request in flight, give it an id."""
    g.started = time.perf_counter()
    metrics.IN_FLIGHT.inc()
    g.in_flight = True
    g.request_id = request_id(request.headers.get("X-Request-ID"))


def log_request(response: Response) -> Response:
    """after_request: echo the id, write the access-log line, count the request."""
    response.headers["X-Request-ID"] = g.get("request_id", "")
    started = g.get("started")
    tenant = g.tenant.name if g.get("tenant") else ""
    record_request({
        "method": request.method,
        "route": request.url_rule.rule if request.url_rule else None,
        "path": request.path,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
        "bytes": response.calculate_content_length(),
        "client_ip": request.remote_addr,
        "user_agent": request.headers.get("User-Agent"),
        "tenant": tenant or None,
        "api_key": g.get("api_key_name"),
        "cache": g.get("cache_status"),
        "upstream_ms": _ms(g.get("upstream_ms")),
        "render_ms": _ms(g.get("render_ms")),
    })
    return response


def record_request(fields: dict) -> None:
    """The access-log line and the request metrics of one answered request (the fields
    ``log_request`` lists), from Flask or from the hit path alike."""
    duration = fields["duration_ms"]
    access_log.info("%s %s %s %sms", fields["method"], fields["path"], fields["status"],
                    duration, extra=fields)
    # Unmatched paths share one label: a scanner must not mint a series per URL.
    route = fields["route"] or "unmatched"
    tenant = fields["tenant"] or ""
    metrics.REQUESTS.labels(route, fields["method"], str(fields["status"]), tenant).inc()
    if duration is not None:
        metrics.REQUEST_SECONDS.labels(route, fields["method"], tenant).observe(duration / 1000)


def end_in_flight(error: BaseException | None = None) -> None:
    """teardown_request: the request is no longer in flight, however it ended."""
    if g.pop("in_flight", False):
        metrics.IN_FLIGHT.dec()
