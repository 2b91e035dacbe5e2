"""Several qcimage boxes behind the shipped balancer, each on a host of its own, and a load.

A :class:`Farm` is a :class:`tools.netns.Lab` holding the stand-in upstream, Redis
(Sentinel group and/or cluster, :mod:`tools.redisha`), N boxes (gunicorn with
gunicorn.conf.py as shipped, production settings, a cache folder each) and the
balancer (nginx/qcimage-lb.conf). The test machine is the client, at its own address.

A :class:`Load` runs ``connections`` client threads through the balancer for a bounded
time, mixing look-ups, image hits and image misses, and records every answer, so a
fault test can say exactly which requests failed, when and how. Used by
tests/e2e/scaleout/ and ``make bench`` (bench/scaleout.py).
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
import secrets
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from tools import redisha
from tools.harness import start_gunicorn, start_nginx_lb, start_upstream, wait_http
from tools.netns import Lab
from tools.samples import PRODUCTS

BOX_PORT = 8000
# Products with photos, as (id, platform): the look-ups of the load.
CATALOGUE = [(p.product_id, p.platform) for p in PRODUCTS.values() if p.image_ids]
# Look-ups are limited per key: each load thread has a key of its own, and tests of
# exactness use keys nobody else touches.
LOOKUP_LIMIT = 50
LOOKUP_WINDOW = "10 seconds"


@dataclass
class Answer:
    """One request of a load: when, what, and how it ended."""

    at: float
    kind: str
    status: int | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != 200


@dataclass
class LoadReport:
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.failed]

    @property
    def server_errors(self) -> list[Answer]:
        return [a for a in self.answers if a.status is not None and a.status >= 500]

    def by_kind(self) -> Counter:
        return Counter(a.kind for a in self.answers)

    def summary(self) -> str:
        statuses = Counter(a.status for a in self.answers)
        errors = Counter(a.error for a in self.answers if a.error)
        return (f"{len(self.answers)} requests in {self.seconds:.1f} s "
                f"({dict(self.by_kind())}); statuses {dict(statuses)}; errors {dict(errors)}; "
                f"failed at {[round(a.at, 2) for a in self.failed][:20]}")


class Farm:
    """Upstream, Redis, ``boxes`` qcimage boxes and the balancer, each its own host."""

    def __init__(self, tmp, *, boxes: int = 3, workers: int = 2, redis: tuple = ("sentinel",),
                 extra_env: dict | None = None):
        self.tmp = Path(tmp)
        self.box_names = [f"box{n}" for n in range(1, boxes + 1)]
        self.workers = workers
        self.extra_env = dict(extra_env or {})
        self.lab = Lab(["lb", *self.box_names, "redis", "upstream"])
        self.boxes: dict = {}
        self.sentinel = self.cluster = self.upstream = self.lb = None
        self.signing_key = secrets.token_urlsafe(32)
        self.keys = {f"load{n}": secrets.token_urlsafe(24) for n in range(64)}
        self.keys.update({f"exact{n}": secrets.token_urlsafe(24) for n in range(8)})
        self.redis_url = None
        try:
            self._start(redis)
        except BaseException:
            self.close()
            raise

    def _start(self, redis):
        (self.tmp / "upstream").mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(4) as pool:
            upstream = pool.submit(start_upstream, self.tmp / "upstream",
                                   host=self.lab["upstream"])
            cluster = None
            if "cluster" in redis:
                cluster = pool.submit(redisha.start_cluster, self.tmp / "cluster",
                                      self.lab["redis"])
            if "sentinel" in redis:
                # The master serves at once; the sentinels find each other while the
                # boxes boot.
                self.sentinel = redisha.start_sentinel_group(
                    self.tmp / "sentinel", self.lab["redis"], settle=False)
                settled = pool.submit(self.sentinel.wait_settled)
            self.upstream = upstream.result()
            if self.sentinel is None and cluster is not None:
                self.cluster = cluster.result()
            shared = self.sentinel or self.cluster
            self.redis_url = shared.url if shared else None
            boxes = pool.submit(self.start_boxes)
            self.cluster = cluster and cluster.result()
            if self.sentinel is not None:
                settled.result()
            boxes.result()
        self.balance(self.box_names)
        self.session = requests.Session()

    def balance(self, names, *, image_cache: bool = True):
        """(Re)start the balancer over the boxes ``names`` (benchmarks vary how many)."""
        if self.lb is not None:
            self.lb.stop()
        self.balanced = list(names)
        self.lb = start_nginx_lb(self.tmp / f"lb-{len(names)}-{int(image_cache)}",
                                 [self.box_address(n) for n in names], host=self.lab["lb"],
                                 image_cache=image_cache)

    # ------------------------------------------------------------------ boxes
    def box_address(self, name: str) -> str:
        return f"{self.lab[name].address}:{BOX_PORT}"

    def box_env(self) -> dict:
        key_lines = ",".join(f"{name}:{hashlib.sha256(key.encode()).hexdigest()}"
                             for name, key in self.keys.items())
        env = {
            "QCIMAGE_ENV": "production",
            "QCIMAGE_API_KEYS": key_lines,
            "QCIMAGE_SIGNING_KEYS": self.signing_key,
            "QCIMAGE_PUBLIC_URL": f"https://{self.lab['lb'].address}",
            "QCIMAGE_UPSTREAM_URL": self.upstream.url,
            "QCIMAGE_TRUSTED_PROXIES": "1",
            # The balancer, and this machine when a test asks a box directly as the
            # balancer would (box_get).
            "QCIMAGE_FORWARDED_ALLOW_IPS": f"{self.lab['lb'].address},{self.lab.client_address}",
            "QCIMAGE_METRICS_ALLOW": "*",
            "QCIMAGE_LOOKUP_RATE_LIMIT": f"{LOOKUP_LIMIT} per {LOOKUP_WINDOW}",
            "QCIMAGE_IMAGE_RATE_LIMIT": "100000 per minute",
            "QCIMAGE_ACCESS_LOG": "off",
            # The stand-in encodes every miss on the cores the three boxes, Redis and the
            # load share. gthread boxes ask it for all their misses at once (sync workers
            # asked one at a time), and under that load an encode can outlast the default
            # 5 s read timeout: a slow stand-in, not a fault under test, would trip the
            # breaker. A real upstream's resizer is not on the box's cores.
            "QCIMAGE_UPSTREAM_READ_TIMEOUT": "15",
            "QCIMAGE_IMAGE_FETCH_TIMEOUT": "20",
            "QCIMAGE_WORKER_TIMEOUT": "45",
        }
        if self.redis_url:
            env["QCIMAGE_REDIS_URL"] = env["QCIMAGE_RATELIMIT_STORAGE_URI"] = self.redis_url
        else:
            env["QCIMAGE_RATELIMIT_PER_WORKER"] = "true"
        return {**env, **self.extra_env}

    def start_box(self, name: str):
        host = self.lab[name]
        env = {**self.box_env(), "QCIMAGE_CACHE_DIR": self.tmp / f"cache-{name}"}
        self.boxes[name] = start_gunicorn(env, self.workers, tmp=self.tmp, port=BOX_PORT,
                                          host=host)
        return self.boxes[name]

    def start_boxes(self, names=None):
        with ThreadPoolExecutor(len(self.box_names)) as pool:
            list(pool.map(self.start_box, names or self.box_names))

    def restart_box(self, name: str):
        """Start a stopped or killed box again, same host, same settings; wait until ready."""
        box = self.boxes[name]
        box.start()
        wait_http(box.url + "/health", 60, process=box)
        box.wait_workers(self.workers)

    def kill_box(self, name: str):
        """kill -9 the master and every worker at once, as a machine that loses power."""
        self.boxes[name].stop(sig=signal.SIGKILL, timeout=5)

    def stop_box(self, name: str):
        """SIGTERM: gunicorn stops listening and lets its workers finish (graceful)."""
        self.boxes[name].stop(sig=signal.SIGTERM, timeout=40)

    def reload_box(self, name: str, timeout=60.0):
        """HUP: new workers with fresh code and settings, old ones finish their requests."""
        box = self.boxes[name]
        before = set(box.worker_pids())
        box.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            now = set(box.worker_pids())
            if len(now) == self.workers and not now & before:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not replace its workers after HUP")
            time.sleep(0.1)

    def served(self, name: str, route: str, status: str | None = None) -> float:
        """How many requests ``name`` answered on ``route`` (with ``status``), per /metrics."""
        text = self.box_get(name, "/metrics").text
        status_part = f'[^}}]*status="{status}"' if status else ""
        return sum(float(value) for value in re.findall(
            r'^qcimage_http_requests_total\{[^}]*route="' + re.escape(route) + '"'
            + status_part + r"[^}]*\} (\S+)$", text, re.M))

    def wait_in_rotation(self, name: str, routes=("/api/image", "/api/qc-images"),
                         timeout=30.0):
        """Until the balancer sends ``name`` traffic again on every route (a load runs).

        nginx keeps a box it saw fail out for fail_timeout, per upstream group; only
        then is it safe to stop the next box.
        """
        before = {route: self.served(name, route) for route in routes}
        deadline = time.monotonic() + timeout
        while not all(self.served(name, route) > before[route] for route in routes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the balancer sent {name} no traffic on {routes}")
            time.sleep(0.2)

    def box_get(self, name: str, path: str, **kwargs):
        """GET from one box directly, as the balancer would (HTTPS said by the proxy)."""
        headers = {"X-Forwarded-Proto": "https", **kwargs.pop("headers", {})}
        return requests.get(self.boxes[name].url + path, timeout=30, headers=headers,
                            allow_redirects=False, **kwargs)

    def readiness(self) -> dict[str, dict]:
        return {name: self.box_get(name, "/health/ready").json() for name in self.box_names}

    def box_logs(self, name: str) -> str:
        """What the box logged since it last started."""
        return self.boxes[name].log_text(this_start=True)

    # ------------------------------------------------------------------ clients
    def get(self, path: str, key: str | None = None, **kwargs):
        headers = {"X-API-Key": self.keys[key]} if key else {}
        # verify per request: a Session's verify loses to REQUESTS_CA_BUNDLE in the environment.
        return self.session.get(self.lb.url + path, headers=headers, timeout=60,
                                verify=self.lb.ca_bundle, **kwargs)

    def look_up(self, key: str, product=CATALOGUE[0], width: int | None = None):
        params = {"id": product[0], "storePlatform": product[1]}
        if width:
            params["width"] = width
        return self.get("/api/qc-images", key, params=params)

    def close(self):
        """Stop everything at once (nothing is in flight any more), then the lab."""
        groups = [g for g in (self.sentinel, self.cluster) if g is not None]
        processes = [p for p in [self.lb, *self.boxes.values(), self.upstream,
                                 *(process for g in groups for process in g.processes)]
                     if p is not None]
        with ThreadPoolExecutor(max(len(processes), 1)) as pool:
            list(pool.map(lambda p: p.stop(timeout=10), processes))
        self.lab.close()


class Load:
    """``connections`` threads of look-ups, image hits and image misses through the balancer.

    Of every ten requests a thread makes, about five are hits (images rendered before
    the load), three look-ups and two a miss (a look-up at a width nobody asked for,
    then its first image). Each thread has an API key of its own.
    """

    def __init__(self, farm: Farm, *, connections: int = 32, seconds: float = 12.0):
        self.farm = farm
        self.connections = connections
        self.seconds = seconds
        self.report = LoadReport()
        self.hit_urls: list[str] = []
        self.misses = itertools.count()
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None

    def again(self, seconds: float | None = None) -> Load:
        """A fresh load over the same farm and hit pool (widths keep counting)."""
        load = Load(self.farm, connections=self.connections, seconds=seconds or self.seconds)
        load.hit_urls, load.misses = self.hit_urls, self.misses
        return load

    def warm(self):
        """Render the hit pool: every catalogue image at the default width, via the LB."""
        for product in CATALOGUE:
            for image in self.farm.look_up("exact7", product).json()["images"]:
                path = path_of(image["watermarked"])
                assert self.farm.get(path).status_code == 200
                self.hit_urls.append(path)
        return self

    def __enter__(self):
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="load")
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.wait()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def finish(self) -> LoadReport:
        """End the load now (before its time is up) and wait for its last answers."""
        self.finished.set()
        return self.wait()

    def wait(self) -> LoadReport:
        if self.thread is not None:
            self.thread.join()
        return self.report

    def _run(self):
        deadline = self.started + self.seconds
        keys = [f"load{n}" for n in range(self.connections)]
        with ThreadPoolExecutor(self.connections) as pool:
            for key in keys:
                pool.submit(self._client, key, deadline)
        self.report.seconds = time.monotonic() - self.started

    def _record(self, kind, response=None, error=None):
        answer = Answer(time.monotonic() - self.started, kind,
                        None if response is None else response.status_code, error)
        with self.lock:
            self.report.answers.append(answer)
        return answer

    def _request(self, session, kind, path, **kwargs):
        try:
            response = session.get(self.farm.lb.url + path, timeout=60,
                                   verify=self.farm.lb.ca_bundle, **kwargs)
            if response.ok and kind != "lookup" and not response.headers.get(
                    "Content-Type", "").startswith("image/"):
                return self._record(kind, error="not an image"), None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            return self._record(kind, error=type(error).__name__), None
        return self._record(kind, response), response

    def _client(self, key, deadline):
        session = requests.Session()
        headers = {"X-API-Key": self.farm.keys[key]}
        rng = random.Random(f"{key}")
        while time.monotonic() < deadline and not self.finished.is_set():
            roll = rng.random()
            if roll < 0.5:
                self._request(session, "hit", rng.choice(self.hit_urls))
                continue
            product = rng.choice(CATALOGUE)
            if roll >= 0.8:
                # A (product, width) nobody asked for yet: widths 100-2000 per product.
                with self.lock:
                    n = next(self.misses)
                product = CATALOGUE[n // 1901 % len(CATALOGUE)]
            params = {"id": product[0], "storePlatform": product[1]}
            if roll >= 0.8:
                params["width"] = 100 + n % 1901
            answer, response = self._request(session, "lookup", "/api/qc-images",
                                             params=params, headers=headers)
            if response is not None and response.ok and "width" in params:
                url = response.json()["images"][0]["watermarked"]
                self._request(session, "miss", path_of(url))
        session.close()


# ---------------------------------------------------------------------------- faults
# Each runs one fault under ``load`` (a fresh Load) and returns its report; the farm is
# whole again afterwards. Shared by tests/e2e/test_scaleout.py (which asserts on them)
# and bench/scaleout.py (which counts their errors over longer loads).

def path_of(url: str) -> str:
    """The path and query of one of our absolute image links."""
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def _during(load: Load, fault, *args) -> LoadReport:
    """``fault(*args)`` a quarter into the load; the load's report once it ends."""
    with load:
        time.sleep(load.seconds / 4)
        fault(*args)
    return load.report


