"""DoppelClient: the only code that talks to the upstream QC-photo service."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .. import metrics
from ..vocabulary import IMAGE_ID
from . import ServiceError
from .breaker import CircuitBreaker, CircuitOpen, MemoryState, RedisState

if TYPE_CHECKING:
    from ..groups import UpstreamSettings
    from .stores import RedisStore

log = logging.getLogger(__name__)

_PRODUCT_PATH = "/api/v1/products/qcMedia"
_IMAGE_PATH = "/img"
_MAX_PRODUCT_BYTES = 4 * 1024 * 1024
_CHUNK = 256 * 1024
# ASCII digits only: str.isdigit() also passes "¹" or "٣", which int() then refuses.
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}\Z")


class UpstreamError(ServiceError):
    status = 502
    code = "upstream_error"


class UpstreamTimeout(ServiceError):
    status = 504
    code = "upstream_timeout"


class UpstreamNotFound(ServiceError):
    status = 404
    code = "not_found"


class SourceTooLarge(ServiceError):
    status = 413
    code = "image_too_large"


class UpstreamUnavailable(ServiceError):
    """The circuit is open: upstream failed repeatedly, so we fail fast for a while."""

    status = 503
    code = "upstream_unavailable"


# The deadline of the upstream request running on this thread (gthread workers run
# several at once), read by the retry policy below.
_deadline = threading.local()


class _DeadlineRetry(Retry):
    """urllib3's Retry that never sleeps past the request's deadline.

    Upstream may ask for minutes with ``Retry-After``; it is honoured up to
    ``retry_after_cap``, and a wait (Retry-After or backoff) that would end after
    the deadline is not started: the request fails now (502) instead of being
    killed with its worker later.
    """

    retry_after_cap = 2.0

    def get_retry_after(self, response):
        retry_after = super().get_retry_after(response)
        return None if retry_after is None else min(retry_after, self.retry_after_cap)

    def sleep(self, response=None) -> None:
        wait = None
        if self.respect_retry_after_header and response is not None:
            wait = self.get_retry_after(response)
        if wait is None:
            wait = self.get_backoff_time()
        ends = getattr(_deadline, "at", None)
        if ends is not None and time.monotonic() + wait >= ends:
            raise urllib3.exceptions.MaxRetryError(
                None, "", urllib3.exceptions.ResponseError("retry would outlive the deadline"))
        super().sleep(response)


def _is_healthy_answer(error: BaseException) -> bool:
    # Upstream answered sensibly ("no such image", "too big"): not a sign of an outage.
    return isinstance(error, (UpstreamNotFound, SourceTooLarge))


def make_breaker(*, fail_max: int = 5, reset_timeout: float = 30.0,
                 redis_client=None) -> CircuitBreaker:
    """A breaker per process, or shared by every worker and box through Redis."""
    state = RedisState(redis_client) if redis_client is not None else MemoryState()
    return CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout, state=state)


@dataclass(frozen=True)
class Source:
    """An upstream image body, fully read and within the byte limit."""

    data: bytearray  # handed to the engine, which empties it once decoded


class DoppelClient:
    """Owns one ``requests.Session`` with timeouts, GET retries and no redirects.

    Every ``RequestException`` is translated into an ``UpstreamError`` family member;
    callers never see ``requests`` exceptions, upstream status codes or bodies.
    """

    def __init__(self, base_url: str, *, connect_timeout: float = 3.05,
                 read_timeout: float = 10.0, lookup_deadline: float = 10.0,
                 image_deadline: float = 20.0, max_image_bytes: int = 60 * 1024 * 1024,
                 retries: int = 2, pool_size: int = 8,
                 breaker: CircuitBreaker | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.lookup_deadline = lookup_deadline
        self.image_deadline = image_deadline
        self.max_image_bytes = max_image_bytes
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "qcimage/0.1"
        self.breaker = breaker or make_breaker()
        # read=False: a read timeout is not retried and surfaces as itself (504), where
        # read=0 would wrap it into a generic connection error (502).
        retry = _DeadlineRetry(
            total=retries, connect=retries, read=False, redirect=0, other=0,
            status=retries, status_forcelist=(502, 503, 504), allowed_methods=frozenset({"GET"}),
            backoff_factor=0.2, backoff_max=2.0, backoff_jitter=0.1,
            respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
        )
        # One connection per thread that may ask upstream at once: a smaller pool would
        # open and drop a connection per request beyond it (pool_block=False).
        adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_settings(cls, upstream: UpstreamSettings, *, pool_size: int,
                      shared: RedisStore | None = None) -> DoppelClient:
        """The client the settings describe; a shared store shares the circuit's state.

        ``pool_size``: the threads that may ask upstream at once (one connection each).
        """
        return cls(upstream.url, connect_timeout=upstream.connect_timeout,
                   read_timeout=upstream.read_timeout, lookup_deadline=upstream.lookup_timeout,
                   image_deadline=upstream.image_timeout,
                   max_image_bytes=upstream.max_source_bytes, retries=upstream.retries,
                   pool_size=pool_size,
                   breaker=make_breaker(fail_max=upstream.breaker_fail_max,
                                        reset_timeout=upstream.breaker_reset_timeout,
                                        redis_client=shared and shared.client))

    def circuit_state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (past the reset timeout: a probe may go)."""
        return self.breaker.current_state()

    def retry_after(self) -> int:
        """Seconds until an open circuit lets a probe request through."""
        return self.breaker.retry_after()

    def _get(self, path: str, params: dict[str, str], *, limit: int, deadline: float,
             what: str, parse=None):
        """Fetch through the breaker; ``parse`` runs inside it, so garbage counts as failure."""
        started = time.monotonic()
        try:
            with self.breaker.guard(healthy=_is_healthy_answer):
                result = self._fetch(path, params, limit=limit, deadline=deadline, what=what)
                return parse(result[1]) if parse else result
        except CircuitOpen as open_circuit:
            metrics.UPSTREAM_ERRORS.labels(what, "circuit_open").inc()
            error = UpstreamUnavailable("upstream is failing; not asking it again for a moment")
            error.retry_after = open_circuit.retry_after
            raise error from None
        except ServiceError as error:
            metrics.UPSTREAM_ERRORS.labels(what, error.code).inc()
            raise
        finally:
            metrics.UPSTREAM_SECONDS.labels(what).observe(time.monotonic() - started)

    def _fetch(self, path: str, params: dict[str, str], *, limit: int, deadline: float,
               what: str) -> tuple[requests.Response, bytearray, float]:
        started = time.monotonic()
        _deadline.at = started + deadline
        try:
            with self.session.get(self.base_url + path, params=params, timeout=self.timeout,
                                  stream=True, allow_redirects=False) as response:
                if response.is_redirect or 300 <= response.status_code < 400:
                    raise UpstreamError(f"upstream redirected the {what} request; not followed")
                if response.status_code == 404:
                    raise UpstreamNotFound(f"upstream has no such {what}")
                if response.status_code != 200:
                    raise UpstreamError(f"upstream answered the {what} request with an error")
                declared = _declared_length(response, what)
                if declared is not None and declared > limit:
                    raise SourceTooLarge(f"upstream {what} is larger than {limit} bytes")
                body = bytearray()
                # read1 returns what one socket read brings, so the deadline is checked
                # between reads even when upstream drips a body slower than a chunk.
                while chunk := response.raw.read1(_CHUNK, decode_content=True):
                    body += chunk
                    if len(body) > limit:
                        raise SourceTooLarge(f"upstream {what} is larger than {limit} bytes")
                    if time.monotonic() - started > deadline:
                        raise UpstreamTimeout(f"upstream {what} took longer than {deadline:g}s")
                # Bytes on the wire (before any Content-Encoding is undone) against what
                # upstream declared: a body that disagrees is partial or padded, never used.
                if declared is not None and response.raw.tell() != declared:
                    raise UpstreamError(f"upstream {what} body does not match its "
                                        "Content-Length")
                return response, body, time.monotonic() - started
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise UpstreamTimeout(f"upstream {what} request timed out") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            log.warning("upstream %s request failed: %s", what, type(exc).__name__)
            raise UpstreamError(f"could not reach upstream for the {what}") from None
        finally:
            _deadline.at = None

    def product_images(self, product_id: str, platform: str) -> list[str]:
        """Image ids of a product's QC photos, in upstream order, without repeats."""
        return self._get(
            _PRODUCT_PATH, {"id": product_id, "storePlatform": platform},
            limit=_MAX_PRODUCT_BYTES, deadline=self.lookup_deadline, what="product",
            parse=_parse_product)

    def fetch_image(self, image_id: str, *, width: int, fmt: str, quality: int) -> Source:
        if not IMAGE_ID.match(image_id):
            raise ValueError("image id must be validated before fetching")
        _, body, _ = self._get(
            _IMAGE_PATH,
            {"url": image_id, "quality": str(quality), "format": fmt, "width": str(width)},
            limit=self.max_image_bytes, deadline=self.image_deadline, what="image")
        # Content-Type is not kept: the engine trusts only the magic bytes.
        return Source(body)


