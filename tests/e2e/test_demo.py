"""`make demo` really runs end to end: look-up, then a watermarked image."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.harness import ROOT, clean_env, free_port


@pytest.mark.e2e
def test_demo_check_mode_serves_an_image():
    port = free_port()
    result = subprocess.run([sys.executable, "-m", "tools.demo", "--port", str(port), "--check"],
                            cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "API key   demo-" in result.stdout
    assert f"http://127.0.0.1:{port}/api/image?url=" in result.stdout
    assert "image: 200 image/webp" in result.stdout
