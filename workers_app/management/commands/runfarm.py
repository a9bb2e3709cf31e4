"""`python manage.py runfarm`: the whole farm on one machine for a first look (what `make run` starts).

Checks that its ports are free, migrates, collects the static files (DEBUG off), makes sure there is an
admin account and a worker token, then starts four processes, each as soon as what it needs answers: the
scheduler (http://127.0.0.1:8000, `PORT`), the background job runner (django-q2), the ComfyUI SIMULATOR (a
stand-in for a real ComfyUI, `COMFYUI_PORT`, 8188) and one worker daemon connected to both, with its own
small HTTP surface on (http://127.0.0.1:8001, `WORKER_PORT`; images copied to `images/`). A short banner
says where everything is. Ctrl-C stops them in order within seconds: the worker first (it tells the
scheduler it goes offline), then the job runner and the simulator, the scheduler last. With `--comfyui URL`
the worker drives a real ComfyUI instead and no simulator is started.

Unless LOG_LEVEL is set, the processes log warnings and errors only: no line per request or per progress.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from t2i_project.env import env_int
from workers_app.models import Worker
from workers_app.services import worker_create, worker_rotate_token

WORKER_NAME = "local-worker"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds for the scheduler or the simulator to answer
REGISTER_TIMEOUT = 20.0  # seconds for the worker to register (a real ComfyUI may be down: then we go on)
WORKER_GRACE = 5.0  # seconds a task in flight gets to finish on Ctrl-C before it is handed back
STOP_TIMEOUT = WORKER_GRACE + 10.0  # seconds each stage of the stop gets before its processes are killed
# Who stops when: the worker while the scheduler can still hear its goodbye, the scheduler last.
STOP_ORDER = (("worker",), ("jobs", "simulator"), ("scheduler",))


class StopRequested(Exception):
    """Ctrl-C (or SIGTERM, SIGHUP) arrived while the farm was starting."""


def port_in_use(host: str, port: int) -> bool:
    """Whether host:port cannot be listened on (something else has it). SO_REUSEADDR, as the servers set
    it, so that a port left in TIME_WAIT by the last run does not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers at `url`; any status counts."""
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


class Command(BaseCommand):
    help = "Run scheduler, job runner, ComfyUI simulator and one worker together (Ctrl-C stops all)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=env_int("PORT", 8000, minimum=1, maximum=65535),
            help="the scheduler's port (env PORT, default 8000)",
        )
        parser.add_argument("--comfyui", default="", help="A real ComfyUI to drive instead of the simulator.")
        parser.add_argument(
            "--simulator-port",
            type=int,
            default=env_int("COMFYUI_PORT", 8188, minimum=1, maximum=65535),
            help="the ComfyUI simulator's port (env COMFYUI_PORT, default 8188)",
        )
        parser.add_argument(
            "--worker-port",
            type=int,
            default=env_int("WORKER_PORT", 8001, minimum=1, maximum=65535),
            help="the worker's own HTTP surface (/status, /images, /healthz, /metrics; env WORKER_PORT, "
            "default 8001)",
        )
        parser.add_argument("--job-time", type=float, default=2.0, help="Simulated seconds per image.")

    def handle(
        self,
        *args,
        port: int,
        comfyui: str,
        simulator_port: int,
        worker_port: int,
        job_time: float,
        **options,
    ) -> None:
        began = time.monotonic()
        self._check_ports(port, None if comfyui else simulator_port, worker_port)
        self.stdout.write("Preparing the farm (database, static files, accounts)…")
        self.stdout.flush()
        call_command("migrate", verbosity=0)
        if not settings.DEBUG:
            call_command("collectstatic", interactive=False, verbosity=0)
        admin, password = self._ensure_admin()
        self.quiet = "LOG_LEVEL" not in os.environ
        self.env = self._child_env(self._worker_token(), quiet=self.quiet)
        self.stop_requested = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._request_stop)

        scheduler_url = f"http://{HOST}:{port}"
        comfyui_url = comfyui or f"http://{HOST}:{simulator_port}"
        children: dict[str, subprocess.Popen] = {}
        failure = ""
        simulated = "" if comfyui else "the ComfyUI simulator, "
        self.stdout.write(f"Starting the scheduler, the job runner, {simulated}and a worker…")
        self.stdout.flush()
        try:
            self._start(children, "scheduler", "runserver", f"{HOST}:{port}", "--noreload")
            self._start(children, "jobs", "qcluster")
            if not comfyui:
                options = ["--port", str(simulator_port), "--job-time", str(job_time)]
                self._start(children, "simulator", "comfyui_simulator", *options)
            self._wait(children, "the scheduler", lambda: http_answers(f"{scheduler_url}/healthz"))
            if not comfyui:
                self._wait(children, "the simulator", lambda: http_answers(f"{comfyui_url}/system_stats"))
            registered = self._start_worker(children, scheduler_url, comfyui_url, worker_port)
            self._banner(
                scheduler_url,
                worker_url=f"http://{HOST}:{worker_port}",
                admin=admin,
                password=password,
                comfyui_url=comfyui_url,
                simulated=not comfyui,
                registered=registered,
                quiet=self.quiet,
                seconds=time.monotonic() - began,
            )
            failure = self._supervise(children)
        except StopRequested:
            pass
        except CommandError as exc:
            failure = str(exc)
        finally:
            self._stop(children)
        if failure:
            raise CommandError(f"{failure} The farm was stopped.")

    # -- before anything starts -----------------------------------------------------------------------------
    def _check_ports(self, port: int, simulator_port: int | None, worker_port: int | None = None) -> None:
        """CommandError (exit code 1) naming the first taken port and how to choose another."""
        wanted = [(port, "the scheduler", "PORT", "--port")]
        if simulator_port is not None:
            wanted.append((simulator_port, "the ComfyUI simulator", "COMFYUI_PORT", "--simulator-port"))
        if worker_port is not None:
            wanted.append((worker_port, "the worker's own HTTP surface", "WORKER_PORT", "--worker-port"))
        for n, (number, what, _, _) in enumerate(wanted):
            for other, other_what, _, _ in wanted[n + 1 :]:
                if number == other:
                    raise CommandError(
                        f"{what[0].upper()}{what[1:]} and {other_what} cannot share port {number}."
                    )
        for number, what, variable, flag in wanted:
            if port_in_use(HOST, number):
                raise CommandError(
                    f"Port {number} ({what}) is taken on {HOST}: stop what uses it, or choose another "
                    f"with {variable}=… make run (or {flag} …)."
                )

    def _ensure_admin(self) -> tuple[str, str | None]:
        """The superuser to name in the banner, and the password when this start created the account."""
        User = get_user_model()
        existing = User.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            return existing.get_username(), None
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
        return "admin", password

    def _worker_token(self) -> str:
        worker = Worker.objects.filter(name=WORKER_NAME).first()
        if worker is None:
            return worker_create(name=WORKER_NAME)[1]
        return worker_rotate_token(worker=worker)  # only the hash is stored, so a local run gets a new one

    def _child_env(self, token: str, *, quiet: bool) -> dict[str, str]:
        env = {**os.environ, "T2I_WORKER_TOKEN": token}
        if quiet:
            env["LOG_LEVEL"] = "WARNING"
        if not settings.DEBUG:
            # Served over plain HTTP on this machine: a cookie marked Secure would never come back, and
            # signing in would fail. A real deployment keeps them secure (behind TLS).
            env.setdefault("SESSION_COOKIE_SECURE", "0")
            env.setdefault("CSRF_COOKIE_SECURE", "0")
        return env

    # -- while it runs --------------------------------------------------------------------------------------
    def _start(self, children: dict[str, subprocess.Popen], name: str, *command: str) -> None:
        children[name] = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), *command],
            env=self.env,
            stdout=subprocess.DEVNULL if self.quiet else None,  # their start-up text; logs go to stderr
            process_group=0,  # Ctrl-C reaches this command only, which stops them in order
        )

    def _start_worker(
        self, children: dict[str, subprocess.Popen], scheduler_url: str, comfyui_url: str, worker_port: int
    ) -> bool:
        """Start the worker (its own HTTP surface on `worker_port`, images in BASE_DIR/images) and wait until
        it has registered: False when it has not in REGISTER_TIMEOUT (a real ComfyUI that is down: the
        worker keeps trying, and the farm runs meanwhile)."""
        since = timezone.now()
        options = ["--scheduler", scheduler_url, "--comfyui", comfyui_url, "--name", WORKER_NAME]
        options += ["--port", str(worker_port), "--images-dir", str(settings.BASE_DIR / "images")]
        self._start(children, "worker", "runworker", *options, "--grace", str(WORKER_GRACE))
        return self._wait(
            children,
            "the worker",
            lambda: Worker.objects.filter(name=WORKER_NAME, registered_at__gte=since).exists(),
            timeout=REGISTER_TIMEOUT,
            required=False,
        )

    def _request_stop(self, *_args) -> None:
        self.stop_requested = True  # only a flag: the loops notice it within a slice

    def _exited(self, children: dict[str, subprocess.Popen]) -> str:
        """A message naming the first process that has exited, or ""."""
        for name, process in children.items():
            if process.poll() is not None:
                return f"The {name} exited with code {process.returncode}."
        return ""

    def _wait(
        self,
        children: dict[str, subprocess.Popen],
        what: str,
        ready: Callable[[], bool],
        *,
        timeout: float = START_TIMEOUT,
        required: bool = True,
    ) -> bool:
        """Poll `ready` until it holds. A process that exits meanwhile, or (when `required`) the timeout, is a
        CommandError; an optional wait that times out is False."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.stop_requested:
                raise StopRequested
            if exited := self._exited(children):
                raise CommandError(exited)
            if time.monotonic() > deadline:
                if required:
                    raise CommandError(f"{what.capitalize()} did not answer within {timeout:.0f} s.")
                return False
            time.sleep(0.1)
        return True

    def _supervise(self, children: dict[str, subprocess.Popen]) -> str:
        """Wait for Ctrl-C (""), or for a process to exit (its message)."""
        while not self.stop_requested:
            if exited := self._exited(children):
                return exited
            time.sleep(0.2)
        return ""

    def _banner(
        self,
        url: str,
        *,
        worker_url: str = "",
        admin: str,
        password: str | None,
        comfyui_url: str,
        simulated: bool,
        registered: bool,
        quiet: bool,
        seconds: float,
    ) -> None:
        login = f"user {admin!r}, password {password!r} (shown this once)" if password else f"user {admin!r}"
        comfyui = "the simulator: no GPU, no models" if simulated else "yours"
        worker = (
            f"{WORKER_NAME!r}" if registered else f"{WORKER_NAME!r} has not registered yet: is ComfyUI up?"
        )
        lines = [
            "",
            f"The farm is up in {seconds:.0f} s:",
            f"  site      {url}/",
            f"  admin     {url}/admin/   {login}",
            f"  API docs  {url}/api/docs/",
            f"  ComfyUI   {comfyui_url}/ ({comfyui}), worker {worker}",
        ]
        if worker_url:
            lines.append(f"  worker    {worker_url}/healthz   its own status, images and metrics")
        if not password:
            lines.append(f"Forgot the admin password? python manage.py changepassword {admin}")
        if quiet:
            lines.append("Logs show warnings and errors only (LOG_LEVEL=INFO make run shows every request).")
        if not settings.DEBUG:
            lines.append("DEBUG is off, as on a LAN; DEBUG=1 make run shows Django's debug pages.")
        lines.append("Ctrl-C stops everything.\n")
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
        self.stdout.flush()

    # -- stopping -------------------------------------------------------------------------------------------
    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        """SIGTERM to each stage of STOP_ORDER in turn, waiting for it to end; what outlives STOP_TIMEOUT is
        killed with its own children (each process leads a process group)."""
        if not children:
            return
        self.stdout.write("\nStopping…")
        self.stdout.flush()
        began = time.monotonic()
        for stage in STOP_ORDER:
            running = [children[n] for n in stage if n in children and children[n].poll() is None]
            for process in running:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in running:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.stdout.write(f"Stopped in {time.monotonic() - began:.1f} s.")
