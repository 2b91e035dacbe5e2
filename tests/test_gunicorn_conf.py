"""gunicorn.conf.py: defaults, QCIMAGE_* overrides, refusals, and what it must not import."""

import datetime
import importlib.util
import os
import subprocess
import sys
import types

import gunicorn
import gunicorn.arbiter
import gunicorn.http.wsgi
import pytest
import requests
from gunicorn.config import Config

from qcimage.groups import WORKER_TIMEOUT, logging_settings
from tools.harness import GUNICORN_CONF, ROOT, clean_env, free_port, start_gunicorn

ENV_NAMES = (
    "QCIMAGE_BIND", "QCIMAGE_WORKERS", "QCIMAGE_THREADS", "QCIMAGE_WORKER_TIMEOUT",
    "QCIMAGE_GRACEFUL_TIMEOUT", "QCIMAGE_KEEPALIVE", "QCIMAGE_MAX_REQUESTS",
    "QCIMAGE_MAX_REQUESTS_JITTER", "QCIMAGE_ACCESS_LOG", "QCIMAGE_LOG_LEVEL",
    "QCIMAGE_FORWARDED_ALLOW_IPS", "QCIMAGE_CONTROL_SOCKET", "QCIMAGE_HEAD_TIMEOUT",
)


@pytest.fixture
def load_conf(monkeypatch, request):
    """Execute gunicorn.conf.py under a given environment and return it as a module."""
    # The file exports PROMETHEUS_MULTIPROC_DIR for its workers; keep it out of this
    # process. setenv first so monkeypatch records the prior state and restores it.
    # The same for QCIMAGE_THREADS, exported for the app.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "QCIMAGE_THREADS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    # The file patches gunicorn's globals; restore them after each test.
    for module in (gunicorn, gunicorn.http.wsgi):
        monkeypatch.setattr(module, "SERVER", module.SERVER)
        monkeypatch.setattr(module, "SERVER_SOFTWARE", module.SERVER_SOFTWARE)
    monkeypatch.setattr(gunicorn.arbiter, "SERVER_SOFTWARE", gunicorn.arbiter.SERVER_SOFTWARE)

    def load(**env):
        for name in list(os.environ):
            if name.startswith("QCIMAGE_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", GUNICORN_CONF)
        module = importlib.util.module_from_spec(spec)
        request.addfinalizer(lambda: getattr(module, "on_exit", lambda _: None)(None))
        spec.loader.exec_module(module)
        return module
    return load


def settings(module):
    """The names gunicorn would pick up from the module, as it does: known settings only."""
    known = Config().settings
    return {name: value for name, value in vars(module).items() if name in known}


