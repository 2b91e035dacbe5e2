"""nginx/qcimage.conf: nginx accepts it, and in front of gunicorn it caches, proxies and guards.

The behaviour tests put a small recording WSGI app behind our gunicorn.conf.py, so
they check nginx's part alone; tests/e2e/ runs the same config in front of the app.
"""

import http.client
import json
import re
import shutil
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tools.harness import (GUNICORN_CONF, NGINX_SITE_CONF, clean_env, free_port,
                           make_self_signed_cert, nginx_argv, render_site_conf,
                           start_gunicorn, start_nginx, write_main_conf)

SHIPPED = NGINX_SITE_CONF.read_text()
# The directives alone: comments explain, and may name directives that are not used.
DIRECTIVES = re.sub(r"#.*", "", SHIPPED)
TLS_SERVER = DIRECTIVES.split("listen 443", 1)[1]
DEBIAN_NGINX_CONF = Path("/etc/nginx/nginx.conf")


def nginx_binary():
    path = shutil.which("nginx")
    # Fail, not skip: `make test` installs nginx, so its absence is a broken setup.
    assert path, "nginx is not installed; `make test` installs it (apt-get install nginx-light)"
    return path


def rendered(tmp, upstream_port=8000):
    cert, key = make_self_signed_cert(tmp)
    site = tmp / "qcimage.conf"
    site.write_text(render_site_conf(
        SHIPPED, http_port=free_port(), https_port=free_port(),
        upstream=f"127.0.0.1:{upstream_port}", cache_dir=tmp / "cache", cert=cert, key=key,
        log_dir=tmp))
    return site


def nginx_t(tmp, main_conf):
    nginx_binary()
    return subprocess.run(nginx_argv(tmp, main_conf, "-t"), capture_output=True, text=True,
                          timeout=30)


def location(match_spec):
    """The body of ``location <match_spec> { … }`` in the TLS server (none nests blocks)."""
    found = re.search(r"location " + re.escape(match_spec) + r" \{(.*?)\n    \}", TLS_SERVER,
                      re.S)
    assert found, f"no location {match_spec} in the TLS server"
    return found.group(1)


