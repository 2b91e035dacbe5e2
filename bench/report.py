"""BENCHMARKS.md and its chart, written from the results of one run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

TARGET_RSS_BYTES = 300 * 1024 * 1024
MB = 1024 * 1024
DEFAULT_LABEL = "default"
FULL_LABEL = "full-source"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                   align: str = "") -> str:
    """A GitHub table; ``align`` gives l/r per column (default: left)."""
    align = align.ljust(len(headers), "l")
    cells = [[str(cell).replace("|", "\\|").replace("\n", " ") for cell in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row}")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def size(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= MB:
        return f"{value / MB:.1f} MiB"
    return f"{value / 1024:.0f} KiB"


def targets(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, goal, measured, ok) for every target of the brief, from whatever ran."""
    rows: list[tuple[str, str, str, bool | None]] = []
    duel = results.get("engine_vs_vips")
    rows.append(("render time, ours / pyvips (4000x3000 JPEG -> 960 webp)", "≤ 1.00",
                 num(duel["ratio"], 2) if duel else "not measured",
                 duel["ratio"] <= 1.0 if duel else None))
    sizing = results.get("sizing")
    if sizing:
        worst_bytes = min(sizing, key=lambda r: r["bytes_ratio"])
        worst_speed = min(sizing, key=lambda r: r["speedup"])
        comparable = [r for r in sizing if r["comparable"]] or sizing
        excluded = [r["image_id"] for r in sizing if not r["comparable"]]
        quality_ok = [r["ssim"] >= 0.99 or r["psnr"] >= 40 for r in comparable]
        worst_q = min(comparable, key=lambda r: r["ssim"])
        rows += [
            ("source sizing: fewer bytes fetched (worst image)", "≥ 10×",
             f"{worst_bytes['bytes_ratio']:.1f}× ({worst_bytes['image_id']})",
             worst_bytes["bytes_ratio"] >= 10),
            ("source sizing: faster fetch + render (worst image)", "≥ 5×",
             f"{worst_speed['speedup']:.1f}× ({worst_speed['image_id']})",
             worst_speed["speedup"] >= 5),
            ("source sizing: output quality vs full source (every comparable image)",
             "SSIM ≥ 0.99 or PSNR ≥ 40 dB",
             f"{sum(quality_ok)}/{len(quality_ok)} images; worst SSIM "
             f"{worst_q['ssim']:.4f} / {worst_q['psnr']:.1f} dB ({worst_q['image_id']})"
             + (f"; not comparable: {', '.join(excluded)} (reference sideways)"
                if excluded else ""),
             all(quality_ok)),
        ]
    else:
        rows += [("source sizing", "see brief", "not measured", None)]
    hits = {r["c"]: r for r in results.get("hits", [])}
    cold = results.get("cold_throughput")
    if cold and cold["c"] in hits:
        ratio = hits[cold["c"]]["rps"] / cold["rps"]
        rows.append((f"cache-hit / cold-render throughput (c={cold['c']})", "≥ 20×",
                     f"{ratio:.0f}×", ratio >= 20))
    else:
        rows.append(("cache-hit / cold-render throughput", "≥ 20×", "not measured", None))
    merged = results.get("coalescing")
    rows.append(("coalescing: 32 identical misses -> upstream fetches / renders", "1 / 1",
                 f"{merged['upstream_fetches']} / {merged['misses']}" if merged
                 else "not measured",
                 merged["upstream_fetches"] == 1 and merged["misses"] == 1 and
                 merged["non_200"] == 0 if merged else None))
    rows += worker_model_targets(results)
    memory = next((m for m in results.get("memory") or [] if m["policy"] == FULL_LABEL), None)
    peak = memory and memory.get("max_peak_rss")
    rows.append(("peak RSS per worker, 5000x3750 PNG at SOURCE_WIDTH=5000 png", "≤ 300 MiB",
                 f"{peak / MB:.1f} MiB" if peak else "not measured",
                 peak <= TARGET_RSS_BYTES if peak else None))
    return rows


