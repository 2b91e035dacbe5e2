"""tools/netns.py: test hosts as network namespaces, or a clear refusal, never loopback."""

import os
import socket
import subprocess
import sys

import pytest

from tools import netns


def namespaces():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_without_root_or_iproute2_it_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NetnsUnavailable, match="need root"):
        netns.Lab(["a"])
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    with pytest.raises(netns.NetnsUnavailable, match="iproute2"):
        netns.Lab(["a"])


@pytest.mark.e2e
def test_hosts_have_their_own_addresses_reach_each_other_and_are_removed():
    netns.check_available()
    server = ("import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 9000)); s.listen();"
              "c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()")
    with netns.Lab(["a", "b"]) as lab:
        a, b = lab["a"], lab["b"]
        assert a.address != b.address and a.address.startswith("10.77.")
        listener = subprocess.Popen(b.argv([sys.executable, "-c", server, b.address]))
        try:
            client = ("import socket,sys,time\nfor _ in range(50):\n try:\n"
                      "  s=socket.create_connection((sys.argv[1], 9000)); break\n"
                      " except OSError: time.sleep(0.1)\nprint(s.recv(64).decode())")
            seen = a.run([sys.executable, "-c", client, b.address], timeout=30).stdout.strip()
        finally:
            listener.wait(10)
        # b saw a's own address: a real client address, not loopback.
        assert seen == a.address
        # This machine reaches every host too: refused (b answered), not timed out.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((b.address, 9000), timeout=5)
        assert f"{lab.tag}-a" in namespaces()
    assert f"{lab.tag}-" not in namespaces()


@pytest.mark.e2e
def test_a_lab_left_by_a_dead_process_is_removed_by_the_next():
    netns.check_available()
    code = ("from tools.netns import Lab; import os; lab = Lab(['x']); print(lab.tag, flush=True);"
            "os._exit(0)")
    tag = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=netns.Path(__file__).resolve().parents[2], check=True,
                         env={**os.environ, "PYTHONPATH": "."}).stdout.strip()
    assert f"{tag}-x" in namespaces()
    with netns.Lab(["y"]):
        assert f"{tag}-x" not in namespaces()
