"""nginx/qcimage-lb.conf: nginx accepts it; in front of several boxes it hashes, balances, retries.

The behaviour tests run the shipped balancer on loopback over three gunicorns (our
gunicorn.conf.py) serving a small recording app that says which box answered; the
scale-out tests in tests/e2e/scaleout/ run the same file in front of the real app.
"""

import json
import re
import subprocess
import sys
from collections import Counter

import pytest
import requests

from tests.test_nginx_conf import SHIPPED as ONE_BOX, debian_main_conf, nginx_binary, nginx_t
from tools.harness import (GUNICORN_CONF, NGINX_LB_CONF, clean_env, free_port,
                           make_self_signed_cert, render_lb_conf, start_gunicorn,
                           start_nginx_lb, write_main_conf)

SHIPPED = NGINX_LB_CONF.read_text()
DIRECTIVES = re.sub(r"#.*", "", SHIPPED)
TLS_SERVER = DIRECTIVES.split("listen 443", 1)[1]


def rendered(tmp, boxes=("127.0.0.1:8001", "127.0.0.1:8002")):
    cert, key = make_self_signed_cert(tmp)
    site = tmp / "qcimage-lb.conf"
    site.write_text(render_lb_conf(SHIPPED, address="127.0.0.1", http_port=free_port(),
                                   https_port=free_port(), boxes=list(boxes),
                                   cache_dir=tmp / "cache", cert=cert, key=key, log_dir=tmp))
    return site


def block(text, head):
    found = re.search(re.escape(head) + r" \{(.*?)\n\s*\}", text, re.S)
    assert found, f"no {head} block"
    return found.group(1)


