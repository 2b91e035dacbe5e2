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
    assert settings.watermark[0].opacity == 0.7
    assert settings.image_limit == "300 per 15 minutes"
    client = app.test_client()
    metrics = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert metrics.status_code == 403


def test_the_env_file_is_read_when_the_real_environment_says_development(
        real_environment, tmp_path):
    real_environment(QCIMAGE_ENV="development", QCIMAGE_CACHE_DIR=str(tmp_path / "cache"))
    settings = create_app().extensions["qcimage"].settings
    assert settings.env == "development"
    assert settings.watermark[0].opacity == 0.05


def test_the_env_file_cannot_override_the_real_environment(real_environment, tmp_path):
    real_environment(QCIMAGE_ENV="development", QCIMAGE_CACHE_DIR=str(tmp_path / "cache"),
                     QCIMAGE_WATERMARK_OPACITY="0.9")
    assert create_app().extensions["qcimage"].settings.watermark[0].opacity == 0.9
