"""Installing qcimage: a quiet build that ships the policy and the docs page's files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tools.harness import ROOT


def test_the_wheel_builds_without_warnings_and_carries_its_data_files(tmp_path):
    source = tmp_path / "src"
    # What an install reads, __pycache__ folders included as a working tree has them.
    shutil.copytree(ROOT / "qcimage", source / "qcimage")
    (source / "qcimage" / "__pycache__").mkdir(exist_ok=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", source],
        capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    [wheel] = (tmp_path / "dist").glob("qcimage-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"qcimage/policy/policy.xml", "qcimage/templates/docs.html",
            "qcimage/templates/docs.js", "qcimage/static/gallery/index.html",
            "qcimage/static/gallery/gallery.js", "qcimage/static/gallery/gallery.css",
            "qcimage/static/gallery/icon.svg"} <= set(names)
    assert not [name for name in names if "__pycache__" in name]
