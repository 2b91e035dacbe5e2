"""The head-first worker's in-thread wait for a kept-alive connection's next request."""

from __future__ import annotations

import io
import socket
from types import SimpleNamespace

import pytest

from qcimage.gworker import HeadFirstWorker


@pytest.fixture
def pair():
    ours, client = socket.socketpair()
    yield ours, client
    ours.close()
    client.close()


def worker(alive=True):
    made = HeadFirstWorker.__new__(HeadFirstWorker)  # no gunicorn arbiter needed here
    made.alive = alive
    return made


def conn_on(sock, buffered=b""):
    parser = SimpleNamespace(unreader=SimpleNamespace(buf=io.BytesIO(buffered)))
    return SimpleNamespace(sock=sock, parser=parser, is_http2=False)


def test_a_whole_next_head_is_served_here_and_left_for_the_parser(pair):
    ours, client = pair
    client.sendall(b"GET /health HTTP/1.1\r\nHost: qcimage\r\n\r\n")
    assert worker().next_head_here(conn_on(ours))
    # Looked at, not read: the parser still finds the whole head on the socket.
    assert ours.recv(1024).startswith(b"GET /health HTTP/1.1")


def test_a_partial_head_goes_back_to_the_main_loop(pair):
    ours, client = pair
    client.sendall(b"GET /health HTTP/1.1\r\nHost: qc")
    assert not worker().next_head_here(conn_on(ours))
    assert ours.recv(1024) == b"GET /health HTTP/1.1\r\nHost: qc"  # nothing consumed


def test_nothing_within_the_wait_a_closed_client_or_a_stopping_worker_go_back(pair):
    ours, client = pair
    assert not worker().next_head_here(conn_on(ours))  # nothing came
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert not worker(alive=False).next_head_here(conn_on(ours))
    # Bytes read ahead into the parser: gthread's own hand-off deals with them.
    assert not worker().next_head_here(conn_on(ours, buffered=b"G"))
    ours.recv(1024)
    client.close()
    assert not worker().next_head_here(conn_on(ours))  # EOF: the loop drops it
