"""The end-to-end harness: the whole farm for real, nothing faked.

- The scheduler is gunicorn with the production configuration (t2i_project/gunicorn.conf.py: uvicorn workers
  serving the ASGI application, two processes) in a subprocess, on the test database (the SQLite file, or
  test_<name> on PostgreSQL) with short timings.
- ComfyUI is the simulator, in a thread of this process (`start_in_thread`), one per worker.
- Worker daemons are `WorkerLoop(WorkerLoopConfig(...))` in threads, or `manage.py runworker` OS processes for
  the signal tests. They talk to the scheduler and ComfyUI over HTTP and WebSocket only.

Tasks are submitted and cancelled through the REST API. The test process uses the database to create the
user and the workers' tokens and to check the results. Every thread, process and port is closed at the end
of each test, even when it fails; process logs are printed at teardown (pytest shows them on failure).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings

from generation.models import Task
from tests.conftest import child_database_url
from tests.e2e.helpers import wait_until
from tests.factories import api_token_for
from workers_app import services as worker_services
from workers_app.daemon.worker import WorkerLoop, WorkerLoopConfig
from workers_app.models import Worker
from workers_app.simulator import SimulatorConfig, SimulatorHandle, start_in_thread

BASE_DIR = Path(settings.BASE_DIR)
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # the simulator's default checkpoint

# The farm's timings in the scheduler process: fast heartbeats, short leases, reaping on every lease call.
FARM_ENV = {
    "T2I_HEARTBEAT_INTERVAL": "0.5",
    "T2I_WORKER_OFFLINE_AFTER": "2",
    "T2I_LEASE_SECONDS": "3",
    "T2I_REAP_EVERY": "0.2",
    "T2I_MAX_ATTEMPTS": "3",
    "T2I_LEASE_MAX_WAIT": "5",
    "T2I_SUBMIT_RATE": "100000/min",
    "T2I_LISTEN_NOTIFY": "1",  # PostgreSQL: submits wake long-polls in both server processes at once
}
WORKER_OFFLINE_AFTER = float(FARM_ENV["T2I_WORKER_OFFLINE_AFTER"])

# A daemon's own timings (in threads): short long-polls so a stop is noticed quickly, fast backoff.
DAEMON_DEFAULTS: dict[str, Any] = {
    "prefetch": 2,
    "grace": 5.0,
    "lease_wait": 1.0,
    "prefetch_lease_wait": 0.5,
    "backoff_initial": 0.1,
    "backoff_max": 1.0,
    "interrupt_wait": 3.0,
}
SIMULATOR_DEFAULTS: dict[str, Any] = {"job_time": 0.1}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder runs the farm's processes: `slow`, left out by `make test-fast`."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _stop_process(popen: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to the process group this harness started (never anything else)."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)  # leftovers of the group (gunicorn workers), if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


@dataclass
class SchedulerProcess:
    """The scheduler under gunicorn (production configuration) on a port this harness bound (passed down
    as a file descriptor)."""

    popen: subprocess.Popen
    url: str
    media_root: Path
    log_path: Path

    @classmethod
    def start(cls, folder: Path, *, workers: int = 2) -> SchedulerProcess:
        folder.mkdir(parents=True)
        media_root = folder / "media"
        log_path = folder / "gunicorn.log"
        env = {
            **os.environ,
            **FARM_ENV,
            "DJANGO_SETTINGS_MODULE": "t2i_project.settings",
            "DATABASE_URL": child_database_url(),
            "SECRET_KEY": "e2e-test-secret-key",
            "DEBUG": "0",
            "MEDIA_ROOT": str(media_root),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.set_inheritable(True)
        port = listener.getsockname()[1]
        with listener, log_path.open("wb") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--config=t2i_project/gunicorn.conf.py",
                    f"--workers={workers}",
                    f"--bind=fd://{listener.fileno()}",
                    "--graceful-timeout=3",
                    "--log-level=info",
                ],
                cwd=BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )
        server = cls(popen, f"http://127.0.0.1:{port}", media_root, log_path)
        try:
            server._wait_healthy(timeout=30)
        except BaseException:
            server.stop()
            print(f"--- scheduler log\n{_log_tail(log_path)}")
            raise
        return server

    def _wait_healthy(self, timeout: float) -> None:
        last = "no answer"

        def healthy() -> bool:
            nonlocal last
            if self.popen.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.popen.returncode}")
            try:
                response = requests.get(f"{self.url}/healthz", timeout=2)
            except requests.RequestException as exc:
                last = repr(exc)
                return False
            last = f"{response.status_code} {response.text}"  # 503: e.g. the database refused a connection
            return response.status_code == 200

        try:
            wait_until(healthy, timeout=timeout, interval=0.1, what="a 200 from the scheduler's /healthz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {last}") from None

    def stop(self) -> None:
        _stop_process(self.popen)


@dataclass
class DaemonThread:
    """A worker daemon running in a thread of the test process."""

    name: str
    row: Worker
    daemon: WorkerLoop
    thread: threading.Thread
    exit_codes: list[int] = field(default_factory=list)

    def refresh(self) -> Worker:
        self.row.refresh_from_db()
        return self.row

    def run(self) -> None:
        try:
            self.exit_codes.append(self.daemon.run())
        except BaseException:
            self.exit_codes.append(-1)
            raise

    def request_stop(self) -> None:
        self.daemon.request_stop()


@dataclass
class DaemonProcess:
    """`manage.py runworker` as an OS process (needs no database: only URLs and a token)."""

    name: str
    row: Worker
    popen: subprocess.Popen
    log_path: Path

    def refresh(self) -> Worker:
        self.row.refresh_from_db()
        return self.row

    def send(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop_process(self.popen)


class Farm:
    """One test's farm: the scheduler process plus the simulators and daemons the test starts."""

    def __init__(self, scheduler: SchedulerProcess, api_token: str, folder: Path):
        self.scheduler = scheduler
        self.folder = folder
        self._names = itertools.count(1)
        self._simulators: list[SimulatorHandle] = []
        self._threads: list[DaemonThread] = []
        self._processes: list[DaemonProcess] = []
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Token {api_token}"

    @property
    def media_root(self) -> Path:
        return self.scheduler.media_root

    # -- ComfyUI ----------------------------------------------------------------------------------------
    def simulator(self, **overrides: Any) -> SimulatorHandle:
        """A ComfyUI simulator in a thread; its files stay under the test's tmp_path."""
        n = next(self._names)
        config = {**SIMULATOR_DEFAULTS, "random_seed": n, **overrides}
        config.setdefault("output_dir", str(self.folder / f"comfyui-{n}"))
        handle = start_in_thread(SimulatorConfig(**config))
        self._simulators.append(handle)
        return handle

    def comfyui_outputs(self, task: Task) -> list[Path]:
        """Every PNG a simulator saved for `task`: `output/t2i/<task uuid>_a<attempt>_<counter>_.png`."""
        return sorted(
            path
            for handle in self._simulators
            for path in (Path(handle.simulator.dirs["output"]) / "t2i").glob(f"{task.public_id}_a*.png")
        )

    # -- worker daemons ---------------------------------------------------------------------------------
    def worker(self, simulator: SimulatorHandle, name: str | None = None, **overrides: Any) -> DaemonThread:
        """A worker daemon in a thread, driving `simulator`."""
        name = name or f"gpu-{next(self._names)}"
        row, token = worker_services.worker_create(name=name)
        config = WorkerLoopConfig(
            scheduler_url=self.scheduler.url,
            token=token,
            comfyui_url=simulator.url,
            name=name,
            **{**DAEMON_DEFAULTS, **overrides},
        )
        daemon = WorkerLoop(config)
        handle = DaemonThread(name, row, daemon, threading.Thread())
        handle.thread = threading.Thread(target=handle.run, name=f"daemon-{name}", daemon=True)
        self._threads.append(handle)
        handle.thread.start()
        return handle

    def worker_process(
        self,
        simulator: SimulatorHandle,
        name: str | None = None,
        *,
        grace: float = 30.0,
        prefetch: int = 2,
        options: tuple[str, ...] = (),
    ) -> DaemonProcess:
        """`python manage.py runworker` as an OS process (`options` added to its command line); the token goes
        through the environment."""
        name = name or f"gpu-{next(self._names)}"
        row, token = worker_services.worker_create(name=name)
        log_path = self.folder / f"runworker-{name}.log"
        no_database = ("DATABASE_URL", "SECRET_KEY", "T2I_TEST_SQLITE")
        env = {k: v for k, v in os.environ.items() if k not in no_database}
        env |= {"DJANGO_SETTINGS_MODULE": "t2i_project.settings", "T2I_WORKER_TOKEN": token}
        env["PYTHONUNBUFFERED"] = "1"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "runworker",
                    f"--scheduler={self.scheduler.url}",
                    f"--comfyui={simulator.url}",
                    f"--name={name}",
                    f"--grace={grace}",
                    f"--prefetch={prefetch}",
                    *options,
                ],
                cwd=BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        handle = DaemonProcess(name, row, popen, log_path)
        self._processes.append(handle)
        return handle

    def wait_registered(self, *workers: DaemonThread | DaemonProcess, timeout: float = 20.0) -> None:
        """Until every given daemon has registered (its ComfyUI's capabilities are in the database)."""
        pks = [w.row.pk for w in workers]

        def registered() -> bool:
            rows = Worker.objects.filter(pk__in=pks, status__in=[Worker.Status.IDLE, Worker.Status.BUSY])
            return rows.exclude(registered_at=None).count() == len(pks)

        wait_until(registered, timeout=timeout, what="the workers to register")

    # -- the REST API -----------------------------------------------------------------------------------
    def submit(self, **fields: Any) -> Task:
        body = {
            "prompt": "a lighthouse at dusk, e2e",
            "width": 64,
            "height": 64,
            "steps": 4,
            "template": "sd15-txt2img",
            "checkpoint": CHECKPOINT,
            **fields,
        }
        response = self.api.post(f"{self.scheduler.url}/api/v1/tasks/", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return Task.objects.get(public_id=response.json()["id"])

    def submit_many(self, count: int, **fields: Any) -> list[Task]:
        return [self.submit(prompt=f"e2e task {n}", seed=n, **fields) for n in range(count)]

    def cancel(self, task: Task) -> dict:
        response = self.api.post(f"{self.scheduler.url}/api/v1/tasks/{task.public_id}/cancel/", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    # -- teardown ---------------------------------------------------------------------------------------
    def stop_daemons(self) -> None:
        """Stop every daemon still running: all at once, then wait for each."""
        for process in self._processes:
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send(signal.SIGTERM)
        for handle in self._threads:
            handle.request_stop()
        errors = []
        for handle in self._threads:
            handle.thread.join(20)
            if handle.thread.is_alive():
                errors.append(f"worker daemon {handle.name} did not stop within 20s")
            elif handle.exit_codes != [0]:
                errors.append(f"worker daemon {handle.name} exited with {handle.exit_codes}")
            handle.daemon.scheduler.close()  # its idle keep-alive connection would hold up gunicorn's exit
        for process in self._processes:
            process.stop()
        if errors:
            raise AssertionError("; ".join(errors))

    def stop_simulators(self) -> None:
        with contextlib.ExitStack() as stack:  # every one of them, even if one fails to stop
            for handle in self._simulators:
                stack.callback(handle.stop)

    def print_logs(self) -> None:
        print(f"--- scheduler log (tail)\n{_log_tail(self.scheduler.log_path)}")
        for process in self._processes:
            exit_code = process.popen.returncode
            print(f"--- runworker {process.name} (exit {exit_code})\n{_log_tail(process.log_path)}")


@pytest.fixture
def farm(request, transactional_db, tmp_path, django_user_model) -> Iterator[Farm]:
    """A running scheduler; the test adds simulators and workers with `farm.simulator()`/`farm.worker()`.
    Options by indirect parametrization: `{"workers": n}`, the scheduler's server processes (default 2)."""
    options = getattr(request, "param", {})
    user = django_user_model.objects.create_user("e2e", password="e2e-password-123")
    token = api_token_for(user)
    scheduler = SchedulerProcess.start(tmp_path / "scheduler", workers=options.get("workers", 2))
    farm = Farm(scheduler, token, tmp_path)
    with contextlib.ExitStack() as stack:  # unwinds in reverse, each step even if an earlier one failed
        stack.callback(farm.print_logs)
        stack.callback(scheduler.stop)
        stack.callback(farm.api.close)
        stack.callback(farm.stop_simulators)
        stack.callback(farm.stop_daemons)
        yield farm