def lines(body):
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_shipped_lb_conf_passes_nginx_t_in_http_context(tmp_path):
    result = nginx_t(tmp_path, write_main_conf(tmp_path, rendered(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr


def test_shipped_lb_conf_fits_inside_debians_own_nginx_conf(tmp_path):
    result = nginx_t(tmp_path, debian_main_conf(tmp_path, rendered(tmp_path)))
    assert result.returncode == 0, result.stderr


def test_images_hash_by_uri_and_everything_else_is_round_robin():
    images, boxes = block(DIRECTIVES, "upstream qcimage_images"), block(DIRECTIVES,
                                                                        "upstream qcimage_boxes")
    assert "hash $request_uri consistent;" in images
    assert not re.search(r"\b(hash|ip_hash|least_conn|random)\b", boxes)
    servers = [line for line in lines(images) if line.startswith("server ")]
    # Both groups name the same boxes, each with passive health.
    assert servers == [line for line in lines(boxes) if line.startswith("server ")]
    assert len(servers) == 3
    assert all(re.fullmatch(r"server \S+:\d+ max_fails=\d+ fail_timeout=\d+s;", s)
               for s in servers)
    assert re.search(r"keepalive \d+;", images) and re.search(r"keepalive \d+;", boxes)
    assert block(TLS_SERVER, "location = /api/image").strip().startswith(
        "proxy_pass http://qcimage_images;")
    for location in ("location = /api/qc-images", "location /"):
        assert "proxy_pass http://qcimage_boxes;" in block(TLS_SERVER, location)


def test_idempotent_gets_are_retried_on_another_box_within_bounds():
    assert "proxy_next_upstream error timeout http_502 http_503;" in TLS_SERVER
    assert int(re.search(r"proxy_next_upstream_tries (\d+);", TLS_SERVER).group(1)) <= 3
    assert re.search(r"proxy_next_upstream_timeout \d+s;", TLS_SERVER)
    # Keep-alive to the boxes needs HTTP/1.1 and no "Connection: close".
    assert "proxy_http_version 1.1;" in TLS_SERVER
    assert 'proxy_set_header Connection "";' in TLS_SERVER


def test_caching_is_the_one_box_configs_line_for_line():
    def cache_lines(text, zone):
        body = block(re.sub(r"#.*", "", text).split("listen 443", 1)[1], "location = /api/image")
        return [line.replace(zone, "ZONE") for line in lines(body)
                if not line.startswith("proxy_pass")]
    assert cache_lines(SHIPPED, "qcimage_lb_images") == cache_lines(ONE_BOX, "qcimage_images")


def test_proxy_headers_and_timeouts_match_the_one_box_config():
    def server_level(text):
        tls = re.sub(r"#.*", "", text).split("listen 443", 1)[1]
        return [line for line in lines(tls.split("location", 1)[0])
                if line.startswith(("proxy_set_header", "proxy_read_timeout",
                                    "proxy_send_timeout", "proxy_http_version"))]
    assert server_level(SHIPPED) == server_level(ONE_BOX)
    assert "proxy_set_header" not in "".join(re.findall(r"location[^{]*\{[^}]*\}", TLS_SERVER))
    probe = f"import runpy; print(runpy.run_path({str(GUNICORN_CONF)!r})['timeout'])"
    worker_timeout = int(subprocess.run([sys.executable, "-c", probe], env=clean_env(),
                                        capture_output=True, text=True, check=True).stdout)
    assert int(re.search(r"proxy_read_timeout (\d+)s;", TLS_SERVER).group(1)) > worker_timeout


BOX_APP = '''
"""A box stand-in: answers with its name and what it saw; 503 when the query names it."""
import json, os
from urllib.parse import parse_qs

def app(environ, start_response):
    box = os.environ["BOX"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    body = json.dumps({"box": box, "xff": environ.get("HTTP_X_FORWARDED_FOR"),
                       "path": environ["PATH_INFO"]}).encode()
    status = "503 Service Unavailable" if box in query.get("fail", []) else "200 OK"
    headers = [("Content-Type", "application/json")]
    if "cache" in query:
        headers.append(("Cache-Control", "public, max-age=600"))
    start_response(status, headers)
    return [body]
'''


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    nginx_binary()
    tmp = tmp_path_factory.mktemp("lb")
    (tmp / "box.py").write_text(BOX_APP)
    boxes = {}
    try:
        for name in ("box1", "box2", "box3"):
            boxes[name] = start_gunicorn({"BOX": name}, workers=1, tmp=tmp, wsgi_app="box:app",
                                         cwd=tmp)
        lb = start_nginx_lb(tmp / "nginx", [b.url.split("//")[1] for b in boxes.values()])
    except BaseException:
        for box in boxes.values():
            box.stop()
        raise
    yield lb, boxes
    lb.stop()
    for box in boxes.values():
        box.stop()


def get(lb, path):
    return requests.get(lb.url + path, verify=lb.ca_bundle, timeout=30)


@pytest.mark.e2e
def test_one_image_uri_always_reaches_one_box_and_uris_spread(balanced):
    lb, _ = balanced
    homes = {}
    for n in range(24):
        answers = {get(lb, f"/api/image?url=img{n}").json()["box"] for _ in range(3)}
        assert len(answers) == 1, answers
        homes[n] = answers.pop()
    assert len(set(homes.values())) == 3, homes


@pytest.mark.e2e
def test_lookups_go_round_robin_with_the_client_address(balanced):
    lb, _ = balanced
    answers = [get(lb, "/api/qc-images?id=1").json() for _ in range(9)]
    assert Counter(a["box"] for a in answers) == {"box1": 3, "box2": 3, "box3": 3}
    assert {a["xff"] for a in answers} == {"127.0.0.1"}


@pytest.mark.e2e
def test_a_box_answering_503_is_skipped_for_the_next(balanced):
    lb, _ = balanced
    home = get(lb, "/api/image?url=x503").json()["box"]
    response = get(lb, f"/api/image?url=x503&fail={home}")
    assert response.status_code == 200
    assert response.json()["box"] != home


@pytest.mark.e2e
def test_metrics_are_not_balanced(balanced):
    lb, _ = balanced
    response = get(lb, "/metrics")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.e2e
def test_a_dead_box_costs_no_request_and_all_dead_is_json(balanced):
    lb, boxes = balanced
    """The last test of the module: it stops the boxes."""
    boxes["box2"].stop()
    answers = [get(lb, f"/api/image?url=dead{n}") for n in range(12)]
    answers += [get(lb, "/api/qc-images?id=1") for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 18
    assert "box2" not in {r.json()["box"] for r in answers}
    for box in boxes.values():
        box.stop()
    response = get(lb, "/api/qc-images?id=1")
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.text)
    assert body["success"] is False and body["error"] == "service_unavailable"
