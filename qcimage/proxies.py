"""Forwarded headers (X-Forwarded-*) believed only from the proxies the operator named."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxyFix:
    """ProxyFix for requests whose peer is a configured proxy; everyone else as they are.

    ProxyFix alone believes the last ``hops`` X-Forwarded-* values from whoever connects,
    so a client reaching gunicorn directly could pick its own address (rate limits, the
    /metrics allow-list) and the host of HTTPS redirects. Like gunicorn's
    ``forwarded_allow_ips``, a peer without an IP address (a unix socket) is local.
    """

    def __init__(self, app, *, hops: int, allowed: Iterable[Network]):
        self.app = app
        self.fixed = ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
        self.allowed = tuple(allowed)

    def __call__(self, environ, start_response):
        if is_trusted_peer(environ.get("REMOTE_ADDR"), self.allowed):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)


def is_trusted_peer(address: str | None, allowed: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return True  # no IP: a unix-socket peer, on this box by construction
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in allowed)
