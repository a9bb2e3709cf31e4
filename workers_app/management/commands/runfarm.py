"""`python manage.py runfarm`: the whole farm on one machine for a first look (what `make run` starts).

Migrates, makes sure there is an admin account and a worker token, then starts four processes and stops
them all on Ctrl-C: the scheduler (http://127.0.0.1:8000), the background job runner (django-q2), the
ComfyUI SIMULATOR (a stand-in for a real ComfyUI on :8188) and one worker daemon connected to it. With
`--comfyui URL` the worker drives a real ComfyUI instead and no simulator is started.
"""

import os
import secrets
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from workers_app.models import Worker
from workers_app.services import worker_create, worker_rotate_token

WORKER_NAME = "local-worker"


class Command(BaseCommand):
    help = "Run scheduler, job runner, ComfyUI simulator and one worker together (Ctrl-C stops all)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--comfyui", default="", help="A real ComfyUI to drive instead of the simulator.")
        parser.add_argument("--simulator-port", type=int, default=8188)
        parser.add_argument("--job-time", type=float, default=2.0, help="Simulated seconds per image.")

    def handle(self, *args, port: int, comfyui: str, simulator_port: int, job_time: float, **options) -> None:
        call_command("migrate", verbosity=0)
        self._ensure_admin()
        token = self._worker_token()
        scheduler_url = f"http://127.0.0.1:{port}"
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        env = {**os.environ, "T2I_WORKER_TOKEN": token}
        commands = [("scheduler", [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"])]
        commands.append(("jobs", [*manage, "qcluster"]))
        if not comfyui:
            comfyui = f"http://127.0.0.1:{simulator_port}"
            sim = [*manage, "comfyui_simulator", "--port", str(simulator_port), "--job-time", str(job_time)]
            commands.append(("comfyui-simulator", sim))
        worker = [*manage, "runworker", "--scheduler", scheduler_url, "--comfyui", comfyui]
        commands.append(("worker", [*worker, "--name", WORKER_NAME]))

        processes = []
        for name, command in commands:
            self.stdout.write(f"starting {name}: {' '.join(command[1:])}")
            processes.append((name, subprocess.Popen(command, env=env)))
            if name == "scheduler":
                time.sleep(1.5)  # let the scheduler bind before the worker registers (it retries anyway)
        banner = f"\nThe farm runs at {scheduler_url}/  (admin: {scheduler_url}/admin/)"
        self.stdout.write(self.style.SUCCESS(banner))
        self.stdout.write("Press Ctrl-C to stop everything.\n")
        self._wait(processes)

    def _ensure_admin(self) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
        notice = f"Created the admin account: user 'admin', password '{password}'."
        self.stdout.write(self.style.WARNING(notice))
        self.stdout.write("Change it in the admin, or make your own with: python manage.py createsuperuser")

    def _worker_token(self) -> str:
        worker = Worker.objects.filter(name=WORKER_NAME).first()
        if worker is None:
            return worker_create(name=WORKER_NAME)[1]
        return worker_rotate_token(worker=worker)  # only the hash is stored, so a local run gets a new one

    def _wait(self, processes: list[tuple[str, subprocess.Popen]]) -> None:
        stopping = False

        def stop(*_args) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while not stopping:
            for name, process in processes:
                if process.poll() is not None:
                    self.stderr.write(f"{name} exited with code {process.returncode}; stopping the rest.")
                    stopping = True
            time.sleep(0.3)
        self.stdout.write("\nstopping…")
        for _name, process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for _name, process in reversed(processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
