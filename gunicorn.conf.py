"""Gunicorn settings for qcimage; every value can be overridden by a QCIMAGE_* variable.

Run with ``gunicorn -c gunicorn.conf.py`` (the WSGI app ``wsgi:app`` is set below).
Invalid values stop start-up with one line naming the variable and what it accepts; the
app's own QCIMAGE_* settings are checked once by the master (``on_starting``), which stops
with one block listing every problem before any worker is forked.

| variable                      | default                              |
|-------------------------------|--------------------------------------|
| QCIMAGE_BIND                  | 127.0.0.1:8000 (comma-separate more) |
| QCIMAGE_WORKERS               | usable cores (at least 2, at most 12)|
| QCIMAGE_THREADS               | 128 (gthread workers; 1: sync)       |
| QCIMAGE_HEAD_TIMEOUT          | 10 (s for a request's head; gthread) |
| QCIMAGE_WORKER_TIMEOUT        | 30 (seconds)                         |
| QCIMAGE_GRACEFUL_TIMEOUT      | 30 (seconds)                         |
| QCIMAGE_KEEPALIVE             | 5 (seconds)                          |
| QCIMAGE_MAX_REQUESTS          | 0 (off: workers recycle by memory)   |
| QCIMAGE_MAX_REQUESTS_JITTER   | half of QCIMAGE_MAX_REQUESTS         |
| QCIMAGE_WORKER_MAX_RSS_MB     | 1024 (0: never recycle by memory)    |
| QCIMAGE_MALLOC_ARENA_MAX      | 2 (glibc malloc arenas per worker)   |
| QCIMAGE_ACCESS_LOG            | off (the app logs each request); -, a path |
| QCIMAGE_LOG_LEVEL             | info                                 |
| QCIMAGE_FORWARDED_ALLOW_IPS   | 127.0.0.1,::1                        |
| QCIMAGE_CONTROL_SOCKET        | unset: gunicorn's control socket off |
| QCIMAGE_METRICS_DIR           | a fresh folder per start (/dev/shm)  |

This file must stay importable without the application: it imports neither
``qcimage`` nor ``wand`` (tests/test_gunicorn_conf.py checks that).
"""

import ipaddress
import logging
import os
import re
import shutil
import tempfile
import time

import gunicorn
import gunicorn.arbiter
import gunicorn.glogging
import gunicorn.http.wsgi

# Above this the default stops growing: every worker holds its own ImageMagick
# pixel cache, so memory, not CPU, runs out first on big boxes. Set
# QCIMAGE_WORKERS explicitly to go higher.
DEFAULT_WORKERS_CAP = 12
# Threads overlap upstream waits (hundreds of ms each); the app bounds the CPU-bound
# renders per worker itself (QCIMAGE_RENDER_SLOTS / QCIMAGE_RENDER_QUEUE). 128: the
# kernel hands new connections to the workers unevenly, and with 64 (a queue of 56) one
# of two workers met its queue under 64 clients of misses and refused some with 503
# while the other had room. Threads start only when needed and idle ones cost little.
DEFAULT_THREADS = 128
# Two workers never recycle within this many seconds of each other.
RECYCLE_GAP_SECONDS = 30
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SERVER_NAME = "qcimage"

_BIND_RE = re.compile(r"^(unix:/\S+|fd://\d+|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5}))$")


def _fail(name, raw, expected):
    # SystemExit, not an exception: gunicorn would wrap an exception in a long
    # traceback; an operator with a typo needs one line that says what to fix.
    raise SystemExit(f"gunicorn.conf.py: {name}={raw!r} is invalid: expected {expected}")


def _env(name):
    """Return the stripped value of ``name``, or None when unset or blank."""
    raw = os.environ.get(name, "").strip()
    return raw or None


def env_int(name, default, minimum, maximum):
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        _fail(name, raw, f"an integer from {minimum} to {maximum}")
    return value


