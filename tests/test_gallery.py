"""The /gallery page: on in development or when asked, its files, its strict policy."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from qcimage import create_app
from qcimage.openapi import build_spec


class _Page(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture
def gallery_client(env):
    return create_app({**env, "QCIMAGE_GALLERY": "true"}).test_client()


def _page(client) -> _Page:
    parser = _Page()
    parser.feed(client.get("/gallery").get_data(as_text=True))
    return parser


def test_the_gallery_is_off_in_production_by_default(client):
    response = client.get("/gallery")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    assert client.get("/gallery/static/gallery.js").status_code == 404


def test_the_gallery_is_on_in_development_by_default(env):
    env = {**env, "QCIMAGE_ENV": "development"}
    assert create_app(env).test_client().get("/gallery").status_code == 200
    off = create_app({**env, "QCIMAGE_GALLERY": "false"}).test_client()
    assert off.get("/gallery").status_code == 404


def test_production_serves_the_gallery_when_asked(gallery_client):
    response = gallery_client.get("/gallery")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "<h1>QC photos</h1>" in response.get_data(as_text=True)


def test_the_page_has_a_strict_policy_of_its_own(gallery_client):
    policy = gallery_client.get("/gallery").headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives == {
        "default-src": "'none'", "script-src": "'self'", "style-src": "'self'",
        "img-src": "'self' https://qc.example.com", "connect-src": "'self'",
        "base-uri": "'none'", "form-action": "'none'", "frame-ancestors": "'none'"}
    # The API's own policy stays as it was.
    assert gallery_client.get("/health").headers["Content-Security-Policy"] == (
        "default-src 'none'; frame-ancestors 'none'")


def test_every_file_the_page_names_is_served_by_flask(gallery_client):
    page = _page(gallery_client)
    names = [attrs.get("src") or attrs.get("href") for tag, attrs in page.tags
             if tag in ("script", "link")]
    assert len(names) == 3
    for name in names:
        assert name.startswith("gallery/static/"), name  # relative: no CDN, no other host
        response = gallery_client.get("/" + name)
        assert response.status_code == 200, name
        assert response.content_length > 0


def test_the_page_has_no_inline_script_or_style(gallery_client):
    page = _page(gallery_client)
    for tag, attrs in page.tags:
        assert tag != "style"
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("src"), "inline script"
    html = gallery_client.get("/gallery").get_data(as_text=True)
    assert re.findall(r"<script[^>]*>(.*?)</script>", html, re.S) == [""]


def test_every_form_control_has_a_label(gallery_client):
    page = _page(gallery_client)
    labelled = {attrs["for"] for tag, attrs in page.tags if tag == "label"}
    controls = [attrs["id"] for tag, attrs in page.tags if tag in ("input", "select", "textarea")]
    assert controls and set(controls) <= labelled
    buttons = [attrs for tag, attrs in page.tags if tag == "button"]
    assert all(attrs.get("aria-label") or attrs.get("id") in ("show", "copy")
               for attrs in buttons)


def test_the_gallery_is_not_rate_limited_and_not_keyed(env):
    app = create_app({**env, "QCIMAGE_GALLERY": "true",
                      "QCIMAGE_IMAGE_RATE_LIMIT": "1 per minute"})
    client = app.test_client()
    assert all(client.get("/gallery").status_code == 200 for _ in range(3))


def test_the_gallery_is_in_the_api_document_only_when_served(gallery_client, client):
    assert "/gallery" in gallery_client.get("/api/openapi.json").get_json()["paths"]
    assert "/gallery" not in client.get("/api/openapi.json").get_json()["paths"]


def test_the_spec_leaves_the_page_s_files_out(env):
    app = create_app({**env, "QCIMAGE_GALLERY": "true"})
    assert not [path for path in build_spec(app)["paths"] if path.startswith("/gallery/")]
