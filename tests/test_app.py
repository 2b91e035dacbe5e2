"""App-wide behaviour: error shape, unknown routes, security headers, start-up checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcimage import ConfigError, create_app
from tests.conftest import API_KEY, UPSTREAM, add_product


def test_unknown_path_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    body = response.get_json()
    assert body == {"success": False, "error": "not_found", "message": "no such resource",
                    "requestId": body["requestId"]}
    assert body["requestId"] == response.headers["X-Request-ID"]


def test_wrong_method_is_json_405_with_allow(client):
    response = client.post("/api/qc-images")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_incoming_request_id_is_kept_when_valid(client):
    response = client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.get_json()["requestId"] == "abc-123"
    for bad in ("a b c", "x" * 200, "<script>"):
        response = client.get("/nope", headers={"X-Request-ID": bad})
        assert response.headers["X-Request-ID"] != bad
        assert len(response.headers["X-Request-ID"]) == 32


def test_security_headers_on_every_response(client):
    response = client.get("/health")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


def test_hsts_and_https_redirect_behind_a_trusted_proxy(env, tmp_path):
    env["QCIMAGE_TRUSTED_PROXIES"] = "1"
    client = create_app(env).test_client()
    plain = client.get("/api/qc-images?id=1", headers={"X-Forwarded-Proto": "http"})
    assert plain.status_code in (301, 302)
    assert plain.headers["Location"].startswith("https://")
    secure = client.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert "max-age=31536000" in secure.headers["Strict-Transport-Security"]
    # Probes from the local network stay on plain HTTP.
    assert client.get("/health", headers={"X-Forwarded-Proto": "http"}).status_code == 200


def test_cors_allows_only_configured_origins(env):
    env["QCIMAGE_CORS_ORIGINS"] = "https://shop.example"
    client = create_app(env).test_client()
    allowed = client.get("/health/nope", headers={"Origin": "https://shop.example"})
    assert "Access-Control-Allow-Origin" not in allowed.headers  # only /api/*
    ok = client.options("/api/qc-images", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "GET"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    other = client.options("/api/qc-images", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_production_refuses_to_start_without_secrets(tmp_path):
    with pytest.raises(ConfigError) as error:
        create_app({"QCIMAGE_ENV": "production", "QCIMAGE_CACHE_DIR": str(tmp_path)})
    message = str(error.value)
    for name in ("QCIMAGE_API_KEYS", "QCIMAGE_SIGNING_KEYS", "QCIMAGE_PUBLIC_URL"):
        assert name in message


def test_missing_watermark_font_stops_start_up(env, tmp_path):
    env["QCIMAGE_WATERMARK_FONT"] = str(tmp_path / "missing.ttf")
    with pytest.raises(Exception) as error:
        create_app(env)
    assert "watermark" in str(error.value).lower() or "font" in str(error.value).lower()


def test_development_invents_demo_secrets(tmp_path, upstream):
    app = create_app({"QCIMAGE_ENV": "development", "QCIMAGE_CACHE_DIR": str(tmp_path),
                      "QCIMAGE_DEMO_API_KEY": "demo-key-123", "QCIMAGE_UPSTREAM_URL": UPSTREAM})
    add_product(upstream)
    client = app.test_client()
    response = client.get("/api/qc-images?id=7494645791", headers={"X-API-Key": "demo-key-123"})
    assert response.status_code == 200
    link = response.get_json()["images"][0]["watermarked"]
    assert link.startswith("http://127.0.0.1:8000/api/image?") and "sig=" in link
    assert client.get("/api/qc-images?id=1", headers={"X-API-Key": "other"}).status_code == 403


def test_keys_cli_creates_lists_and_revokes(runner, monkeypatch):
    created = runner.invoke(args=["keys", "create", "shop"])
    assert created.exit_code == 0
    key = created.stderr.split(": ", 1)[1].splitlines()[0].strip()
    line = created.stdout.strip()
    assert line.startswith("QCIMAGE_API_KEYS=shop:")
    import hashlib
    assert hashlib.sha256(key.encode()).hexdigest() in line
    monkeypatch.setenv("QCIMAGE_API_KEYS", line.split("=", 1)[1] + ",other:" + "0" * 64)
    listed = runner.invoke(args=["keys", "list"])
    assert listed.stdout.split() == ["shop", "other"]
    assert key not in listed.output
    revoked = runner.invoke(args=["keys", "revoke", "shop"])
    assert revoked.stdout.strip() == "QCIMAGE_API_KEYS=other:" + "0" * 64


def test_readiness_reports_the_imagemagick_policy(client):
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ready"
    assert body["checks"] == {"upstream_circuit": "closed", "imagemagick_policy": "ok"}


def test_readiness_is_503_when_the_policy_is_not_in_force(client, monkeypatch):
    from qcimage import health

    monkeypatch.setattr(health, "policy_in_force", lambda: False)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["details"]["imagemagick_policy"] == "not loaded"


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:1,127.0.0.1:2",
                                 "redis+sentinel://127.0.0.1:1/qcimage"])
def test_a_box_starts_and_answers_while_its_redis_is_unreachable(env, upstream, url):
    """Shared state and limits through Sentinel or Cluster: none is needed to start."""
    app = create_app({**env, "QCIMAGE_REDIS_URL": url, "QCIMAGE_RATELIMIT_STORAGE_URI": url})
    add_product(upstream)
    client = app.test_client()
    response = client.get("/api/qc-images?id=7494645791", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.get_json()
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "degraded"
    assert ready.get_json()["checks"]["redis"] == "down"
    # The limiter's storage got the same short socket bounds as the shared store.
    assert app.config["RATELIMIT_STORAGE_OPTIONS"]["socket_timeout"] == 0.5


def test_the_worker_app_is_left_out_of_full_garbage_collections(tmp_path):
    # What a gunicorn worker imports: its long-lived objects are frozen, so a full
    # collection does not walk them (and stop every thread) every few thousand requests.
    env = {**os.environ, "QCIMAGE_ENV": "development", "QCIMAGE_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "import gc, wsgi; print(gc.get_freeze_count())"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert int(out.split()[-1]) > 10_000
