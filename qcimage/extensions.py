"""Flask extensions, created unbound here and initialised in ``create_app``."""

from flask import Response, g, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_talisman import Talisman


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
