"""Run wrk against loopback URLs and read its summary back as numbers."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured; latencies in milliseconds."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int
    connections: int


def _ms(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, connections: int = 0) -> WrkResult:
    """Read ``wrk --latency`` output; ValueError when a required line is missing."""
    percentiles = {int(p): _ms(v) for p, v in
                   re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", output, re.M)}
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if total is None or rps is None or not {50, 90, 99} <= percentiles.keys():
        raise ValueError("wrk output lacks the summary (was --latency given?):\n" + output)
    non_ok = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:\s+connect (\d+), read (\d+), write (\d+), "
                       r"timeout (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx_3xx=int(non_ok.group(1)) if non_ok else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        connections=connections,
    )


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rotation_script(paths: list[str]) -> str:
    """A wrk Lua script that sends ``paths`` in turn (each wrk thread keeps its own turn)."""
    if not paths:
        raise ValueError("no paths to rotate")
    listed = ",\n  ".join(_lua_string(path) for path in paths)
    return (f"local paths = {{\n  {listed}\n}}\n"
            "local i = 0\n"
            "request = function()\n"
            "  i = i % #paths + 1\n"
            "  return wrk.format(nil, paths[i])\n"
            "end\n")


def _is_lab_host(hostname: str | None) -> bool:
    from tools.netns import SUPERNET

    try:
        return ipaddress.ip_address(hostname or "") in SUPERNET
    except ValueError:
        return False


def run_wrk(urls: list[str], *, connections: int, duration: float,
            headers: dict[str, str] | None = None, threads: int = 2,
            timeout: float = 10.0) -> WrkResult:
    """Load ``urls`` (same host, rotated) for ``duration`` seconds with wrk."""
    base = urlsplit(urls[0])
    # This machine only: loopback, or a test host of tools.netns on it.
    if base.hostname != "127.0.0.1" and not _is_lab_host(base.hostname):
        raise ValueError("the benchmarks only send load to 127.0.0.1 or a tools.netns host")
    paths = []
    for url in urls:
        parts = urlsplit(url)
        if parts.netloc != base.netloc:
            raise ValueError("all URLs of one wrk run must share a host")
        paths.append(parts.path + ("?" + parts.query if parts.query else ""))
    threads = max(1, min(threads, connections))
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "rotate.lua"
        script.write_text(rotation_script(paths))
        argv = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s",
                f"--timeout={timeout:g}s", "-s", str(script)]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(f"{base.scheme}://{base.netloc}/")
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=duration + timeout + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, connections)
