"""``make bench``'s scale-out line: the balancer over 1, 2 and 3 boxes, and errors under faults.

The boxes are hosts of their own (network namespaces, tools/scaleout.py) but share this
machine's cores, so more boxes cannot mean more speed here: what is reported is the work
done per CPU-second spent by every process of the farm (boxes, balancer, upstream,
Redis), and how much of it each added box keeps. The balancer's image cache is off for
these rows, so image hits are the boxes' own disk-cache hits.

Then each fault of tests/e2e/test_scaleout.py runs under a longer load (30 s, 32
connections through the balancer) and the answers that were not a 200 are counted.

``python -m bench.scaleout`` runs this part alone and prints its Markdown section.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools import scaleout
from tools.harness import ManagedProcess
from tools.scaleout import CATALOGUE, Farm, Load, path_of

from .report import markdown_table, num
from .wrk import run_wrk

CONNECTIONS = 32
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(processes: list[ManagedProcess]) -> float:
    """CPU time of these processes and all their descendants (reaped ones included)."""
    pids = {p.pid for p in processes if p.poll() is None}
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, list(pids)
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields:
            # utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 after the name.
            total += sum(int(value) for value in fields[11:15])
        todo += children.get(pid, [])
    return total / _TICKS


def _farm_processes(farm: Farm) -> list[ManagedProcess]:
    redis = [*(farm.sentinel.processes if farm.sentinel else []),
             *(farm.cluster.nodes if farm.cluster else [])]
    return [*farm.boxes.values(), farm.lb, farm.upstream, *redis]


def _miss_paths(farm: Farm, count: int) -> list[str]:
    """``count`` image links nobody asked for yet (fresh widths), via look-ups."""
    paths: list[str] = []
    width = 1200  # typical page widths, down from the largest 1x layout
    while len(paths) < count:
        for product in CATALOGUE:
            body = farm.look_up("exact6", product, width=width).json()
            paths += [path_of(image["watermarked"]) for image in body["images"]]
        width -= 1
    return paths[:count]


def _misses(farm: Farm, paths: list[str], seconds: float) -> dict:
    """Fresh images, CONNECTIONS at a time, for ``seconds``: completed renders per second."""
    pending, lock, done, errors = iter(paths), threading.Lock(), [], Counter()
    deadline = time.monotonic() + seconds

    def client():
        while time.monotonic() < deadline:
            with lock:
                path = next(pending, None)
            if path is None:
                return
            response = farm.get(path)
            if response.status_code == 200:
                done.append(path)
            else:
                errors[f"{response.status_code} {response.json().get('error')}"] += 1

    started, cpu = time.monotonic(), _cpu_seconds(_farm_processes(farm))
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        for _ in range(CONNECTIONS):
            pool.submit(client)
    elapsed = time.monotonic() - started
    return {"rps": len(done) / elapsed, "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "cpu_s": _cpu_seconds(_farm_processes(farm)) - cpu, "requests": len(done),
            "seconds": elapsed}


def _hits(farm: Farm, paths: list[str], seconds: float) -> dict:
    cpu = _cpu_seconds(_farm_processes(farm))
    result = run_wrk([farm.lb.url + path for path in paths], connections=CONNECTIONS,
                     duration=seconds)
    return {"rps": result.rps, "errors": result.non_2xx_3xx + result.socket_errors,
            "cpu_s": _cpu_seconds(_farm_processes(farm)) - cpu, "requests": result.requests,
            "seconds": result.seconds, "p99_ms": result.p99_ms}


def box_rows(farm: Farm, seconds: float) -> list[dict]:
    """Misses and hits through the balancer over the first 1, 2, 3 boxes."""
    hit_paths = Load(farm).warm().hit_urls
    misses = _miss_paths(farm, 900)
    rows = []
    for count in range(1, len(farm.box_names) + 1):
        farm.balance(farm.box_names[:count], image_cache=False)
        for path in hit_paths:  # every box that now owns a hit has it on disk
            farm.get(path)
        miss = _misses(farm, misses, seconds)
        misses = misses[miss["requests"] + miss["errors"]:]
        hit = _hits(farm, hit_paths, seconds)
        rows.append({"boxes": count, "miss": miss, "hit": hit})
    farm.balance(farm.box_names)
    return rows


def fault_rows(farm: Farm, seconds: float) -> list[dict]:
    """Each fault under a ``seconds`` load: what clients got."""
    load = Load(farm, seconds=seconds).warm()
    runs = [("kill -9 of one box (then restarted)", lambda: scaleout.kill_box(farm, load)),
            ("Redis master killed (Sentinel fail-over)",
             lambda: scaleout.sentinel_failover(farm, load.again())),
            ("Redis gone entirely, then back", lambda: scaleout.redis_gone(farm, load.again())[0]),
            ("rolling restart (HUP all, then stop/start each, onto the cluster)",
             lambda: scaleout.rolling_restart(farm, load.again(), farm.cluster.url)),
            ("one Redis Cluster node killed",
             lambda: scaleout.cluster_node_dies(farm, load.again()))]
    return [_fault_row(what, fault()) for what, fault in runs]


def _fault_row(what: str, report) -> dict:
    return {"fault": what, "requests": len(report.answers), "seconds": report.seconds,
            "failed": len(report.failed), "5xx": len(report.server_errors),
            "kinds": dict(report.by_kind())}


def _load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def measure(tmp: Path, *, seconds: float = 8.0, fault_seconds: float = 30.0) -> dict:
    load_before = _load_average()
    farm = Farm(tmp, redis=("sentinel", "cluster"),
                extra_env={"QCIMAGE_LOOKUP_RATE_LIMIT": "100000 per minute"})
    try:
        return {"boxes": box_rows(farm, seconds), "faults": fault_rows(farm, fault_seconds),
                "seconds": seconds, "fault_seconds": fault_seconds,
                "workers": farm.workers, "load": f"{load_before} / {_load_average()}"}
    finally:
        farm.close()


def markdown(result: dict) -> str:
    base = {kind: row[kind]["rps"] / max(row[kind]["cpu_s"] / row[kind]["seconds"], 1e-9)
            for row in result["boxes"][:1] for kind in ("miss", "hit")}
    rows = []
    for row in result["boxes"]:
        cells = [row["boxes"]]
        for kind in ("miss", "hit"):
            m = row[kind]
            cores = m["cpu_s"] / m["seconds"]
            per_core = m["rps"] / max(cores, 1e-9)
            cells += [num(m["rps"]), num(cores, 2), num(per_core),
                      f"{100 * per_core / base[kind]:.0f} %", m["errors"]]
        rows.append(cells)
    kinds = Counter()
    for row in result["boxes"]:
        kinds.update(row["miss"]["error_kinds"])
    faults = [[f["fault"], f["requests"], num(f["seconds"], 0), f["failed"], f["5xx"]]
              for f in result["faults"]]
    return "\n".join([
        "## Scale-out: several boxes behind the balancer",
        "",
        f"Boxes of {result['workers']} gunicorn workers each (worker class and threads as "
        "gunicorn.conf.py sets them), on network-namespace hosts "
        "of this machine, behind `nginx/qcimage-lb.conf` (image cache off for these rows), "
        f"{CONNECTIONS} connections, {result['seconds']:g} s per row. The boxes share the "
        "same cores, so the speed-up is not the point: *per core* is requests per "
        "CPU-second of the whole farm (boxes, balancer, upstream stand-in, Redis), and "
        "*kept* is that against one box. Load average (1 min) before / after: "
        f"{result['load']} on {os.cpu_count()} cores: what the farm could get of them "
        "shows in *cores busy*.",
        "",
        markdown_table(["boxes", "misses/s", "cores busy", "misses per core", "kept",
                        "errors", "hits/s", "cores busy", "hits per core", "kept",
                        "errors"], rows),
        "",
        f"Faults, each under a {result['fault_seconds']:g} s load of {CONNECTIONS} "
        "connections through the balancer (half image hits, three tenths look-ups, two "
        "tenths misses); *failed* counts every answer that was not a 200.",
        "",
        markdown_table(["fault", "requests", "seconds", "failed", "5xx"], faults),
        "",
        *([f"Miss errors by kind: {dict(kinds)}."] if kinds else []),
    ])


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="qcimage-bench-scaleout-"))
    result = measure(tmp)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
