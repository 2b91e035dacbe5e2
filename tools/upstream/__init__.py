"""Local stand-in for the Doppel upstream: QC product look-ups, re-encoded images, stats, faults.

Used by ``make demo``, the end-to-end tests and the benchmarks, because no machine here
reaches the real upstream::

    python -m tools.upstream --host 127.0.0.1 --port 0 [--samples-dir DIR] [--scale S]
                             [--fault SPEC ...] [--cache-mb 512] [--latency img=MS[:JITTER]]
                             [--bandwidth BYTES_PER_S] [--max-in-flight N] [-v]

Once listening it prints exactly one line, ``READY http://HOST:PORT``, to stdout. Logs go to
stderr (only warnings unless ``-v``). SIGTERM / SIGINT stop it cleanly. In-process::

    with UpstreamServer("127.0.0.1", 0, samples_dir) as upstream:
        requests.get(upstream.url + "/img", params={"url": "n4EYdIoE", "width": 960})

Modules: ``catalogue`` (products shaped as Doppel answers them), ``images`` (sample
pictures re-encoded and cached), ``faults`` (fault specs, the active board, their plays),
``conditions`` (latency, bandwidth and concurrency caps that make it seem far away),
``server`` (HTTP routing, stats, ``UpstreamServer``), ``__main__`` (the command line).

Endpoints
---------
``GET /api/v1/products/qcMedia?id=ID&storePlatform=PLATFORM``
    200 ``{"success": true, "data": {...}}``; every string ``image`` field under ``data`` is
    an image id (see ``tools.samples.PRODUCTS``). The platform is matched case-sensitively.
    Unknown product: 404 JSON; missing parameter: 400 JSON.
``GET /img?url=IMAGE_ID&width=W&format=F&quality=Q``
    The stored picture, downscaled to ``width`` (aspect kept, never enlarged), encoded as
    ``format`` (``png``, ``jpeg``/``jpg``, ``webp``; default: the stored format) at
    ``quality`` (1-100, default 90). EXIF (including Orientation) is kept. A PNG asked for at
    its own width is served as stored. Unknown image: 404; bad parameter: 400.
``GET /_stats`` / ``DELETE /_stats``
    Request counts since start or the last reset::

        {"total": 7, "endpoints": {"product": 2, "img": 5},
         "products": {"WEIDIAN/7494645791": 2}, "images": {"n4EYdIoE": 5},
         "variants": {"n4EYdIoE:960:webp": 5}, "statuses": {"200": 7},
         "faults": {"delay": 1}, "renders": 1, "in_flight": 0, "in_flight_max": 3}

    ``variants`` keys are ``id:width:format`` as requested (empty when absent, format
    lower-cased); ``renders`` counts encodes that missed the output cache;
    ``in_flight`` is how many Doppel requests are being answered now and
    ``in_flight_max`` the most at once since the last reset. Control endpoints
    (``/_stats``, ``/_faults``, ``/_conditions``) are not counted.
``GET /_faults`` / ``POST /_faults`` / ``DELETE /_faults[?id=N]``
    List, add or clear faults (below).
``GET /_conditions`` / ``POST /_conditions`` / ``DELETE /_conditions``
    Show, replace or clear the network conditions: per-endpoint latency, a bandwidth cap
    and a cap on requests in flight (``tools.upstream.conditions`` describes the JSON).

Faults
------
A fault is a JSON object; ``POST /_faults`` takes one, a list, or ``{"faults": [...]}`` and
appends them (the first matching fault wins), answering ``{"faults": [...]}`` with the ids
assigned. ``--fault SPEC`` takes the same JSON, ``@path`` to a JSON file, or the shorthand
``mode[,key=value...]`` where list values are separated by ``|`` (``status,status=503,
paths=img,count=2``). Common keys:

``mode``   one of the modes below (required)
``paths``  ``["img"]``, ``["product"]`` or ``["*"]`` (default ``["*"]``)
``ids``    only for these image ids (img) or product ids (product); default all
``count``  affect this many matching requests, then remove itself; default forever

Modes and their keys:

``delay``        ``ms`` (1000): wait, then answer normally.
``hang``         never answer; ends when the client gives up, the server stops, or after
                 ``ms`` if given (then the connection is closed without a response).
``reset``        send the headers (full ``Content-Length``) and ``bytes`` (1024) of the
                 body, wait ``ms`` (50), then reset the TCP connection (RST).
``status``       ``status`` (503) with an HTML body; ``retry_after`` adds ``Retry-After``.
``garbage``      200 with junk: non-JSON text for product, ``size`` (2048) random bytes for
                 img; ``content_type`` defaults to what the endpoint normally sends.
``wrong_shape``  200 JSON of the wrong shape: ``shape`` = ``no_data`` (default), ``list``
                 (``data`` is a list of numbers), ``null`` or ``string``.
``html200``      200 ``text/html`` error page (a CDN challenge page).
``endless``      200 that never ends: ``chunk`` bytes (1024) every ``interval_ms`` (100),
                 ``chunked`` true (default) or a huge ``Content-Length``.
``oversize``     200 ``image/png`` body of ``size`` bytes (64 MiB) that starts like a PNG;
                 ``content_length`` false sends it close-delimited without a length.
``redirect``     ``status`` (302) to ``location`` (default ``http://203.0.113.1`` + the
                 request path: TEST-NET-3, must never be contacted).
``payload``      ``status`` (200) with ``content_type`` (application/octet-stream) and the
                 body from ``body_b64`` (base64) or ``file`` (path); ``headers`` adds any.

Example: ``{"mode": "status", "status": 503, "retry_after": 2, "paths": ["img"],
"ids": ["n4EYdIoE"], "count": 3}``.
"""
from tools.upstream.faults import Fault, FaultBoard, faults_from_json, parse_fault_spec
from tools.upstream.server import UpstreamServer

__all__ = ["Fault", "FaultBoard", "UpstreamServer", "faults_from_json", "parse_fault_spec"]
