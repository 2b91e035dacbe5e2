"""/gallery in a real browser: Debian's Chromium, driven by Playwright, against gunicorn.

One development server (2 workers) and one browser for the whole walk: paste a store link
and an agent link, see every photo decoded and watermarked, step through the viewer,
copy the snippet, get the API's message for a bad link; no console error, no CSP
violation, the key in no URL. Screenshots at 390 and 1280 px wide are kept as artefacts.
"""

from __future__ import annotations

import io
import os
import secrets
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.e2e.test_main_path import check_watermark
from tools.demo import PATIENT_TIMEOUTS
from tools.harness import ROOT, free_port, start_gunicorn
from tools.samples import PRODUCTS

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTEFACTS = Path(os.environ.get("QCIMAGE_TEST_ARTEFACTS", ROOT / "var" / "test-artefacts"))
STORE_LINK = "https://weidian.com/item.html?itemID=7494645791"
AGENT_LINK = ("W2C? https://www.sugargoo.com/#/home/productDetail?productLink=https%253A%252F%252F"
              "item.taobao.com%252Fitem.htm%253Fid%253D684012345678 thanks")
BAD_LINK = "https://m.tb.cn/h.5abcDeF"
WIDTH, FORMAT = "480", "webp"
# Records what the page's policy refused; Playwright injects it outside the page's CSP.
WATCH_CSP = """window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI));"""


# WCAG contrast of every visible piece of text against the background it is drawn on.
CONTRASTS = """() => {
  const rgba = (css) => css.match(/[0-9.]+/g).map(Number);
  const channel = (c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const backdrop = (el) => {
    for (; el; el = el.parentElement) {
      const colour = rgba(getComputedStyle(el).backgroundColor);
      if (colour.length === 3 || colour[3] > 0) return colour;
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll("h1, h2, label, p, button, select, input, textarea")]
    .filter((el) => el.getClientRects().length && el.textContent + (el.value || "") !== "")
    .map((el) => {
      const [hi, lo] = [luminance(rgba(getComputedStyle(el).color)), luminance(backdrop(el))]
        .sort((a, b) => b - a);
      return [el.id || el.tagName.toLowerCase(), Math.round(100 * (hi + 0.05) / (lo + 0.05)) / 100];
    });
}"""


class _ImgTags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


@pytest.fixture
def gallery_server(tmp_path, upstream):
    key = "gallery-" + secrets.token_urlsafe(12)
    port = free_port()
    server = start_gunicorn({
        "QCIMAGE_ENV": "development", "QCIMAGE_DEMO_API_KEY": key,
        "QCIMAGE_UPSTREAM_URL": upstream.url, "QCIMAGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "QCIMAGE_CACHE_DIR": tmp_path / "cache", "QCIMAGE_LOG_FORMAT": "text",
        **PATIENT_TIMEOUTS,
    }, workers=2, tmp=tmp_path, port=port)
    server.api_key = key
    yield server
    server.stop()


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _api(server, path, link):
    return requests.get(f"{server.url}{path}", headers={"X-API-Key": server.api_key},
                        params={"link": link, **({"width": WIDTH, "format": FORMAT}
                                                 if path == "/api/qc-images" else {})},
                        timeout=120)


class Watched:
    """A page with its console errors, uncaught errors, CSP violations and request URLs."""

    def __init__(self, context, server):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.add_init_script(WATCH_CSP)
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.goto(f"{server.url}/gallery#key={server.api_key}")

    def look_up(self, link: str):
        page = self.page
        page.fill("#link", link)
        page.select_option("#width", WIDTH)
        page.select_option("#format", FORMAT)
        page.click("#show")

    def check_clean(self, key: str, *expected_errors: str):
        assert self.errors == list(expected_errors)
        assert self.page.evaluate("window.__cspViolations") == []
        assert not [url for url in self.urls if key in url]


def _photos_decoded(page, expected: int) -> list[str]:
    """Scroll each photo into view (they load lazily); return their currentSrc once decoded."""
    thumbs = page.locator("#grid img")
    expect(thumbs).to_have_count(expected)
    for index in range(expected):
        thumb = thumbs.nth(index)
        thumb.scroll_into_view_if_needed()
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                               arg=thumb.element_handle(), timeout=120_000)
        assert thumb.get_attribute("alt").startswith(f"QC photo {index + 1} of {expected}")
    return thumbs.evaluate_all("(imgs) => imgs.map((img) => img.currentSrc)")