def kill_box(farm: Farm, load: Load, name: str = "box2") -> LoadReport:
    """kill -9 one box under load; then it restarts and is back in rotation."""
    report = _during(load, farm.kill_box, name)
    farm.restart_box(name)
    with load.again(seconds=60) as after:
        farm.wait_in_rotation(name)
        after.finish()
    report.answers += after.report.answers
    return report


def rolling_restart(farm: Farm, load: Load, redis_url: str | None = None) -> LoadReport:
    """HUP every box (graceful, all at once), then stop/start one box at a time.

    With ``redis_url`` each box comes back on that Redis: moving to another Redis is a
    rolling restart too (the boxes disagree on shared state only during the roll).
    """
    load.seconds = max(load.seconds, 300)  # ended by the roll, not the clock
    with load:
        time.sleep(2)
        with ThreadPoolExecutor(len(farm.box_names)) as pool:
            list(pool.map(farm.reload_box, farm.box_names))
        farm.redis_url = redis_url or farm.redis_url
        for name in farm.box_names:
            farm.stop_box(name)
            farm.start_box(name)
            farm.wait_in_rotation(name)
        return load.finish()


def sentinel_failover(farm: Farm, load: Load) -> LoadReport:
    """kill -9 the Redis master; Sentinel promotes the replica; the old one rejoins."""
    old = farm.sentinel.master()
    report = _during(load, old.kill)
    farm.sentinel.wait_failover(old)
    old.start()
    return report


def redis_gone(farm: Farm, load: Load) -> tuple[LoadReport, dict]:
    """Every Redis process (servers and sentinels) killed, then started again.

    Returns the report and each box's readiness body seen during the outage.
    """
    group, seen = farm.sentinel, {}

    def outage():
        for process in group.processes:
            process.kill()
        time.sleep(load.seconds / 4)
        seen.update(farm.readiness())
        for process in group.processes:
            process.start()

    report = _during(load, outage)
    group.wait_settled()
    return report, seen


def cluster_node_dies(farm: Farm, load: Load) -> LoadReport:
    """kill -9 one of the three cluster nodes (no replica: its slots go unserved)."""
    return _during(load, farm.cluster.nodes[1].kill)
