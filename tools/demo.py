"""``make demo``: the stand-in upstream and gunicorn on loopback, with a demo key and URLs."""

from __future__ import annotations

import argparse
import secrets
import signal
import socket
import sys
from pathlib import Path

import requests

from tools.harness import ROOT, free_port, start_gunicorn, start_upstream, stop_all

PRODUCT = ("7494645791", "WEIDIAN")


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="gunicorn port (if free)")
    parser.add_argument("--check", action="store_true",
                        help="look up a product, fetch one image, then stop (used by the tests)")
    args = parser.parse_args(argv)

    run_dir = ROOT / "var" / "demo"
    run_dir.mkdir(parents=True, exist_ok=True)
    print("starting the stand-in upstream (sample photos are generated on the first run)…",
          flush=True)
    upstream = start_upstream(run_dir)
    port = _port(args.port)
    key = "demo-" + secrets.token_urlsafe(16)
    public = f"http://127.0.0.1:{port}"
    server = start_gunicorn({
        "QCIMAGE_ENV": "development",
        "QCIMAGE_DEMO_API_KEY": key,
        "QCIMAGE_PUBLIC_URL": public,
        "QCIMAGE_UPSTREAM_URL": upstream.url,
        "QCIMAGE_CACHE_DIR": run_dir / "cache",
        "QCIMAGE_LOG_FORMAT": "text",
    }, workers=2, tmp=run_dir, port=port)
    try:
        lookup = f"{public}/api/qc-images?id={PRODUCT[0]}&storePlatform={PRODUCT[1]}"
        body = requests.get(lookup, headers={"X-API-Key": key}, timeout=30).json()
        image = body["images"][0]["watermarked"]
        print(f"""
qcimage demo is running (gunicorn, 2 workers, development mode)
  service   {public}     upstream stand-in {upstream.url}
  API key   {key}
  look-up   curl -s -H 'X-API-Key: {key}' '{lookup}'
  image     {image}
  logs      {Path(server.log_path)}
Press Ctrl-C to stop.""", flush=True)
        if args.check:
            response = requests.get(image, timeout=60)
            print(f"image: {response.status_code} {response.headers.get('Content-Type')} "
                  f"{len(response.content)} bytes")
            return 0 if response.ok and response.headers["Content-Type"] == "image/webp" else 1
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
