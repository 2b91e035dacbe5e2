"""The ``qcimage`` console script: stdout is exactly the line to set, notes go to stderr."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qcimage.cli import keys_cli, secrets_cli
from qcimage.config import load_settings

OTHER = "other:" + "0" * 64


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Run a command in an empty folder (no .env) with only the given QCIMAGE_* set."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("QCIMAGE_"):
            monkeypatch.delenv(name)

    def invoke(group, *args, **env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return CliRunner().invoke(group, list(args))
    return invoke


def test_keys_create_prints_the_key_once_and_exactly_the_line_to_set(run):
    result = run(keys_cli, "create", "shop-a", QCIMAGE_API_KEYS=OTHER)
    assert result.exit_code == 0
    note, how = result.stderr.splitlines()
    key = note.removeprefix("API key for shop-a (shown once, give it to the client): ")
    assert key.startswith("qci_") and len(key) > 40
    assert how == ("Set this line in the service's environment (it holds only the key's SHA-256; "
                   "the keys already in the environment are kept), then restart:")
    assert result.stdout == (f"QCIMAGE_API_KEYS={OTHER},shop-a:"
                             f"{hashlib.sha256(key.encode()).hexdigest()}\n")
    assert key not in result.stdout
    # The line is accepted as it is by the service's own configuration reader.
    name, _, value = result.stdout.strip().partition("=")
    env = {"QCIMAGE_SIGNING_KEYS": "s" * 32, "QCIMAGE_PUBLIC_URL": "https://qc.example.com"}
    assert sorted(load_settings({**env, name: value}).api_keys.values()) == ["other", "shop-a"]


def test_keys_list_says_where_it_looked(run):
    empty = run(keys_cli, "list")
    assert empty.exit_code == 0 and empty.stdout == ""
    assert empty.stderr == ("no keys: QCIMAGE_API_KEYS is set neither in the environment nor "
                            "in ./.env (`qcimage keys create NAME` makes one)\n")
    listed = run(keys_cli, "list", QCIMAGE_API_KEYS=f"shop:{'1' * 64},{OTHER}")
    assert listed.stdout == "shop\nother\n"
    assert listed.stderr == "2 key(s) in QCIMAGE_API_KEYS, read from the environment:\n"


def test_keys_list_reads_the_env_file_development_reads(run, tmp_path):
    (tmp_path / ".env").write_text(f"QCIMAGE_API_KEYS={OTHER}\n")
    listed = run(keys_cli, "list", QCIMAGE_ENV="development")
    assert listed.stdout == "other\n"
    assert listed.stderr == ("1 key(s) in QCIMAGE_API_KEYS, read from ./.env "
                             "(read in development):\n")


def test_keys_list_ignores_a_stray_env_file_outside_development(run, tmp_path):
    (tmp_path / ".env").write_text(f"QCIMAGE_ENV=development\nQCIMAGE_API_KEYS={OTHER}\n")
    listed = run(keys_cli, "list")
    assert listed.stdout == ""
    assert listed.stderr.startswith("no keys: QCIMAGE_API_KEYS is set neither")


@pytest.mark.parametrize("args", [("list",), ("create", "shop"), ("revoke", "shop")])
def test_a_tenants_file_is_named_as_where_keys_live_and_refused_for_now(run, args):
    result = run(keys_cli, *args, QCIMAGE_TENANTS_FILE="/etc/qcimage/tenants.toml")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: QCIMAGE_TENANTS_FILE=/etc/qcimage/tenants.toml is set, so API keys would live "
        "in that file, not in QCIMAGE_API_KEYS; but tenants files are not supported by this "
        "version of qcimage yet. Unset QCIMAGE_TENANTS_FILE and use QCIMAGE_API_KEYS.\n")


def test_revoking_an_unknown_key_says_where_it_looked(run):
    result = run(keys_cli, "revoke", "shop")
    assert result.exit_code == 1
    assert result.stderr == ("Error: no key named 'shop' in QCIMAGE_API_KEYS "
                             "(read from nowhere: it is unset)\n")


def test_signing_key_prints_the_line_to_set_keeping_old_keys_after_it(run):
    first = run(secrets_cli, "signing-key")
    assert first.exit_code == 0
    name, _, value = first.stdout.strip().partition("=")
    assert name == "QCIMAGE_SIGNING_KEYS" and len(value) >= 32 and "," not in value
    assert "keep it secret" in first.stderr
    rotated = run(secrets_cli, "signing-key", QCIMAGE_SIGNING_KEYS=value)
    new, old = rotated.stdout.strip().partition("=")[2].split(",")
    assert old == value and new != value and len(new) >= 32
    assert "drop them once those links expired" in rotated.stderr
    env = {"QCIMAGE_API_KEYS": OTHER, "QCIMAGE_PUBLIC_URL": "https://qc.example.com"}
    assert load_settings({**env, "QCIMAGE_SIGNING_KEYS": f"{new},{old}"}).signing_keys == (
        new, old)


def test_the_console_script_runs_both_groups_without_the_app(tmp_path):
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "qcimage"), "secrets", "signing-key"],
        cwd=tmp_path, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("QCIMAGE_SIGNING_KEYS=")
