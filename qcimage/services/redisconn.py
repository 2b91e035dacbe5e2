"""One place that turns a Redis URL into a client: one server, Sentinel or Cluster.

The URLs are spelled as the ``limits`` library (behind Flask-Limiter) spells them, so
``QCIMAGE_REDIS_URL`` and ``QCIMAGE_RATELIMIT_STORAGE_URI`` can name the same Redis:

- ``redis://[user:pass@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path.sock``
- ``redis+sentinel://[user:pass@]host:port,host:port/service_name``: the master that
  Sentinel currently names, found again after a fail-over
- ``redis+cluster://[user:pass@]host:port,host:port``: any nodes; the rest are discovered
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
import redis.cluster
import redis.exceptions
import redis.sentinel
from limits.storage import RedisClusterStorage, Storage
from limits.storage.redis import RedisStorage
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SCHEMES = (*SINGLE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME)

# Every way a call can fail while Redis is down, failing over or resharding: callers
# treat these as "Redis unavailable" and carry on without it. RedisClusterException is
# not a RedisError (a whole cluster unreachable, a slot nobody serves).
ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)

# Short socket timeouts: a Redis that stopped answering must cost a request a fraction
# of a second, never its deadline. Sentinels are asked with the same bound.
DEFAULT_TIMEOUT = 0.5


def _retry() -> Retry:
    # redis-py's default retries three times with up to seconds of backoff: while Redis
    # is down every request would sleep that long before carrying on without it.
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1)


class RedisURLError(ValueError):
    """A Redis URL this service cannot use; the message says what is expected."""


@dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL: which kind of deployment, where, and as whom."""

    scheme: str
    locations: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    service_name: str | None
    url: str

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == SENTINEL_SCHEME

    @property
    def is_cluster(self) -> bool:
        return self.scheme == CLUSTER_SCHEME


def parse_redis_url(url: str) -> RedisURL:
    """Check ``url`` and say what it names; raise RedisURLError explaining a bad one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RedisURLError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme in SINGLE_SCHEMES:
        return RedisURL(scheme, (), username, password, None, url)
    hosts = parts.netloc.rpartition("@")[2]
    locations = []
    for location in hosts.split(","):
        host, sep, port = location.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RedisURLError(f"every node must be host:port, got {location.strip()!r}")
        locations.append((host.strip("[]"), int(port)))
    service = parts.path.strip("/") or None
    if scheme == SENTINEL_SCHEME and (service is None or "/" in service):
        raise RedisURLError("must end with the Sentinel service name: "
                            "redis+sentinel://host:port,host:port/service_name")
    if scheme == CLUSTER_SCHEME and service is not None:
        raise RedisURLError("names nodes only: redis+cluster://host:port,host:port")
    return RedisURL(scheme, tuple(locations), username, password, service, url)


def connect(url: str, *, timeout: float = DEFAULT_TIMEOUT):
    """A client for ``url``: ``redis.Redis`` (Sentinel's master too) or ``RedisCluster``.

    Building it never needs Redis to be up: a box starts during an outage and uses
    Redis once it answers.
    """
    target = parse_redis_url(url)
    options = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=_retry(),
                   **_auth(target))
    if target.is_sentinel:
        sentinel = redis.sentinel.Sentinel(
            target.locations, sentinel_kwargs={**options, "retry": _retry()},
            health_check_interval=30, **options)
        return sentinel.master_for(target.service_name)
    if target.is_cluster:
        return LazyCluster(target, options)
    return redis.Redis.from_url(url, health_check_interval=30, **options)


def limiter_storage_options(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Flask-Limiter's ``RATELIMIT_STORAGE_OPTIONS`` for ``url``: the same socket bounds.

    ``limits`` builds its own client from the URL; these options reach that client (for
    Sentinel: the master's connections and the sentinels'). ``memory://`` takes none.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        return {}
    options: dict = dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                         retry=_retry())
    if scheme == SENTINEL_SCHEME:
        options["sentinel_kwargs"] = {**options, "retry": _retry()}
        # Limits are decided on the master; a replica lags and would count short.
        options["use_replicas"] = False
    return options


def is_cluster(client) -> bool:
    return isinstance(client, LazyCluster)


def _auth(target: RedisURL) -> dict:
    auth = {}
    if target.username:
        auth["username"] = target.username
    if target.password:
        auth["password"] = target.password
    return auth


class LazyCluster:
    """``redis.cluster.RedisCluster`` built on first use, and again after a failed build.

    RedisCluster asks its startup nodes for the slot map in its constructor, which
    would make a box that starts while the cluster is unreachable fail to boot. Its
    own failures that are not RedisErrors (no node reachable, a slot nobody serves)
    come out as ``redis.ConnectionError``, so code written for one server (pybreaker's
    storage among it) sees an outage as an outage.
    """

    def __init__(self, target: RedisURL, options: dict):
        self._nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.locations]
        self._options = options
        self._client: redis.cluster.RedisCluster | None = None

    @property
    def client(self) -> redis.cluster.RedisCluster:
        if self._client is None:
            # A node that is down costs each call one refused connection, not the
            # whole cluster: the other nodes' slots keep answering.
            self._client = redis.cluster.RedisCluster(
                startup_nodes=self._nodes, require_full_coverage=False, **self._options)
        return self._client

    def __getattr__(self, name: str):
        if not callable(getattr(redis.cluster.RedisCluster, name, None)):
            return getattr(self.client, name)

        def call(*args, **kwargs):
            # The client is built (or built again) by the call, not by looking it up.
            try:
                return getattr(self.client, name)(*args, **kwargs)
            except redis.exceptions.RedisClusterException as error:
                raise redis.exceptions.ConnectionError(str(error)) from error
        return call

    def register_script(self, script: str | bytes) -> Script:
        # A script bound to this proxy; as bytes, so nothing asks the cluster for an
        # encoder before it is reachable.
        return Script(self, script.encode() if isinstance(script, str) else script)

    def ping(self) -> bool:
        """Every primary answers: a dead node is an outage of its slots, not "ok"."""
        return self.__getattr__("ping")(target_nodes=redis.cluster.RedisCluster.PRIMARIES)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LazyClusterLimitsStorage(RedisClusterStorage):
    """The ``limits`` storage for ``redis+cluster://``, on a :class:`LazyCluster`.

    limits' own connects in its constructor, so a box whose rate-limit storage is a
    cluster could not start while no node answers; this one starts, and Flask-Limiter
    counts in memory until the cluster answers. Defining it registers it for the
    scheme (limits keeps one class per scheme), in every process that imports this module.
    """

    STORAGE_SCHEME = [CLUSTER_SCHEME]

    def __init__(self, uri: str, key_prefix: str = RedisStorage.PREFIX,
                 wrap_exceptions: bool = False, **options):
        target = parse_redis_url(uri)
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.storage = LazyCluster(target, {**_auth(target), **options})
        self.initialize_storage(uri)
        Storage.__init__(self, uri, wrap_exceptions, **options)
