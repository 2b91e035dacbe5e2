"""The API-key ``before_request`` hook for server-to-server endpoints, and key hashing."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from flask import g, request

from .errors import APIError
from .wiring import current_services

if TYPE_CHECKING:
    from .tenants import Tenant

# Names people try to pass keys under. Refused loudly: query strings end up in logs.
_QUERY_KEY_NAMES = frozenset({"apikey", "api_key", "api-key", "key", "token", "access_token",
                              "x-api-key"})


# Where the lean path (hitpath.py) leaves the key it resolved, for Flask to reuse. A WSGI
# environ name a client cannot set: request headers arrive as HTTP_*.
RESOLVED_KEY = "qcimage.resolved_key"


def new_api_key() -> str:
    """A fresh client key: 32 random bytes, URL-safe."""
    return "qci_" + secrets.token_urlsafe(32)


def presented_key() -> str | None:
    """The key sent in ``X-API-Key`` or ``Authorization: Bearer``, if any."""
    return key_in(request.headers.get("X-API-Key"), request.headers.get("Authorization"))


def key_in(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key these two headers present, if any (X-API-Key first)."""
    if x_api_key:
        return x_api_key.strip()
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_in_query(names) -> bool:
    """Whether a query string tries to pass a key (refused: query strings reach logs)."""
    return any(name.lower() in _QUERY_KEY_NAMES for name in names)


def request_key() -> tuple[Tenant, str] | None:
    """(tenant, key name) of the valid key this request presents, or None; worked out once.

    Both the rate limiter (which runs first) and the API-key hook need it; hashing and
    comparing against every configured key twice per request would be waste.
    """
    if "api_key_resolved" not in g:
        if RESOLVED_KEY in request.environ:  # the lean path resolved it before Flask
            g.api_key_resolved = request.environ[RESOLVED_KEY]
        else:
            key = presented_key()
            g.api_key_resolved = (current_services().settings.tenants.resolve_key(key)
                                  if key else None)
    return g.api_key_resolved


def require_api_key() -> None:
    """before_request hook: set ``g.tenant`` and ``g.api_key_name`` or refuse with 400/401/403."""
    if request.method == "OPTIONS":
        return  # CORS preflights carry no credentials by design; they reach no view.
    if key_in_query(request.args):
        raise APIError(400, "api_key_in_query",
                       "API keys are not accepted in the query string (they end up in logs); "
                       "send the X-API-Key header instead")
    key = presented_key()
    if key is None:
        message = "an API key is required: send the X-API-Key header"
        if request.headers.get("Authorization", "").strip():
            message = ("the Authorization header needs the Bearer scheme: send "
                       "'Authorization: Bearer <key>', or the key alone in the X-API-Key "
                       "header")
        raise APIError(401, "api_key_missing", message,
                       headers={"WWW-Authenticate": 'Bearer realm="qcimage"'})
    resolved = request_key()
    if resolved is None:
        raise APIError(403, "api_key_invalid", "the API key is not valid")
    g.tenant, g.api_key_name = resolved