def env_bind(name, default):
    raw = _env(name) or default
    addresses = [part.strip() for part in raw.split(",")]
    for address in addresses:
        match = _BIND_RE.match(address)
        if not match or (match.group(3) and int(match.group(3)) > 65535):
            _fail(name, raw, "HOST:PORT, [IPV6]:PORT or unix:/PATH, comma-separated")
    return addresses


def env_log_level(name, default):
    raw = _env(name) or default
    if raw.lower() not in LOG_LEVELS:
        _fail(name, raw, "one of " + ", ".join(LOG_LEVELS))
    return raw.lower()


def env_access_log(name, default):
    raw = _env(name) or default
    return None if raw.lower() in ("off", "none") else raw


def env_allow_ips(name, default):
    raw = _env(name) or default
    entries = [part.strip() for part in raw.split(",") if part.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            _fail(name, raw, "'*' or comma-separated IP addresses / CIDR networks")
    return ",".join(entries)


def default_workers():
    # sched_getaffinity sees the CPUs this process may actually use (taskset,
    # container cpusets); cpu_count() would count the whole host. One gthread worker
    # per core: its threads do the waiting. At least two, so one recycling never
    # leaves the box without a worker.
    cores = len(os.sched_getaffinity(0))
    return min(max(2, cores), DEFAULT_WORKERS_CAP)


def hide_server_version():
    """Make the ``Server`` header and SERVER_SOFTWARE say ``qcimage``, no version.

    Gunicorn copies these constants into its modules at import time, so each
    copy is replaced; patching only ``gunicorn.SERVER`` would change nothing.
    Workers are forked from the master after this runs and inherit it.
    """
    for module in (gunicorn, gunicorn.http.wsgi):
        module.SERVER = SERVER_NAME
        module.SERVER_SOFTWARE = SERVER_NAME
    gunicorn.arbiter.SERVER_SOFTWARE = SERVER_NAME


wsgi_app = "wsgi:app"
proc_name = "qcimage"

bind = env_bind("QCIMAGE_BIND", "127.0.0.1:8000")
workers = env_int("QCIMAGE_WORKERS", default_workers(), 1, 256)
# Above 1 gunicorn runs gthread workers: upstream waits overlap in threads while the
# app lets only QCIMAGE_RENDER_SLOTS renders per worker use the CPU at once. Exported
# so the app sizes its upstream connection pool and render queue to it.
threads = env_int("QCIMAGE_THREADS", DEFAULT_THREADS, 1, 256)
os.environ["QCIMAGE_THREADS"] = str(threads)
# gthread, but a request gets a thread only once its whole head has arrived: clients that
# send half a request and stall cannot take every thread (qcimage/gworker.py). A head not
# complete within QCIMAGE_HEAD_TIMEOUT seconds closes its connection. Sync workers
# (QCIMAGE_THREADS=1) are gunicorn's own: one request at a time, no head timeout.
worker_class = "qcimage.gworker.HeadFirstWorker" if threads > 1 else "sync"
HEAD_TIMEOUT = env_int("QCIMAGE_HEAD_TIMEOUT", 10, 1, 300)
os.environ["QCIMAGE_HEAD_TIMEOUT"] = str(HEAD_TIMEOUT)
# The timeout is what kills a worker stuck in a pathological decode; 0 (never)
# is therefore refused.
timeout = env_int("QCIMAGE_WORKER_TIMEOUT", 30, 1, 3600)
graceful_timeout = env_int("QCIMAGE_GRACEFUL_TIMEOUT", 30, 1, 3600)
# Only the gthread worker keeps connections open; sync closes after each reply.
keepalive = env_int("QCIMAGE_KEEPALIVE", 5, 0, 3600)
# Recycling by request count restarted ~18 workers in 30 s of cache hits and put
# ~735 ms into the p99 (issue 9); workers recycle by memory instead (post_request),
# which happens only when a native heap really grew. Counting stays available.
max_requests = env_int("QCIMAGE_MAX_REQUESTS", 0, 0, 10_000_000)
max_requests_jitter = env_int("QCIMAGE_MAX_REQUESTS_JITTER", max_requests // 2, 0, 10_000_000)
WORKER_MAX_RSS = env_int("QCIMAGE_WORKER_MAX_RSS_MB", 1024, 0, 1024 * 1024) * 1024 * 1024
MALLOC_ARENA_MAX = env_int("QCIMAGE_MALLOC_ARENA_MAX", 2, 0, 1024)

# The app writes one access line per request (qcimage.access: route, tenant, cache...);
# gunicorn's own would be a second line per request and cost ~8 % of a cache hit's CPU.
# It stays available for operators who want gunicorn's view as well.
accesslog = env_access_log("QCIMAGE_ACCESS_LOG", "off")
errorlog = "-"
loglevel = env_log_level("QCIMAGE_LOG_LEVEL", "info")
# The path only (%(U)s), never the query: image URLs carry their signature there.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'


def escape_text_lines(*logs):
    """Give gunicorn's text handlers the app's escaping formatter, keeping their format.

    A request path may hold CR/LF (percent-decoded by gunicorn); written raw, it would
    forge log lines. Imported here, in the master's setup, not when this file loads.
    """
    from qcimage.logformat import EscapingFormatter

    for log in logs:
        for handler in log.handlers:
            current = handler.formatter or logging.Formatter()
            handler.setFormatter(EscapingFormatter(current._fmt, current.datefmt))


class QcimageLogger(gunicorn.glogging.Logger):
    """gunicorn's logger, writing lines as the app does: JSON, or text kept on one line.

    The format is the app's own setting (QCIMAGE_LOG_FORMAT, else by QCIMAGE_ENV), read
    with the app's reader when the master sets its loggers up, not when this file loads;
    a bad value is reported by the master's configuration check (on_starting).
    """

    json = False

    def setup(self, cfg):
        from qcimage.groups import logging_settings
        from qcimage.logformat import json_formatter

        super().setup(cfg)
        self.json = logging_settings(os.environ).format == "json"
        if not self.json:
            escape_text_lines(self.error_log, self.access_log)
        if self.json:
            formatter = json_formatter()
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(formatter)

    def access(self, resp, req, environ, request_time):
        if not self.json:
            return super().access(resp, req, environ, request_time)
        if not self.cfg.accesslog:
            return None
        atoms = self.atoms(resp, req, environ, request_time)
        self.access_log.info("%s %s %s", atoms["m"], atoms["U"], atoms["s"], extra={
            "client_ip": atoms["h"], "method": atoms["m"], "path": atoms["U"],
            "status": resp.status_code, "bytes": atoms["B"],
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "request_id": atoms.get("{x-request-id}o"), "user_agent": atoms["a"]})
        return None


logger_class = QcimageLogger
forwarded_allow_ips = env_allow_ips("QCIMAGE_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Never preload: the app would then be imported in the master and ImageMagick
# (Wand) could initialise its thread pools, locks and OpenMP state there; fork()
# copies that state into every worker half-initialised, which deadlocks or
# corrupts renders. Each worker imports the app, and so Wand, after the fork.
preload_app = False

# The heartbeat file is touched on every request; on disk that is a write per
# request and a worker "timing out" when the disk stalls. tmpfs avoids both.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Gunicorn >= 25 opens an unauthenticated control socket by default, at one
# path per user, so two instances on a box fight over it. Off unless asked for.
_control_socket = _env("QCIMAGE_CONTROL_SOCKET")
control_socket_disable = _control_socket is None
if _control_socket:
    control_socket = _control_socket

hide_server_version()


def metrics_dir():
    """A fresh folder for prometheus-client's per-worker files, exported to the workers.

    Set before any worker imports prometheus_client (it reads the variable once).
    QCIMAGE_METRICS_DIR pins it; otherwise one per master under /dev/shm (or /tmp).
    """
    path = _env("QCIMAGE_METRICS_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    else:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        path = tempfile.mkdtemp(prefix="qcimage-metrics-", dir=base)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


_metrics_dir = metrics_dir()


def child_exit(server, worker):
    # A dead worker's live gauges (in-flight requests, circuit state) must stop counting.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)


def limit_malloc_arenas():
    """Cap glibc's malloc arenas before forking; workers inherit the setting.

    glibc gives each thread that allocates its own arena (up to 8 per core), so 32
    threads per worker grow RSS by hundreds of MB of fragmented heaps. The
    MALLOC_ARENA_MAX variable would be read only at a process's start, and workers are
    forked, not started: mallopt() in the master sets what they inherit.
    """
    if MALLOC_ARENA_MAX:
        import ctypes
        import ctypes.util

        m_arena_max = -8  # from glibc's malloc.h
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if hasattr(libc, "mallopt"):
            libc.mallopt(m_arena_max, MALLOC_ARENA_MAX)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Memory is read at most this often per worker: a cache hit takes well under a
# millisecond, and reading /proc on every one of them showed in its profile.
RSS_CHECK_SECONDS = 0.5


def _rss_bytes():
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def _rss_check_due(worker):
    now = time.monotonic()
    if now < getattr(worker, "qcimage_next_rss_check", 0.0):
        return False
    worker.qcimage_next_rss_check = now + RSS_CHECK_SECONDS
    return True


def _recycle_turn():
    """True for one worker per RECYCLE_GAP_SECONDS: a marker file's age says whose turn."""
    marker = os.path.join(_metrics_dir, "last-recycle")
    try:
        if time.time() - os.stat(marker).st_mtime < RECYCLE_GAP_SECONDS:
            return False
    except FileNotFoundError:
        pass
    with open(marker, "a"):
        os.utime(marker)
    return True


def post_request(worker, req, environ, resp):
    # Recycle by memory, one worker at a time: the others carry its share while it
    # finishes its requests and a fresh one boots, so no p99 spike from all at once.
    if (WORKER_MAX_RSS and _rss_check_due(worker) and _rss_bytes() > WORKER_MAX_RSS
            and _recycle_turn()):
        worker.log.warning("worker %s uses more than %d MB; recycling it", worker.pid,
                           WORKER_MAX_RSS // (1024 * 1024))
        worker.alive = False


def on_starting(server):
    """Check qcimage's configuration once, in the master, before any worker is forked.

    Otherwise every worker fails on its own, each with a traceback, and gunicorn keeps
    restarting them. Imported here, not at the top: this file must load without the app.
    Another WSGI app run with this file (the tests' hello app) is not ours to check.
    """
    limit_malloc_arenas()
    if getattr(server.app, "app_uri", None) != wsgi_app:
        return
    from qcimage import pin_tenants_file, startup_report

    report = startup_report(workers=server.cfg.workers)
    problems = [] if report else pin_tenants_file()
    if report or problems:
        on_exit(server)
        raise SystemExit(report or "\n".join(problems))


def on_reload(server):
    """HUP: gunicorn starts new workers, which read the tenants file as the master pinned it.

    A changed file is validated here first; an invalid one is refused with a log line and
    the previous one stays pinned, so the new workers serve what the old ones did.
    """
    if getattr(server.app, "app_uri", None) != wsgi_app:
        return
    from qcimage import pin_tenants_file

    problems = pin_tenants_file()
    if problems:
        server.log.error("tenants file refused on reload; workers keep the previous one: %s",
                         "; ".join(problems))
    elif _env("QCIMAGE_TENANTS_FILE"):
        server.log.info("tenants file %s reloaded", _env("QCIMAGE_TENANTS_FILE"))


def on_exit(server):
    if not _env("QCIMAGE_METRICS_DIR"):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
