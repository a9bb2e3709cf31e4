"""`manage.py runworker`: options and environment, logging, exit codes (no database needed)."""

from __future__ import annotations

import io
import logging
import re
import signal

import pytest
from django.core.management.base import CommandError

from workers_app.management.commands import runworker
from workers_app.management.commands.runworker import Command, build_config, configure_logging

ENV = {
    "T2I_SCHEDULER_URL": "http://sched.env:8000",
    "T2I_WORKER_TOKEN": "env-token",
    "T2I_COMFYUI_URL": "http://comfy.env:8188",
    "T2I_WORKER_NAME": "env-name",
    "T2I_PREFETCH": "3",
}


def parse(*argv: str) -> dict:
    return vars(Command().create_parser("manage.py", "runworker").parse_args(list(argv)))


def test_everything_can_come_from_the_environment():
    config = build_config(parse(), ENV)
    assert (config.scheduler_url, config.token, config.comfyui_url, config.name, config.prefetch) == (
        "http://sched.env:8000", "env-token", "http://comfy.env:8188", "env-name", 3,
    )  # fmt: skip
    assert (config.grace, config.once, config.prefetch_lead) == (30.0, False, 30.0)
    assert build_config(parse(), {**ENV, "T2I_PREFETCH_LEAD": "0"}).prefetch_lead == 0.0
    assert build_config(parse("--prefetch-lead", "5"), ENV).prefetch_lead == 5.0


def test_options_win_over_the_environment():
    options = parse(
        "--scheduler", "http://s:8000", "--token", "t", "--comfyui", "http://c:8188", "--name", "n",
        "--prefetch", "1", "--grace", "5", "--once", "--verbose",
    )  # fmt: skip
    config = build_config(options, ENV)
    assert (config.scheduler_url, config.token, config.comfyui_url, config.name) == (
        "http://s:8000",
        "t",
        "http://c:8188",
        "n",
    )
    assert (config.prefetch, config.grace, config.once) == (1, 5.0, True)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"T2I_WORKER_TOKEN": "t"}, "--scheduler"),
        ({"T2I_SCHEDULER_URL": "http://s"}, "--token"),
        ({**ENV, "T2I_PREFETCH": "two"}, "must be an integer"),
        ({**ENV, "T2I_PREFETCH": "0"}, "at least 1"),
        ({**ENV, "T2I_PREFETCH_LEAD": "soon"}, "--prefetch-lead"),
        ({**ENV, "T2I_PREFETCH_LEAD": "-1"}, "0 to 3600 seconds"),
    ],
)
def test_missing_or_bad_values_fail_loudly(env, message):
    with pytest.raises(CommandError, match=message):
        build_config(parse(), env)


@pytest.mark.parametrize(
    "value,urls",
    [
        ("http://10.0.0.5:8000,http://10.0.0.6:8000", "http://10.0.0.5:8000,http://10.0.0.6:8000"),
        (" http://a:8000/ , https://b/sched/ ,", "http://a:8000,https://b/sched"),
        ("http://a:8000,,http://a:8000/", "http://a:8000"),
    ],
)
def test_several_scheduler_urls_are_trimmed_and_kept_in_order(value, urls):
    config = build_config(parse("--scheduler", value), {"T2I_WORKER_TOKEN": "t"})
    assert config.scheduler_url == urls
    config = build_config(parse(), {"T2I_SCHEDULER_URL": value, "T2I_WORKER_TOKEN": "t"})
    assert config.scheduler_url == urls


@pytest.mark.parametrize(
    "value,message",
    [
        ("http://a:8000,10.0.0.6:8000", "'10.0.0.6:8000' must start with http:// or https://"),
        ("ftp://a", "'ftp://a' must start with http"),
        ("http://a,http://", "'http://' names no host"),
        ("http://a:80x0", "'http://a:80x0' has a bad port"),
        ("http://a/?x=1", "without a query or fragment"),
        ("http://user:pw@a:8000", "URL for a carries credentials"),
        (" , ,", "no scheduler URL given"),
    ],
)
def test_a_bad_scheduler_url_fails_loudly_naming_it(value, message):
    with pytest.raises(CommandError, match=re.escape(message)) as caught:
        build_config(parse("--scheduler", value), {"T2I_WORKER_TOKEN": "t"})
    assert str(caught.value).startswith("--scheduler (or T2I_SCHEDULER_URL): ")
    assert "pw" not in str(caught.value)


def test_defaults():
    config = build_config(parse(), {"T2I_SCHEDULER_URL": "http://s", "T2I_WORKER_TOKEN": "t"})
    assert config.comfyui_url == "http://127.0.0.1:8188" and config.prefetch == 2 and config.name


