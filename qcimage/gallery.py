"""Blueprint for ``GET /gallery``: a page for people, calling the API with a key they type."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response

from .extensions import limiter, talisman
from .wiring import current_services

# Static files only (qcimage/static/gallery/): the page is the same for everyone and
# needs nothing from the server but the API it calls from the browser.
bp = Blueprint("gallery", __name__, static_folder="static/gallery",
               static_url_path="/gallery/static")
limiter.exempt(bp)
# The page's own scripts, styles and API calls; images from wherever the look-up's links
# point (QCIMAGE_PUBLIC_URL). Nothing inline, nothing third-party, no forms posting away.
GALLERY_CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}


def content_security_policy(public_url: str) -> str:
    """The page's policy, its images allowed from the public URL's origin too."""
    parts = urlsplit(public_url)
    policy = dict(GALLERY_CSP, **{"img-src": f"'self' {parts.scheme}://{parts.netloc}"})
    return "; ".join(f"{directive} {value}" for directive, value in policy.items())


@bp.get("/gallery")
# Talisman would put the app-wide default-src 'none' over ours: the view sets its own.
@talisman(content_security_policy=None)
def page() -> Response:
    response = bp.send_static_file("index.html")
    response.headers["Content-Security-Policy"] = content_security_policy(
        current_services().settings.public_url)
    response.headers["Cache-Control"] = "no-cache"
    return response
