"""Real Redis in the shapes a site runs several boxes on, started and broken by the tests.

- :func:`start_sentinel_group`: one master, one replica and three sentinels watching
  them (service ``qcimage``), with a fail-over that takes a couple of seconds.
- :func:`start_cluster`: three masters sharing the 16384 slots; a dead node leaves its
  slots unserved and the others answering (``cluster-require-full-coverage no``).

Every process is a :class:`tools.harness.ManagedProcess` without persistence, run on a
host of :mod:`tools.netns` (or on loopback), so tests can ``kill -9`` and restart one.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from tools.harness import Redis, clean_env, free_port
from tools.netns import LocalHost

SERVICE = "qcimage"
# Sentinel decides a master is down after this long without an answer.
DOWN_AFTER_MS = 1000


class RedisProcess(Redis):
    """redis-server or redis-sentinel on ``host:port``; ``start()`` after a stop reuses both."""

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(self.host, self.port, socket_timeout=2, socket_connect_timeout=2,
                           decode_responses=True, **kwargs)

    def kill(self):
        """kill -9, as a crashed machine: no goodbye to replicas or clients."""
        return self.stop(sig=signal.SIGKILL, timeout=5)


def _redis(name, host, port, directory: Path, config: list[str], *, sentinel=False):
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / f"{name}.conf"
    lines = [f"bind {host.address}", f"port {port}", "protected-mode no", f"dir {directory}",
             "daemonize no", *config]
    if not sentinel:
        # No persistence, and a replica synced at once instead of after 5 s.
        lines += ['save ""', "appendonly no", "repl-diskless-sync-delay 0"]
    conf.write_text("\n".join(lines) + "\n")
    binary = "redis-sentinel" if sentinel else "redis-server"
    process = RedisProcess(name, host.argv([binary, conf]), cwd=directory, env=clean_env(),
                           log_path=directory / f"{name}.log")
    process.host, process.port = host.address, port
    process.wait_ready()
    return process


class SentinelGroup:
    """A master, a replica and three sentinels; ``url`` is the ``redis+sentinel://`` URL."""

    def __init__(self, servers: list[RedisProcess], sentinels: list[RedisProcess]):
        self.servers = servers
        self.sentinels = sentinels
        self.url = "redis+sentinel://{}/{}".format(
            ",".join(f"{s.host}:{s.port}" for s in sentinels), SERVICE)

    @property
    def processes(self):
        return [*self.servers, *self.sentinels]

    def master_address(self) -> tuple[str, int]:
        """The master as a majority of the running sentinels name it."""
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            if sentinel.poll() is not None:
                continue
            try:
                host, port = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            votes[(host, int(port))] = votes.get((host, int(port)), 0) + 1
        return max(votes, key=votes.get)

    def master(self) -> RedisProcess:
        host, port = self.master_address()
        return next(s for s in self.servers if (s.host, s.port) == (host, port))

    def wait_settled(self, timeout=60.0):
        """Until every sentinel knows the others and the master has a synced replica."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                master = self.master()
                sentinels_ok = all(
                    len(s.client().sentinel_sentinels(SERVICE)) == len(self.sentinels) - 1
                    and len(s.client().sentinel_slaves(SERVICE)) >= 1
                    for s in self.sentinels)
                synced = master.client().info("replication").get("connected_slaves", 0) >= 1
                if sentinels_ok and synced:
                    return master
            except (redis.RedisError, ValueError, StopIteration):
                pass
            time.sleep(0.2)
        raise TimeoutError("sentinel group did not settle:\n"
                           + "\n".join(p.log_text()[-2000:] for p in self.processes))

    def wait_failover(self, old: RedisProcess, timeout=30.0) -> RedisProcess:
        """Until the sentinels name a new, writable master; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                master = self.master()
                if master is not old and master.client().info("replication")["role"] == "master":
                    return master
            except (redis.RedisError, ValueError, StopIteration):
                pass
            time.sleep(0.1)
        raise TimeoutError("no fail-over:\n"
                           + "\n".join(p.log_text()[-2000:] for p in self.sentinels))

    def stop(self):
        for process in reversed(self.processes):
            process.stop(timeout=5)


def _ports(host, count):
    # On loopback other test runs share the ports: take free ones. A lab host is ours.
    if isinstance(host, LocalHost):
        return [free_port() for _ in range(count)]
    return [6379 + number for number in range(count)]


def start_sentinel_group(directory, host=None, *, settle=True) -> SentinelGroup:
    """A master, its replica and three sentinels, all on ``host`` (default: loopback).

    The sentinels find each other within seconds; ``settle=False`` returns before they
    have (the master already serves), for callers that call ``wait_settled()`` later.
    """
    host = host or LocalHost()
    directory = Path(directory)
    master_port, replica_port, *sentinel_ports = _ports(host, 5)
    master = _redis("redis-master", host, master_port, directory, [])
    replica = _redis("redis-replica", host, replica_port, directory,
                     [f"replicaof {host.address} {master_port}"])
    sentinels = []
    for number, port in enumerate(sentinel_ports):
        sentinels.append(_redis(
            f"sentinel-{number + 1}", host, port, directory,
            [f"sentinel monitor {SERVICE} {host.address} {master_port} 2",
             f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
             f"sentinel failover-timeout {SERVICE} 5000",
             f"sentinel parallel-syncs {SERVICE} 1"], sentinel=True))
    group = SentinelGroup([master, replica], sentinels)
    try:
        if settle:
            group.wait_settled()
    except BaseException:
        group.stop()
        raise
    return group


class Cluster:
    """Three master nodes; ``url`` is the ``redis+cluster://`` URL naming all of them."""

    def __init__(self, nodes: list[RedisProcess]):
        self.nodes = nodes
        self.url = "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in nodes)

    @property
    def processes(self):
        return list(self.nodes)

    def node_for(self, key: str) -> RedisProcess:
        """The node serving ``key``'s slot."""
        live = [n for n in self.nodes if n.poll() is None]
        slot = live[0].client().cluster("keyslot", key)
        for start, end, primary, *_ in live[0].client().cluster("slots"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(key)

    def wait_state(self, state="ok", timeout=30.0, *, among=None):
        deadline = time.monotonic() + timeout
        among = among or [n for n in self.nodes if n.poll() is None]
        while time.monotonic() < deadline:
            try:
                if all(n.client().cluster("info")["cluster_state"] == state for n in among):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"cluster not {state}:\n"
                           + "\n".join(n.log_text()[-2000:] for n in self.nodes))

    def stop(self):
        for node in reversed(self.nodes):
            node.stop(timeout=5)


def start_cluster(directory, host=None) -> Cluster:
    """Three nodes on ``host``, slots split evenly, no replicas."""
    host = host or LocalHost()
    directory = Path(directory)
    # A cluster bus listens on port + 10000: keep both below 65536.
    ports = _ports(host, 3) if isinstance(host, LocalHost) else [7000, 7001, 7002]
    while isinstance(host, LocalHost) and max(ports) > 55000:
        ports = _ports(host, 3)
    nodes = [_redis(f"cluster-{port}", host, port, directory,
                    ["cluster-enabled yes", f"cluster-config-file nodes-{port}.conf",
                     "cluster-node-timeout 1000", "cluster-require-full-coverage no"])
             for port in ports]
    cluster = Cluster(nodes)
    try:
        result = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *[f"{n.host}:{n.port}" for n in nodes], "--cluster-replicas", "0",
             "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}"
                               f"{result.stderr}")
        cluster.wait_state("ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster
