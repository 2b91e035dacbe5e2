"""Takedown through the app and the ``qcimage takedown`` CLI (DESIGN §7), upstream mocked.

The CLI runs with the same QCIMAGE_* environment as the app, as an operator runs it on the
box; QCIMAGE_TAKEDOWN_REFRESH=0 makes the app look at the list on every request.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qcimage import create_app
from qcimage.cli import takedown_cli
from qcimage.keys import hash_api_key
from qcimage.services.takedown import DiskTakedowns
from tests.conftest import add_image, add_product, query
from tests.test_images import base, signed

IMAGE = "n4EYdIoE"


@pytest.fixture
def env(env):
    return {**env, "QCIMAGE_TAKEDOWN_REFRESH": "0"}


@pytest.fixture
def takedown(app, env, monkeypatch, tmp_path):
    """``takedown(*args)`` runs ``qcimage takedown …`` in the environment of a running app."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("QCIMAGE_"):
            monkeypatch.delenv(name)

    def run(*args, expect=0):
        result = CliRunner().invoke(takedown_cli, list(args), env=env)
        assert result.exit_code == expect, result.output
        return result
    return run


def test_a_taken_down_image_answers_451_for_every_url(app, client, upstream, jpeg_source,
                                                      takedown):
    add_image(upstream, jpeg_source)
    assert client.get(signed(base())).status_code == 200
    takedown("add", IMAGE, "--reason", "privacy request #12")
    for params in (base(), base(width="960", format="jpeg"), base(format="auto"),
                   base(expires=None, quality="40")):
        response = client.get(signed(params))
        assert response.status_code == 451, params
        assert response.json["error"] == "taken_down"
        assert response.json["message"] == f"image {IMAGE} has been taken down by the operator"
        assert "privacy" not in response.get_data(as_text=True)
        assert response.headers["Cache-Control"] == "no-store"
    other = client.get(signed(base(url="otherImage1")))
    assert other.status_code == 200


def test_every_tenants_link_to_the_image_answers_451(env, upstream, jpeg_source, tmp_path,
                                                     takedown):
    keys = {"shop-a": "key-of-shop-a-0123456789", "shop-b": "key-of-shop-b-0123456789"}
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("".join(
        f'[tenants.{name}]\napi_keys = ["{hash_api_key(key)}"]\n'
        f'watermark = {{ text = "{name.upper()}" }}\n' for name, key in keys.items()))
    tenant_env = {k: v for k, v in env.items() if k != "QCIMAGE_API_KEYS"}
    client = create_app({**tenant_env, "QCIMAGE_TENANTS_FILE": str(tenants)}).test_client()
    add_product(upstream, ids=(IMAGE,))
    add_image(upstream, jpeg_source)
    links = []
    for key in keys.values():
        body = client.get("/api/qc-images", query_string={"id": "7494645791"},
                          headers={"X-API-Key": key}).get_json()
        links.append(body["images"][0]["watermarked"].removeprefix(env["QCIMAGE_PUBLIC_URL"]))
    assert len({query(link)["t"] for link in links}) == 2
    assert [client.get(link).status_code for link in links] == [200, 200]
    takedown("add", IMAGE)
    assert [client.get(link).status_code for link in links] == [451, 451]


def test_451_comes_before_the_304_a_revalidating_cache_would_get(client, upstream, jpeg_source,
                                                                 takedown):
    add_image(upstream, jpeg_source)
    url = signed(base())
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    takedown("add", IMAGE)
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 451


def test_nginx_keeps_the_451_in_place_of_its_copy(client, takedown):
    takedown("add", IMAGE)
    response = client.get(signed(base()))
    assert response.status_code == 451
    names = [name for name, _ in response.headers]
    # nginx before 1.23 honours X-Accel-Expires only when it precedes Cache-Control: no-store.
    assert names.index("X-Accel-Expires") < names.index("Cache-Control")
    assert response.headers["X-Accel-Expires"] == "240"


def test_take_down_purges_cached_renders_and_remove_serves_afresh(app, client, upstream,
                                                                  jpeg_source, takedown):
    add_image(upstream, jpeg_source)
    urls = [signed(base()), signed(base(width="960"))]
    assert [client.get(url).headers["X-Cache"] for url in urls] == ["MISS", "MISS"]
    assert [client.get(url).headers["X-Cache"] for url in urls] == ["HIT", "HIT"]
    result = takedown("add", IMAGE)
    # Two renders, their two sizes, the two sources fetched for them, nothing else.
    assert "6 cached entries purged" in result.stderr
    fetched = len(upstream.calls)
    takedown("remove", IMAGE)
    assert [client.get(url).headers["X-Cache"] for url in urls] == ["MISS", "MISS"]
    assert len(upstream.calls) == fetched + 2


