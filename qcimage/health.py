"""Blueprint for liveness and readiness probes (no API key, no rate limit)."""

from __future__ import annotations

from flask import Blueprint, current_app

from .extensions import limiter, talisman

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
    services = current_app.extensions["qcimage"]
    checks = {}
    ping = getattr(getattr(services.store, "shared", None), "ping", None)
    if ping is not None:
        checks["redis"] = "ok" if ping() else "down"
    ok = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ok else "unavailable", "checks": checks}
    headers = {"Cache-Control": "no-store"}
    if not ok:
        headers["Retry-After"] = "5"
    return body, 200 if ok else 503, headers
