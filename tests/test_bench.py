"""The benchmark's pure helpers: wrk parsing, SSIM/PSNR, image alignment and the report."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from bench import inprocess, report
from bench.metrics import SSIM_K1, median, percentile, psnr, ssim
from bench.wrk import parse_wrk, rotation_script, run_wrk

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8000/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.21ms    1.02ms  12.34ms   80.00%
    Req/Sec     1.23k   100.00     1.50k    70.00%
  Latency Distribution
     50%  850.00us
     75%    3.50ms
     90%    4.00ms
     99%    1.20s
  12345 requests in 5.00s, 1.23MB read
  Socket errors: connect 0, read 12, write 1, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:   2469.00
Transfer/sec:    246.90KB
"""


def test_parse_wrk_reads_the_summary_in_milliseconds():
    result = parse_wrk(WRK_OUTPUT, connections=8)
    assert result.requests == 12345
    assert result.seconds == pytest.approx(5.0)
    assert result.rps == pytest.approx(2469.0)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p90_ms == pytest.approx(4.0)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.non_2xx_3xx == 5
    assert result.socket_errors == 15
    assert result.connections == 8


def test_parse_wrk_counts_nothing_when_wrk_reports_no_errors():
    clean = "\n".join(line for line in WRK_OUTPUT.splitlines()
                      if "errors" not in line and "Non-2xx" not in line)
    result = parse_wrk(clean)
    assert result.non_2xx_3xx == 0
    assert result.socket_errors == 0


def test_parse_wrk_refuses_output_without_latency_distribution():
    without = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%  " not in line
                        and not line.strip().startswith(("50%", "90%", "99%")))
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk(without)


def test_rotation_script_sends_every_path_in_turn_and_escapes_quotes():
    script = rotation_script(["/a?x=1", '/b"c'])
    assert '"/a?x=1"' in script
    assert '"/b\\"c"' in script
    assert "i % #paths + 1" in script
    with pytest.raises(ValueError):
        rotation_script([])


def test_run_wrk_only_targets_loopback():
    with pytest.raises(ValueError, match="127.0.0.1"):
        run_wrk(["http://example.com/"], connections=1, duration=1)


def test_percentile_and_median_interpolate_like_numpy():
    assert median([3, 1, 2]) == 2
    assert median([1, 2, 3, 4]) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99)
    with pytest.raises(ValueError):
        median([])


def test_ssim_of_an_image_with_itself_is_one():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 48)).astype(float)
    assert ssim(image, image) == pytest.approx(1.0)


def test_ssim_of_two_flat_images_matches_the_luminance_formula():
    # Zero variance leaves only the luminance term: (2ab + C1) / (a² + b² + C1).
    a, b = 100.0, 120.0
    c1 = (SSIM_K1 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((32, 32), a), np.full((32, 32), b)) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_as_noise_grows_and_is_symmetric():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 64)).astype(float)
    light = np.clip(image + rng.normal(0, 5, image.shape), 0, 255)
    heavy = np.clip(image + rng.normal(0, 40, image.shape), 0, 255)
    assert 1 > ssim(image, light) > ssim(image, heavy) > 0
    assert ssim(image, heavy) == pytest.approx(ssim(heavy, image))


def test_ssim_refuses_mismatched_or_tiny_images():
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)))


def test_psnr_of_a_known_error():
    # An error of 1 everywhere: MSE 1, so 10·log10(255²) dB.
    assert psnr(np.zeros((8, 8)), np.ones((8, 8))) == pytest.approx(20 * math.log10(255))
    assert psnr(np.ones((8, 8)), np.ones((8, 8))) == math.inf


def _png(image, orientation=None):
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


def _scene(width=96, height=64):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_compare_identical_outputs():
    data = _png(_scene())
    result = inprocess.compare(data, data, data)
    assert result["ssim"] == pytest.approx(1.0)
    assert result["psnr"] == math.inf
    assert result["notes"] == []


def test_compare_turns_a_sideways_reference_upright_first():
    upright = _scene()
    # Stored rotated with orientation 6, and rendered without applying it (sideways).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    source = _png(stored, orientation=6)
    result = inprocess.compare(_png(upright), _png(stored), source)
    assert result["ssim"] == pytest.approx(1.0)
    assert any("not upright" in note for note in result["notes"])


def test_compare_brings_different_sizes_to_the_smaller_one():
    big = _scene(96, 64)
    small = big.resize((48, 32), Image.Resampling.LANCZOS)
    result = inprocess.compare(_png(small), _png(big), _png(big))
    assert result["ssim"] > 0.99
    assert any("resized" in note for note in result["notes"])


def test_decoded_flattens_transparency_on_white():
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    assert inprocess.decoded(_png(clear)).getpixel((0, 0)) == (255, 255, 255)