def test_defaults_suit_a_box_behind_nginx(load_conf, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    conf = load_conf()
    assert conf.bind == ["127.0.0.1:8000"]
    # One gthread worker per core, its threads overlapping upstream waits.
    assert conf.workers == 2
    assert conf.threads == 128
    assert os.environ["QCIMAGE_THREADS"] == "128"
    assert conf.timeout == 30
    assert conf.graceful_timeout == 30
    assert conf.keepalive == 5
    # Recycled by memory, not by request count.
    assert conf.max_requests == 0
    assert conf.WORKER_MAX_RSS == 1024 * 1024 * 1024
    assert conf.accesslog is None  # the app writes the one access line per request
    assert conf.loglevel == "info"
    assert conf.forwarded_allow_ips == "127.0.0.1,::1"
    assert conf.wsgi_app == "wsgi:app"
    assert conf.control_socket_disable is True
    assert "control_socket" not in settings(conf)


def test_one_core_still_gets_two_workers(load_conf, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert load_conf().workers == 2


def test_workers_recycle_by_memory_one_at_a_time(load_conf, monkeypatch):
    conf = load_conf(QCIMAGE_WORKER_MAX_RSS_MB="1")  # every Python process is bigger
    workers = [types.SimpleNamespace(pid=pid, alive=True, log=types.SimpleNamespace(
        warning=lambda *args: None)) for pid in (101, 102)]
    for worker in workers:
        conf.post_request(worker, None, {}, None)
    # The second one waits its turn, RECYCLE_GAP_SECONDS after the first.
    assert [worker.alive for worker in workers] == [False, True]
    monkeypatch.setattr(conf.time, "time", lambda: os.stat(
        os.path.join(conf._metrics_dir, "last-recycle")).st_mtime + conf.RECYCLE_GAP_SECONDS)
    # Memory is read at most every RSS_CHECK_SECONDS per worker: not yet...
    conf.post_request(workers[1], None, {}, None)
    assert workers[1].alive is True
    # ...and once that has passed, the second worker's turn has come.
    workers[1].qcimage_next_rss_check = 0.0
    conf.post_request(workers[1], None, {}, None)
    assert workers[1].alive is False


def test_default_workers_are_capped_on_big_machines(load_conf, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert load_conf().workers == 12


def test_app_is_never_preloaded_into_the_master(load_conf):
    assert load_conf().preload_app is False


def test_worker_heartbeat_lives_in_shared_memory_when_there_is_one(load_conf, monkeypatch):
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda path: path == "/dev/shm" or real_isdir(path))
    assert load_conf().worker_tmp_dir == "/dev/shm"
    monkeypatch.setattr(os.path, "isdir", lambda path: path != "/dev/shm" and real_isdir(path))
    assert not hasattr(load_conf(), "worker_tmp_dir")


@pytest.mark.parametrize("name, value, attribute, expected", [
    ("QCIMAGE_BIND", "0.0.0.0:9000", "bind", ["0.0.0.0:9000"]),
    ("QCIMAGE_BIND", "unix:/run/qcimage.sock, [::1]:8001", "bind",
     ["unix:/run/qcimage.sock", "[::1]:8001"]),
    ("QCIMAGE_WORKERS", "3", "workers", 3),
    ("QCIMAGE_THREADS", "4", "threads", 4),
    ("QCIMAGE_THREADS", "1", "worker_class", "sync"),
    ("QCIMAGE_HEAD_TIMEOUT", "3", "HEAD_TIMEOUT", 3),
    ("QCIMAGE_WORKER_TIMEOUT", "60", "timeout", 60),
    ("QCIMAGE_GRACEFUL_TIMEOUT", "10", "graceful_timeout", 10),
    ("QCIMAGE_KEEPALIVE", "0", "keepalive", 0),
    ("QCIMAGE_MAX_REQUESTS", "0", "max_requests", 0),
    ("QCIMAGE_MAX_REQUESTS_JITTER", "7", "max_requests_jitter", 7),
    ("QCIMAGE_ACCESS_LOG", "/var/log/qcimage/access.log", "accesslog",
     "/var/log/qcimage/access.log"),
    ("QCIMAGE_ACCESS_LOG", "off", "accesslog", None),
    ("QCIMAGE_ACCESS_LOG", "-", "accesslog", "-"),
    ("QCIMAGE_LOG_LEVEL", "WARNING", "loglevel", "warning"),
    ("QCIMAGE_FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.168.1.5", "forwarded_allow_ips",
     "10.0.0.0/8,192.168.1.5"),
    ("QCIMAGE_FORWARDED_ALLOW_IPS", "*", "forwarded_allow_ips", "*"),
    ("QCIMAGE_CONTROL_SOCKET", "/run/qcimage/gunicorn.ctl", "control_socket",
     "/run/qcimage/gunicorn.ctl"),
])
def test_each_setting_follows_its_environment_variable(load_conf, name, value, attribute,
                                                       expected):
    assert getattr(load_conf(**{name: value}), attribute) == expected


def test_a_control_socket_path_turns_the_socket_on(load_conf):
    assert load_conf(QCIMAGE_CONTROL_SOCKET="/run/q.ctl").control_socket_disable is False


def test_blank_values_mean_the_default(load_conf):
    conf = load_conf(QCIMAGE_WORKERS="  ", QCIMAGE_BIND="")
    assert conf.bind == ["127.0.0.1:8000"]
    assert conf.workers >= 1


@pytest.mark.parametrize("name, value", [
    ("QCIMAGE_WORKERS", "two"),
    ("QCIMAGE_WORKERS", "0"),
    ("QCIMAGE_WORKERS", "2.5"),
    ("QCIMAGE_THREADS", "-1"),
    ("QCIMAGE_WORKER_TIMEOUT", "0"),
    ("QCIMAGE_GRACEFUL_TIMEOUT", "soon"),
    ("QCIMAGE_KEEPALIVE", "-5"),
    ("QCIMAGE_HEAD_TIMEOUT", "0"),
    ("QCIMAGE_MAX_REQUESTS", "1e3"),
    ("QCIMAGE_MAX_REQUESTS_JITTER", "-1"),
    ("QCIMAGE_BIND", "8000"),
    ("QCIMAGE_BIND", "127.0.0.1:99999"),
    ("QCIMAGE_BIND", "http://127.0.0.1:8000"),
    ("QCIMAGE_LOG_LEVEL", "verbose"),
    ("QCIMAGE_FORWARDED_ALLOW_IPS", "nginx.internal"),
    ("QCIMAGE_FORWARDED_ALLOW_IPS", "10.0.0.1/8"),
])
def test_invalid_values_are_refused_naming_the_variable(load_conf, name, value):
    with pytest.raises(SystemExit) as refused:
        load_conf(**{name: value})
    message = str(refused.value)
    assert name in message and repr(value) in message and "expected" in message


def test_gunicorn_accepts_every_value_and_knows_every_name(load_conf):
    """A misspelt setting would be silently ignored by gunicorn; catch it here."""
    conf = load_conf(QCIMAGE_CONTROL_SOCKET="/run/q.ctl")
    ours = {name for name, value in vars(conf).items()
            if name.islower() and not name.startswith("_")
            and (not callable(value) or isinstance(value, type))
            and not isinstance(value, types.ModuleType)}
    config = Config()
    hooks = {name for name, value in settings(conf).items()
             if callable(value) and not isinstance(value, type)}
    assert hooks == {"child_exit", "on_exit", "on_reload", "on_starting", "post_request"}
    assert ours == set(settings(conf)) - hooks
    for name, value in settings(conf).items():
        config.set(name, value)
    assert config.worker_class_str == "qcimage.gworker.HeadFirstWorker"
    assert config.address == [("127.0.0.1", 8000)]


def test_server_header_and_software_name_carry_no_version(load_conf):
    load_conf()
    assert gunicorn.http.wsgi.SERVER == "qcimage"
    assert gunicorn.http.wsgi.SERVER_SOFTWARE == "qcimage"
    assert gunicorn.arbiter.SERVER_SOFTWARE == "qcimage"


def test_gunicorn_text_logs_keep_a_crafted_path_on_one_line(load_conf, capsys):
    conf = load_conf(QCIMAGE_LOG_FORMAT="text")
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", conf.access_log_format)
    logger = conf.QcimageLogger(cfg)
    capsys.readouterr()
    # gunicorn percent-decodes the path into PATH_INFO, which its access log prints.
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": '/x\r\n127.0.0.1 "GET /admin" 200',
               "RAW_URI": "/x%0d%0a", "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1"}
    response = types.SimpleNamespace(status="404 Not Found", status_code=404, sent=0,
                                     headers=[])
    logger.access(response, types.SimpleNamespace(headers=[]), environ,
                  datetime.timedelta(seconds=0.01))
    logger.error("worker said %s", "a\nforged line")
    written = capsys.readouterr()
    lines = (written.out + written.err).splitlines()
    assert len(lines) == 2, lines
    # gunicorn escapes the quotes itself, and the line breaks no longer.
    assert '"GET /x\\r\\n127.0.0.1 \\"GET /admin\\" 200 HTTP/1.1" 404' in lines[0], lines
    assert lines[1].endswith("worker said a\\nforged line")


def test_loading_the_config_imports_neither_the_app_nor_imagemagick():
    # A fresh interpreter: this test process may already hold both from other tests.
    probe = (
        "import runpy, sys\n"
        f"runpy.run_path({str(GUNICORN_CONF)!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('wand', 'qcimage', 'wsgi'))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_gunicorn_stops_with_one_clear_line_on_a_bad_value():
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "--check-config"],
        cwd=ROOT, env=clean_env(QCIMAGE_WORKERS="lots"), capture_output=True, text=True,
        timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "gunicorn.conf.py: QCIMAGE_WORKERS='lots' is invalid: "
        "expected an integer from 1 to 256")


