"""Hostile deployment surroundings: a stray .env file, spoofed proxies, forged log lines."""

from __future__ import annotations

import os

import pytest

from qcimage import create_app
from tests.conftest import API_KEY, PUBLIC, SIGNING_KEY, UPSTREAM, key_line

# What a developer's .env might hold: development mode and a wide-open configuration.
STRAY_ENV_FILE = ("QCIMAGE_ENV=development\n"
                  "QCIMAGE_METRICS_ALLOW=*\n"
                  "QCIMAGE_WATERMARK_OPACITY=0.05\n"
                  "QCIMAGE_IMAGE_RATE_LIMIT=100000 per second\n")


@pytest.fixture
def real_environment(monkeypatch, tmp_path):
    """Run in a folder holding a stray .env, with only the given QCIMAGE_* variables set."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(STRAY_ENV_FILE)
    for name in list(os.environ):
        if name.startswith("QCIMAGE_"):
            monkeypatch.delenv(name)

    def set_environment(**values: str):
        for name, value in values.items():
            monkeypatch.setenv(name, value)
    return set_environment


def production_secrets(tmp_path) -> dict[str, str]:
    return {"QCIMAGE_API_KEYS": key_line("tester", API_KEY), "QCIMAGE_SIGNING_KEYS": SIGNING_KEY,
            "QCIMAGE_PUBLIC_URL": PUBLIC, "QCIMAGE_UPSTREAM_URL": UPSTREAM,
            "QCIMAGE_CACHE_DIR": str(tmp_path / "cache")}


def test_a_stray_env_file_does_not_turn_production_into_development(
        real_environment, tmp_path):
    # QCIMAGE_ENV unset: the documented default, production, whatever the file says.
    real_environment(**production_secrets(tmp_path))
    app = create_app()
    settings = app.extensions["qcimage"].settings
    assert settings.env == "production"
    assert settings.watermark.layers[0].opacity == 0.7
    assert settings.limits.image == "300 per 15 minutes"
    client = app.test_client()
    metrics = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert metrics.status_code == 403


def test_the_env_file_is_read_when_the_real_environment_says_development(
        real_environment, tmp_path):
    real_environment(QCIMAGE_ENV="development", QCIMAGE_CACHE_DIR=str(tmp_path / "cache"))
    settings = create_app().extensions["qcimage"].settings
    assert settings.env == "development"
    assert settings.watermark.layers[0].opacity == 0.05


def test_the_env_file_cannot_override_the_real_environment(real_environment, tmp_path):
    real_environment(QCIMAGE_ENV="development", QCIMAGE_CACHE_DIR=str(tmp_path / "cache"),
                     QCIMAGE_WATERMARK_OPACITY="0.9")
    assert create_app().extensions["qcimage"].settings.watermark.layers[0].opacity == 0.9


FORGED = "2026-12-02 09:00:00,000 INFO    qcimage.access 1 [x] GET /admin 200 forged"


def test_text_logs_keep_a_crafted_path_on_one_line(env, capsys):
    client = create_app({**env, "QCIMAGE_LOG_FORMAT": "text"}).test_client()
    capsys.readouterr()
    # Percent-decoded by the server into CR, LF, ESC and U+2028 inside request.path.
    client.get("/nope%0d%0a" + FORGED.replace(" ", "%20") + "%1b[2J%e2%80%a8end")
    lines = capsys.readouterr().err.splitlines()
    access = [line for line in lines if "qcimage.access" in line]
    assert len(access) == 1, lines
    assert not any(line.startswith("2026-12-02 09:00:00") for line in lines), lines
    assert "/nope\\r\\n2026-12-02 09:00:00" in access[0]
    assert "\\x1b[2J\\u2028end" in access[0]


# --- forwarded headers: believed from the configured proxies only ----------------------

PROXY = "127.0.0.1"
STRANGER = "203.0.113.5"
SPOOFED = {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https",
           "X-Forwarded-Host": "evil.example"}


@pytest.fixture
def proxied(env):
    """Production behind one proxy, allowed to forward from the default loopback only."""
    env.update({"QCIMAGE_TRUSTED_PROXIES": "1", "QCIMAGE_IMAGE_RATE_LIMIT": "2 per minute"})
    return create_app(env).test_client()


def test_a_direct_client_cannot_spoof_its_address_into_the_metrics_allow_list(proxied):
    spoofed = proxied.get("/metrics", headers=SPOOFED, environ_base={"REMOTE_ADDR": STRANGER})
    assert spoofed.status_code in (301, 302, 403)
    assert "evil.example" not in spoofed.headers.get("Location", "")
    https = proxied.get("/metrics", headers=SPOOFED, base_url="https://qc.example.com",
                        environ_base={"REMOTE_ADDR": STRANGER})
    assert https.status_code == 403
    # The same headers from the proxy are believed: the client is the one it names.
    headers = {**SPOOFED, "X-Forwarded-Host": "qc.example.com"}
    through_proxy = proxied.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": PROXY})
    assert through_proxy.status_code == 200


def test_a_direct_client_cannot_point_https_redirects_at_another_host(proxied):
    headers = {**SPOOFED, "X-Forwarded-Proto": "http"}
    response = proxied.get("/api/qc-images?id=1", headers=headers,
                           environ_base={"REMOTE_ADDR": STRANGER})
    assert response.status_code in (301, 302)
    assert response.headers["Location"].startswith("https://localhost/")


def test_a_direct_client_cannot_dodge_the_rate_limit_with_made_up_addresses(proxied):
    statuses = [proxied.get("/api/image?url=x", base_url="https://qc.example.com",
                            headers={"X-Forwarded-For": f"198.51.100.{n}"},
                            environ_base={"REMOTE_ADDR": STRANGER}).status_code
                for n in range(3)]
    assert statuses[:2] == [403, 403] and statuses[2] == 429, statuses


def test_forwarded_headers_are_believed_from_the_configured_proxy_addresses(env):
    env.update({"QCIMAGE_TRUSTED_PROXIES": "1", "QCIMAGE_FORWARDED_ALLOW_IPS": "10.0.0.0/8",
                "QCIMAGE_METRICS_ALLOW": "192.0.2.7/32"})
    client = create_app(env).test_client()
    forwarded = {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https"}
    assert client.get("/metrics", headers=forwarded,
                      environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    # Loopback is no longer a proxy once the operator names others.
    assert client.get("/metrics", headers=forwarded, base_url="https://qc.example.com",
                      environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403
