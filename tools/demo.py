"""``make demo``: the stand-in upstream and gunicorn on loopback, with a demo key and URLs."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
from pathlib import Path

import requests

from qcimage.keys import DEVELOPMENT_SECRETS_FILE
from tools.harness import ROOT, free_port, start_gunicorn, start_upstream, stop_all
from tools.samples import PRODUCTS

RUN_DIR = ROOT / "var" / "demo"
SAMPLE_LINK = "https://weidian.com/item.html?itemID=7494645791"
WORKERS = 2
# The stand-in upstream makes every source from a 5000 px original on the same CPUs as
# the renders: on a busy laptop the first look at the demo must not be a wall of 504s.
PATIENT_TIMEOUTS = {
    "QCIMAGE_WORKER_TIMEOUT": "120",
    "QCIMAGE_UPSTREAM_READ_TIMEOUT": "30",
    "QCIMAGE_IMAGE_FETCH_TIMEOUT": "60",
}


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        # As gunicorn binds: a port left in TIME_WAIT by the last demo is still ours.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def sample_products() -> list[str]:
    """One line per product of the stand-in upstream, for the banner and the README."""
    lines = []
    for product in PRODUCTS.values():
        photos = len(product.image_ids)
        count = f"{photos} photos" if photos else "no photos (404 no_images)"
        lines.append(f"id={product.product_id:<13} storePlatform={product.platform:<8} "
                     f"{count:<26} {product.title}")
    return lines


def banner(rows: list[tuple[str, str | list[str]]]) -> str:
    """Label/value rows; a list value continues on indented lines of its own."""
    lines = [f"qcimage demo is running (gunicorn, {WORKERS} workers, development mode)"]
    for label, value in rows:
        if isinstance(value, list):
            lines.append(f"  {label}")
            lines += [f"    {item}" for item in value]
        else:
            lines.append(f"  {label:<9} {value}")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="gunicorn port (if free)")
    args = parser.parse_args(argv)

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    print("starting the stand-in upstream (sample photos are generated on the first run)…",
          flush=True)
    upstream = start_upstream(RUN_DIR)
    port = _port(args.port)
    public = f"http://127.0.0.1:{port}"
    cache = RUN_DIR / "cache"
    server = start_gunicorn({
        "QCIMAGE_ENV": "development",
        "QCIMAGE_PUBLIC_URL": public,
        "QCIMAGE_UPSTREAM_URL": upstream.url,
        "QCIMAGE_CACHE_DIR": cache,
        "QCIMAGE_LOG_FORMAT": "text",
        **PATIENT_TIMEOUTS,
    }, workers=WORKERS, tmp=RUN_DIR, port=port)
    try:
        # Invented by the gunicorn master on the first start and kept with the cache, so
        # the key (and every link) stays the same from one demo to the next.
        key = json.loads((cache / DEVELOPMENT_SECRETS_FILE).read_text())["api_key"]
        platform, product_id = next(iter(PRODUCTS))
        lookup = f"{public}/api/qc-images?id={product_id}&storePlatform={platform}"
        body = requests.get(lookup, headers={"X-API-Key": key}, timeout=30).json()
        print("\n" + banner([
            ("service", f"{public}     upstream stand-in {upstream.url}"),
            ("API key", key),
            ("look-up", f"curl -s -H 'X-API-Key: {key}' '{lookup}'"),
            ("image", body["images"][0]["watermarked"]),
            ("API docs", f"{public}/docs"),
            # The key rides in the fragment, which the browser never sends to a server.
            ("gallery", f"{public}/gallery#key={key}   (paste a link, e.g. {SAMPLE_LINK})"),
            ("sample products (any of them in the look-up):", sample_products()),
            ("logs", str(Path(server.log_path))),
        ]), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # Ctrl-C stops it even when started where SIGINT is ignored (a shell's background
        # job, nohup): Python then never installs its own KeyboardInterrupt handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