def test_markdown_table_aligns_escapes_and_checks_row_length():
    table = report.markdown_table(["a", "b"], [["x|y", 1.5]], "lr")
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| x\\|y | 1.5 |"]
    with pytest.raises(ValueError):
        report.markdown_table(["a", "b"], [["only one"]])


def _results():
    sizing_row = {
        "image_id": "n4EYdIoE", "n": 3, "default_bytes": 100_000, "full_bytes": 10_000_000,
        "bytes_ratio": 100.0, "default_fetch_ms": 2.0, "default_render_ms": 50.0,
        "full_fetch_ms": 20.0, "full_render_ms": 480.0, "default_ms": 52.0,
        "full_ms": 500.0, "speedup": 500 / 52, "ssim": 0.995, "psnr": 41.0,
        "ssim_lossless": 0.996, "psnr_lossless": 42.0, "default_size": (960, 720),
        "full_size": (960, 720), "default_alpha": False, "full_alpha": False,
        "source_alpha": False, "notes": [], "comparable": True,
    }
    wrk_row = {"policy": "default", "what": "cache hit", "c": 8, "rps": 600.0, "p50_ms": 12.0,
               "p99_ms": 30.0, "requests": 3000, "non_2xx_3xx": 0, "socket_errors": 0,
               "recycled": 0}
    return {
        "errors": {"lookup": "RuntimeError: boom"},
        "meta": {"date": "2030-01-01 00:00 UTC", "machine": {"CPU": "test"},
                 "method": ["- test"]},
        "engine_vs_vips": {"n": 15, "ours_ms": 120.0, "vips_ms": 100.0, "ratio": 1.2,
                           "ours_bytes": 1, "vips_bytes": 2, "ssim_ours_vs_vips": 0.98,
                           "ours_samples": [120.0], "vips_samples": [100.0]},
        "sizing": [sizing_row],
        "hits": [wrk_row],
        "cold_throughput": {**wrk_row, "what": "cold", "rps": 20.0},
        "coalescing": {"clients": 32, "upstream_fetches": 1, "misses": 1, "hits": 31,
                       "non_200": 0, "p50_ms": 400.0, "max_ms": 500.0,
                       "variants": {"n4EYdIoE:777:jpeg": 1}},
        "memory": [{"policy": report.FULL_LABEL, "peak_rss": {11: 320 * report.MB},
                    "renders_by_pid": {11: 2}, "max_peak_rss": 320 * report.MB}],
    }


def test_targets_give_a_verdict_for_each_goal_of_the_brief():
    verdicts = {name: ok for name, _, _, ok in report.targets(_results())}
    assert verdicts["render time, ours / pyvips (4000x3000 JPEG -> 960 webp)"] is False
    assert verdicts["source sizing: fewer bytes fetched (worst image)"] is True
    assert verdicts["source sizing: faster fetch + render (worst image)"] is True
    assert verdicts["cache-hit / cold-render throughput (c=8)"] is True
    assert verdicts["coalescing: 32 identical misses -> upstream fetches / renders"] is True
    assert verdicts[
        "peak RSS per worker, 5000x3750 PNG at SOURCE_WIDTH=5000 png"] is False


def test_targets_without_measurements_are_not_applicable():
    verdicts = [ok for *_, ok in report.targets({"errors": {}})]
    assert set(verdicts) == {None}


def test_render_markdown_writes_every_section_and_the_failures():
    text = report.render_markdown(_results(), "BENCHMARKS.png")
    assert "![charts](BENCHMARKS.png)" in text
    assert "| render time, ours / pyvips (4000x3000 JPEG -> 960 webp) | ≤ 1.00 | 1.20 | MISS |" \
        in text
    assert "**Not measured: RuntimeError: boom**" in text
    assert "n4EYdIoE:777:jpeg" in text


def _slow_rows():
    rows = []
    for delay, c, rps in ((0.0, 4, 40.0), (0.0, 16, 48.0), (0.8, 16, 16.0), (0.8, 64, 42.0),
                          (0.2, 16, 30.0)):
        rows.append({"delay_s": delay, "c": c, "rps": rps, "p50_ms": 900.0, "p99_ms": 1500.0,
                     "in_flight_max": c, "errors": 0, "overloaded": 0, "requests": 64,
                     "ok": 64, "peak_rss": {11: 200 * report.MB, 12: 210 * report.MB}})
    return rows


def test_ideal_is_the_cpu_bound_rate_or_clients_over_latency_whichever_is_less():
    from bench.slow_upstream import add_ideal

    rows = _slow_rows()
    add_ideal(rows, cores=2)
    cells = {(r["delay_s"], r["c"]): r for r in rows}
    # CPU-bound: 48/s, one miss's CPU time 2/48 s.
    assert cells[0.8, 16]["ideal_rps"] == pytest.approx(16 / (0.8 + 2 / 48))
    assert cells[0.8, 64]["ideal_rps"] == pytest.approx(48.0)
    assert cells[0.8, 64]["ratio"] == pytest.approx(42 / 48)
    assert cells[0.0, 4]["ratio"] is None


