"""Flask extensions, created unbound here and initialised in ``create_app``."""

from flask import request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_talisman import Talisman


def client_ip() -> str:
    # After ProxyFix, remote_addr is the client as seen by the trusted proxies.
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=client_ip)
talisman = Talisman()
cors = CORS()
