"""The processes under test: gunicorn in production mode against the stand-in upstream."""

from __future__ import annotations

import hashlib
import itertools
import json
import runpy
import secrets
import time
from pathlib import Path

import requests

from tools import harness
from tools.samples import PRODUCTS

# High enough that no benchmark request is ever refused: 429s would be measured as speed.
BENCH_RATE_LIMIT = "1000000 per hour"
# The max-quality source policy the default one is compared with: the whole picture, lossless.
FULL_SOURCE = {"QCIMAGE_SOURCE_WIDTH": "5000", "QCIMAGE_SOURCE_FORMAT": "png",
               "QCIMAGE_SOURCE_QUALITY": "100"}


def default_workers() -> int:
    """The worker count gunicorn.conf.py picks on this machine when none is configured."""
    return runpy.run_path(str(harness.GUNICORN_CONF))["default_workers"]()


def default_threads() -> int:
    """The threads per worker gunicorn.conf.py runs when none are configured."""
    return runpy.run_path(str(harness.GUNICORN_CONF))["DEFAULT_THREADS"]


def product_of(image_id: str) -> tuple[str, str]:
    """(platform, product id) of the first catalogue product listing ``image_id``."""
    for (platform, product_id), product in PRODUCTS.items():
        if image_id in product.image_ids:
            return platform, product_id
    raise KeyError(f"no product lists {image_id}")


def production_env(upstream_url: str, public_url: str, cache_dir: Path,
                   **overrides: str) -> tuple[dict[str, str], str]:
    """(QCIMAGE_* environment, plain API key): production mode as the e2e tests run it."""
    api_key = secrets.token_urlsafe(24)
    env = {
        "QCIMAGE_ENV": "production",
        "QCIMAGE_API_KEYS": "bench:" + hashlib.sha256(api_key.encode()).hexdigest(),
        "QCIMAGE_SIGNING_KEYS": secrets.token_urlsafe(32),
        "QCIMAGE_PUBLIC_URL": public_url,
        "QCIMAGE_UPSTREAM_URL": upstream_url,
        "QCIMAGE_CACHE_DIR": str(cache_dir),
        "QCIMAGE_LOOKUP_RATE_LIMIT": BENCH_RATE_LIMIT,
        "QCIMAGE_IMAGE_RATE_LIMIT": BENCH_RATE_LIMIT,
        # Limits are set out of reach here; counting them per worker changes nothing.
        "QCIMAGE_RATELIMIT_PER_WORKER": "true",
        **overrides,
    }
    return env, api_key


def _qualities_near_default() -> list[int]:
    # Cold requests need distinct URLs; qualities closest to the default 80 come first so
    # that the encoder's work stays close to what the default URL costs.
    return sorted(range(1, 101), key=lambda q: (abs(q - 80), q))


class Service:
    """One gunicorn instance with its API key, signed-URL look-ups and log records."""

    def __init__(self, server: harness.Gunicorn, api_key: str, label: str, env: dict[str, str]):
        self.server = server
        self.api_key = api_key
        self.label = label
        self.env = env
        self.session = requests.Session()
        self._urls: dict[tuple[str, int, int, str], str] = {}
        self._unused: dict[tuple[str, int, str], list[int]] = {}
        self._ids = itertools.count()

    @property
    def url(self) -> str:
        return self.server.url

    def lookup(self, platform: str, product_id: str, *, width: int = 960, quality: int = 80,
               fmt: str = "webp") -> dict:
        response = self.session.get(
            f"{self.url}/api/qc-images", headers={"X-API-Key": self.api_key}, timeout=30,
            params={"id": product_id, "storePlatform": platform, "width": width,
                    "quality": quality, "format": fmt})
        response.raise_for_status()
        return response.json()

    def image_url(self, image_id: str, width: int, quality: int, fmt: str) -> str:
        """The signed URL the look-up returns for this image and rendition."""
        key = (image_id, width, quality, fmt)
        if key not in self._urls:
            platform, product_id = product_of(image_id)
            body = self.lookup(platform, product_id, width=width, quality=quality, fmt=fmt)
            for image in body["images"]:
                self._urls[(image["original"], width, quality, fmt)] = image["watermarked"]
        return self._urls[key]

    def fresh_url(self, image_id: str, width: int, fmt: str) -> str:
        """A signed URL this server has never rendered (a quality not used before)."""
        unused = self._unused.setdefault((image_id, width, fmt), _qualities_near_default())
        if not unused:
            raise RuntimeError(f"no unused quality left for {image_id} {width} {fmt}")
        return self.image_url(image_id, width, unused.pop(0), fmt)

    def request_id(self) -> str:
        return f"bench-{self.label}-{next(self._ids)}"

    def get(self, url: str, request_id: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[requests.Response, float]:
        """GET on a fresh connection (as browsers arriving one by one); (response, ms)."""
        headers = dict(headers or {})
        if request_id:
            headers["X-Request-ID"] = request_id
        started = time.perf_counter()
        response = requests.get(url, headers=headers, timeout=60)
        return response, (time.perf_counter() - started) * 1000

    def access_records(self) -> list[dict]:
        """The app's JSON access records so far (its own line, not gunicorn's)."""
        records = []
        for line in self.server.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") == "qcimage.access":
                records.append(record)
        return records

    def log_records(self, wanted: set[str], timeout: float = 5.0) -> dict[str, dict]:
        """The app's JSON access records of these request ids, waiting briefly for stragglers."""
        deadline = time.monotonic() + timeout
        while True:
            found = {record["request_id"]: record for record in self.access_records()
                     if record.get("request_id") in wanted}
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def worker_boots(self) -> int:
        """Workers booted so far (recycled workers included)."""
        return self.server.log_text().count("Booting worker with pid")

    def worker_peak_rss(self) -> dict[int, int]:
        """{worker pid: peak resident set (VmHWM) in bytes} of the current workers."""
        peaks = {}
        for pid in self.server.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) * 1024
        return peaks

    def stop(self) -> None:
        self.session.close()
        self.server.stop()


def start_service(upstream: harness.Upstream, tmp: Path, label: str, workers: int,
                  **overrides: str) -> Service:
    """gunicorn in production mode with a fresh cache folder, ready and fully forked."""
    port = harness.free_port()
    public_url = f"http://127.0.0.1:{port}"
    env, api_key = production_env(upstream.url, public_url, tmp / f"cache-{label}", **overrides)
    server = harness.start_gunicorn(env, workers, tmp=tmp, port=port)
    return Service(server, api_key, label, env)
