"""The README's embedding examples run as printed against a live server, and its demo table."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import requests

from tools.harness import ROOT, clean_env
from tools.samples import PRODUCTS

README = (ROOT / "README.md").read_text()


def example(language: str) -> str:
    match = re.search(rf"<!-- example: {language} .*?-->\n```\w+\n(.*?)\n```", README, re.S)
    assert match, f"README has no {language} example"
    return match.group(1)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))  # attribute values come back unescaped


def run_example(argv, server) -> list[dict[str, str]]:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=clean_env(QCIMAGE_URL=server.url, QCIMAGE_KEY=server.api_key))
    assert result.returncode == 0, result.stderr
    page = _Images()
    page.feed(result.stdout)
    return page.images


def check_page(images: list[dict[str, str]]) -> None:
    assert len(images) == len(PRODUCTS["WEIDIAN", "7494645791"].image_ids)
    for image in images:
        assert image["loading"] == "lazy" and image["sizes"]
        links = [image["src"]] + [c.rsplit(" ", 1)[0] for c in image["srcset"].split(", ")]
        for link in links:
            response = requests.get(link, timeout=60)
            assert (response.status_code, response.headers["Content-Type"]) == (
                200, "image/webp"), link


@pytest.mark.e2e
@pytest.mark.parametrize("language, runner", [("python", [sys.executable, "-c"]),
                                              ("node", ["node", "-e"])])
def test_the_embedding_example_prints_working_img_tags(qcimage_server, language, runner):
    server = qcimage_server()
    argv = [*runner, example(language)]
    first = run_example(argv, server)
    assert all("width" not in image for image in first)  # nothing rendered yet
    check_page(first)
    # Rendered now: the same example reserves each image's space.
    again = run_example(argv, server)
    assert [(int(i["width"]), int(i["height"])) for i in again] == [
        (960, 720), (960, 720), (960, 1280)]
    check_page(again)


def test_the_readme_lists_the_demos_sample_products():
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\d+|none)", README, re.M)
    assert sorted(rows) == sorted(
        (p.product_id, p.platform, str(len(p.image_ids)) if p.image_ids else "none")
        for p in PRODUCTS.values())