def _declared_length(response: requests.Response, what: str) -> int | None:
    """The Content-Length upstream declared, None when absent; UpstreamError when malformed."""
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    if not _CONTENT_LENGTH.match(raw.strip()):
        raise UpstreamError(f"upstream {what} answer has a malformed Content-Length")
    return int(raw)


def _parse_product(body: bytearray) -> list[str]:
    """Image ids from a product answer; UpstreamError for anything but the expected JSON.

    Runs inside the breaker: an upstream answering 200 with garbage is failing too.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError("upstream returned a product response that is not JSON") from None
    # data holds objects (an object, or a list of them): null, a string, or a list of
    # numbers is a broken answer (502, never cached as "no images"), not an empty product.
    data = document.get("data") if isinstance(document, dict) else None
    if not (isinstance(data, dict) or (
            isinstance(data, list) and all(isinstance(x, (dict, list)) for x in data))):
        raise UpstreamError("upstream returned a product response of an unexpected shape")
    return collect_image_ids(data)


def collect_image_ids(data: object) -> list[str]:
    """Every string field named ``image`` at any depth, first occurrence first."""
    seen: dict[str, None] = {}
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            image = node.get("image")
            if isinstance(image, str):
                if IMAGE_ID.match(image):
                    seen.setdefault(image, None)
                else:
                    log.warning("skipping malformed image id from upstream")
            # Reversed so the stack pops children in document order.
            stack.extend(reversed([v for k, v in node.items() if k != "image" or
                                   not isinstance(v, str)]))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return list(seen)