def test_worker_model_targets_and_page_views():
    from bench.slow_upstream import add_ideal

    results = _results()
    results["slow_upstream"] = _slow_rows()
    add_ideal(results["slow_upstream"], cores=2)
    results["overload"] = {"c": 64, "ok": 40, "overloaded": 88, "errors": 0,
                           "refused_p99_ms": 30.0, "p50_ms": 900.0, "delay_s": 0.8,
                           "workers": 2, "queue": 8}
    results["nginx"] = [{**results["hits"][0], "what": "cache hit via nginx", "c": 16,
                         "rps": 4000.0}]
    verdicts = {name: ok for name, _, _, ok in report.targets(results)}
    assert verdicts["misses, upstream 0.8 s, c=16: ratio to ideal"] is True
    assert verdicts["misses, upstream 0.8 s, c=64 / instant-upstream rate"] is True
    assert verdicts["peak RSS per worker after 64 concurrent misses"] is True
    assert verdicts["queue below the load: 503 overloaded p99, rest 200"] is True
    # 4 images a page, 90% hits at 4000/s, 10% misses at 42/s.
    assert report.page_views(results, 0.9) == pytest.approx(
        1 / (4 * (0.9 / 4000 + 0.1 / 42)))
    assert "## 11. Misses with a slow upstream" in report.render_markdown(results, "x.png")


def test_the_chart_is_drawn_from_a_run(tmp_path):
    from bench.slow_upstream import add_ideal

    results = _results()
    results["slow_upstream"] = _slow_rows()
    add_ideal(results["slow_upstream"], cores=2)
    results["nginx"] = [{**results["hits"][0], "what": "cache hit via nginx", "c": 16}]
    chart = tmp_path / "chart.png"
    report.draw_chart(results, chart)
    with Image.open(chart) as image:
        assert image.size[0] > 1000


def test_scaleout_section_reports_per_core_work_and_fault_failures():
    from bench import scaleout

    def row(rps, cpu_s):
        return {"rps": rps, "cpu_s": cpu_s, "seconds": 8.0, "errors": 0, "error_kinds": {}}
    result = {"workers": 2, "seconds": 8.0, "fault_seconds": 30.0, "load": "1.0 / 2.0",
              "boxes": [{"boxes": 1, "miss": row(10.0, 8.0), "hit": row(500.0, 8.0)},
                        {"boxes": 2, "miss": row(10.0, 16.0), "hit": row(400.0, 8.0)}],
              "faults": [{"fault": "kill -9 of one box", "requests": 900, "seconds": 31.0,
                          "failed": 0, "5xx": 0, "kinds": {}}]}
    text = scaleout.markdown(result)
    # One box: 10 misses/s on one busy core; two boxes: the same on two cores, half kept.
    assert "| 1 | 10.0 | 1.00 | 10.0 | 100 % | 0 | 500.0 | 1.00 | 500.0 | 100 % | 0 |" in text
    assert "| 2 | 10.0 | 2.00 | 5.0 | 50 % | 0 | 400.0 | 1.00 | 400.0 | 80 % | 0 |" in text
    assert "| kill -9 of one box | 900 | 31 | 0 | 0 |" in text


def test_the_steady_rate_leaves_out_the_ramp_up_and_the_tail():
    from bench.slow_upstream import steady_rate

    # 4 clients: the first 4 finish together late (ramp), then one every 0.1 s, then a
    # straggling tail; the rate in between is 10/s whatever the ramp and tail did.
    finished = [2.0] * 4 + [2.0 + 0.1 * n for n in range(1, 21)] + [9.0, 9.5, 10.0, 11.0]
    assert steady_rate(finished, 4) == pytest.approx(10.0)
    assert steady_rate(finished[:9], 4) is None  # too few in between to say


def test_each_cell_of_misses_gets_the_same_spread_of_widths():
    from bench.slow_upstream import DistinctMisses

    class Service:
        env = {"QCIMAGE_SIGNING_KEYS": "k" * 40}
        url = "http://127.0.0.1:1"

    sizes = [24, 96, 384] * 3
    shares = DistinctMisses(Service()).deal(sizes)
    assert [len(share) for share in shares] == sizes
    every = [pair for share in shares for pair in share]
    assert len(set(every)) == sum(sizes)  # no source twice: nothing coalesces or hits
    # A miss's work goes with its width squared; handed out in order, the last cell
    # rendered 2.4x the pixels of the first. Dealt, the cells are within 3 %.
    means = [sum(width * width for _, width in share) / len(share) for share in shares]
    assert max(means) / min(means) < 1.03
    # And a cell's first requests are no narrower than its last (shuffled, not sorted).
    for share in shares[2::3]:
        first, last = share[:len(share) // 4], share[-len(share) // 4:]
        ratio = sum(w for _, w in first) / sum(w for _, w in last)
        assert 0.9 < ratio < 1.1
