"""Shared fixtures: an app built from a test environment, a client, a mocked upstream."""

from __future__ import annotations

import hashlib
import io
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from PIL import Image, ImageDraw

from qcimage import create_app

API_KEY = "test-key-0123456789"
OTHER_KEY = "other-key-0123456789"
SIGNING_KEY = "s" * 40
UPSTREAM = "https://upstream.test"
PUBLIC = "https://qc.example.com"
PRODUCT_URL = UPSTREAM + "/api/v1/products/qcMedia"
IMAGE_URL = UPSTREAM + "/img"


def key_line(name: str, key: str) -> str:
    return f"{name}:{hashlib.sha256(key.encode()).hexdigest()}"


@pytest.fixture
def env(tmp_path):
    """A production environment as an operator would set it; tests tweak copies."""
    return {
        "QCIMAGE_ENV": "production",
        "QCIMAGE_API_KEYS": f"{key_line('tester', API_KEY)},{key_line('other', OTHER_KEY)}",
        "QCIMAGE_SIGNING_KEYS": SIGNING_KEY,
        "QCIMAGE_PUBLIC_URL": PUBLIC,
        "QCIMAGE_UPSTREAM_URL": UPSTREAM,
        "QCIMAGE_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.fixture
def app(env):
    return create_app(env)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def upstream():
    """Upstream mocked with responses: nothing leaves the process."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture(scope="session")
def canary():
    """A listening socket every hostile payload points at: any dial-out shows up."""
    from tests.security.conftest import Canary

    listener = Canary()
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def traps(tmp_path_factory, canary):
    """Marker and victim files the hostile corpus tries to write or delete."""
    from tests.security.conftest import Traps

    return Traps.laid_in(tmp_path_factory.mktemp("traps"), canary)


@pytest.fixture
def api_get(client):
    def get(path="/api/qc-images", key=API_KEY, headers=None, **params):
        all_headers = {"X-API-Key": key} if key else {}
        all_headers.update(headers or {})
        return client.get(path, query_string=params, headers=all_headers)
    return get


def photo_bytes(width=1600, height=1200, fmt="JPEG", dark=False) -> bytes:
    """A photo-like source: gradient, shapes and texture, as upstream would serve."""
    base = (40, 45, 50) if dark else (225, 220, 210)
    img = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(img)
    for i in range(0, width, max(1, width // 40)):
        shade = (i * 160) // width
        colour = tuple(min(255, c + shade // 3) for c in base)
        draw.line([(i, 0), (i, height)], fill=colour, width=max(1, width // 40))
    draw.ellipse([width // 4, height // 4, width * 3 // 4, height * 3 // 4],
                 fill=(180, 60, 40) if not dark else (90, 120, 160))
    out = io.BytesIO()
    img.save(out, fmt, quality=92) if fmt == "JPEG" else img.save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def jpeg_source():
    return photo_bytes()


def add_product(mock, product_id="7494645791", platform="WEIDIAN", ids=("n4EYdIoE",),
                data=None, status=200):
    body = {"data": data if data is not None else {
        "qcGroups": [{"media": [{"image": i} for i in ids]}]}}
    mock.get(PRODUCT_URL, json=body, status=status, match=[
        responses.matchers.query_param_matcher({"id": product_id, "storePlatform": platform})])


def add_image(mock, body: bytes, content_type="image/jpeg", status=200):
    mock.get(IMAGE_URL, body=body, content_type=content_type, status=status)


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))
