"""Test hosts as Linux network namespaces on one private bridge, for the scale-out tests.

Each host is a network namespace with its own address in a private /24 (``10.77.N.0/24``,
N picked free per run), joined by veth pairs to a bridge that lives in a namespace of its
own; the machine running the tests joins that bridge too, as ``10.77.N.1``, so it reaches
every host and every host sees it as a real client. Processes run on a host through
``ip netns exec``, which execs in place (the pid is the program's own).

Needs root and iproute2 (CI runs as root; ``make test`` installs iproute2). When the
namespaces cannot be made, :class:`NetnsUnavailable` says why: the tests fail with it,
they never fall back to loopback.

    with Lab(["lb", "box1", "box2"]) as lab:
        subprocess.run(lab["box1"].argv(["ip", "addr"]))
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

PREFIX = "qci"                       # every namespace and root-side link we make
STATE_DIR = Path("/run/qcimage-netns")  # one file per live lab: its owner's pid
SUPERNET = ipaddress.ip_network("10.77.0.0/16")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says what is missing."""


class LocalHost:
    """This machine as a host: loopback, programs run as they are."""

    name = "local"
    address = "127.0.0.1"

    def argv(self, command):
        return [str(part) for part in command]


class Host:
    """One namespace: a name, an address, and how to run a program there."""

    def __init__(self, name: str, namespace: str, address: str):
        self.name = name
        self.namespace = namespace
        self.address = address

    def argv(self, command):
        return ["ip", "netns", "exec", self.namespace, *[str(part) for part in command]]

    def run(self, command, **kwargs):
        return subprocess.run(self.argv(command), capture_output=True, text=True, **kwargs)

    def __repr__(self):
        return f"Host({self.name}, {self.address})"


def _ip_batch(commands: list[str], namespace: str | None = None) -> None:
    argv = ["ip", *(["-n", namespace] if namespace else []), "-batch", "-"]
    result = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def check_available() -> None:
    """Raise NetnsUnavailable unless this process can make namespaces and veth pairs."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command is missing: install Debian's iproute2 "
                               "(`make test` does)")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root: run the scale-out tests as "
                               "root (CI does), e.g. `sudo .venv/bin/pytest tests/e2e/scaleout`")


class Lab:
    """Hosts named ``names`` on one bridge; ``lab[name]`` is a :class:`Host`.

    Host addresses are ``10.77.N.10`` onwards in the order given; the test machine is
    ``10.77.N.1``. ``close()`` (or leaving the ``with``) deletes every namespace; a lab
    whose owner died is removed by the next one made.
    """

    def __init__(self, names: list[str]):
        check_available()
        self.names = list(names)
        self.hosts: dict[str, Host] = {}
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(STATE_DIR / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _remove_orphans()
            self.index = self._free_index()
            (STATE_DIR / str(self.index)).write_text(str(os.getpid()))
        self.tag = f"{PREFIX}{self.index}"
        self.network = ipaddress.ip_network(f"10.77.{self.index}.0/24")
        self.client_address = str(self.network[1])
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _free_index() -> int:
        taken = {int(path.name) for path in STATE_DIR.iterdir() if path.name.isdigit()}
        addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True,
                                   text=True).stdout
        taken |= {int(m) for m in re.findall(r"inet 10\.77\.(\d+)\.", addresses)}
        for index in range(256):
            if index not in taken:
                return index
        raise NetnsUnavailable("all of 10.77.0.0/16 is in use by other labs")

    def _create(self) -> None:
        switch = f"{self.tag}-sw"
        prefix = self.network.prefixlen
        # The test machine's own leg is the first pair; each host's is another. Pairs are
        # made in the root namespace under unique names, then moved to their ends.
        root = [f"netns add {switch}",
                f"link add {self.tag}c type veth peer name {self.tag}p0",
                f"link set {self.tag}p0 netns {switch}",
                f"addr add {self.client_address}/{prefix} dev {self.tag}c",
                f"link set {self.tag}c up"]
        on_switch = ["link set lo up", "link add br0 type bridge", "link set br0 up",
                     f"link set {self.tag}p0 master br0", f"link set {self.tag}p0 up"]
        on_hosts = {}
        for number, name in enumerate(self.names, start=1):
            namespace = f"{self.tag}-{name}"
            address = str(self.network[9 + number])
            self.hosts[name] = Host(name, namespace, address)
            leg, port = f"{self.tag}h{number}", f"{self.tag}p{number}"
            root += [f"netns add {namespace}",
                     f"link add {leg} type veth peer name {port}",
                     f"link set {leg} netns {namespace}",
                     f"link set {port} netns {switch}"]
            on_switch += [f"link set {port} master br0", f"link set {port} up"]
            on_hosts[namespace] = ["link set lo up", f"link set {leg} name eth0",
                                   f"addr add {address}/{prefix} dev eth0", "link set eth0 up"]
        _ip_batch(root)
        _ip_batch(on_switch, switch)
        for namespace, commands in on_hosts.items():
            _ip_batch(commands, namespace)

    def close(self) -> None:
        _delete_lab(self.index)


def _delete_lab(index: int) -> None:
    tag = f"{PREFIX}{index}"
    for namespace in _namespaces():
        if namespace.startswith(tag + "-"):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    # Deleting the switch's namespace took the root-side veth with it; be sure.
    subprocess.run(["ip", "link", "del", f"{tag}c"], capture_output=True)
    (STATE_DIR / str(index)).unlink(missing_ok=True)


def _remove_orphans() -> None:
    for path in STATE_DIR.iterdir():
        if path.name.isdigit():
            try:
                owner = int(path.read_text() or 0)
            except (OSError, ValueError):
                owner = 0
            if not owner or not _pid_alive(owner):
                _delete_lab(int(path.name))
