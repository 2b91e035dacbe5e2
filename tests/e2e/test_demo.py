"""`make demo` and development mode do what a person does, on every worker, start after start."""

from __future__ import annotations

import html
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tools.demo import PATIENT_TIMEOUTS
from tools.harness import ROOT, clean_env, free_port, start_gunicorn
from tools.samples import PRODUCTS

DEMO_PORT = 8000
ROUNDS = 3
# "<time> INFO    qcimage.access <pid> [<request id>] GET /api/image 200 12.3ms"
ACCESS_LINE = re.compile(r" qcimage\.access (\d+) \[\S*\] GET (\S+) (\d{3}) ")


def links_of(body: dict) -> list[str]:
    """Every URL a look-up returned: each image's link and each srcset candidate."""
    links = []
    for image in body["images"]:
        links.append(image["watermarked"])
        links += [candidate.rsplit(" ", 1)[0] for candidate in image["srcset"].split(", ")]
    return links


def look_up_and_fetch_everything(base: str, key: str, products, width: int | None = None):
    """Look each product up ROUNDS times, then fetch every returned link ROUNDS times,
    several at once so both workers serve them. Returns the number of links fetched."""
    links = set()
    for _ in range(ROUNDS):
        for product_id, platform, photos in products:
            params = {"id": product_id, "storePlatform": platform}
            if width:
                params["width"] = str(width)
            response = requests.get(f"{base}/api/qc-images", params=params,
                                    headers={"X-API-Key": key}, timeout=60)
            if photos == 0:
                assert response.status_code == 404, response.text
                assert response.json()["error"] == "no_images"
                continue
            assert response.status_code == 200, response.text
            assert response.json()["totalImages"] == photos
            links.update(links_of(response.json()))

    def fetch(link):
        response = requests.get(link, timeout=60)
        return link, response.status_code, response.headers.get("Content-Type")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(fetch, sorted(links) * ROUNDS))
    failed = [result for result in results if result[1:] != (200, "image/webp")]
    assert failed == [], f"{len(failed)} of {len(results)} image fetches failed: {failed[:3]}"
    # Rendered now, so look-ups know every image's size (whichever worker rendered it).
    for product_id, platform, photos in products:
        if photos:
            params = {"id": product_id, "storePlatform": platform, "width": str(width or 960)}
            images = requests.get(f"{base}/api/qc-images", params=params,
                                  headers={"X-API-Key": key}, timeout=60).json()["images"]
            assert all(image["width"] > 0 and image["height"] > 0 for image in images), images
    return len(results)


def workers_serving(log_text: str, path: str) -> Counter:
    """200s per worker pid for ``path``, from the app's access lines."""
    return Counter(pid for pid, seen, status in ACCESS_LINE.findall(log_text)
                   if seen == path and status == "200")