def test_shipped_conf_passes_nginx_t_in_http_context(tmp_path):
    result = nginx_t(tmp_path, write_main_conf(tmp_path, rendered(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr


def debian_main_conf(tmp_path, site):
    """Debian's own nginx.conf, including ``site`` where it includes conf.d."""
    assert DEBIAN_NGINX_CONF.exists(), "Debian's nginx.conf is missing; reinstall nginx-common"
    text = DEBIAN_NGINX_CONF.read_text()
    # Dynamic modules load from prefix-relative paths and are not ours to test.
    text = re.sub(r"^\s*(user|pid|include /etc/nginx/modules-enabled/)\S*\s.*$", "", text,
                  flags=re.M)
    text = text.replace("/var/log/nginx/", f"{tmp_path}/")
    text = text.replace("include /etc/nginx/conf.d/*.conf;", f"include {site};")
    text = text.replace("include /etc/nginx/sites-enabled/*;", "")
    temp_paths = "".join(f"{kind}_temp_path {tmp_path}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = re.sub(r"^http \{", "http {" + temp_paths, text, count=1, flags=re.M)
    assert f"include {site};" in text
    main = tmp_path / "debian-nginx.conf"
    main.write_text(text)
    return main


def test_shipped_conf_fits_inside_debians_own_nginx_conf(tmp_path):
    """Installed in conf.d it shares http{} with Debian's defaults: no clashes there."""
    result = nginx_t(tmp_path, debian_main_conf(tmp_path, rendered(tmp_path)))
    assert result.returncode == 0, result.stderr


def test_cache_zone_and_upstream_are_defined_at_http_level():
    before_first_server = SHIPPED.split("\nserver {", 1)[0]
    assert re.search(r"^proxy_cache_path \S+ .*keys_zone=qcimage_images:", before_first_server,
                     re.M)
    assert re.search(r"^upstream qcimage \{\s*server 127\.0\.0\.1:8000;", before_first_server,
                     re.M)
    assert "/etc/nginx/conf.d/" in before_first_server


def test_only_the_image_route_is_cached_and_only_as_the_app_says():
    image = location("= /api/image")
    assert "proxy_cache qcimage_images;" in image
    assert "proxy_cache_key $request_uri$qcimage_accept_key;" in image
    assert "proxy_cache_lock on;" in image
    # Stale only while the app cannot answer: an expired copy is revalidated before it is
    # served again, so a takedown (451) reaches this cache (DESIGN §7).
    assert "proxy_cache_use_stale error timeout http_502 http_503 http_504;" in image
    assert "updating" not in DIRECTIVES and "proxy_cache_background_update" not in DIRECTIVES
    assert "add_header X-Cache-Status $upstream_cache_status always;" in image
    # Lifetimes come from the app's Cache-Control only.
    assert "proxy_cache_valid" not in DIRECTIVES
    # Only Vary is ignored: the key holds the negotiated format class instead.
    assert re.findall(r"proxy_ignore_headers ([^;]+);", DIRECTIVES) == ["Vary"]
    assert re.findall(r"\bproxy_cache \w+;", DIRECTIVES) == ["proxy_cache qcimage_images;"]
    assert "proxy_cache" not in location("= /api/qc-images")


def test_no_location_drops_the_server_level_proxy_headers():
    for match_spec in ("= /api/image", "= /api/qc-images", "= /metrics", "/"):
        assert "proxy_set_header" not in location(match_spec)
    assert TLS_SERVER.count("proxy_set_header") == 7


def test_proxy_timeouts_outlast_the_gunicorn_worker_timeout():
    # In a clean interpreter: the default, not whatever this shell exports.
    probe = f"import runpy; print(runpy.run_path({str(GUNICORN_CONF)!r})['timeout'])"
    worker_timeout = int(subprocess.run([sys.executable, "-c", probe], env=clean_env(),
                                        capture_output=True, text=True, check=True).stdout)
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = int(re.search(directive + r" (\d+)s;", DIRECTIVES).group(1))
        assert worker_timeout < seconds <= worker_timeout + 15


def test_tls_is_modern_only():
    assert re.search(r"^\s*ssl_protocols TLSv1\.2 TLSv1\.3;$", TLS_SERVER, re.M)
    assert "server_tokens off;" in TLS_SERVER


RECORDER_APP = '''
"""Stands in for qcimage behind nginx: records each request, answers with what it saw."""
import json, os, time
from urllib.parse import parse_qs

def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    seen = {"path": environ["PATH_INFO"], "query": environ.get("QUERY_STRING", ""),
            "xff": environ.get("HTTP_X_FORWARDED_FOR"),
            "proto": environ.get("HTTP_X_FORWARDED_PROTO"),
            "host": environ.get("HTTP_X_FORWARDED_HOST"),
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
            "accept": environ.get("HTTP_ACCEPT")}
    with open(os.environ["RECORD_FILE"], "a") as record:
        record.write(json.dumps(seen) + "\\n")
    if "sleep" in query:
        time.sleep(float(query["sleep"][0]))
    headers = [("Content-Type", "application/json")]
    if "nocache" not in query:
        # Even /api/qc-images claims to be cacheable: nginx must not believe it.
        headers.append(("Cache-Control", "public, max-age=600"))
    if query.get("format") == ["auto"]:
        headers.append(("Vary", "Accept"))
    start_response("200 OK", headers)
    return [json.dumps(seen).encode()]
'''


class Stack:
    """nginx (shipped config) in front of gunicorn (shipped config) running the recorder."""

    def __init__(self, tmp):
        (tmp / "recorder.py").write_text(RECORDER_APP)
        self.record = tmp / "requests.jsonl"
        self.record.touch()
        self.gunicorn = start_gunicorn({"RECORD_FILE": self.record}, workers=3, tmp=tmp,
                                       wsgi_app="recorder:app", cwd=tmp)
        self.nginx = start_nginx(tmp / "nginx", self.gunicorn.url.rsplit(":", 1)[1])

    def get(self, path, **kwargs):
        return requests.get(self.nginx.url + path, verify=self.nginx.ca_bundle, timeout=30,
                            **kwargs)

    def upstream_hits(self, path):
        seen = [json.loads(line) for line in self.record.read_text().splitlines()]
        return sum(1 for request in seen if f"{request['path']}?{request['query']}" == path)

    def stop(self):
        self.nginx.stop()
        self.gunicorn.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    nginx_binary()
    stack = Stack(tmp_path_factory.mktemp("nginx-stack"))
    yield stack
    stack.stop()


@pytest.mark.e2e
def test_image_responses_are_served_from_cache_the_second_time(stack):
    path = "/api/image?url=abc&width=480&sig=one"
    first, second = stack.get(path), stack.get(path, headers={"Host": "other.example"})
    assert first.headers["X-Cache-Status"] == "MISS"
    assert second.headers["X-Cache-Status"] == "HIT"
    assert second.json() == first.json()
    assert stack.upstream_hits(path) == 1


@pytest.mark.e2e
def test_cache_key_includes_the_whole_query(stack):
    stack.get("/api/image?url=abc&width=960&sig=one")
    other = stack.get("/api/image?url=abc&width=960&sig=two")
    assert other.headers["X-Cache-Status"] == "MISS"
    assert other.json()["query"] == "url=abc&width=960&sig=two"


CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX = "image/avif,image/webp,*/*"
SAFARI_15 = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
OLD_BROWSER = "image/png,image/*;q=0.8,*/*;q=0.5"


@pytest.mark.e2e
def test_format_auto_is_cached_per_negotiated_class_not_per_accept_string(stack):
    path = "/api/image?url=auto1&format=auto&sig=x"
    answers = [stack.get(path, headers={"Accept": accept})
               for accept in (CHROME, FIREFOX, SAFARI_15, "image/webp", OLD_BROWSER, "*/*")]
    assert [a.headers["X-Cache-Status"] for a in answers] == [
        "MISS", "HIT", "MISS", "HIT", "MISS", "HIT"]
    # The app saw one reduced Accept per class, and answered each class once.
    assert [a.json()["accept"] for a in answers[::2]] == [
        "image/avif,image/webp", "image/webp", "*/*"]
    assert stack.upstream_hits(path) == 3
    assert answers[1].headers["Vary"] == "Accept"  # still said to browsers and CDNs


@pytest.mark.e2e
def test_a_fixed_format_ignores_accept_entirely(stack):
    path = "/api/image?url=fixed1&format=webp&sig=x"
    first = stack.get(path, headers={"Accept": CHROME})
    second = stack.get(path, headers={"Accept": OLD_BROWSER})
    assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == ("MISS", "HIT")
    assert first.json()["accept"] == CHROME  # passed through untouched


@pytest.mark.e2e
def test_image_responses_without_cache_control_are_not_stored(stack):
    path = "/api/image?url=abc&nocache=1"
    statuses = [stack.get(path).headers["X-Cache-Status"] for _ in range(2)]
    assert statuses == ["MISS", "MISS"]
    assert stack.upstream_hits(path) == 2


@pytest.mark.e2e
def test_product_lookups_are_never_cached(stack):
    path = "/api/qc-images?id=7494645791"
    responses = [stack.get(path, headers={"X-API-Key": "k"}) for _ in range(2)]
    assert all("X-Cache-Status" not in r.headers for r in responses)
    assert stack.upstream_hits(path) == 2


@pytest.mark.e2e
def test_concurrent_misses_for_one_image_reach_gunicorn_once(stack):
    path = "/api/image?url=slow&sleep=1"
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: stack.get(path).status_code, range(6)))
    assert statuses == [200] * 6
    assert stack.upstream_hits(path) == 1


@pytest.mark.e2e
def test_proxy_headers_come_from_nginx_not_the_client(stack):
    seen = stack.get("/anything", headers={"X-Forwarded-For": "203.0.113.9",
                                           "X-Forwarded-Proto": "http",
                                           "X-Request-ID": "client-rid.42"}).json()
    assert seen["xff"] == "127.0.0.1"
    assert seen["proto"] == "https"
    assert seen["host"] == "127.0.0.1"
    assert seen["request_id"] == "client-rid.42"


@pytest.mark.e2e
def test_an_unsafe_request_id_is_replaced(stack):
    seen = stack.get("/anything", headers={"X-Request-ID": "evil\tid with spaces"}).json()
    assert re.fullmatch(r"[0-9a-f]{32}", seen["request_id"])


@pytest.mark.e2e
def test_metrics_answer_local_clients_only(stack):
    assert stack.get("/metrics").status_code == 200
    port = int(stack.nginx.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=stack.nginx.ca_bundle)
    # Any 127/8 address is loopback on Linux, yet not "localhost" to nginx's allow list.
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10,
                                       source_address=("127.0.0.2", 0))
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 403
    assert body["success"] is False and body["error"] == "forbidden"
    assert stack.upstream_hits("/metrics?") == 1


@pytest.mark.e2e
def test_plain_http_redirects_to_https_on_the_configured_name(stack):
    response = requests.get(stack.nginx.http_url + "/api/image?url=a&sig=b",
                            allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == "https://qc.example.com/api/image?url=a&sig=b"


@pytest.mark.e2e
def test_nginx_names_itself_without_a_version(stack):
    assert stack.get("/anything").headers["Server"] == "nginx"


@pytest.mark.e2e
def test_nginx_own_errors_use_the_json_error_shape(tmp_path):
    nginx_binary()
    dead_port = free_port()
    nginx = start_nginx(tmp_path, dead_port, ready_status=502)
    try:
        response = requests.get(nginx.url + "/api/qc-images?id=1", verify=nginx.ca_bundle,
                                timeout=10)
    finally:
        nginx.stop()
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False and body["error"] == "service_unavailable"
    assert re.fullmatch(r"[0-9a-f]{32}", body["requestId"])


def test_rendering_refuses_a_config_whose_shape_it_does_not_know():
    with pytest.raises(AssertionError, match="listen"):
        render_site_conf(SHIPPED.replace("listen 80;", "listen 8080;"), http_port=1,
                         https_port=2, upstream="127.0.0.1:3", cache_dir="/c", cert="/a",
                         key="/b", log_dir="/l")
