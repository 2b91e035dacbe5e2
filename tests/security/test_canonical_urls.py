"""One image, one URL: every spelling of a valid image URL but the look-up's is refused.

Otherwise each spelling is its own entry in every cache in front (nginx keys by the
request URI), and the same bytes are rendered and stored again and again.
"""

from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder

from tests.conftest import API_KEY, PUBLIC, add_image, add_product
from tests.security.test_identifiers import signed_image_query


def canonical() -> str:
    return "/api/image?" + signed_image_query()


def spellings(url: str) -> dict[str, tuple[str, str]]:
    """(path, query) of each other spelling of url."""
    path, query = url.split("?", 1)
    first, rest = query.split("&", 1)
    name, value = first.split("=", 1)
    return {
        "trailing &": (path, query + "&"),
        "leading &": (path, "&" + query),
        "two & in a row": (path, query.replace("&", "&&", 1)),
        "reordered": (path, rest + "&" + first),
        "percent-encoded value": (path, f"{name}=%{ord(value[0]):02X}{value[1:]}&{rest}"),
        "percent-encoded name": (path, f"%{ord(name[0]):02x}{name[1:]}={value}&{rest}"),
        "double slash": ("//api/image", query),
        "percent-encoded path": ("/api/%69mage", query),
        "empty parameter added": (path, query + "&="),
    }


@pytest.mark.parametrize("spelling", list(spellings(canonical())))
def test_any_other_spelling_of_an_image_url_is_400_naming_the_canonical(
        app, upstream, jpeg_source, spelling):
    add_image(upstream, jpeg_source)
    url = canonical()
    path, query = spellings(url)[spelling]
    # The raw request line as gunicorn hands it over (the test client would tidy the path).
    raw = f"{path}?{query}"
    builder = EnvironBuilder(path="/api/image", query_string=query,
                             environ_overrides={"RAW_URI": raw, "REQUEST_URI": raw})
    with app.test_client() as client:
        response = client.open(builder)
    assert response.status_code == 400, response.get_data()[:200]
    body = response.get_json()
    assert body["error"] in ("non_canonical_url", "validation_failed"), body
    if body["error"] == "non_canonical_url":
        assert url in body["message"]
    assert len(upstream.calls) == 0


def test_the_look_ups_links_are_canonical_and_served(client, upstream, jpeg_source):
    add_product(upstream, ids=("n4EYdIoE",))
    add_image(upstream, jpeg_source)
    body = client.get("/api/qc-images?id=7494645791", headers={"X-API-Key": API_KEY}).get_json()
    links = [body["images"][0]["watermarked"]] + [
        part.rsplit(" ", 1)[0] for part in body["images"][0]["srcset"].split(", ")]
    for link in links:
        assert link.startswith(PUBLIC)
        response = client.get(link.removeprefix(PUBLIC))
        assert response.status_code == 200, response.get_data()[:200]
