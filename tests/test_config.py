"""Settings from QCIMAGE_* variables: defaults, validation, production's demands."""

from __future__ import annotations

import pytest

from qcimage.config import ConfigError, load_settings
from qcimage.keys import hash_api_key
from tests.conftest import key_line


def test_defaults_match_the_design(env):
    settings = load_settings(env)
    assert settings.is_production
    assert settings.upstream.url == "https://upstream.test"
    assert settings.limits.storage_uri == "memory://"
    assert settings.trusted_proxies == 0
    assert settings.limits.lookup == "100 per 15 minutes"
    assert settings.limits.image == "300 per 15 minutes"
    assert settings.cache.redis_url is None
    assert settings.cors_origins == ()
    assert (settings.workers.render_slots, settings.workers.render_nice) == (2, 10)
    assert load_settings({k: v for k, v in env.items() if k != "QCIMAGE_UPSTREAM_URL"}
                         ).upstream.url == "https://doppel.fit"


def test_api_keys_are_read_as_name_and_hash(env):
    env["QCIMAGE_API_KEYS"] = key_line("shop", "k1") + "," + key_line("lab", "k2")
    assert load_settings(env).api_keys == {hash_api_key("k1"): "shop", hash_api_key("k2"): "lab"}


@pytest.mark.parametrize("value", ["shop", "shop:abc", "shop:" + "g" * 64, ":" + "a" * 64])
def test_malformed_api_keys_are_refused(env, value):
    env["QCIMAGE_API_KEYS"] = value
    with pytest.raises(ConfigError, match="name:sha256hex"):
        load_settings(env)


@pytest.mark.parametrize("name, value, message", [
    ("QCIMAGE_TRUSTED_PROXIES", "many", "integer"),
    ("QCIMAGE_TRUSTED_PROXIES", "-1", "between"),
    ("QCIMAGE_SIGNING_KEYS", "short", "32 characters"),
    ("QCIMAGE_PUBLIC_URL", "qc.example.com", "http"),
    ("QCIMAGE_WATERMARK_POSITION", "top", "must be one of"),
    ("QCIMAGE_WATERMARK_OPACITY", "2", "between"),
    ("QCIMAGE_WATERMARK_TILE", "maybe", "true or false"),
    ("QCIMAGE_ENV", "staging", "must be one of"),
    ("QCIMAGE_AUTO_FORMATS", "webp,gif", "AUTO_FORMATS"),
    ("QCIMAGE_SRCSET_WIDTHS", "50,960", "SRCSET_WIDTHS"),
    ("QCIMAGE_AUTO_FORMATS", "jpeg,avif", "last one is the fallback"),
    ("QCIMAGE_IMAGE_RATE_LIMIT", "lots", "IMAGE_RATE_LIMIT"),
    ("QCIMAGE_LOOKUP_RATE_LIMIT", "1 per frobnicate", "LOOKUP_RATE_LIMIT"),
    ("QCIMAGE_IMAGE_FETCH_TIMEOUT", "25", "WORKER_TIMEOUT"),
    ("QCIMAGE_RENDER_NICE", "20", "between"),
    ("QCIMAGE_RENDER_NICE", "-5", "between"),
])
def test_invalid_values_say_what_is_wrong(env, name, value, message):
    env[name] = value
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        load_settings({"QCIMAGE_ENV": "production", "QCIMAGE_TRUSTED_PROXIES": "x"})
    text = str(error.value)
    assert "QCIMAGE_TRUSTED_PROXIES" in text and "QCIMAGE_API_KEYS" in text


def test_watermark_can_be_text_logos_or_both(env, tmp_path):
    env.update({"QCIMAGE_WATERMARK_TEXT": "none",
                "QCIMAGE_WATERMARK_LOGOS": f"{tmp_path}/a.png,{tmp_path}/b.png"})
    layers = load_settings(env).watermark.layers
    assert [layer.logo.name for layer in layers] == ["a.png", "b.png"]
    env["QCIMAGE_WATERMARK_LOGOS"] = ""
    with pytest.raises(ConfigError, match="watermark is required"):
        load_settings(env)


def test_force_https_defaults_on_only_behind_a_proxy_in_production(env):
    assert load_settings(env).force_https is False
    env["QCIMAGE_TRUSTED_PROXIES"] = "1"
    assert load_settings(env).force_https is True
    env["QCIMAGE_FORCE_HTTPS"] = "false"
    assert load_settings(env).force_https is False


def test_development_secrets_are_made_once_per_cache_folder(tmp_path):
    env = {"QCIMAGE_ENV": "development", "QCIMAGE_CACHE_DIR": str(tmp_path / "a")}
    first, again = load_settings(env), load_settings(env)
    assert first.signing_keys == again.signing_keys
    assert first.api_keys == again.api_keys and first.demo_secrets == again.demo_secrets
    assert (tmp_path / "a" / "development-secrets.json").stat().st_mode & 0o077 == 0
    other = load_settings({**env, "QCIMAGE_CACHE_DIR": str(tmp_path / "b")})
    assert other.signing_keys != first.signing_keys
    # A key given in the environment wins over the invented one.
    given = load_settings({**env, "QCIMAGE_DEMO_API_KEY": "demo-mine"})
    assert given.demo_secrets == {"api_key": "demo-mine"}
    assert given.signing_keys == first.signing_keys


def test_damaged_development_secrets_say_how_to_recover(tmp_path):
    (tmp_path / "development-secrets.json").write_text("{")
    with pytest.raises(ConfigError, match="development-secrets.json is damaged: delete it"):
        load_settings({"QCIMAGE_ENV": "development", "QCIMAGE_CACHE_DIR": str(tmp_path)})


def test_an_unwritable_cache_folder_says_what_to_set(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as error:
        load_settings({"QCIMAGE_ENV": "development", "QCIMAGE_CACHE_DIR": str(blocker / "c")})
    assert error.value.problems == [
        f"cannot keep development secrets in {blocker / 'c' / 'development-secrets.json'} "
        "(Not a directory): set QCIMAGE_CACHE_DIR to a folder this user can write"]


def test_a_config_error_lists_its_problems_one_per_line():
    assert ConfigError("one thing").problems == ["one thing"]
    assert str(ConfigError(["a", "b"])) == "invalid configuration:\n  - a\n  - b"