@pytest.fixture
def daemon_logger():
    log = logging.getLogger("workers_app.daemon")
    saved = (list(log.handlers), log.level, log.propagate)
    yield log
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def test_verbose_adds_protocol_detail(daemon_logger):
    stream = io.StringIO()
    configure_logging(verbose=False, stream=stream)
    logging.getLogger("workers_app.daemon.comfyui").debug("ws detail")
    logging.getLogger("workers_app.daemon.runner").info("task x leased")
    configure_logging(verbose=True, stream=stream)
    logging.getLogger("workers_app.daemon.comfyui").debug("ws detail 2")
    assert "task x leased" in stream.getvalue()
    assert "ws detail\n" not in stream.getvalue() and "ws detail 2" in stream.getvalue()


def test_log_level_keeps_routine_lines_out(daemon_logger, monkeypatch):
    """`make run` sets LOG_LEVEL=WARNING: no line per task or progress step, its problems still shown."""
    monkeypatch.setenv("LOG_LEVEL", "warning")
    stream = io.StringIO()
    configure_logging(verbose=False, stream=stream)
    logging.getLogger("workers_app.daemon.runner").info("task x progress 50%")
    logging.getLogger("workers_app.daemon.worker").warning("ComfyUI not available")
    assert "progress" not in stream.getvalue() and "ComfyUI not available" in stream.getvalue()


class FakeWorker:
    instances: list[FakeWorker] = []
    code = 0

    def __init__(self, config):
        self.config = config
        self.stop_requested = False
        self.fatal_error = "the scheduler refused the worker token"
        FakeWorker.instances.append(self)

    def run(self) -> int:
        self.handler_installed = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # what a Ctrl-C would do
        return FakeWorker.code


@pytest.fixture
def fake_worker(monkeypatch):
    FakeWorker.instances = []
    monkeypatch.setattr(runworker, "WorkerLoop", FakeWorker)
    monkeypatch.setattr(runworker, "configure_logging", lambda verbose: None)
    return FakeWorker


def test_handle_runs_the_worker_with_signal_handlers_that_only_set_the_flag(fake_worker):
    fake_worker.code = 0
    Command().handle(**parse("--scheduler", "http://s", "--token", "t"))
    (worker,) = fake_worker.instances
    assert worker.handler_installed and worker.stop_requested is True
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_handle_turns_a_fatal_error_into_exit_code_1(fake_worker):
    fake_worker.code = 1
    with pytest.raises(CommandError, match="refused the worker token") as caught:
        Command().handle(**parse("--scheduler", "http://s", "--token", "t"))
    assert caught.value.returncode == 1


def test_the_surface_is_off_unless_a_port_is_given():
    assert build_config(parse(), ENV).surface is None


def test_surface_flags_and_their_defaults():
    surface = build_config(parse("--port", "8001"), ENV).surface
    assert (surface.port, surface.listen, surface.images_dir) == (8001, "127.0.0.1", "images")
    assert (surface.images_max_age, surface.images_max_bytes) == (6 * 3600.0, 1 << 30)
    options = parse(
        "--port", "8002", "--listen", "0.0.0.0", "--images-dir", "/tmp/x", "--images-max-age", "0.5",
        "--images-max-mb", "10",
    )  # fmt: skip
    surface = build_config(options, ENV).surface
    assert (surface.port, surface.listen, surface.images_dir) == (8002, "0.0.0.0", "/tmp/x")
    assert (surface.images_max_age, surface.images_max_bytes) == (1800.0, 10 << 20)


def test_surface_settings_from_the_environment():
    env = {
        **ENV,
        "T2I_WORKER_PORT": "8003",
        "T2I_WORKER_LISTEN": "192.168.1.5",
        "T2I_WORKER_IMAGES_DIR": "/srv/images",
        "T2I_WORKER_IMAGES_MAX_AGE": "2",
        "T2I_WORKER_IMAGES_MAX_MB": "64",
    }
    surface = build_config(parse(), env).surface
    assert (surface.port, surface.listen, surface.images_dir) == (8003, "192.168.1.5", "/srv/images")
    assert (surface.images_max_age, surface.images_max_bytes) == (7200.0, 64 << 20)


@pytest.mark.parametrize(
    "argv,message",
    [
        (("--port", "http"), "--port .* must be a number"),
        (("--port", "70000"), "--port .* between 0 and 65535"),
        (("--port", "8001", "--images-max-age", "0"), "--images-max-age .* between"),
        (("--port", "8001", "--images-max-mb", "lots"), "--images-max-mb .* must be a number"),
    ],
)
def test_bad_surface_values_fail_loudly(argv, message):
    with pytest.raises(CommandError, match=message):
        build_config(parse(*argv), ENV)