def worker_model_targets(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """Issue 9's targets: misses with a slow upstream, hits and look-ups, overload."""
    rows: list[tuple[str, str, str, bool | None]] = []
    cells = {(r["delay_s"], r["c"]): r for r in results.get("slow_upstream") or []}
    for delay, c, goal in ((0.2, 16, 0.8), (0.8, 16, 0.8)):
        row = cells.get((delay, c))
        rows.append((f"misses, upstream {delay:g} s, c={c}: ratio to ideal", f"≥ {goal}",
                     f"{row['ratio']:.2f} ({row['rps']:.1f} of {row['ideal_rps']:.1f}/s)"
                     if row and row.get("ratio") else "not measured",
                     row["ratio"] >= goal if row and row.get("ratio") else None))
    slow, instant = cells.get((0.8, 64)), max(
        (r["rps"] for r in cells.values() if r["delay_s"] == 0), default=None)
    rows.append(("misses, upstream 0.8 s, c=64 / instant-upstream rate", "≥ 0.85",
                 f"{slow['rps'] / instant:.2f}" if slow and instant else "not measured",
                 slow["rps"] / instant >= 0.85 if slow and instant else None))
    rows.append(("misses, upstream 0.8 s, c=64: errors / 503s", "0 / 0",
                 f"{slow['errors']} / {slow['overloaded']}" if slow else "not measured",
                 slow["errors"] == 0 and slow["overloaded"] == 0 if slow else None))
    peaks = slow and slow.get("peak_rss")
    rows.append(("peak RSS per worker after 64 concurrent misses", "≤ 300 MiB",
                 f"{max(peaks.values()) / MB:.0f} MiB" if peaks else "not measured",
                 max(peaks.values()) <= TARGET_RSS_BYTES if peaks else None))
    instant4 = cells.get((0.0, 4))
    rows.append(("misses, instant upstream, c=4", "≈ 48/s before", num(instant4["rps"])
                 + "/s" if instant4 else "not measured", None))
    for what, key, goal in (("cache hits direct to gunicorn", "hits", 2500),
                            ("warm look-ups direct to gunicorn", "lookup", 1500)):
        row = next((r for r in results.get(key) or [] if r["c"] == 16), None)
        rows.append((f"{what}, c=16: req/s, p99", f"≥ {goal}/s, ≤ 25 ms",
                     f"{row['rps']:.0f}/s, {row['p99_ms']:.1f} ms" if row else "not measured",
                     row["rps"] >= goal and row["p99_ms"] <= 25 if row else None))
    over = results.get("overload")
    rows.append(("queue below the load: 503 overloaded p99, rest 200",
                 "< 100 ms, no other status",
                 f"{over['overloaded']} refused (p99 {num(over['refused_p99_ms'])} ms), "
                 f"{over['ok']} served, {over['errors']} other" if over else "not measured",
                 over["errors"] == 0 and over["overloaded"] > 0 and
                 (over["refused_p99_ms"] or 0) < 100 if over else None))
    return rows


def _slow_upstream_table(rows: list[dict]) -> str:
    return markdown_table(
        ["image delay s", "clients", "misses/s (steady)", "misses/s (wall clock)", "ideal/s",
         "ratio", "p50 ms", "p99 ms", "in flight at upstream (max)", "errors", "503"],
        [[num(r["delay_s"], 1), r["c"], num(r["rps"]), num(r.get("wall_rps")),
          num(r.get("ideal_rps")), num(r.get("ratio"), 2), num(r["p50_ms"]), num(r["p99_ms"]),
          r["in_flight_max"], r["errors"], r["overloaded"]] for r in rows],
        "rrrrrrrrrrr")


def _overload_block(row: dict) -> str:
    return markdown_table(
        ["workers × queue", "clients", "image delay s", "served (200)", "refused (503)",
         "other", "503 p99 ms", "503 p99 ms in the app", "200 p50 ms"],
        [[f"{row['workers']} × {row['queue']}", row["c"], num(row["delay_s"], 1), row["ok"],
          row["overloaded"], row["errors"], num(row["refused_p99_ms"]),
          num(row.get("refused_server_p99_ms")), num(row["p50_ms"])]],
        "rrrrrrrrr")


def page_views(results: dict, hit_ratio: float, images_per_page: int = 4,
               via_nginx: bool = True) -> float | None:
    """Page views a second one box serves: each page shows ``images_per_page`` images, of
    which ``hit_ratio`` are cached; misses at the 0.8 s upstream, 64 clients."""
    slow = next((r for r in results.get("slow_upstream") or []
                 if r["delay_s"] == 0.8 and r["c"] == 64), None)
    hits = next((r for r in results.get("nginx" if via_nginx else "hits") or []
                 if r["c"] == 16 and "hit" in r["what"]), None)
    if not slow or not hits or not slow["rps"]:
        return None
    seconds = images_per_page * (hit_ratio / hits["rps"] + (1 - hit_ratio) / slow["rps"])
    return 1 / seconds


def _cold_table(rows: list[dict]) -> str:
    return markdown_table(
        ["source policy", "case", "n", "p50 total ms", "p90 total ms", "p50 upstream ms",
         "p50 render ms"],
        [[r["policy"], r["case"], r["n"], num(r.get("p50_ms")), num(r.get("p90_ms")),
          num(r.get("upstream_p50_ms")), num(r.get("render_p50_ms"))] for r in rows],
        "llrrrrr")


def _throughput_table(rows: list[dict]) -> str:
    return markdown_table(
        ["what", "concurrency", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx/3xx",
         "socket errors", "workers recycled"],
        [[r["what"], r["c"], num(r["rps"]), num(r["p50_ms"], 2), num(r["p99_ms"], 2),
          r["requests"], r["non_2xx_3xx"], r["socket_errors"], r.get("recycled", "–")]
         for r in rows],
        "lrrrrrrrr")


def _sizing_table(rows: list[dict]) -> str:
    def dims(value):
        return f"{value[0]}×{value[1]}"

    return markdown_table(
        ["image", "bytes default / full", "fewer bytes", "ms default (fetch+render)",
         "ms full (fetch+render)", "faster", "SSIM", "PSNR dB", "SSIM lossless",
         "PSNR lossless", "output default / full", "alpha default / full", "notes"],
        [[r["image_id"], f"{size(r['default_bytes'])} / {size(r['full_bytes'])}",
          f"{r['bytes_ratio']:.0f}×",
          f"{num(r['default_ms'])} ({num(r['default_fetch_ms'])}+{num(r['default_render_ms'])})",
          f"{num(r['full_ms'])} ({num(r['full_fetch_ms'])}+{num(r['full_render_ms'])})",
          f"{r['speedup']:.1f}×", f"{r['ssim']:.4f}", num(r["psnr"]),
          f"{r['ssim_lossless']:.4f}", num(r["psnr_lossless"]),
          f"{dims(r['default_size'])} / {dims(r['full_size'])}",
          f"{'yes' if r['default_alpha'] else 'no'} / {'yes' if r['full_alpha'] else 'no'}",
          "; ".join(r["notes"]) or "–"] for r in rows],
        "lrrrrrrrrrlll")


def _profile_table(profiles: dict) -> str:
    rows = []
    for case, profile in profiles.items():
        for stage, ms in profile["stages"].items():
            rows.append([case, stage, num(ms), f"{100 * ms / profile['total_ms']:.0f}%"])
        rows.append([case, "**total**", f"**{num(profile['total_ms'])}**", "100%"])
    return markdown_table(["case", "stage (function render() calls)", "ms / render", "share"],
                          rows, "llrr")


def _memory_table(memories: list[dict]) -> str:
    rows = []
    for memory in memories:
        for pid, peak in sorted(memory["peak_rss"].items()):
            rows.append([memory["policy"], pid, memory["renders_by_pid"].get(pid, "–"),
                         f"{peak / MB:.1f}", verdict(peak <= TARGET_RSS_BYTES)])
    return markdown_table(["source policy", "worker pid", "renders of cR-eVGrQ",
                           "VmHWM MiB", "≤ 300 MiB"], rows, "lrrrl")


def render_markdown(results: dict, chart_name: str) -> str:
    meta = results["meta"]
    out = [
        "# qcimage benchmarks",
        "",
        f"Generated by `make bench` (`python -m bench`) on {meta['date']}; one run, every "
        "figure below comes from it. Re-run to refresh; the machine is shared and noisy, so "
        "compare ratios rather than absolute numbers.",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], [[key, value] for key, value in meta["machine"].items()]),
        "",
        "## Targets",
        "",
        markdown_table(["target", "goal", "measured", "verdict"],
                       [[t, goal, measured, verdict(ok)]
                        for t, goal, measured, ok in targets(results)]),
        "",
        f"![charts]({chart_name})",
        "",
        "## Method",
        "",
        *meta["method"],
        "",
    ]
    sections = [
        ("1. Cold render latency per source type", "cold", _cold_table,
         "Sequential first requests of distinct signed URLs (a quality not asked before), the "
         "cases taken in turn, "
         "on a fresh connection each, as a browser arriving cold. Upstream and render times "
         "are the `upstream_ms` / `render_ms` the app logs for the same request id. Under the "
         "default policy upstream sends a 960 px JPEG q98 whatever the stored source; under "
         "the full-source policy it sends the whole picture as PNG."),
        ("2. Our engine against pyvips (in process)", "engine_vs_vips", _duel_block,
         "One process, one thread each (`MAGICK_THREAD_LIMIT=1` from our policy, "
         "`VIPS_CONCURRENCY=1`), libvips operation cache off, interleaved renders of the "
         "4000x3000 JPEG to 960 px webp q80 with a cached white-on-dark text mark; medians. "
         "pyvips uses `thumbnail_buffer` (shrink-on-load to 2× then lanczos3), ours the JPEG "
         "size hint (also 2×) then its resize filter; both encode WebP at the effort our engine "
         "is configured with (`QCIMAGE_WEBP_METHOD`, libvips `effort`)."),
        ("3. Source sizing: default policy against the full source", "sizing", _sizing_table,
         "In process with the app's own `ImageRenderer` (source policy, upstream client, "
         "engine; only its cache swapped for one that never hits), against the stand-in "
         "upstream (its output cache warm, so fetch = transfer + our read). Bytes are every "
         "body fetched for the request, ms the whole request's work (fetch + render). "
         "Default: what `SourcePolicy()` asks (output width, JPEG q98). Full: "
         "`QCIMAGE_SOURCE_WIDTH=5000`, `SOURCE_FORMAT=png`, `SOURCE_QUALITY=100`. Output "
         "960 px webp q80, medians of the interleaved runs; SSIM "
         "(Gaussian 11×11, σ 1.5) and PSNR on BT.601 luma of the default output against the "
         "full-source output, transparency flattened on white. The lossless columns compare "
         "PNG outputs of the same two sources, leaving the webp encoder's own loss out."),
        ("4. Where a render's time goes (cProfile)", "profile", _profile_table,
         "Cumulative time of each function `ImagingEngine.render` calls, averaged over the "
         "renders profiled (one warm-up render first). The ImageMagick work happens inside "
         "these calls, so decode / resize / watermark / encode are separated."),
        ("5. Cache hits", "hits", _throughput_table,
         "wrk with a Lua script rotating over the nine warm srcset URLs of the default "
         "product (3 images × 480/960/1440 webp), each wrk connection kept alive (as a "
         "browser's or nginx's). Cold renders: distinct URLs of the 4000x3000 JPEG at 960 webp, "
         "same concurrency, bounded by count and time."),
        ("6. Revalidation (304)", "not_modified", _throughput_table,
         "wrk sending the image's ETag in `If-None-Match`; every answer was checked to be 304 "
         "beforehand."),
        ("7. Coalescing", "coalescing", _coalescing_block,
         "32 threads released by a barrier send the same never-seen URL; upstream's "
         "`/_stats` counts the fetches of that image, the responses' `X-Cache: MISS` the "
         "renders."),
        ("8. Worker recycling under load", "recycling", _throughput_table,
         "A separate instance with every production default (workers recycle by memory, "
         "`QCIMAGE_WORKER_MAX_RSS_MB`, never two within 30 s; no recycling by request count) "
         "serves the warm hit URLs for three wrk windows; compare with section 5."),
        ("9. Product look-up", "lookup", _throughput_table,
         "wrk with `X-API-Key` on `/api/qc-images` for the default product, look-up cache "
         "warm, rate limit raised for the run (non-2xx would show 429s)."),
        ("10. Peak memory per worker", "memory", _memory_table,
         "VmHWM of each worker from /proc after every worker rendered the 5000x3750 PNG "
         "(twice as many concurrent distinct requests as workers, repeated), under the "
         "full-source policy; the default-policy server's workers after all of its phases "
         "are listed for comparison (recycled workers restart the count)."),
        ("11. Misses with a slow upstream (worker model)", "slow_upstream",
         _slow_upstream_table,
         "Each request is a distinct source (one of the 3 upright JPEG samples at a width from"
         " 800 to 1303 px), so neither the source cache nor coalescing can hide the wait. "
         "Every cell gets the same spread of widths, shuffled: a miss's work grows with its "
         "width squared, and cells given widths in turn did unequal work. The stand-in "
         "prepared every source beforehand and only sleeps (`/_conditions`: image delay as "
         "given, look-ups 0.3 s). Clients (8 threads per client process) take the URLs until "
         "none is left (six rounds each); "
         "misses/s is the steady rate, over the completions between the first and the last "
         "`clients` ones (the ramp up and the tail left out), the wall-clock rate beside it. "
         "Ideal = min(CPU-bound rate, clients / (delay + one miss's CPU time)), the CPU-bound "
         "rate being the best instant-upstream rate and one miss's CPU time cores / that rate."),
        ("12. Overload: a render queue below the load", "overload", _overload_block,
         "A second instance with `QCIMAGE_RENDER_QUEUE=8` per worker, 64 clients of "
         "distinct misses at a 0.8 s upstream: the excess must be refused at once with "
         "503 `overloaded`, the rest served. The 503 p99 is measured by the clients (the "
         "target's figure); the app's own timing of the same 503s (its access lines) is "
         "beside it: the difference is the clients' own work (8 processes of 8 threads) "
         "queueing with the box's on the same two cores."),
        ("13. Hits, look-ups and 304s through the shipped nginx", "nginx", _throughput_table,
         "nginx with `nginx/qcimage.conf` (TLS, its image cache filled first, keep-alive to "
         "gunicorn) in front of the default instance; wrk over HTTPS, c=16."),
    ]
    for title, key, table, method in sections:
        out += [f"## {title}", "", method, ""]
        error = results["errors"].get(key)
        value = results.get(key)
        if value:
            out += [table(value), ""]
        if key == "hits" and results.get("cold_throughput"):
            out += [_throughput_table([results["cold_throughput"]]), ""]
        if error:
            out += [f"**Not measured: {error}**", ""]
    if results.get("findings"):
        out += ["## Findings", "", *[f"- {finding}" for finding in results["findings"]], ""]
    return "\n".join(out)


