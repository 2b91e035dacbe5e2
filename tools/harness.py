"""Start, watch and always stop the real processes the end-to-end tests talk to.

Everything listens on free loopback ports and runs in its own process group, so
``stop()`` can take down a master and whatever it forked. Each process writes
its output to a log file; failures raise with that log attached.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
NGINX_SITE_CONF = ROOT / "nginx" / "qcimage.conf"
NGINX_LB_CONF = ROOT / "nginx" / "qcimage-lb.conf"
SAMPLES_DIR = ROOT / "tools" / ".samples"

# Every process started here and not yet stopped. The fixtures stop what they
# start; stop_all() at interpreter exit catches what a crash or ^C left over.
_RUNNING = []


def free_port():
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**overrides):
    """A minimal environment: nothing from the developer's shell leaks in."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


def wait_http(url, timeout=30.0, *, status=200, process=None, verify=True):
    """Poll ``url`` until it answers ``status``; return that response.

    With ``process`` given, give up as soon as it exits instead of waiting out
    the timeout, and put its log in the error.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.poll()} before {url} "
                               f"answered\n{process.log_text()}")
        try:
            response = requests.get(url, timeout=2, verify=verify)
        except requests.RequestException as exc:
            last = repr(exc)
        else:
            if response.status_code == status:
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        time.sleep(0.1)
    tail = f"\n{process.log_text()}" if process is not None else ""
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s ({last}){tail}")


class ManagedProcess:
    """A child in its own process group, output in ``log_path``."""

    def __init__(self, name, argv, *, cwd, env, log_path):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.cwd = cwd
        self.env = env
        self.log_path = Path(log_path)
        self.popen = None
        self.start()

    def start(self):
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        # Logs are appended to across starts: what this start printed begins here.
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if self not in _RUNNING:
            _RUNNING.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def poll(self):
        return self.popen.poll()

    def log_text(self, this_start=False):
        """The log, or with ``this_start`` only what the current start wrote."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self.log_start if this_start else 0:].decode(errors="replace")

    def child_pids(self):
        """Direct children of the process, read from /proc."""
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces and parentheses: split after it.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.pid:
                children.append(int(entry))
        return sorted(children)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Send ``sig`` to the process, wait, then SIGKILL its whole group."""
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # Whatever is left of the group (the master on timeout, orphaned
        # workers after a crash) goes now.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait(5)
        return self.popen.returncode


def stop_all():
    """Stop every process still running: the safety net behind the fixtures."""
    for process in reversed(list(_RUNNING)):
        process.stop(timeout=5)


atexit.register(stop_all)


def _wait_log_line(process, pattern, timeout):
    regex = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = regex.search(process.log_text(this_start=True))
        if match:
            return match
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"{process.name} did not print {pattern!r} within {timeout}s\n"
                       f"{process.log_text()}")


class Upstream(ManagedProcess):
    """The Doppel stand-in (tools/upstream/) and its test controls."""

    url = None

    def stats(self):
        response = requests.get(f"{self.url}/_stats", timeout=5)
        response.raise_for_status()
        return response.json()

    def reset_stats(self):
        requests.delete(f"{self.url}/_stats", timeout=5).raise_for_status()

    def set_faults(self, faults):
        requests.post(f"{self.url}/_faults", json=faults, timeout=5).raise_for_status()

    def clear_faults(self):
        requests.delete(f"{self.url}/_faults", timeout=5).raise_for_status()

    def set_conditions(self, **conditions):
        """Latency per endpoint, bandwidth, max in flight (tools/upstream/conditions.py)."""
        requests.post(f"{self.url}/_conditions", json=conditions, timeout=5).raise_for_status()

    def clear_conditions(self):
        requests.delete(f"{self.url}/_conditions", timeout=5).raise_for_status()


def start_upstream(tmp, samples_dir=SAMPLES_DIR, timeout=120.0, *, host=None):
    """Run the stand-in upstream on a free port; return it once it printed READY.

    The samples folder outlives the run so images are generated only once. ``host``
    (a tools.netns host) runs it there, on its address; default loopback.
    """
    tmp = Path(tmp)
    address = host.address if host else "127.0.0.1"
    argv = [sys.executable, "-m", "tools.upstream", "--host", address, "--port", "0",
            "--samples-dir", samples_dir]
    upstream = Upstream("upstream", host.argv(argv) if host else argv, cwd=ROOT,
                        env=clean_env(HOME=tmp), log_path=tmp / "upstream.log")
    upstream.url = _wait_log_line(upstream, rf"^READY (http://{re.escape(address)}:\d+)\s*$",
                                  timeout).group(1)
    return upstream


class Gunicorn(ManagedProcess):
    """A gunicorn master started with our gunicorn.conf.py."""

    url = None

    def worker_pids(self):
        return self.child_pids()

    def wait_workers(self, count, timeout=30.0):
        """Wait until ``count`` workers are forked (the first answers before the rest exist)."""
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < count:
            if time.monotonic() > deadline or self.poll() is not None:
                raise RuntimeError(f"gunicorn has {len(self.worker_pids())} of {count} workers"
                                   f"\n{self.log_text()}")
            time.sleep(0.05)


def start_gunicorn(env, workers=2, *, tmp, port=None, wsgi_app="wsgi:app", cwd=ROOT,
                   ready_path="/health", timeout=60.0, host=None):
    """Run ``gunicorn -c gunicorn.conf.py`` on a free port; return it once ready.

    ``env`` is laid over a clean environment that already holds QCIMAGE_BIND and
    QCIMAGE_WORKERS. Pass ``port`` when the env must know it in advance (for
    QCIMAGE_PUBLIC_URL). ``host`` (a tools.netns host) runs it there, on its address.
    """
    tmp = Path(tmp)
    port = port or free_port()
    address = host.address if host else "127.0.0.1"
    full_env = clean_env(HOME=tmp, QCIMAGE_BIND=f"{address}:{port}", QCIMAGE_WORKERS=workers)
    full_env.update({key: str(value) for key, value in env.items()})
    argv = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, wsgi_app]
    server = Gunicorn(f"gunicorn-{host.name}" if host else "gunicorn",
                      host.argv(argv) if host else argv, cwd=cwd, env=full_env,
                      log_path=tmp / (f"gunicorn-{host.name}-{port}.log" if host
                                      else f"gunicorn-{port}.log"))
    server.url = f"http://{address}:{port}"
    try:
        wait_http(server.url + ready_path, timeout, process=server)
        server.wait_workers(workers)
    except Exception:
        server.stop()
        raise
    return server


def make_self_signed_cert(directory, common_name="127.0.0.1"):
    """Create a key and a self-signed certificate valid for 127.0.0.1, localhost and
    ``common_name`` (an IP address)."""
    directory = Path(directory)
    cert, key = directory / "cert.pem", directory / "key.pem"
    names = "IP:127.0.0.1,DNS:localhost" + (
        f",IP:{common_name}" if common_name != "127.0.0.1" else "")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={common_name}", "-keyout", key, "-out", cert,
         "-addext", f"subjectAltName={names}"],
        check=True, capture_output=True)
    return cert, key


def _rewrite(text, pattern, replacement, count, name="nginx/qcimage.conf"):
    new_text, found = re.subn(pattern, replacement, text, flags=re.M)
    if found != count:
        raise AssertionError(f"{name}: expected {count} match(es) of {pattern!r}, "
                             f"found {found}; update tools/harness.py with the file")
    return new_text


def render_site_conf(text, *, http_port, https_port, upstream, cache_dir, cert, key, log_dir):
    """Point the shipped site config at test ports and paths; change nothing else.

    Each rewrite must match exactly as often as the shipped file has that line,
    so a reshaped config fails here instead of being tested half-rewritten.
    """
    text = _rewrite(text, r"^\s*listen \[::\]:\d+.*\n", "", 2)
    text = _rewrite(text, r"(^\s*listen )80;", rf"\g<1>127.0.0.1:{http_port};", 1)
    text = _rewrite(text, r"(^\s*listen )443( ssl)", rf"\g<1>127.0.0.1:{https_port}\2", 1)
    text = _rewrite(text, r"(^\s*server )127\.0\.0\.1:8000;", rf"\g<1>{upstream};", 1)
    text = _rewrite(text, r"(^proxy_cache_path )\S+", rf"\g<1>{cache_dir}", 1)
    text = _rewrite(text, r"(^\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", 1)
    text = _rewrite(text, r"(^\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", 1)
    return _rewrite(text, r"(^\s*(?:access|error)_log )/var/log/nginx/", rf"\g<1>{log_dir}/", 2)


def render_lb_conf(text, *, address, http_port, https_port, boxes, cache_dir, cert, key,
                   log_dir, image_cache=True):
    """Point the shipped balancer config at test boxes, addresses and paths.

    ``boxes`` (``host:port`` each) replace the three example boxes of both upstreams,
    keeping each line's parameters (max_fails, fail_timeout). ``image_cache=False``
    turns the balancer's image cache off, so image hits measure the boxes (benchmarks).
    """
    name = "nginx/qcimage-lb.conf"

    def rewrite(pattern, replacement, count):
        nonlocal text
        text = _rewrite(text, pattern, replacement, count, name)

    rewrite(r"^\s*listen \[::\]:\d+.*\n", "", 2)
    rewrite(r"(^\s*listen )80;", rf"\g<1>{address}:{http_port};", 1)
    rewrite(r"(^\s*listen )443( ssl)", rf"\g<1>{address}:{https_port}\2", 1)
    example = r"^(\s*server )10\.0\.0\.1[123]:8000( [^;]*;).*\n"
    for first_box in re.findall(r"^\s*server 10\.0\.0\.11:8000[^;]*;.*\n", text, re.M):
        params = re.match(example, first_box).group(2)
        lines = "".join(f"    server {box}{params}\n" for box in boxes)
        text = text.replace(first_box, lines, 1)
    rewrite(example, "", 4)
    rewrite(r"(^proxy_cache_path )\S+", rf"\g<1>{cache_dir}", 1)
    rewrite(r"(^\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", 1)
    rewrite(r"(^\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", 1)
    rewrite(r"(^\s*(?:access|error)_log )/var/log/nginx/", rf"\g<1>{log_dir}/", 2)
    if not image_cache:
        rewrite(r"(^\s*proxy_cache) qcimage_lb_images;", r"\g<1> off;", 1)
    return text


def _temp_paths(tmp):
    # Debian compiles in absolute temp paths under /var/lib/nginx; -p does not
    # move them, so each is pointed into the test's own folder.
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return "".join(f"    {kind}_temp_path {tmp}/temp_{kind};\n" for kind in kinds)


def write_main_conf(tmp, site_conf):
    """A minimal nginx.conf that includes ``site_conf`` in http context, as conf.d is."""
    tmp = Path(tmp)
    # As root nginx would hand its workers to "nobody", who cannot enter
    # pytest's private tmp folders.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    main = tmp / "nginx.conf"
    main.write_text(
        f"{user}worker_processes 1;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"{_temp_paths(tmp)}"
        f"    access_log {tmp}/access.log;\n"
        f"    include {site_conf};\n"
        "}\n")
    return main


def nginx_argv(tmp, main_conf, *args):
    tmp = Path(tmp)
    return ["nginx", "-p", f"{tmp}/", "-c", main_conf,
            "-g", f"pid {tmp}/nginx.pid; error_log {tmp}/error.log;", *args]


class Nginx(ManagedProcess):
    """nginx running our rendered site config; ``url`` is the TLS server."""

    url = http_url = ca_bundle = None

    def log_text(self, this_start=False):
        logs = [super().log_text(this_start)]
        for name in ("error.log", "qcimage.error.log", "qcimage.access.log",
                     "qcimage-lb.error.log", "qcimage-lb.access.log"):
            path = self.log_path.parent / name
            if path.exists():
                logs.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(logs)


def start_nginx(tmp, upstream_port, site_conf=NGINX_SITE_CONF, *, http_port=None,
                https_port=None, ready_status=200, timeout=20.0):
    """Render the shipped site config for test ports and run nginx in the foreground.

    The TLS server is the one under test; its certificate is self-signed for
    127.0.0.1, so clients pass ``verify=nginx.ca_bundle``. Ready means /health
    (proxied to gunicorn) answers ``ready_status``: 502 for a test without one.
    """
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    https_port = https_port or free_port()
    cert, key = make_self_signed_cert(tmp)
    rendered = tmp / "qcimage.conf"
    rendered.write_text(render_site_conf(
        Path(site_conf).read_text(), http_port=http_port, https_port=https_port,
        upstream=f"127.0.0.1:{upstream_port}", cache_dir=tmp / "cache", cert=cert, key=key,
        log_dir=tmp))
    return _run_nginx(tmp, rendered, "127.0.0.1", http_port, https_port, cert, ready_status,
                      timeout)


def start_nginx_lb(tmp, boxes, *, host=None, ready_status=200, timeout=20.0,
                   image_cache=True):
    """Run the shipped balancer config (nginx/qcimage-lb.conf) over ``boxes``.

    ``host`` (a tools.netns host) runs nginx there, on its address; default loopback.
    """
    from tools.netns import LocalHost

    host = host or LocalHost()
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, https_port = (free_port(), free_port()) if host.name == "local" else (80, 443)
    cert, key = make_self_signed_cert(tmp, host.address)
    rendered = tmp / "qcimage-lb.conf"
    rendered.write_text(render_lb_conf(
        NGINX_LB_CONF.read_text(), address=host.address, http_port=http_port,
        https_port=https_port, boxes=boxes, cache_dir=tmp / "cache", cert=cert, key=key,
        log_dir=tmp, image_cache=image_cache))
    return _run_nginx(tmp, rendered, host.address, http_port, https_port, cert, ready_status,
                      timeout, host=host)


def _run_nginx(tmp, site_conf, address, http_port, https_port, cert, ready_status, timeout,
               host=None):
    main = write_main_conf(tmp, site_conf)
    argv = nginx_argv(tmp, main, "-g", "daemon off; master_process on;")
    if host is not None:
        argv = host.argv(argv)
    nginx = Nginx("nginx", argv, cwd=tmp, env=clean_env(), log_path=tmp / "nginx.out")
    nginx.url = f"https://{address}:{https_port}"
    nginx.http_url = f"http://{address}:{http_port}"
    nginx.ca_bundle = str(cert)
    try:
        wait_http(nginx.url + "/health", timeout, status=ready_status, process=nginx,
                  verify=nginx.ca_bundle)
    except Exception:
        nginx.stop()
        raise
    return nginx


class Redis(ManagedProcess):
    """redis-server without persistence; ``stop()`` then ``start()`` reuses the port."""

    host = "127.0.0.1"
    port = url = None

    def start(self):
        super().start()
        if self.port is not None:
            self.wait_ready()

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() is not None:
                break
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} on {self.host}:{self.port} did not answer PING\n"
                           f"{self.log_text()}")


def start_redis(tmp, port=None):
    """Run redis-server on a free loopback port with persistence off."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", tmp, "--daemonize", "no"]
    redis = Redis("redis", argv, cwd=tmp, env=clean_env(), log_path=tmp / f"redis-{port}.log")
    redis.port = port
    redis.url = f"redis://127.0.0.1:{port}/0"
    redis.wait_ready()
    return redis
