"""Flask extensions, created unbound here and initialised in ``create_app``."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref

from flask import Response, g, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_talisman import Talisman
from limits.storage import MemoryStorage

log = logging.getLogger(__name__)


def client_ip() -> str:
    # After ProxyFix, remote_addr is the client as seen by the trusted proxies.
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=client_ip)
talisman = Talisman()
cors = CORS()


def tenant_cors_only(response: Response) -> Response:
    """after_request, run after Flask-CORS: a tenant's responses are readable from its own
    origins only.

    Flask-CORS is given every tenant's origins, because a preflight names no tenant (it
    carries neither the API key nor a verified link). It only asks whether a method and
    headers may be used; the response that follows is the one this narrows.
    """
    tenant = g.get("tenant")
    if (tenant is not None and request.method != "OPTIONS"
            and request.headers.get("Origin") not in tenant.cors_origins):
        for name in [name for name in response.headers.keys()
                     if name.lower().startswith("access-control-")]:
            del response.headers[name]
    return response


class SweptMemoryStorage(MemoryStorage):
    """``limits``' in-memory storage, its expired entries swept by one long-lived thread.

    ``MemoryStorage`` schedules a ``threading.Timer`` of 10 ms whenever a hit finds the
    last one finished: under steady load about 100 new threads a second in every worker,
    and each ``start()`` held the request that made it until the new thread had taken
    the GIL from the others. Counting is unchanged (it compares timestamps, not what was
    swept); expired entries are dropped every ``SWEEP_SECONDS`` instead of every 10 ms.
    ``memory://`` in ``QCIMAGE_RATELIMIT_STORAGE_URI`` means this storage.
    """

    STORAGE_SCHEME = ["qcimage-memory"]
    SWEEP_SECONDS = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        self._sweeper_pid: int | None = None
        self._sweeper_lock = threading.Lock()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the per-hit Timer
        if self._sweeper_pid != os.getpid():  # none yet in this process (or forked)
            with self._sweeper_lock:
                if self._sweeper_pid != os.getpid():
                    self._sweeper_pid = os.getpid()
                    threading.Thread(target=_sweep, args=(weakref.ref(self),), daemon=True,
                                     name="ratelimit-sweeper").start()

    def sweep(self) -> None:
        """Drop the entries whose window has passed."""
        self._MemoryStorage__expire_events()


def _sweep(storage_ref: weakref.ref) -> None:
    while (storage := storage_ref()) is not None:
        interval = storage.SWEEP_SECONDS
        try:
            storage.sweep()
        except Exception:  # the next sweep must still come
            # limits' sweep reads keys a request thread may drop meanwhile (KeyError):
            # one missed sweep is harmless, a sweeper ended for good would leak every
            # bucket never hit again.
            log.debug("rate-limit sweep interrupted; sweeping again in %gs", interval,
                      exc_info=True)
        del storage  # the app may go (tests build many): the thread then ends
        time.sleep(interval)


def limiter_storage_uri(uri: str) -> str:
    """The storage Flask-Limiter is given for ``QCIMAGE_RATELIMIT_STORAGE_URI``."""
    scheme, sep, rest = uri.partition("://")
    swept = SweptMemoryStorage.STORAGE_SCHEME[0]
    return f"{swept}://{rest}" if sep and scheme == "memory" else uri