HELLO_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["SERVER_SOFTWARE"].encode()]
'''


@pytest.mark.e2e
def test_a_real_response_names_qcimage_without_any_version(tmp_path):
    (tmp_path / "hello.py").write_text(HELLO_APP)
    server = start_gunicorn({}, workers=1, tmp=tmp_path, wsgi_app="hello:app", cwd=tmp_path)
    try:
        response = requests.get(server.url + "/", timeout=10)
    finally:
        server.stop()
    assert response.headers["Server"] == "qcimage"
    assert response.text == "qcimage"
    assert gunicorn.__version__ not in str(response.headers)


def test_workers_share_one_fresh_metrics_folder(load_conf, tmp_path):
    pinned = tmp_path / "metrics"
    pinned.mkdir()
    (pinned / "counter_123.db").write_bytes(b"stale")
    conf = load_conf(QCIMAGE_METRICS_DIR=str(pinned))
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(pinned)
    assert list(pinned.iterdir()) == []
    conf.on_exit(None)
    assert pinned.is_dir()
    fresh = load_conf()
    assert os.path.isdir(fresh._metrics_dir)
    fresh.on_exit(None)
    assert not os.path.exists(fresh._metrics_dir)


def test_the_master_refuses_a_bad_configuration_in_one_block_before_forking(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF],
        cwd=ROOT, env=clean_env(HOME=tmp_path, QCIMAGE_BIND=f"127.0.0.1:{free_port()}",
                                QCIMAGE_WORKERS="2", QCIMAGE_TRUSTED_PROXIES="many"),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr
    block = result.stderr[result.stderr.index("qcimage cannot start"):].strip().splitlines()
    assert block == [
        "qcimage cannot start (QCIMAGE_ENV=production): 4 problem(s) in the configuration",
        "  - QCIMAGE_API_KEYS is not set: run `qcimage keys create NAME` and set the line "
        "it prints",
        "  - QCIMAGE_SIGNING_KEYS is not set: run `qcimage secrets signing-key` and set the "
        "line it prints",
        "  - QCIMAGE_PUBLIC_URL is not set: the base URL browsers reach this service at, "
        "e.g. https://qc.example.com",
        "  - QCIMAGE_TRUSTED_PROXIES must be an integer, got 'many'",
        "Set these QCIMAGE_* variables in the service's environment and start again; README "
        "'Configuration' lists them all. Trying it out locally? QCIMAGE_ENV=development "
        "invents demo keys.",
    ]


def test_the_masters_check_imports_no_imagemagick_and_skips_other_apps(tmp_path):
    probe = (
        "import runpy, sys, types\n"
        f"conf = runpy.run_path({str(GUNICORN_CONF)!r})\n"
        "conf['on_starting'](types.SimpleNamespace(app=types.SimpleNamespace(app_uri='x:app')))\n"
        "print('qcimage' in sys.modules)\n"
        "conf['on_starting'](types.SimpleNamespace(app=types.SimpleNamespace("
        "app_uri='wsgi:app'), cfg=types.SimpleNamespace(workers=2)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wand'))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60,
                            env=clean_env(QCIMAGE_ENV="development",
                                          QCIMAGE_CACHE_DIR=tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False", "[]"]
    # Development's secrets are made once, by the master, for the workers to read.
    assert (tmp_path / "cache" / "development-secrets.json").is_file()


def test_the_master_refuses_memory_limits_for_several_workers_in_production(tmp_path):
    production = {"QCIMAGE_API_KEYS": "shop:" + "0" * 64, "QCIMAGE_SIGNING_KEYS": "s" * 32,
                  "QCIMAGE_PUBLIC_URL": "https://qc.example.com",
                  "QCIMAGE_CACHE_DIR": tmp_path / "cache"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF],
        cwd=ROOT, env=clean_env(HOME=tmp_path, QCIMAGE_BIND=f"127.0.0.1:{free_port()}",
                                QCIMAGE_WORKERS="3", **production),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr
    assert ("  - QCIMAGE_RATELIMIT_STORAGE_URI=memory:// counts in each of the 3 workers "
            "separately, so every rate limit would let 3 times its value through: set "
            "QCIMAGE_RATELIMIT_STORAGE_URI=redis://127.0.0.1:6379/0 (one count for every "
            "worker and box), or QCIMAGE_WORKERS=1, or accept per-worker limits with "
            "QCIMAGE_RATELIMIT_PER_WORKER=true") in result.stderr.splitlines()


@pytest.mark.parametrize("env, workers", [
    ({"QCIMAGE_ENV": "production"}, 1),
    ({"QCIMAGE_ENV": "production", "QCIMAGE_RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0"},
     4),
    ({"QCIMAGE_ENV": "production", "QCIMAGE_RATELIMIT_PER_WORKER": "true"}, 4),
    ({"QCIMAGE_ENV": "development"}, 4),
], ids=["one worker", "redis", "said per worker", "development"])
def test_memory_limits_are_fine_where_they_multiply_nothing_or_are_accepted(
        monkeypatch, tmp_path, env, workers):
    from qcimage import startup_report

    for name in list(os.environ):
        if name.startswith("QCIMAGE_"):
            monkeypatch.delenv(name)
    for name, value in {"QCIMAGE_API_KEYS": "shop:" + "0" * 64,
                        "QCIMAGE_SIGNING_KEYS": "s" * 32,
                        "QCIMAGE_PUBLIC_URL": "https://qc.example.com",
                        "QCIMAGE_CACHE_DIR": str(tmp_path / "cache"), **env}.items():
        monkeypatch.setenv(name, value)
    assert startup_report(workers=workers) is None
    if env.get("QCIMAGE_ENV") == "production" and len(env) == 1:
        assert "QCIMAGE_RATELIMIT_STORAGE_URI=memory://" in startup_report(workers=2)


def test_the_master_names_a_missing_watermark_file_once(tmp_path):
    missing = tmp_path / "missing.ttf"
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF],
        cwd=ROOT, env=clean_env(HOME=tmp_path, QCIMAGE_BIND=f"127.0.0.1:{free_port()}",
                                QCIMAGE_ENV="development", QCIMAGE_CACHE_DIR=tmp_path / "cache",
                                QCIMAGE_WATERMARK_FONT=missing),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr
    assert result.stderr.count(f"QCIMAGE_WATERMARK_FONT: {missing} is not a readable file") == 1


def test_worker_timeout_has_the_apps_default_and_bounds(load_conf):
    # gunicorn reads QCIMAGE_WORKER_TIMEOUT before the app can be imported; the app checks
    # its upstream deadlines against the same variable: both must read it alike.
    default, lowest, highest = WORKER_TIMEOUT
    assert load_conf().timeout == default
    assert load_conf(QCIMAGE_WORKER_TIMEOUT=str(lowest)).timeout == lowest
    assert load_conf(QCIMAGE_WORKER_TIMEOUT=str(highest)).timeout == highest
    for bad in (lowest - 1, highest + 1):
        with pytest.raises(SystemExit, match="QCIMAGE_WORKER_TIMEOUT"):
            load_conf(QCIMAGE_WORKER_TIMEOUT=str(bad))


@pytest.mark.parametrize("env, expected", [
    ({}, "json"), ({"QCIMAGE_ENV": "development"}, "text"),
    ({"QCIMAGE_ENV": "development", "QCIMAGE_LOG_FORMAT": "json"}, "json"),
    ({"QCIMAGE_LOG_FORMAT": "text"}, "text")])
def test_gunicorn_logs_in_the_apps_format(load_conf, env, expected):
    conf = load_conf(**env)
    assert conf.QcimageLogger(Config()).json == (expected == "json")
    assert logging_settings(os.environ).format == expected