class Demo:
    """``python -m tools.demo`` as a person runs it: read the banner, Ctrl-C to stop."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tools.demo"], cwd=ROOT, env=clean_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready.wait(240)
        self.banner = "".join(self.output)
        if "Press Ctrl-C to stop." not in self.banner:
            self.stop()
            raise AssertionError("the demo printed no banner:\n" + "".join(self.output))

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("Press Ctrl-C to stop."):
                self.ready.set()
        self.ready.set()  # ended without a banner: no need to wait any longer

    def field(self, label: str) -> str:
        match = re.search(rf"^  {label} +(\S+)", self.banner, re.M)
        assert match, f"no {label!r} in the banner:\n{self.banner}"
        return match.group(1)

    def products(self) -> list[tuple[str, str, int]]:
        found = re.findall(r"^ +id=(\S+) +storePlatform=(\S+) +(\d+|no) photos", self.banner,
                           re.M)
        return [(pid, platform, 0 if n == "no" else int(n)) for pid, platform, n in found]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


@pytest.mark.e2e
def test_make_demo_works_twice_in_a_row_on_every_worker():
    for run, width in ((1, None), (2, 300 + int(time.time()) % 700)):
        demo = Demo()
        try:
            base = demo.field("service")
            assert base == f"http://127.0.0.1:{DEMO_PORT}", f"run {run} moved to {base}"
            key = demo.field("API key")
            # Every product of the stand-in upstream is in the banner, with its photo count.
            assert sorted(demo.products()) == sorted(
                (p.product_id, p.platform, len(p.image_ids)) for p in PRODUCTS.values())
            # The banner's own link and curl work as printed.
            assert requests.get(demo.field("image"), timeout=60).status_code == 200
            assert f"curl -s -H 'X-API-Key: {key}' '{base}/api/qc-images?id=" in demo.banner
            # The gallery's address carries the key in its fragment only.
            assert demo.field("gallery") == f"{base}/gallery#key={key}"
            assert requests.get(demo.field("gallery"), timeout=60).status_code == 200
            # This run's upstream, alive: a width no earlier run rendered must reach it.
            upstream = re.search(r"upstream stand-in (\S+)", demo.banner).group(1)
            assert requests.get(upstream + "/_stats", timeout=5).status_code == 200
            fetched = look_up_and_fetch_everything(base, key, demo.products(), width)
            assert fetched >= ROUNDS * 3 * sum(1 for p in PRODUCTS.values() if p.image_ids)
            log = Path(demo.field("logs")).read_text(errors="replace").split(
                "Starting gunicorn")[-1]
            served = workers_serving(log, "/api/image")
            assert len(served) == 2, f"run {run}: images served per worker {dict(served)}"
        finally:
            code = demo.stop()
        assert code == 0, "".join(demo.output)


@pytest.fixture
def development_server(tmp_path, upstream):
    """Plain `QCIMAGE_ENV=development gunicorn -w 2`: no key, no signing key given."""
    port = free_port()
    server = start_gunicorn({
        "QCIMAGE_ENV": "development", "QCIMAGE_UPSTREAM_URL": upstream.url,
        "QCIMAGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "QCIMAGE_CACHE_DIR": tmp_path / "cache", "QCIMAGE_LOG_FORMAT": "text",
        **PATIENT_TIMEOUTS,
    }, workers=2, tmp=tmp_path, port=port)
    # Each worker logs the demo key as it boots; the second may still be on its way.
    deadline = time.monotonic() + 30
    while True:
        server.keys = re.findall(r"development mode: demo API key (\S+)", server.log_text())
        if len(server.keys) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    yield server
    server.stop()


@pytest.mark.e2e
def test_development_mode_with_two_workers_shares_its_invented_secrets(development_server):
    keys = development_server.keys
    assert len(keys) == 2 and len(set(keys)) == 1, keys
    products = [(p.product_id, p.platform, len(p.image_ids)) for p in PRODUCTS.values()]
    look_up_and_fetch_everything(development_server.url, keys[0], products)
    served = workers_serving(development_server.log_text(), "/api/image")
    assert len(served) == 2, f"images served per worker {dict(served)}"


PAGE = """<!doctype html><title>QC photos</title><p id="result">waiting</p>{images}
<script>
  let loaded = 0, failed = 0;
  const all = document.querySelectorAll("img");
  const done = () => {{
    if (loaded + failed === all.length)
      document.getElementById("result").textContent = `loaded=${{loaded}} failed=${{failed}}`;
  }};
  all.forEach((img) => {{
    if (img.complete) {{ img.naturalWidth ? loaded++ : failed++; return done(); }}
    img.onload = () => {{ loaded++; done(); }};
    img.onerror = () => {{ failed++; done(); }};
  }});
</script>"""


@pytest.mark.e2e
def test_a_browser_page_of_four_images_loads_every_one(development_server, tmp_path):
    server, key = development_server, development_server.keys[0]
    tags = []
    for product_id, platform in (("684012345678", "TAOBAO"), ("1688000001", "1688")):
        body = requests.get(f"{server.url}/api/qc-images", headers={"X-API-Key": key},
                            params={"id": product_id, "storePlatform": platform},
                            timeout=60).json()
        tags += [f'<img src="{html.escape(i["watermarked"])}" '
                 f'srcset="{html.escape(i["srcset"])}" sizes="480px" alt="">'
                 for i in body["images"]]
    assert len(tags) == 4
    page = tmp_path / "page.html"
    page.write_text(PAGE.format(images="\n".join(tags)))
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir="
         f"{tmp_path / 'profile'}", "--virtual-time-budget=30000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    assert '<p id="result">loaded=4 failed=0</p>' in result.stdout, result.stdout[-2000:]
    assert sum(workers_serving(server.log_text(), "/api/image").values()) >= 4