def test_a_render_that_finishes_after_the_takedown_is_neither_stored_nor_served(
        app, client, upstream, jpeg_source, takedown):
    add_image(upstream, jpeg_source)
    renderer = app.extensions["qcimage"].renderer
    engine_render = renderer.engine.render

    def render_then_take_down(*args, **kwargs):
        rendered = engine_render(*args, **kwargs)
        takedown("add", IMAGE)
        return rendered

    renderer.engine.render = render_then_take_down
    assert client.get(signed(base())).status_code == 451
    renderer.engine.render = engine_render
    takedown("remove", IMAGE)
    assert client.get(signed(base())).headers["X-Cache"] == "MISS"


def test_look_ups_leave_taken_down_images_out(api_get, upstream, takedown):
    add_product(upstream, ids=("keepMe", IMAGE, "keepToo"))
    assert api_get(id="7494645791").json["totalImages"] == 3
    takedown("add", IMAGE)
    body = api_get(id="7494645791").json
    assert [image["original"] for image in body["images"]] == ["keepMe", "keepToo"]
    assert body["totalImages"] == 2
    assert IMAGE not in str(body)


def test_a_product_with_every_image_taken_down_has_no_images(api_get, upstream, takedown):
    add_product(upstream, ids=(IMAGE,))
    assert api_get(id="7494645791").status_code == 200
    takedown("add", IMAGE)
    response = api_get(id="7494645791")
    assert response.status_code == 404 and response.json["error"] == "no_images"
    takedown("remove", IMAGE)
    assert api_get(id="7494645791").status_code == 200


def test_shared_caches_revalidate_while_browsers_keep_the_image_a_day(client, upstream,
                                                                      jpeg_source):
    add_image(upstream, jpeg_source)
    response = client.get(signed(base(expires=None)))
    assert response.headers["Cache-Control"] == "public, max-age=86400, immutable"
    assert response.headers["X-Accel-Expires"] == "240"
    assert response.headers["CDN-Cache-Control"] == "public, max-age=240"
    assert response.headers["Surrogate-Control"] == "max-age=240"
    names = [name for name, _ in response.headers]
    assert names.index("X-Accel-Expires") < names.index("Cache-Control")
    revalidated = client.get(signed(base(expires=None)),
                             headers={"If-None-Match": response.headers["ETag"]})
    assert revalidated.status_code == 304
    assert revalidated.headers["X-Accel-Expires"] == "240"


def test_shared_cache_lifetime_is_a_setting_and_never_outlives_the_link(env, upstream,
                                                                        jpeg_source):
    add_image(upstream, jpeg_source)
    client = create_app({**env, "QCIMAGE_SHARED_CACHE_TTL": "60"}).test_client()
    assert client.get(signed(base(expires=None))).headers["X-Accel-Expires"] == "60"
    soon = client.get(signed(base(expires=str(int(time.time()) + 30))))
    assert soon.status_code == 200 and int(soon.headers["X-Accel-Expires"]) <= 30


def test_cli_lists_what_is_taken_down_with_when_and_why(takedown):
    empty = takedown("list")
    assert empty.stdout == "" and empty.stderr.startswith("no image is taken down (list in ")
    takedown("add", "first", "--reason", "rights claim 7")
    takedown("add", "second")
    listed = takedown("list")
    assert listed.stderr.startswith("2 image(s) taken down (list in ")
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(line[0], line[2]) for line in lines] == [("first", "rights claim 7"),
                                                      ("second", "")]
    assert all(time.strptime(line[1], "%Y-%m-%dT%H:%M:%SZ") for line in lines)
    takedown("remove", "first")
    assert takedown("list").stdout.startswith("second\t")


def test_cli_refuses_what_it_cannot_do(takedown):
    assert "is not taken down" in takedown("remove", IMAGE, expect=1).stderr
    bad = takedown("add", "../etc", expect=2)
    assert "an image id is 1-64 letters" in bad.stderr
    assert "printable" in takedown("add", IMAGE, "--reason", "a\nb", expect=2).stderr


def test_cli_needs_the_services_cache_folder(takedown, env, tmp_path):
    env["QCIMAGE_CACHE_DIR"] = str(tmp_path / "nowhere")
    result = takedown("add", IMAGE, expect=1)
    assert f"no cache folder at {tmp_path / 'nowhere'}" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_cli_run_as_another_user_than_the_service_changes_nothing(takedown, env, monkeypatch):
    # The CLI runs in this process: it is "another user" when its effective uid differs
    # from the cache folder's owner, which needs no root to arrange.
    cache = Path(env["QCIMAGE_CACHE_DIR"])
    owner = cache.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    name = pwd.getpwuid(owner).pw_name
    result = takedown("add", IMAGE, expect=1)
    assert f"{cache} belongs to {name}: run this as that user (sudo -u {name} " in result.stderr
    assert DiskTakedowns(cache / "takedowns").load()[1] == {}


def test_flask_cli_has_the_same_commands(app):
    assert "takedown" in app.cli.commands
    assert set(app.cli.commands["takedown"].commands) == {"add", "remove", "list"}
