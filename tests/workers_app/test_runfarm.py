"""`manage.py runfarm` (`make run`): taken ports stop it before anything starts, with a non-zero exit; the
admin password is shown once; the children log quietly; the stop goes worker first, scheduler last."""

import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from workers_app.management.commands import runfarm
from workers_app.management.commands.runfarm import Command, port_in_use

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something listens on, as another program's would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def nothing_starts(monkeypatch) -> None:
    """Fails the test if runfarm gets as far as the database or a process."""

    def refuse(*args, **kwargs):
        raise AssertionError("runfarm went on past a taken port")

    monkeypatch.setattr(runfarm, "call_command", refuse)
    monkeypatch.setattr(runfarm.subprocess, "Popen", refuse)


def test_port_in_use_sees_a_listening_socket(taken_port):
    assert port_in_use("127.0.0.1", taken_port)
    assert not port_in_use("127.0.0.1", free_port())


def test_a_taken_scheduler_port_stops_before_anything_starts(taken_port, nothing_starts):
    with pytest.raises(CommandError, match=rf"Port {taken_port} \(the scheduler\) is taken.*PORT="):
        call_command("runfarm", port=taken_port, simulator_port=free_port())


def test_ports_come_from_the_environment(taken_port, nothing_starts, monkeypatch):
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("COMFYUI_PORT", str(taken_port))
    with pytest.raises(CommandError, match=rf"Port {taken_port} \(the ComfyUI simulator\).*COMFYUI_PORT="):
        call_command("runfarm")


def test_the_simulator_port_is_not_checked_with_a_real_comfyui(taken_port, monkeypatch):
    checked = []

    def stop_here(*args, **kwargs):
        raise RuntimeError("past the port check")

    monkeypatch.setattr(runfarm, "port_in_use", lambda host, port: checked.append(port) or False)
    monkeypatch.setattr(runfarm, "call_command", stop_here)
    with pytest.raises(RuntimeError, match="past the port check"):
        call_command(
            "runfarm", port=8123, simulator_port=taken_port, worker_port=8124, comfyui="http://gpu-box:8188"
        )
    assert checked == [8123, 8124]


def test_a_taken_worker_port_stops_before_anything_starts(taken_port, nothing_starts):
    with pytest.raises(
        CommandError, match=rf"Port {taken_port} \(the worker's own HTTP surface\).*WORKER_PORT="
    ):
        call_command("runfarm", port=free_port(), simulator_port=free_port(), worker_port=taken_port)


def test_two_roles_cannot_share_a_port(nothing_starts):
    port = free_port()
    with pytest.raises(CommandError, match=f"cannot share port {port}"):
        call_command("runfarm", port=free_port(), simulator_port=port, worker_port=port)


@pytest.mark.slow  # starts a process (4 s); the tests above check the same refusal in-process
def test_a_taken_port_exits_non_zero(taken_port):
    """The command as `make run` starts it: exit code 1 and the port named, nothing else printed."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "t2i_project.settings_test", "PORT": str(taken_port)}
    done = subprocess.run(
        [sys.executable, str(MANAGE), "runfarm"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert f"Port {taken_port} (the scheduler) is taken" in done.stderr
    assert "The farm" not in done.stdout


@pytest.mark.django_db
def test_the_admin_password_is_shown_on_the_first_start_only():
    command = Command(stdout=io.StringIO())
    name, password = command._ensure_admin()
    assert name == "admin" and password
    assert command._ensure_admin() == ("admin", None)


@pytest.mark.parametrize(
    ("password", "shown", "hidden"),
    [
        ("s3cret-pw", ["'s3cret-pw' (shown this once)", "/api/docs/"], ["changepassword"]),
        (None, ["python manage.py changepassword admin", "/admin/"], ["s3cret-pw"]),
    ],
)
def test_banner_names_the_urls_and_the_admin(password, shown, hidden):
    out = io.StringIO()
    Command(stdout=out)._banner(
        "http://127.0.0.1:8000",
        worker_url="http://127.0.0.1:8001",
        admin="admin",
        password=password,
        comfyui_url="http://127.0.0.1:8188",
        simulated=True,
        registered=True,
        quiet=True,
        seconds=3.2,
    )
    text = out.getvalue()
    assert "http://127.0.0.1:8000/" in text and "Ctrl-C stops everything" in text
    assert "http://127.0.0.1:8001/healthz" in text
    assert all(s in text for s in shown) and not any(s in text for s in hidden)


def test_children_log_warnings_only_unless_log_level_is_set(settings, monkeypatch):
    settings.DEBUG = False
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    env = Command()._child_env("tok", quiet=True)
    assert (env["LOG_LEVEL"], env["T2I_WORKER_TOKEN"]) == ("WARNING", "tok")
    assert (env["SESSION_COOKIE_SECURE"], env["CSRF_COOKIE_SECURE"]) == ("0", "0")  # plain HTTP here
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    assert Command()._child_env("tok", quiet=False)["LOG_LEVEL"] == "DEBUG"


class FakeProcess:
    """A child that ends when signalled, recording the order of events in `log`."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.returncode, self.pid = name, log, None, 0

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        assert sig == signal.SIGTERM
        self.log.append(f"term {self.name}")

    def wait(self, timeout: float | None = None) -> int:
        self.log.append(f"gone {self.name}")
        self.returncode = 0
        return 0


def test_stop_goes_worker_first_and_scheduler_last():
    log: list[str] = []
    names = ("scheduler", "jobs", "simulator", "worker")
    Command()._stop({name: FakeProcess(name, log) for name in names})
    assert log == [
        "term worker", "gone worker",  # it says goodbye while the scheduler still answers
        "term jobs", "term simulator", "gone jobs", "gone simulator",
        "term scheduler", "gone scheduler",
    ]  # fmt: skip