def _check_watermarked(upstream, body, sources):
    for image, source in zip(body["images"], sources):
        response = requests.get(source, timeout=120)
        assert response.status_code == 200
        check_watermark(upstream, image["original"], response,
                        Image.open(io.BytesIO(response.content)))


def _check_viewer(page, count: int):
    page.locator("#grid button").first.click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    caption = page.locator("#viewer-caption")
    expect(caption).to_have_text(f"Photo 1 of {count}")
    page.keyboard.press("ArrowRight")
    expect(caption).to_have_text(f"Photo 2 of {count}")
    page.wait_for_function("() => { const img = document.getElementById('viewer-img');"
                           " return img.complete && img.naturalWidth > 0; }", timeout=120_000)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(caption).to_have_text(f"Photo {count} of {count}")  # wraps around
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    assert page.evaluate("document.activeElement.className") == "thumb"


def _check_accessible(page):
    """Contrast of 4.5:1 at least; Tab walks the form in reading order."""
    ratios = dict(page.evaluate(CONTRASTS))
    assert {"api-key-help", "link-help", "status", "show", "copy", "results-title"} <= set(ratios)
    assert {name: ratio for name, ratio in ratios.items() if ratio < 4.5} == {}
    page.click("h1")  # where a person starts reading; Tab goes on from there
    order = []
    for _ in range(7):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == ["api-key", "link", "width", "format", "show", "thumb", "thumb"]


def _copied_images(page) -> list[tuple[str, str]]:
    page.click("#copy")
    expect(page.locator("#copied")).to_have_text("Copied.")
    parser = _ImgTags()
    parser.feed(page.evaluate("navigator.clipboard.readText()"))
    return [(img["src"], img["srcset"]) for img in parser.images]


@pytest.mark.e2e
def test_a_person_pastes_links_and_sees_copies_and_steps_through_the_photos(
        gallery_server, browser, upstream):
    server = gallery_server
    origin = server.url
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    watched = Watched(context, server)
    page = watched.page
    # The key came in the fragment, went to sessionStorage, and left the address bar.
    assert page.url == f"{origin}/gallery"
    assert page.input_value("#api-key") == server.api_key

    for link, (platform, product_id) in ((STORE_LINK, ("WEIDIAN", "7494645791")),
                                         (AGENT_LINK, ("TAOBAO", "684012345678"))):
        count = len(PRODUCTS[platform, product_id].image_ids)
        watched.look_up(link)
        sources = _photos_decoded(page, count)
        expect(page.locator("#results-title")).to_contain_text(f"{platform} item {product_id}")
        body = _api(server, "/api/qc-images", link).json()
        assert body["totalImages"] == count
        _check_watermarked(upstream, body, sources)
        assert _copied_images(page) == [(i["watermarked"], i["srcset"]) for i in body["images"]]
    _check_viewer(page, count)
    _check_accessible(page)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTEFACTS / "gallery-1280.png", full_page=True)
    watched.check_clean(server.api_key)

    watched.look_up(BAD_LINK)
    message = _api(server, "/api/links/resolve", BAD_LINK).json()["message"]
    expect(page.locator("#error")).to_have_text(message)
    expect(page.locator("#results")).to_be_hidden()
    # The browser logs the refused look-up itself; the page adds nothing.
    watched.check_clean(server.api_key, "Failed to load resource: the server responded with a "
                                        "status of 400 (BAD REQUEST)")


@pytest.mark.e2e
def test_on_a_phone_the_grid_reads_and_a_swipe_moves_the_viewer(gallery_server, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True, device_scale_factor=1)
    watched = Watched(context, gallery_server)
    page = watched.page
    watched.look_up(STORE_LINK)
    count = len(PRODUCTS["WEIDIAN", "7494645791"].image_ids)
    _photos_decoded(page, count)
    # Two columns, nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    boxes = [page.locator("#grid li").nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[1]["x"] > boxes[0]["x"]
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTEFACTS / "gallery-390.png", full_page=True)
    page.locator("#grid button").first.tap()
    caption = page.locator("#viewer-caption")
    expect(caption).to_have_text(f"Photo 1 of {count}")
    page.evaluate("""() => {
      const viewer = document.getElementById("viewer");
      const at = (x) => new Touch({identifier: 1, target: viewer, clientX: x, clientY: 400});
      const swipe = (type, x) => viewer.dispatchEvent(
        new TouchEvent(type, {changedTouches: [at(x)], bubbles: true}));
      swipe("touchstart", 300);
      swipe("touchend", 120);
    }""")
    expect(caption).to_have_text(f"Photo 2 of {count}")
    watched.check_clean(gallery_server.api_key)
