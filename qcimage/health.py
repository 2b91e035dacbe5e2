"""Blueprint for liveness and readiness probes (no API key, no rate limit)."""

from __future__ import annotations

import ipaddress

from flask import Blueprint, Response, request

from .errors import APIError, error_response
from .extensions import limiter, talisman
from .metrics import render_latest
from .services.imaging.policy import policy_in_force
from .wiring import current_services

bp = Blueprint("health", __name__)
limiter.exempt(bp)


@bp.get("/health")
@talisman(force_https=False)
def health():
    # Liveness: no I/O at all, so a slow upstream never gets a healthy worker restarted.
    return {"status": "ok"}, 200, {"Cache-Control": "no-store"}


@bp.get("/health/ready")
@talisman(force_https=False)
def ready():
    services = current_services()
    checks = {"upstream_circuit": services.client.circuit_state(),
              "imagemagick_policy": "ok" if policy_in_force() else "not loaded"}
    problems = []
    if checks["imagemagick_policy"] != "ok":
        problems.append("ImageMagick is not running under qcimage's policy")
    if checks["upstream_circuit"] == "open":
        problems.append("the circuit to upstream is open")
    ping = getattr(getattr(services.store, "shared", None), "ping", None)
    if ping is not None:
        checks["redis"] = "ok" if ping() else "down"
        if checks["redis"] == "down" and services.settings.cache.redis_required:
            problems.append("redis is unreachable")
    if problems:
        retry = services.client.retry_after() if checks["upstream_circuit"] == "open" else 5
        return error_response(503, "not_ready", "not ready: " + "; ".join(problems),
                              details=checks, headers={"Retry-After": str(retry)})
    status = "degraded" if "down" in checks.values() else "ready"
    return {"status": status, "checks": checks}, 200, {"Cache-Control": "no-store"}


@bp.get("/metrics")
@talisman(force_https=False)
def metrics():
    # Metrics reveal traffic and key names: only the configured networks may scrape.
    try:
        client = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        client = None
    allowed = current_services().settings.metrics_allow
    if client is None or not any(client in network for network in allowed):
        raise APIError(403, "forbidden", "metrics are not available from this address")
    body, content_type = render_latest()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
