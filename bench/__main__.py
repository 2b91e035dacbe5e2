"""``python -m bench``: run every benchmark once on loopback and write BENCHMARKS.md + chart."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import requests

from tools import harness
from tools.samples import SAMPLES_BY_ID, ensure_samples

from . import inprocess, phases, scaleout, slow_upstream
from .report import DEFAULT_LABEL, FULL_LABEL, draw_chart, render_markdown
from .servers import (BENCH_RATE_LIMIT, FULL_SOURCE, default_threads, default_workers,
                      production_env, start_service)

ROOT = Path(__file__).resolve().parents[1]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _phase(results: dict, key: str, fn, *args, **kwargs):
    """Run one measurement; a failure is reported in its section, the rest still runs."""
    _log(f"{key} ...")
    started = time.monotonic()
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # one broken phase must not cost the whole (long) run
        traceback.print_exc()
        results["errors"][key] = f"{type(exc).__name__}: {exc}"
        return None
    _log(f"{key} done in {time.monotonic() - started:.1f}s")
    return value


def _extend(results: dict, key: str, value) -> None:
    if value is not None:
        results.setdefault(key, []).extend(value if isinstance(value, list) else [value])


def _pin_cores(count: int) -> list[int]:
    # Children inherit the affinity, and gunicorn.conf.py sizes its workers from it.
    cores = sorted(os.sched_getaffinity(0))[:count]
    os.sched_setaffinity(0, cores)
    return cores


def _machine(cores: list[int], workers: int, threads: int,
             vips_version: str) -> dict[str, str]:
    # Through the imaging package: it points ImageMagick at our policy before Wand loads.
    from qcimage.services.imaging.policy import imagemagick_version

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True, check=False).stdout.strip() or "unknown"
    return {
        "CPU": model,
        "cores used (nproc)": f"{len(cores)} of {os.cpu_count()} (affinity {cores})",
        "memory": f"{int(memory) // 1024} MiB",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "ImageMagick": imagemagick_version(),
        "libvips (pyvips)": vips_version,
        "gunicorn workers": (f"{workers} (gunicorn.conf.py default), gthread with request "
                             f"heads read first (qcimage.gworker), {threads} threads each"),
        "commit": f"{commit} (plus uncommitted changes, if any)",
    }


def findings(results: dict) -> list[str]:
    """Facts the numbers show that a reader should not have to dig for."""
    notes = []
    for row in results.get("sizing") or []:
        expected = min(960, SAMPLES_BY_ID[row["image_id"]].width)
        for policy, dims in ((DEFAULT_LABEL, row["default_size"]), (FULL_LABEL, row["full_size"])):
            if dims[0] != expected:
                notes.append(f"`{row['image_id']}`: the {policy} policy's output is "
                             f"{dims[0]}×{dims[1]}; the upright original asked at 960 should "
                             f"be {expected} px wide.")
        if row["source_alpha"] and not row["default_alpha"]:
            notes.append(f"`{row['image_id']}`: transparent source; the default policy asks "
                         "upstream for JPEG, so the output is flattened on white while the "
                         "full-source output keeps its transparency.")
        for note in row["notes"]:
            if "not upright" in note:
                notes.append(f"`{row['image_id']}`: the full-source output is not upright; "
                             "its PNG source carries an EXIF orientation that was not applied.")
    steady = {row["c"]: row for row in results.get("hits") or []}
    for row in results.get("recycling") or []:
        if row["recycled"] and row["c"] in steady:
            notes.append(
                f"With the production defaults (recycling by memory), "
                f"{row['recycled']} workers were recycled in {row['requests']} hits; "
                f"throughput {row['rps']:.0f} req/s and p99 {row['p99_ms']:.0f} ms against "
                f"{steady[row['c']]['rps']:.0f} req/s and {steady[row['c']]['p99_ms']:.0f} ms "
                "without recycling. Each recycle boots a fresh worker (imports, ImageMagick, "
                "the watermark check) while the others carry its share: on busy boxes "
                "raise QCIMAGE_WORKER_MAX_RSS_MB.")
    return notes


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def run(args: argparse.Namespace) -> dict:
    load_before = _load()
    cores = _pin_cores(args.cores)
    workers = default_workers()
    n, duration = args.samples, args.duration
    results: dict = {"errors": {}}
    tmp = Path(tempfile.mkdtemp(prefix="qcimage-bench-"))
    started = time.monotonic()
    try:
        _log(f"stand-in upstream (samples in {harness.SAMPLES_DIR}) ...")
        (tmp / "upstream").mkdir()
        upstream = harness.start_upstream(tmp / "upstream", timeout=600)
        paths = ensure_samples(harness.SAMPLES_DIR)

        # In process first, while no server competes for the cores.
        env, _ = production_env(upstream.url, "http://127.0.0.1:9", tmp / "cache-inproc")
        default = inprocess.Pipeline(env, tmp / "inproc-default")
        full = inprocess.Pipeline({**env, **FULL_SOURCE}, tmp / "inproc-full")
        layer = default.engine.watermark.layers[0]
        # Same WebP effort as our engine is configured with: the same job, not a
        # faster encoder setting on one side.
        vips = inprocess.VipsRenderer(layer.text or "qcimage", layer.font, scale=layer.scale,
                                      opacity=layer.opacity, margin=layer.margin,
                                      effort=default.engine.webp_method)
        results["meta"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(cores, workers, default_threads(), vips.version()),
        }
        _in_process(results, args, default, full, vips, paths)
        _default_server(results, args, upstream, tmp, workers)
        _recycling_server(results, args, upstream, tmp, workers)
        _full_source_server(results, args, upstream, tmp, workers)
        upstream.stop()
        # Several boxes on network-namespace hosts (needs root, as `make test` does).
        results["scaleout"] = _phase(results, "scaleout", scaleout.measure, tmp / "scaleout")
    finally:
        harness.stop_all()
        if args.keep:
            _log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["meta"]["machine"]["load average (1 min) before / after"] = (
        f"{load_before} / {_load()} (other work on the machine shows here)")
    warmed = ", ".join(f"{w['policy']} {w['warmed']}/{w['workers']}"
                       for w in results.get("warmup") or []) or "not done"
    results["meta"]["method"] = [
        f"- One `python -m bench` run, {time.monotonic() - started:.0f} s: stand-in "
        "upstream (`tools/upstream/`) and gunicorn (`gunicorn.conf.py`, production "
        "mode as the e2e tests start it, fresh `QCIMAGE_CACHE_DIR`) on 127.0.0.1, "
        f"everything pinned to {len(cores)} cores; wrk runs {duration:g} s each.",
        f"- Latency samples: n = {n} per cold case; in-process medians over "
        f"{max(n, 15)} interleaved renders (engine vs pyvips) and "
        f"{args.sizing_samples} per image and policy (source sizing).",
        f"- Look-up and image rate limits are raised to `{BENCH_RATE_LIMIT}` so that no 429 "
        "is counted as speed.",
        "- The two source policies run as gunicorn instances one after the other "
        "(each stopped before the next starts), so they never share the cores.",
        "- Before the cold phases every worker rendered one other image (workers reached: "
        f"{warmed}), so a worker's one-off start-up work is not counted as a cold render.",
    ]
    results["findings"] = findings(results)
    return results


def _in_process(results: dict, args: argparse.Namespace, default: inprocess.Pipeline,
                full: inprocess.Pipeline, vips: inprocess.VipsRenderer,
                paths: dict[str, Path]) -> None:
    image_ids = list(paths)
    # Upstream's own resizes are not what is measured: warm its output cache first.
    for image_id in image_ids:
        default.cold(image_id, 960, 80, "webp")
        full.cold(image_id, 960, 80, "webp")
    jpeg = paths["n4EYdIoE"].read_bytes()
    results["engine_vs_vips"] = _phase(results, "engine_vs_vips", inprocess.engine_vs_vips,
                                       default, vips, jpeg, max(args.samples, 15))
    results["sizing"] = _phase(results, "sizing", inprocess.source_sizing, default, full,
                               image_ids, args.sizing_samples, budget_s=90)
    sources = {
        "default policy: 960 px JPEG q98 from upstream -> 960 webp":
            default.cold("n4EYdIoE", 960, 80, "webp")["bodies"][-1],
        "4000x3000 JPEG as stored -> 960 webp": jpeg,
        "5000x3750 PNG as stored -> 960 webp": paths["cR-eVGrQ"].read_bytes(),
    }
    results["profile"] = {}
    for case, source in sources.items():
        profile = _phase(results, "profile", inprocess.stage_profile, default, source,
                         args.profile_renders)
        if profile:
            results["profile"][case] = profile


def _default_server(results: dict, args: argparse.Namespace, upstream, tmp: Path,
                    workers: int) -> None:
    n, duration = args.samples, args.duration
    _log(f"gunicorn, default source policy, {workers} workers ...")
    # Recycling off: a 5 s wrk window that lands on a recycle would measure the restart.
    service = start_service(upstream, tmp, DEFAULT_LABEL, workers, QCIMAGE_MAX_REQUESTS="0")
    try:
        _extend(results, "warmup", _phase(results, "cold", phases.warm_workers, service))
        _extend(results, "cold", _phase(results, "cold", phases.cold_latency, service,
                                        phases.COLD_CASES, n, budget_s=120))
        urls = _phase(results, "hits", phases.warm_hit_urls, service)
        etag = None
        if urls:
            _extend(results, "hits", _phase(results, "hits", phases.wrk_rows, service,
                                            "cache hit (9 warm URLs)", urls, (1, 16, 64),
                                            duration))
            # The hits' concurrency, so the hit / cold-render ratio compares like with like.
            results["cold_throughput"] = _phase(results, "hits", phases.cold_throughput,
                                                service, 16, max_requests=60, budget_s=15)
            etag = _phase(results, "not_modified", phases.not_modified_check, service, urls[1])
            if etag:
                _extend(results, "not_modified", _phase(
                    results, "not_modified", phases.wrk_rows, service, "304 (If-None-Match)",
                    [urls[1]], (16,), duration, {"If-None-Match": etag}))
        results["coalescing"] = _phase(results, "coalescing", phases.coalescing, service,
                                       upstream)
        lookup = _phase(results, "lookup", phases.lookup_url, service)
        if lookup:
            _extend(results, "lookup", _phase(results, "lookup", phases.wrk_rows, service,
                                              "look-up (warm cache)", [lookup], (16,),
                                              duration, {"X-API-Key": service.api_key}))
        if urls and lookup and etag:
            _extend(results, "nginx", _phase(results, "nginx", _through_nginx, service, tmp,
                                             urls, lookup, etag, duration))
        results["slow_upstream"] = _phase(results, "slow_upstream",
                                          slow_upstream.misses_under_latency, service, upstream)
        _extend(results, "memory", _phase(results, "memory", phases.big_source_memory,
                                          service, "cR-eVGrQ", rounds=1, budget_s=60))
    finally:
        service.stop()
    _log("gunicorn, a render queue below the load ...")
    service = start_service(upstream, tmp, "queue-8", workers, QCIMAGE_MAX_REQUESTS="0",
                            QCIMAGE_RENDER_QUEUE="8")
    try:
        results["overload"] = _phase(results, "overload", slow_upstream.overload, service,
                                     upstream)
    finally:
        service.stop()


def _through_nginx(service, tmp: Path, urls: list[str], lookup: str, etag: str,
                   duration: float) -> list[dict]:
    """Hits, look-ups and 304s through the shipped nginx config (TLS, its image cache)."""
    port = int(service.url.rsplit(":", 1)[1])
    nginx = harness.start_nginx(tmp / "nginx", port)
    try:
        def via(url: str) -> str:
            return url.replace(service.url, nginx.url)

        for url in urls:  # fill nginx's cache: what it serves from then on
            requests.get(via(url), verify=nginx.ca_bundle, timeout=30)
        rows = []
        for what, targets, headers in (
                ("cache hit via nginx", [via(u) for u in urls], None),
                ("look-up via nginx", [via(lookup)], {"X-API-Key": service.api_key}),
                ("304 via nginx", [via(urls[1])], {"If-None-Match": etag})):
            rows += phases.wrk_rows(service, what, targets, (16,), duration, headers)
        return rows
    finally:
        nginx.stop()


def _recycling_server(results: dict, args: argparse.Namespace, upstream, tmp: Path,
                      workers: int) -> None:
    _log("gunicorn, default policy with production worker recycling settings ...")
    service = start_service(upstream, tmp, "recycling", workers)
    try:
        urls = _phase(results, "recycling", phases.warm_hit_urls, service)
        if urls:
            _extend(results, "recycling", _phase(
                results, "recycling", phases.wrk_rows, service,
                "cache hit, production defaults (recycling by memory)", urls, (16,),
                3 * args.duration))
    finally:
        service.stop()


def _full_source_server(results: dict, args: argparse.Namespace, upstream, tmp: Path,
                        workers: int) -> None:
    _log("gunicorn, full-source policy (5000 px PNG) ...")
    service = start_service(upstream, tmp, FULL_LABEL, workers, **FULL_SOURCE)
    try:
        _extend(results, "warmup", _phase(results, "cold", phases.warm_workers, service))
        _extend(results, "cold", _phase(results, "cold", phases.cold_latency, service,
                                        phases.COLD_CASES[:3], args.samples, budget_s=90))
        _extend(results, "memory", _phase(results, "memory", phases.big_source_memory,
                                          service, "cR-eVGrQ", rounds=2, budget_s=90))
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--cores", type=int, default=2, help="CPUs to pin everything to")
    parser.add_argument("--samples", type=int, default=10, help="cold requests per case")
    parser.add_argument("--sizing-samples", type=int, default=3,
                        help="fetch+render runs per image and source policy")
    parser.add_argument("--profile-renders", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    results = run(args)
    chart = args.out.with_suffix(".png")
    draw_chart(results, chart)
    text = render_markdown(results, chart.name) + "\n"
    if results.get("scaleout"):
        text += "\n" + scaleout.markdown(results["scaleout"])
    args.out.write_text(text)
    _log(f"wrote {args.out} and {chart}")
    if results["errors"]:
        _log(f"phases that failed: {', '.join(results['errors'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
