"""systemd/qcimage.service: systemd accepts it, and it restarts, reloads and confines gunicorn."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tools.harness import GUNICORN_CONF, ROOT, clean_env

UNIT = ROOT / "systemd" / "qcimage.service"
INSTALLED = "/opt/qcimage"


def systemd_analyze():
    path = shutil.which("systemd-analyze")
    # Fail, not skip: `make test` installs Debian's systemd, which provides it.
    assert path, "systemd-analyze is missing; `make test` installs it (apt-get install systemd)"
    return path


def rendered(tmp_path: Path) -> Path:
    """The unit as installed, pointed at this checkout (verify checks ExecStart exists)."""
    unit = tmp_path / "qcimage.service"
    gunicorn = Path(sys.executable).parent / "gunicorn"
    unit.write_text(UNIT.read_text().replace(f"{INSTALLED}/.venv/bin/gunicorn", str(gunicorn)))
    return unit


def service():
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#",))
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_analyze_verify_accepts_the_unit_without_a_word(tmp_path):
    result = subprocess.run([systemd_analyze(), "verify", rendered(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, only saying so: both must be silent.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == ""


def test_systemd_rates_the_unit_well_confined(tmp_path):
    result = subprocess.run([systemd_analyze(), "security", "--offline=yes", rendered(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    assert float(exposure.group(1)) <= 2.0, result.stdout


def test_the_unit_restarts_reloads_and_stops_gracefully():
    unit = service()
    assert unit["Restart"] == "always"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["ExecStart"] == f"{INSTALLED}/.venv/bin/gunicorn -c {INSTALLED}/gunicorn.conf.py"
    assert unit["KillMode"] == "mixed"
    probe = f"import runpy; print(runpy.run_path({str(GUNICORN_CONF)!r})['graceful_timeout'])"
    graceful = int(subprocess.run([sys.executable, "-c", probe], env=clean_env(),
                                  capture_output=True, text=True, check=True).stdout)
    assert int(unit["TimeoutStopSec"]) > graceful


def test_the_unit_is_hardened_and_writes_only_its_cache_and_run_folders():
    unit = service()
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "PrivateDevices": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert unit[key] == value, key
    environment = dict(line.split("=", 1) for line in
                       re.findall(r"^Environment=(\S+)$", UNIT.read_text(), re.M))
    assert environment["QCIMAGE_CACHE_DIR"] == f"/var/cache/{unit['CacheDirectory']}"
    assert environment["QCIMAGE_METRICS_DIR"].startswith(f"/run/{unit['RuntimeDirectory']}/")
    assert unit["User"] != "root"
