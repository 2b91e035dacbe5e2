"""gunicorn's gthread worker, giving a request a thread only once its head has arrived.

gthread hands a connection to a thread as soon as it has bytes, and the thread then reads
the rest of the request blocking, for as long as the client takes. A client that sends
half a request head and stops (by accident, or a thousand of them on purpose) holds a
thread each, and ``threads × workers`` of them leave nothing for ``/health``, hits or
anyone else. nginx in front reads whole requests first, but a box behind a remote load
balancer, or reached directly, must not depend on that.

Here the worker's main loop reads each request head itself, without blocking, as its
bytes come (new connections and kept-alive ones alike), and submits the connection to a
thread only when the head is complete; a head not complete within ``head_timeout``
seconds (``QCIMAGE_HEAD_TIMEOUT``, 10) closes the connection. The thread then parses the
bytes already read as gthread would have read them from the socket. Bodies are read by
the thread as before: none of our endpoints take one, and gthread bounds draining one
it did not read. A connection that ends is closed by its thread, not the main loop
(see ``handle``).

A kept-alive connection's next request usually follows its response within a
millisecond or two (nginx's upstream keep-alive, a client fetching a page's images).
The thread that answered waits up to ``NEXT_REQUEST_WAIT_MS`` for it, off the GIL, and
serves it at once when its whole head is already there; otherwise the connection goes
back to the main loop as before. Handing it back and forth cost each request a trip
through the loop (a wake-up pipe, four epoll changes, a read, a queue hand-off) and two
more threads taking the GIL in turn. A head that is not complete is never waited for in
the thread: the main loop reads it, as above.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import selectors
import socket
import time
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

DEFAULT_HEAD_TIMEOUT = 10.0
# How long the thread that answered a kept-alive connection waits for its next request
# (milliseconds, off the GIL): long enough for a client on the same network to send it,
# short enough that a parked thread is soon free again.
NEXT_REQUEST_WAIT_MS = 5
# A next head longer than this is left to the main loop.
_PEEK = 16384
# Past this a head is handed on as it is, for gunicorn's parser to refuse (431 / 400).
_MAX_HEAD = 128 * 1024
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


def head_timeout() -> float:
    """QCIMAGE_HEAD_TIMEOUT, checked by gunicorn.conf.py; the default otherwise."""
    raw = os.environ.get("QCIMAGE_HEAD_TIMEOUT", "").strip()
    return float(raw) if raw else DEFAULT_HEAD_TIMEOUT


def head_complete(head: bytes | bytearray, searched_from: int = 0) -> bool:
    start = max(0, searched_from - 3)
    return any(head.find(end, start) >= 0 for end in _HEAD_ENDS)


class HeadFirstWorker(ThreadWorker):
    """gthread, with request heads read by the main loop before a thread takes them."""

    def init_process(self):
        self.head_timeout = head_timeout()
        # Connections whose head is still coming, oldest (soonest to expire) first.
        self.heading: collections.OrderedDict[TConn, None] = collections.OrderedDict()
        super().init_process()

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # TConn puts the socket in non-blocking mode: the main loop reads the head.
        self._await_head(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        # A kept-alive connection's next request: its head too before a thread.
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def _await_head(self, conn):
        conn.qcimage_head = bytearray()
        conn.qcimage_head_deadline = time.monotonic() + self.head_timeout
        self.heading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_head_readable, conn))

    def on_head_readable(self, conn, client):
        try:
            chunk = conn.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away before sending a whole head
            self._drop(conn)
            return
        head = conn.qcimage_head
        searched = len(head)
        head += chunk
        if head_complete(head, searched) or len(head) > _MAX_HEAD:
            self.poller.unregister(client)
            del self.heading[conn]
            conn.qcimage_head = None
            conn.qcimage_ready = bytes(head)
            conn.data_ready = True
            self.enqueue_req(conn)

    def handle(self, conn):
        """In the thread: serve the request, then those that follow at once on the
        same kept-alive connection (see ``next_head_here``)."""
        keepalive = self.handle_one(conn)
        while keepalive is True and self.next_head_here(conn):
            keepalive = self.handle_one(conn)
        return keepalive

    def next_head_here(self, conn) -> bool:
        """Whether the connection's next request head arrived whole within
        ``NEXT_REQUEST_WAIT_MS``; looked at, not read (the parser reads it)."""
        if not self.alive or conn.parser is None or conn.is_http2:
            return False
        if conn.parser.unreader.buf.getvalue():
            return False  # read ahead already: finish_request hands it on as gthread does
        try:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            if not poller.poll(NEXT_REQUEST_WAIT_MS):
                return False
            head = conn.sock.recv(_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            return False  # the main loop meets whatever it was, as it would have
        return bool(head) and head_complete(head)

    def handle_one(self, conn):
        """One request: give the parser the head read so far, then serve as gthread."""
        ready = getattr(conn, "qcimage_ready", None)
        if ready:
            conn.qcimage_ready = None
            try:
                conn.init()
            except Exception as e:  # as gthread would answer a failure there
                self.handle_error(None, conn.sock, conn.client, e)
                return False
            conn.parser.unreader.unread(ready)
        keepalive = super().handle(conn)
        if keepalive is False:
            # gthread would close it on the main loop, lingering up to 2 s for the client
            # to close first (util.close_graceful): every client that keeps its end open
            # stalled the worker's whole event loop for that long. Here, in this thread.
            conn.close(graceful=True)
            conn.qcimage_closed = True
        return keepalive

    def finish_request(self, conn, fs):
        if getattr(conn, "qcimage_closed", False):
            # Closed by its thread: only the count is left (closing again would fail,
            # and gthread would then count the connection out twice).
            self.nr_conns -= 1
            return
        super().finish_request(conn, fs)

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        while self.heading:
            conn = next(iter(self.heading))
            if conn.qcimage_head_deadline > now:
                break
            self._drop(conn)

    def _drop(self, conn):
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.heading.pop(conn, None)
        self.nr_conns -= 1
        conn.close()