def _duel_block(duel: dict) -> str:
    return markdown_table(
        ["renderer", "median ms", "output bytes", "n"],
        [["ours (ImageMagick via Wand)", num(duel["ours_ms"]), duel["ours_bytes"], duel["n"]],
         ["pyvips", num(duel["vips_ms"]), duel["vips_bytes"], duel["n"]],
         ["ratio ours / pyvips", num(duel["ratio"], 2), "", ""],
         ["SSIM ours vs pyvips output", f"{duel['ssim_ours_vs_vips']:.4f}", "", ""]],
        "lrrr")


def _coalescing_block(merged: dict) -> str:
    variants = ", ".join(f"`{k}` {v}" for k, v in merged["variants"].items()) or "none"
    return markdown_table(
        ["clients", "upstream fetches", "renders (MISS)", "hits", "non-200", "p50 ms",
         "slowest ms", "variants fetched"],
        [[merged["clients"], merged["upstream_fetches"], merged["misses"], merged["hits"],
          merged["non_200"], num(merged["p50_ms"]), num(merged["max_ms"]), variants]],
        "rrrrrrrl")


def draw_chart(results: dict, path: Path) -> None:
    """What one box does, for a person deciding whether to adopt qcimage (PNG, Agg backend).

    Linear axes from zero, every bar labelled with its value, workers numbered rather than
    named by pid; the run's date, commit and machine load in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = results["meta"]
    machine = meta["machine"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle(
        f"qcimage, one box: {machine.get('cores used (nproc)', '?')} cores, "
        f"{machine.get('gunicorn workers', '?')}\n"
        f"{meta['date']} · commit {machine.get('commit', '?').split()[0]} · load average "
        f"before / after: {machine.get('load average (1 min) before / after', '?').split(' (')[0]}"
        " (the machine is shared: compare ratios)", fontsize=12)
    _misses_panel(axes[0][0], results.get("slow_upstream") or [])
    _ratio_panel(axes[0][1], results.get("slow_upstream") or [])
    served = _served_rows(results)
    _hbar_panel(axes[0][2], [(label, r["rps"]) for label, r in served], "%.0f",
                "requests per second (c=16), more is better")
    _hbar_panel(axes[1][0], [(label, r["p99_ms"]) for label, r in served], "%.1f",
                "p99 latency in ms (c=16), less is better", target=(25, "25 ms target"))
    _memory_panel(axes[1][1], results)
    _page_views_panel(axes[1][2], results)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _misses_panel(ax, rows: list[dict]) -> None:
    delays = sorted({r["delay_s"] for r in rows})
    clients = sorted({r["c"] for r in rows})
    width = 0.8 / max(1, len(clients))
    for i, c in enumerate(clients):
        cells = [next((r for r in rows if r["delay_s"] == d and r["c"] == c), None)
                 for d in delays]
        placed = [(n + (i - (len(clients) - 1) / 2) * width, cell)
                  for n, cell in enumerate(cells) if cell]
        x, cells = [p for p, _ in placed], [cell for _, cell in placed]
        drawn = ax.bar(x, [cell["rps"] for cell in cells], width, label=f"{c} clients")
        ax.bar_label(drawn, fmt="%.0f", fontsize=8)
        ideal = [(xx, cell["ideal_rps"]) for xx, cell in zip(x, cells)
                 if cell.get("ideal_rps")]
        if ideal:
            ax.scatter([p for p, _ in ideal], [v for _, v in ideal], marker="_", s=300,
                       color="black", label="ideal" if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(delays)), ["instant" if d == 0 else f"{d:g} s" for d in delays])
    ax.set_xlabel("upstream delay per image")
    ax.set_ylim(0, max([r["rps"] for r in rows] + [r.get("ideal_rps") or 0 for r in rows]
                       + [1]) * 1.15)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("cold images (distinct misses) per second", fontsize=11)


def _ratio_panel(ax, rows: list[dict]) -> None:
    cells = sorted((r for r in rows if r.get("ratio")), key=lambda r: (r["delay_s"], r["c"]))
    labels = [f"{r['delay_s']:g} s\n{r['c']} clients" for r in cells]
    drawn = ax.bar(range(len(cells)), [r["ratio"] for r in cells], color="tab:olive")
    ax.bar_label(drawn, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(cells)), labels, fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.8, color="red", linestyle="--", label="0.8 target")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=8)
    ax.set_title("misses/s as a share of the ideal (1.0 = waits fully overlapped)",
                 fontsize=11)


def _served_rows(results: dict) -> list[tuple[str, dict]]:
    wanted = (("hits", "cache hit, gunicorn"), ("lookup", "look-up, gunicorn"),
              ("not_modified", "304, gunicorn"))
    rows = [(label, r) for key, label in wanted for r in results.get(key) or []
            if r["c"] == 16]
    names = {"cache hit via nginx": "cache hit, nginx", "look-up via nginx": "look-up, nginx",
             "304 via nginx": "304, nginx"}
    rows += [(names.get(r["what"], r["what"]), r) for r in results.get("nginx") or []]
    return rows


def _hbar_panel(ax, bars: list[tuple[str, float]], fmt: str, title: str,
                target: tuple[float, str] | None = None) -> None:
    drawn = ax.barh(range(len(bars)), [v for _, v in bars], color="tab:green")
    ax.bar_label(drawn, fmt=fmt, fontsize=8, padding=2)
    ax.set_yticks(range(len(bars)), [k for k, _ in bars], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(left=0, right=max([v for _, v in bars] + [target[0] if target else 0]) * 1.2
                or 1)
    if target:
        ax.axvline(target[0], color="red", linestyle="--", label=target[1])
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)


def _memory_panel(ax, results: dict) -> None:
    bars = []
    slow = next((r for r in results.get("slow_upstream") or [] if r.get("peak_rss")), None)
    if slow:
        bars += [(f"worker {n}\n64 slow misses", peak / MB)
                 for n, (_, peak) in enumerate(sorted(slow["peak_rss"].items()), 1)]
    for memory in results.get("memory") or []:
        if memory["policy"] == FULL_LABEL:
            bars += [(f"worker {n}\n5000 px PNG source", peak / MB)
                     for n, (_, peak) in enumerate(sorted(memory["peak_rss"].items()), 1)]
    drawn = ax.bar(range(len(bars)), [v for _, v in bars], color="tab:purple")
    ax.bar_label(drawn, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(bars)), [k for k, _ in bars], fontsize=8)
    ax.axhline(TARGET_RSS_BYTES / MB, color="red", linestyle="--", label="300 MiB target")
    ax.set_ylim(0, max([v for _, v in bars] + [TARGET_RSS_BYTES / MB]) * 1.2)
    ax.legend(fontsize=8)
    ax.set_title("peak memory per worker (MiB)", fontsize=11)


def _page_views_panel(ax, results: dict) -> None:
    ratios = [0.80, 0.85, 0.90, 0.95, 0.98, 0.99]
    for via_nginx, label in ((True, "behind the shipped nginx"), (False, "gunicorn alone")):
        values = [page_views(results, h, via_nginx=via_nginx) for h in ratios]
        if all(v is not None for v in values):
            ax.plot([h * 100 for h in ratios], values, marker="o", label=label)
            for h, v in zip(ratios, values):
                ax.annotate(f"{v:.0f}", (h * 100, v), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("share of image requests that are cache hits (%)")
    ax.legend(fontsize=8)
    ax.set_title("page views per second one box serves\n(4 QC photos a page, misses at a "
                 "0.8 s upstream)", fontsize=11)
