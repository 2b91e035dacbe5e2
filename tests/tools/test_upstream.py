"""Tests for the stand-in Doppel upstream and its sample photos, over real sockets."""
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageOps, ImageStat

from tools.samples import (DEFAULT_DIR, PRODUCTS, SAMPLES_BY_ID, SMALL_SCALE, ensure_samples,
                           find_product)
from tools.upstream import UpstreamServer, parse_fault_spec

REPO = Path(__file__).resolve().parents[2]
PRODUCT = "/api/v1/products/qcMedia"
# Short client timeouts keep the fault tests fast; (connect, read) like the real client.
TIMEOUT = (2, 5)


@pytest.fixture(scope="session")
def small_samples(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("samples")
    ensure_samples(directory, scale=SMALL_SCALE)
    return directory


@pytest.fixture(scope="module")
def upstream(small_samples):
    with UpstreamServer("127.0.0.1", 0, small_samples, scale=SMALL_SCALE) as server:
        yield server


@pytest.fixture
def http(upstream):
    """A session against a stand-in with zeroed stats and no faults."""
    with requests.Session() as session:
        session.delete(upstream.url + "/_faults", timeout=TIMEOUT).raise_for_status()
        session.delete(upstream.url + "/_stats", timeout=TIMEOUT).raise_for_status()
        yield session


def get_product(http, upstream, product_id="7494645791", platform="WEIDIAN", **kwargs):
    return http.get(upstream.url + PRODUCT, params={"id": product_id, "storePlatform": platform},
                    timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def get_image(http, upstream, image_id="n4EYdIoE", **params):
    timeout = params.pop("timeout", TIMEOUT)
    stream = params.pop("stream", False)
    return http.get(upstream.url + "/img", params={"url": image_id, **params},
                    timeout=timeout, stream=stream)


def set_fault(http, upstream, **fault):
    response = http.post(upstream.url + "/_faults", json=fault, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["faults"][-1]


def image_strings(node):
    """Every string ``image`` field at any depth, in document order (how qcimage parses)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from image_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from image_strings(item)


def decode(response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


# --------------------------------------------------------------------------- products


def test_product_lookup_is_nested_doppel_json_with_duplicates_and_distractors(http, upstream):
    response = get_product(http, upstream)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()["data"]
    assert data["product"]["id"] == "7494645791"
    assert data["product"]["title"] and data["product"]["price"]["currency"] == "CNY"
    assert isinstance(data["product"]["image"], dict)
    assert all({"agent", "date", "media"} <= set(group) for group in data["qcGroups"])
    media = [m for group in data["qcGroups"] for m in group["media"]]
    assert any(m["image"] is None for m in media)
    assert list(image_strings(data)) == ["n4EYdIoE", "cR-eVGrQ", "Tq3_Hx8w", "n4EYdIoE"]


@pytest.mark.parametrize("platform, product_id", sorted(PRODUCTS))
def test_every_catalogue_product_lists_its_images_in_order(http, upstream, platform, product_id):
    response = get_product(http, upstream, product_id, platform)

    assert response.status_code == 200
    ids = list(dict.fromkeys(image_strings(response.json()["data"])))
    assert ids == find_product(platform, product_id).image_ids
    assert set(ids) <= set(SAMPLES_BY_ID)


def test_product_without_images_is_200_with_no_groups(http, upstream):
    response = get_product(http, upstream, "1000000000", "WEIDIAN")

    assert response.status_code == 200
    assert response.json()["data"]["qcGroups"] == []
    assert list(image_strings(response.json()["data"])) == []


@pytest.mark.parametrize("product_id, platform", [
    ("9999999999", "WEIDIAN"),  # unknown id
    ("7494645791", "weidian"),  # platforms are matched case-sensitively
    ("7494645791", "TAOBAO"),  # same id on another platform is another product
])
def test_unknown_product_is_404_json(http, upstream, product_id, platform):
    response = get_product(http, upstream, product_id, platform)

    assert response.status_code == 404
    assert response.json()["success"] is False


def test_product_without_id_is_400(http, upstream):
    response = http.get(upstream.url + PRODUCT, params={"storePlatform": "WEIDIAN"},
                        timeout=TIMEOUT)

    assert response.status_code == 400


# --------------------------------------------------------------------------- images


def test_img_downscales_to_width_keeping_aspect(http, upstream):
    response = get_image(http, upstream, "cR-eVGrQ", width=200, format="png")

    assert response.status_code == 200
    assert decode(response).size == (200, 150)


def test_img_never_enlarges(http, upstream):
    response = get_image(http, upstream, "n4EYdIoE", width=5000, format="jpeg")

    assert decode(response).size == (400, 300)


@pytest.mark.parametrize("fmt, pil_format, content_type", [
    ("png", "PNG", "image/png"),
    ("jpeg", "JPEG", "image/jpeg"),
    ("jpg", "JPEG", "image/jpeg"),
    ("webp", "WEBP", "image/webp"),
    ("WEBP", "WEBP", "image/webp"),
])
def test_img_encodes_the_requested_format(http, upstream, fmt, pil_format, content_type):
    response = get_image(http, upstream, "n4EYdIoE", width=160, format=fmt)

    assert response.headers["Content-Type"] == content_type
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert decode(response).format == pil_format


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_img_lower_quality_gives_fewer_bytes(http, upstream, fmt):
    low = get_image(http, upstream, "n4EYdIoE", width=400, format=fmt, quality=30)
    high = get_image(http, upstream, "n4EYdIoE", width=400, format=fmt, quality=90)

    assert len(low.content) < len(high.content)


def test_img_without_format_keeps_the_stored_format(http, upstream):
    assert decode(get_image(http, upstream, "n4EYdIoE", width=100)).format == "JPEG"
    assert decode(get_image(http, upstream, "cR-eVGrQ", width=100)).format == "PNG"


def test_png_at_its_own_width_is_served_as_stored(http, upstream, small_samples):
    response = get_image(http, upstream, "cR-eVGrQ", width=500, format="png")

    assert response.content == (small_samples / "cR-eVGrQ.png").read_bytes()


@pytest.mark.parametrize("params", [
    {"format": "gif"}, {"format": "avif"}, {"width": "0"}, {"width": "-5"}, {"width": "wide"},
    {"quality": "0"}, {"quality": "101"}, {"quality": "high"},
])
def test_img_rejects_bad_parameters_with_400(http, upstream, params):
    assert get_image(http, upstream, "n4EYdIoE", **params).status_code == 400


def test_unknown_image_is_404(http, upstream):
    assert get_image(http, upstream, "zzzzzzzz", width=100).status_code == 404


def test_rotated_sample_keeps_exif_orientation_through_img(http, upstream, small_samples):
    with Image.open(small_samples / "Tq3_Hx8w.jpg") as stored:
        assert stored.size == (400, 300)
        assert stored.getexif()[0x0112] == 6

    served = decode(get_image(http, upstream, "Tq3_Hx8w", width=200, format="jpeg"))

    assert served.size == (200, 150)
    assert served.getexif()[0x0112] == 6
    assert ImageOps.exif_transpose(served).size == (150, 200)


def test_alpha_sample_keeps_alpha_in_png_and_is_flattened_for_jpeg(http, upstream):
    png = decode(get_image(http, upstream, "aLph-4Cx", width=120, format="png"))
    jpeg = decode(get_image(http, upstream, "aLph-4Cx", width=120, format="jpeg"))

    assert png.mode == "RGBA" and png.getextrema()[3][0] == 0
    assert jpeg.mode == "RGB"


# --------------------------------------------------------------------------- stats


def test_stats_count_endpoints_images_variants_and_reset(http, upstream):
    get_product(http, upstream)
    get_image(http, upstream, "n4EYdIoE", width=100, format="webp")
    get_image(http, upstream, "n4EYdIoE", width=100, format="webp")
    get_image(http, upstream, "cR-eVGrQ")
    http.get(upstream.url + "/nope", timeout=TIMEOUT)

    stats = http.get(upstream.url + "/_stats", timeout=TIMEOUT).json()

    assert stats["total"] == 5
    assert stats["endpoints"] == {"product": 1, "img": 3, "other": 1}
    assert stats["products"] == {"WEIDIAN/7494645791": 1}
    assert stats["images"] == {"n4EYdIoE": 2, "cR-eVGrQ": 1}
    assert stats["variants"] == {"n4EYdIoE:100:webp": 2, "cR-eVGrQ::": 1}
    assert stats["statuses"] == {"200": 4, "404": 1}

    reset = http.delete(upstream.url + "/_stats", timeout=TIMEOUT).json()
    assert reset["total"] == 0 and reset["images"] == {}


def test_concurrent_identical_requests_are_all_counted_but_encoded_once(http, upstream):
    barrier = threading.Barrier(8)
    sizes = []

    def fetch():
        barrier.wait()
        sizes.append(len(get_image(requests, upstream, "dRk5nT0p", width=111,
                                   format="webp").content))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = http.get(upstream.url + "/_stats", timeout=TIMEOUT).json()
    assert stats["variants"] == {"dRk5nT0p:111:webp": 8}
    assert stats["renders"] == 1
    assert len(set(sizes)) == 1


def test_unknown_path_is_404(http, upstream):
    response = http.get(upstream.url + "/api/v2/whatever", timeout=TIMEOUT)

    assert response.status_code == 404


def test_keep_alive_serves_several_requests_on_one_connection(upstream):
    conn = HTTPConnection("127.0.0.1", int(upstream.url.rsplit(":", 1)[1]), timeout=5)
    try:
        conn.request("GET", "/img?url=n4EYdIoE&width=50&format=png")
        first = conn.getresponse()
        assert len(first.read()) == int(first.headers["Content-Length"])
        sock = conn.sock
        conn.request("GET", PRODUCT + "?id=1000000000&storePlatform=WEIDIAN")
        assert conn.getresponse().status == 200
        assert conn.sock is sock
    finally:
        conn.close()


# --------------------------------------------------------------------------- faults


def test_delay_fault_answers_normally_after_the_delay(http, upstream):
    set_fault(http, upstream, mode="delay", ms=300, paths=["product"])
    started = time.monotonic()

    response = get_product(http, upstream)

    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200


def test_hang_fault_never_answers_and_does_not_block_others(http, upstream):
    set_fault(http, upstream, mode="hang", paths=["img"], ids=["n4EYdIoE"])

    with pytest.raises(requests.exceptions.ReadTimeout):
        get_image(requests, upstream, "n4EYdIoE", timeout=(1, 0.3))
    assert get_image(http, upstream, "cR-eVGrQ", width=50).status_code == 200
    assert get_product(http, upstream).status_code == 200


def test_reset_fault_sends_headers_and_part_of_the_body_then_resets(http, upstream):
    set_fault(http, upstream, mode="reset", bytes=100, paths=["img"])

    response = get_image(http, upstream, "n4EYdIoE", width=300, format="png", stream=True)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) > 100
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        response.content


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_status_fault_answers_html_error(http, upstream, status):
    set_fault(http, upstream, mode="status", status=status, paths=["product"])

    response = get_product(http, upstream)

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Retry-After" not in response.headers


def test_status_fault_can_add_retry_after(http, upstream):
    set_fault(http, upstream, mode="status", status=503, retry_after=7, paths=["img"])

    response = get_image(http, upstream)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"


def test_garbage_fault_on_product_is_200_but_not_json(http, upstream):
    set_fault(http, upstream, mode="garbage", paths=["product"])

    response = get_product(http, upstream)

    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)


def test_garbage_fault_on_img_is_random_bytes_labelled_png(http, upstream):
    set_fault(http, upstream, mode="garbage", size=500, paths=["img"])

    response = get_image(http, upstream)

    assert response.headers["Content-Type"] == "image/png"
    assert len(response.content) == 500
    with pytest.raises(Exception):
        decode(response)


@pytest.mark.parametrize("shape, check", [
    ("no_data", lambda body: "data" not in body),
    ("list", lambda body: body["data"] == [1, 2, 3]),
    ("null", lambda body: body["data"] is None),
    ("string", lambda body: isinstance(body["data"], str)),
])
def test_wrong_shape_fault_is_json_of_the_wrong_shape(http, upstream, shape, check):
    set_fault(http, upstream, mode="wrong_shape", shape=shape, paths=["product"])

    response = get_product(http, upstream)

    assert response.status_code == 200
    assert check(response.json())


def test_html200_fault_is_a_200_html_page(http, upstream):
    set_fault(http, upstream, mode="html200")

    response = get_product(http, upstream)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("chunked", [True, False])
def test_endless_fault_keeps_streaming(http, upstream, chunked):
    set_fault(http, upstream, mode="endless", chunked=chunked, chunk=256, interval_ms=20,
              paths=["img"])

    response = get_image(requests, upstream, stream=True, timeout=(1, 1))
    received = 0
    deadline = time.monotonic() + 0.5
    for block in response.iter_content(256):
        received += len(block)
        if time.monotonic() > deadline:
            break
    response.close()

    assert response.status_code == 200
    assert received >= 256 * 5
    if chunked:
        assert response.headers["Transfer-Encoding"] == "chunked"
    else:
        assert int(response.headers["Content-Length"]) >= 10 ** 12


@pytest.mark.parametrize("content_length", [True, False])
def test_oversize_fault_sends_a_big_png_looking_body(http, upstream, content_length):
    size = 3 * 1024 * 1024 + 17
    set_fault(http, upstream, mode="oversize", size=size, content_length=content_length,
              paths=["img"])

    response = get_image(http, upstream)

    assert response.headers["Content-Type"] == "image/png"
    assert ("Content-Length" in response.headers) is content_length
    assert len(response.content) == size
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("length", ["honest", "short", "none"])
def test_truncate_fault_cuts_the_image_asked_for(http, upstream, length):
    whole = get_image(http, upstream, "n4EYdIoE", width=300, format="jpeg").content
    set_fault(http, upstream, mode="truncate", keep_percent=40, length=length, paths=["img"])
    host, port = upstream.url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/img?url=n4EYdIoE&width=300&format=jpeg")
    response = connection.getresponse()
    declared = response.getheader("Content-Length")
    body = response.read()
    connection.close()
    cut = whole[:len(whole) * 40 // 100]
    # "short" sends the whole image after declaring the cut length; a client reads the cut.
    assert body == cut
    assert declared == (None if length == "none" else str(len(cut)))


def test_redirect_fault_points_at_a_reserved_address(http, upstream):
    set_fault(http, upstream, mode="redirect", paths=["img"])

    response = http.get(upstream.url + "/img?url=n4EYdIoE", allow_redirects=False,
                        timeout=TIMEOUT)

    assert response.status_code == 302
    assert response.headers["Location"] == "http://203.0.113.1/img?url=n4EYdIoE"


def test_payload_fault_serves_base64_body_with_chosen_type(http, upstream):
    body = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    set_fault(http, upstream, mode="payload", content_type="image/png",
              body_b64=base64.b64encode(body).decode(), paths=["img"])

    response = get_image(http, upstream)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == body


def test_payload_fault_serves_a_file(http, upstream, tmp_path):
    hostile = tmp_path / "bomb.bin"
    hostile.write_bytes(b"\x00\x01" * 1000)
    set_fault(http, upstream, mode="payload", file=str(hostile), status=201,
              headers={"X-Test": "yes"}, paths=["img"])

    response = get_image(http, upstream)

    assert response.status_code == 201
    assert response.headers["X-Test"] == "yes"
    assert response.content == hostile.read_bytes()


def test_fault_with_count_recovers_by_itself(http, upstream):
    set_fault(http, upstream, mode="status", status=502, count=2, paths=["img"])

    statuses = [get_image(http, upstream, width=50).status_code for _ in range(3)]

    assert statuses == [502, 502, 200]
    assert http.get(upstream.url + "/_faults", timeout=TIMEOUT).json() == {"faults": []}


def test_fault_only_hits_its_paths_and_ids(http, upstream):
    set_fault(http, upstream, mode="status", status=500, paths=["img"], ids=["cR-eVGrQ"])

    assert get_image(http, upstream, "cR-eVGrQ", width=50).status_code == 500
    assert get_image(http, upstream, "n4EYdIoE", width=50).status_code == 200
    assert get_product(http, upstream).status_code == 200
    stats = http.get(upstream.url + "/_stats", timeout=TIMEOUT).json()
    assert stats["faults"] == {"status": 1}


def test_faults_are_listed_and_cleared_one_by_one_or_all(http, upstream):
    first = set_fault(http, upstream, mode="delay", ms=1, paths=["img"])
    set_fault(http, upstream, mode="html200", paths=["product"])

    remaining = http.delete(upstream.url + "/_faults", params={"id": first["id"]},
                            timeout=TIMEOUT).json()["faults"]
    assert [f["mode"] for f in remaining] == ["html200"]

    assert http.delete(upstream.url + "/_faults", timeout=TIMEOUT).json() == {"faults": []}


@pytest.mark.parametrize("fault", [
    {"mode": "explode"}, {"mode": "status", "paths": ["images"]}, {"mode": "delay", "ms": -1},
    {"mode": "status", "count": 0}, {"mode": "payload"}, {"mode": "delay", "colour": "red"},
    {"mode": "payload", "body_b64": "not base64!"}, {"mode": "status", "status": 700}, [1],
])
def test_invalid_fault_is_refused_with_400(http, upstream, fault):
    response = http.post(upstream.url + "/_faults", json=fault, timeout=TIMEOUT)

    assert response.status_code == 400
    assert http.get(upstream.url + "/_faults", timeout=TIMEOUT).json() == {"faults": []}


def test_fault_spec_accepts_json_shorthand_and_file(tmp_path):
    spec_file = tmp_path / "fault.json"
    spec_file.write_text('[{"mode": "hang"}, {"mode": "delay", "ms": 5}]')

    (shorthand,) = parse_fault_spec("status,status=503,retry_after=2,paths=img|product,count=2")
    (as_json,) = parse_fault_spec('{"mode": "garbage", "ids": ["n4EYdIoE"]}')
    from_file = parse_fault_spec(f"@{spec_file}")

    assert shorthand.options["status"] == 503 and shorthand.count == 2
    assert shorthand.paths == {"img", "product"}
    assert as_json.ids == {"n4EYdIoE"}
    assert [f.mode for f in from_file] == ["hang", "delay"]


def test_disconnects_and_malformed_requests_do_not_break_the_server(http, upstream, caplog):
    set_fault(http, upstream, mode="endless", chunk=65536, interval_ms=1, paths=["img"],
              ids=["dRk5nT0p"])
    port = int(upstream.url.rsplit(":", 1)[1])
    raw_requests = [
        b"GET /img?url=dRk5nT0p HTTP/1.1\r\n\r\n",  # endless: we hang up mid-stream
        b"GET /img?url=cR-eVGrQ&format=png HTTP/1.1\r\n\r\n",  # hang up mid-image
        b"GET /img?url=n4EYdIoE HTTP/1.1\r\nContent-Length: many\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ]
    for raw in raw_requests:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(raw)
            assert sock.recv(100)

    assert get_product(http, upstream).status_code == 200
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# --------------------------------------------------------------------------- CLI


def test_cli_prints_ready_serves_and_stops_on_sigterm(small_samples):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.upstream", "--port", "0", "--samples-dir",
         str(small_samples), "--scale", str(SMALL_SCALE),
         "--fault", "status,status=503,paths=product,count=1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:")
        product_url = line.split()[1] + PRODUCT + "?id=7494645791&storePlatform=WEIDIAN"
        assert requests.get(product_url, timeout=TIMEOUT).status_code == 503
        assert requests.get(product_url, timeout=TIMEOUT).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""


# --------------------------------------------------------------------------- samples


def test_samples_are_deterministic_and_reused(tmp_path, small_samples):
    first = ensure_samples(tmp_path, scale=SMALL_SCALE)
    stamps = {p: p.stat().st_mtime_ns for p in first.values()}

    again = ensure_samples(tmp_path, scale=SMALL_SCALE)

    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.values()} == stamps
    for image_id, path in first.items():
        assert path.read_bytes() == (small_samples / path.name).read_bytes(), image_id


def test_truncated_sample_is_regenerated(tmp_path):
    paths = ensure_samples(tmp_path, scale=SMALL_SCALE)
    good = paths["n4EYdIoE"].read_bytes()
    paths["n4EYdIoE"].write_bytes(good[:100])

    ensure_samples(tmp_path, scale=SMALL_SCALE)

    assert paths["n4EYdIoE"].read_bytes() == good


@pytest.fixture(scope="session")
def full_samples():
    """The full-size default set; generated once (about 6 s) and reused across runs."""
    return ensure_samples(DEFAULT_DIR)


@pytest.mark.parametrize("image_id, fmt, mode, stored, orientation, shown", [
    ("n4EYdIoE", "JPEG", "RGB", (4000, 3000), None, (4000, 3000)),
    ("cR-eVGrQ", "PNG", "RGB", (5000, 3750), None, (5000, 3750)),
    ("Tq3_Hx8w", "JPEG", "RGB", (4000, 3000), 6, (3000, 4000)),
    ("dRk5nT0p", "JPEG", "RGB", (3264, 2448), None, (3264, 2448)),
    ("L1ghTw9Q", "JPEG", "RGB", (3264, 2448), None, (3264, 2448)),
    ("aLph-4Cx", "PNG", "RGBA", (2400, 2400), None, (2400, 2400)),
])
def test_default_samples_have_the_promised_sizes(full_samples, image_id, fmt, mode, stored,
                                                 orientation, shown):
    with Image.open(full_samples[image_id]) as image:
        assert (image.format, image.mode, image.size) == (fmt, mode, stored)
        assert image.getexif().get(0x0112) == orientation
        assert ImageOps.exif_transpose(image).size == shown


def test_dark_and_light_samples_are_dark_and_light(full_samples):
    def brightness(image_id):
        with Image.open(full_samples[image_id]) as image:
            image.draft("L", (400, 300))
            return ImageStat.Stat(image.convert("L")).mean[0]

    assert brightness("dRk5nT0p") < 50
    assert brightness("L1ghTw9Q") > 200
    assert 80 < brightness("n4EYdIoE") < 200
