"""The ``qcimage`` console script: stdout is exactly the line to set, notes go to stderr."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qcimage.cli import keys_cli, secrets_cli, tenants_cli
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


@pytest.mark.parametrize("args", [("list",), ("revoke", "shop")])
def test_with_a_tenants_file_keys_are_listed_and_revoked_in_it(run, args):
    result = run(keys_cli, *args, QCIMAGE_TENANTS_FILE="/etc/qcimage/tenants.toml")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: QCIMAGE_TENANTS_FILE=/etc/qcimage/tenants.toml is set, so API keys live in that "
        "file, not in QCIMAGE_API_KEYS: `qcimage tenants check` lists each tenant's keys; to "
        "revoke one, delete its entry from the tenant's api_keys and send gunicorn's master "
        "HUP.\n")


def test_with_a_tenants_file_create_prints_the_api_keys_entry(run):
    result = run(keys_cli, "create", "shop", QCIMAGE_TENANTS_FILE="/etc/qcimage/tenants.toml")
    assert result.exit_code == 0
    key = result.stderr.splitlines()[0].rsplit(" ", 1)[1]
    assert result.stdout == f'"shop:{hashlib.sha256(key.encode()).hexdigest()}"\n'
    assert "api_keys in /etc/qcimage/tenants.toml" in result.stderr


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


def _tenants_file(tmp_path, watermark='{ text = "SHOP-A", position = "north_west" }'):
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.shop-a]\napi_keys = ["site:{"a" * 64}", "{"b" * 64}"]\n'
                    f'cors_origins = ["https://shop-a.example"]\nwatermark = {watermark}\n')
    return path


def test_tenants_check_lists_each_tenant_of_a_valid_file(run, tmp_path):
    path = _tenants_file(tmp_path)
    result = run(tenants_cli, "check", QCIMAGE_TENANTS_FILE=str(path))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"{path}: 1 tenant(s), valid\n"
    assert result.stdout == (
        "shop-a: keys shop-a, site; watermark text 'SHOP-A' north_west; origins "
        "https://shop-a.example; referrers any; look-ups 100 per 15 minutes per key; images "
        "300 per 15 minutes per client IP\n")


def test_tenants_check_lists_every_problem_and_fails(run, tmp_path):
    path = _tenants_file(tmp_path, '{ text = "A", position = "up", opacity = 9 }')
    # Only the file is judged: the service's other settings need not be set here.
    result = run(tenants_cli, "check", "--file", str(path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: 2 problem(s):\n"
        f"  - {path}: tenant 'shop-a', field 'watermark.position': must be one of north_west, "
        "north, north_east, west, center, east, south_west, south, south_east, got 'up'\n"
        f"  - {path}: tenant 'shop-a', field 'watermark.opacity': must be from 0.05 to 1.0, "
        "got 9\n")


def test_tenants_preview_draws_a_contact_sheet(run, tmp_path):
    from PIL import Image

    from qcimage.preview import CELL_WIDTH, SAMPLES, WIDTHS

    out = tmp_path / "sheets" / "shop-a.png"
    result = run(tenants_cli, "preview", "shop-a", "--out", str(out),
                 QCIMAGE_TENANTS_FILE=str(_tenants_file(tmp_path)))
    assert result.exit_code == 0, result.output
    with Image.open(out) as sheet:
        columns = [min(width, CELL_WIDTH) for width in WIDTHS]
        assert sheet.width == sum(columns) + 16 * (len(columns) + 1)
        assert sheet.height > len(SAMPLES) * 360
    assert run(tenants_cli, "preview", "shop-b", "--out", str(out),
               QCIMAGE_TENANTS_FILE=str(_tenants_file(tmp_path))).stderr == \
        "Error: no tenant named 'shop-b'\n"
