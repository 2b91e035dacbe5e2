"""HMAC-SHA256 signatures for public image URLs, with key rotation and expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from . import ServiceError

# Every parameter that changes the output or its cost. A parameter left out of the
# URL is signed as absent, so dropping one (to fall back to a default) breaks the sig.
SIGNED_PARAMS = ("url", "width", "quality", "format", "expires", "t")
# Signed only when present: links made before tenants existed (no t) keep their signatures.
# Present, t is one more length-prefixed field, so removing or adding it breaks the sig.
_SIGNED_WHEN_PRESENT = frozenset({"t"})
# An image URL's parameters in the one order a look-up writes them, and the only order
# /api/image accepts: one image, one URL, one cache entry everywhere.
URL_PARAMS = SIGNED_PARAMS + ("sig",)
IMAGE_PATH = "/api/image"
_VERSION = b"qcimage-image-v1"


def canonical_image_url(params: Mapping[str, str | None]) -> str:
    """Path and query of the image URL for these raw values: URL_PARAMS order, absent ones
    left out, each value percent-encoded only where it must be."""
    present = [(name, params[name]) for name in URL_PARAMS if params.get(name) is not None]
    return f"{IMAGE_PATH}?{urlencode(present)}"


class SignatureInvalid(ServiceError):
    status = 403
    code = "invalid_signature"


class SignatureExpired(ServiceError):
    status = 410
    code = "url_expired"


class Signer:
    """Signs with the first key, verifies with any (rotation: add new first, drop old later)."""

    def __init__(self, keys: Sequence[str], *, clock=time.time):
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = [key.encode() for key in keys]
        self._clock = clock

    @staticmethod
    def canonical(params: Mapping[str, str]) -> bytes:
        """The exact raw values, in a fixed order, so one set of values has one form.

        Raw strings (not parsed numbers) are signed: ``width=0960`` cannot borrow the
        signature of ``width=960``. Names and values are length-prefixed, so no value
        can smuggle in a separator and forge a second reading.
        """
        parts = [_VERSION]
        for name in SIGNED_PARAMS:
            value = params.get(name)
            if value is None and name in _SIGNED_WHEN_PRESENT:
                continue
            field = b"-" if value is None else b"=" + value.encode("utf-8")
            parts.append(b"%d:%s%s" % (len(field), name.encode(), field))
        return b"\n".join(parts)

    def _digest(self, key: bytes, params: Mapping[str, str]) -> str:
        mac = hmac.new(key, self.canonical(params), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, params: Mapping[str, str]) -> str:
        return self._digest(self._keys[0], params)

    def verify(self, params: Mapping[str, str], sig: str | None) -> None:
        """Raise SignatureInvalid / SignatureExpired unless ``sig`` matches and is current."""
        if not sig:
            raise SignatureInvalid("this image URL is not signed; use a URL returned by "
                                   "/api/qc-images")
        candidate = sig.encode("ascii", "replace")
        if not any(hmac.compare_digest(candidate, self._digest(key, params).encode())
                   for key in self._keys):
            raise SignatureInvalid("the image URL signature does not match its parameters")
        self.check_current(params.get("expires"))

    def check_current(self, expires: str | int | None) -> None:
        """Raise SignatureExpired once a verified link's ``expires`` has passed."""
        if expires is not None and int(expires) < self._clock():
            raise SignatureExpired("this image URL has expired; look the product up again")

    def expiry(self, ttl: int, bucket: int) -> int | None:
        """An expiry at least ``ttl`` away, rounded up to ``bucket`` so URLs stay stable
        (and cacheable by browsers and nginx) for a whole bucket instead of changing
        every second."""
        if ttl <= 0:
            return None
        deadline = int(self._clock()) + ttl
        return -(-deadline // bucket) * bucket
