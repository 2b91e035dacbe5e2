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
    memory = next((m for m in results.get("memory") or [] if m["policy"] == FULL_LABEL), None)
    peak = memory and memory.get("max_peak_rss")
    rows.append(("peak RSS per worker, 5000x3750 PNG at SOURCE_WIDTH=5000 png", "≤ 300 MiB",
                 f"{peak / MB:.1f} MiB" if peak else "not measured",
                 peak <= TARGET_RSS_BYTES if peak else None))
    return rows


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
         "product (3 images × 480/960/1440 webp), fresh connection per request (sync "
         "workers close it). Cold renders: distinct URLs of the 4000x3000 JPEG at 960 webp, "
         "same concurrency, bounded by count and time."),
        ("6. Revalidation (304)", "not_modified", _throughput_table,
         "wrk sending the image's ETag in `If-None-Match`; every answer was checked to be 304 "
         "beforehand."),
        ("7. Coalescing", "coalescing", _coalescing_block,
         "32 threads released by a barrier send the same never-seen URL; upstream's "
         "`/_stats` counts the fetches of that image, the responses' `X-Cache: MISS` the "
         "renders."),
        ("8. Worker recycling under load", "recycling", _throughput_table,
         "The sections above run with `QCIMAGE_MAX_REQUESTS=0` so that a short wrk window "
         "never lands on a recycle. Here a third instance keeps the production default "
         "(1000 requests ± 500 jitter) and serves the warm hit URLs for longer than it takes "
         "every worker to reach its limit; compare with the steady-state row of section 5."),
        ("9. Product look-up", "lookup", _throughput_table,
         "wrk with `X-API-Key` on `/api/qc-images` for the default product, look-up cache "
         "warm, rate limit raised for the run (non-2xx would show 429s)."),
        ("10. Peak memory per worker", "memory", _memory_table,
         "VmHWM of each worker from /proc after every worker rendered the 5000x3750 PNG "
         "(twice as many concurrent distinct requests as workers, repeated), under the "
         "full-source policy; the default-policy server's workers after all of its phases "
         "are listed for comparison (recycled workers restart the count)."),
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
    """Six panels summarising the run, written as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle(f"qcimage benchmarks — {results['meta']['date']}", fontsize=13)

    ax = axes[0][0]
    cold = results.get("cold") or []
    if cold:
        labels = [f"{r['policy']}\n{r['case']}" for r in cold]
        upstream = [r.get("upstream_p50_ms") or 0 for r in cold]
        render = [r.get("render_p50_ms") or 0 for r in cold]
        other = [max(0, (r.get("p50_ms") or 0) - u - v) for r, u, v in zip(cold, upstream, render)]
        y = range(len(cold))
        ax.barh(y, upstream, label="upstream")
        ax.barh(y, render, left=upstream, label="render")
        ax.barh(y, other, left=[u + v for u, v in zip(upstream, render)], label="rest")
        ax.set_yticks(list(y), labels, fontsize=6)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    ax.set_title("cold request p50 (ms)", fontsize=10)

    ax = axes[0][1]
    bars = [(f"hit c={r['c']}", r["rps"]) for r in results.get("hits") or []]
    if results.get("cold_throughput"):
        bars.append((f"cold c={results['cold_throughput']['c']}",
                     results["cold_throughput"]["rps"]))
    bars += [(f"304 c={r['c']}", r["rps"]) for r in results.get("not_modified") or []]
    bars += [(f"lookup c={r['c']}", r["rps"]) for r in results.get("lookup") or []]
    bars += [(f"hit c={r['c']}\nrecycling", r["rps"]) for r in results.get("recycling") or []]
    if bars:
        drawn = ax.bar(range(len(bars)), [v for _, v in bars], color="tab:green")
        ax.bar_label(drawn, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(bars)), [k for k, _ in bars], rotation=45, ha="right",
                      fontsize=7)
        ax.set_yscale("log")
    ax.set_title("throughput (req/s, log)", fontsize=10)

    ax = axes[0][2]
    duel = results.get("engine_vs_vips")
    if duel:
        ax.boxplot([duel["ours_samples"], duel["vips_samples"]])
        ax.set_xticks([1, 2], ["ours (Wand)", "pyvips"])
        ax.set_ylabel("ms")
    ax.set_title("4000x3000 JPEG -> 960 webp, in process", fontsize=10)

    sizing = results.get("sizing") or []
    for ax, title, keys, log in (
            (axes[1][0], "bytes fetched per image (log)", ("default_bytes", "full_bytes"), True),
            (axes[1][1], "fetch + render ms per image (log)", ("default_ms", "full_ms"), True)):
        if sizing:
            x = range(len(sizing))
            ax.bar([i - 0.2 for i in x], [r[keys[0]] for r in sizing], 0.4, label="default")
            ax.bar([i + 0.2 for i in x], [r[keys[1]] for r in sizing], 0.4, label="full source")
            ax.set_xticks(list(x), [r["image_id"] for r in sizing], fontsize=7)
            if log:
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)

    ax = axes[1][2]
    memory = results.get("memory") or []
    peaks = [(f"{m['policy']}\n{pid}", peak / MB) for m in memory
             for pid, peak in sorted(m["peak_rss"].items())]
    if peaks:
        drawn = ax.bar(range(len(peaks)), [v for _, v in peaks], color="tab:purple")
        ax.bar_label(drawn, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(peaks)), [k for k, _ in peaks], fontsize=6, rotation=45)
        ax.axhline(TARGET_RSS_BYTES / MB, color="red", linestyle="--", label="300 MiB target")
        ax.legend(fontsize=7)
    ax.set_title("peak RSS per worker (MiB)", fontsize=10)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
