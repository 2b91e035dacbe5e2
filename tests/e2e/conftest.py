"""Fixtures for the end-to-end tests: real upstream stand-in, gunicorn, nginx and redis."""

import hashlib
import secrets

import pytest

from tools import harness


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see at teardown whether the test failed, to print logs then.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def _failed(request):
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
               for when in ("setup", "call"))


def _stop_all(request, processes):
    for process in reversed(processes):
        if _failed(request):
            print(f"===== {process.name} (pid {process.pid}) log =====\n{process.log_text()}")
        process.stop()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """The Doppel stand-in for the whole session; samples are generated once, in tools/.samples."""
    server = harness.start_upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.stop()


@pytest.fixture
def clean_upstream(upstream):
    """No faults or slow network, fresh request counts before the test; none left after it."""
    upstream.clear_faults()
    upstream.clear_conditions()
    upstream.reset_stats()
    yield
    upstream.clear_faults()
    upstream.clear_conditions()


@pytest.fixture
def make_key():
    """Return ``make_key(name)`` → (plain key, ``name:sha256hex`` line for QCIMAGE_API_KEYS)."""
    def make(name="e2e"):
        plain = secrets.token_urlsafe(24)
        return plain, f"{name}:{hashlib.sha256(plain.encode()).hexdigest()}"
    return make


@pytest.fixture
def qcimage_server(request, tmp_path, upstream, make_key):
    """Factory: ``qcimage_server(workers=2, public_url=None, port=None, **env)`` → Gunicorn.

    Production settings with a fresh API key (``server.api_key``) and signing key,
    pointed at the session's upstream; ``env`` overrides or adds QCIMAGE_* values.
    ``public_url`` defaults to the server's own address.
    """
    started = []

    def start(workers=2, public_url=None, port=None, **env):
        port = port or harness.free_port()
        api_key, key_line = make_key()
        full_env = {
            "QCIMAGE_ENV": "production",
            "QCIMAGE_API_KEYS": key_line,
            "QCIMAGE_SIGNING_KEYS": secrets.token_urlsafe(32),
            "QCIMAGE_PUBLIC_URL": public_url or f"http://127.0.0.1:{port}",
            "QCIMAGE_UPSTREAM_URL": upstream.url,
            "QCIMAGE_CACHE_DIR": tmp_path / f"cache-{port}",
            # Several workers on memory:// limits: said, not silent (tests use Redis where
            # counting across workers matters).
            "QCIMAGE_RATELIMIT_PER_WORKER": "true",
            **env,
        }
        server = harness.start_gunicorn(full_env, workers, tmp=tmp_path, port=port)
        server.api_key = api_key
        started.append(server)
        return server

    yield start
    _stop_all(request, started)


@pytest.fixture
def nginx_proxy(request, tmp_path):
    """Factory: ``nginx_proxy(upstream_port, https_port=None)`` → Nginx on the shipped config."""
    started = []

    def start(upstream_port, **ports):
        server = harness.start_nginx(tmp_path / f"nginx-{len(started)}", upstream_port, **ports)
        started.append(server)
        return server

    yield start
    _stop_all(request, started)


@pytest.fixture
def redis_server(request, tmp_path):
    """Factory: ``redis_server()`` → Redis; ``.stop()`` / ``.start()`` keep its port."""
    started = []

    def start():
        server = harness.start_redis(tmp_path / f"redis-{len(started)}")
        started.append(server)
        return server

    yield start
    _stop_all(request, started)
