"""Chaos run: a whole farm under faults, then a check that nothing was lost, doubled or left stuck.

    python -m bench.chaos [--db postgres|sqlite] [--tasks 1000] [--workers 8] [--timeout 1200]

Starts the scheduler (gunicorn, as in production), `--workers` ComfyUI simulators (`manage.py
comfyui_simulator` processes with WebSocket drops, late history, a low rate of execution errors and a slow
/view) and as many `manage.py runworker` processes, submits `--tasks` tasks through the REST API, and while
they run: SIGKILLs a random worker every few seconds and starts it again, SIGTERMs another now and then and
restarts simulators (these by the clock), and, by phase, restarts the scheduler, makes the database
unreachable for a few seconds (PostgreSQL: its backends are terminated in a loop; SQLite: the file is
locked) and SIGKILLs a simulator process.

A phase is a number of finished tasks. The tasks after a phase's fault are not submitted before the fault
has fired, so every scheduled fault fires while the run still has work, however fast the machine is, and
the run ends only once every scheduled fault has fired, the workers it stopped are back and no task is
unfinished.

At the end it checks and prints: every task completed (exactly one completed attempt, its images in the
database and on disk with matching SHA-256) or failed with a reason after its attempts ran out or for a
non-retryable error; no task completed twice; no image without a completed task, no stored file without
its row; no worker busy once the queue is empty. Then the counts, and how long the farm took to recover
after each fault. Exit status 1 when a check fails. Everything listens on 127.0.0.1 only.

tests/security/test_chaos_small.py runs the same `ChaosRun` with 40 tasks and 3 workers on SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # the simulator's default checkpoint
OOM_MARKERS = ("outofmemory", "out of memory", "oom", "allocation on device", "cuda error")

# The scheduler's timings: fast heartbeats and short leases, so a lost worker costs seconds, not minutes.
FARM_ENV = {
    "T2I_HEARTBEAT_INTERVAL": "0.5",
    "T2I_WORKER_OFFLINE_AFTER": "2",
    "T2I_LEASE_SECONDS": "3",
    "T2I_REAP_EVERY": "0.2",
    "T2I_MAX_ATTEMPTS": "3",
    "T2I_LEASE_MAX_WAIT": "2",
    "T2I_SUBMIT_RATE": "1000000/min",
    "T2I_LOGIN_LOCKOUT": "0",
}


@dataclass
class Params:
    tasks: int = 1000
    workers: int = 8
    timeout: float = 1200.0
    kill_every: float = 4.0  # SIGKILL a random worker (and start it again)
    term_every: float = 9.0  # SIGTERM a random worker (and start it again once it has exited)
    simulator_restart_every: float = 12.0  # POST /simulator/restart to a random simulator
    db_outage: float = 3.0
    # The scheduled faults, each at a phase: the fraction of the tasks finished. None: not scheduled.
    scheduler_restart_at: float | None = 0.25
    db_outage_at: float | None = 0.5
    simulator_kill_at: float | None = 0.65  # SIGKILL one simulator process and start it again
    # A worker SIGKILL at a phase, besides the ones every `kill_every` seconds.
    worker_kill_at: float | None = None
    # Tasks submitted beyond a phase before its fault fires (the rest wait for it). Default: twice what the
    # workers can hold (each runs one task and prefetches one more).
    ahead: int | None = None
    job_time: float = 0.05
    seed: int = 7


@dataclass
class Phase:
    """A scheduled fault: it fires once `trigger` tasks have finished; until then only `gate` tasks are
    submitted."""

    kind: str
    trigger: int
    gate: int


@dataclass
class Fault:
    kind: str
    target: str
    started: float
    ended: float = 0.0
    worker_pk: int | None = None
    held: list[int] = field(default_factory=list)  # task pks the target worker held when it was hit
    phase: int | None = None  # the index of its Phase, for a scheduled fault
    finished: int | None = None  # tasks finished when a scheduled fault fired


def plan(p: Params) -> list[Phase]:
    """The scheduled faults in the order they fire. Each one's trigger leaves at least one task (and up to
    `ahead` more) to submit after it, so work always follows a fault."""
    ahead = p.ahead if p.ahead is not None else 4 * p.workers
    scheduled = [
        (at, kind)
        for at, kind in (
            (p.worker_kill_at, "worker SIGKILL"),
            (p.scheduler_restart_at, "scheduler restart"),
            (p.db_outage_at, "database outage"),
            (p.simulator_kill_at, "simulator SIGKILL"),
        )
        if at is not None
    ]
    last = p.tasks - ahead - 1  # the latest trigger that still leaves a task to submit after its fault
    if scheduled and last < 1:
        raise ValueError(f"{p.tasks} tasks are too few for scheduled faults with {ahead} tasks ahead")
    phases = []
    for at, kind in sorted(scheduled, key=lambda s: s[0]):
        trigger = min(max(1, round(at * p.tasks)), last)
        phases.append(Phase(kind, trigger, trigger + ahead))
    return phases


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.popen: subprocess.Popen | None = None

    def start(self, pass_fds: tuple[int, ...] = ()) -> Process:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


class ChaosRun:
    """One chaos run against `db_url`. Django must already be set up in this process on the same database
    (the checks read it); the scheduler, simulators and workers are child processes."""

    def __init__(self, db_url: str, folder: Path, params: Params) -> None:
        self.db_url, self.folder, self.p = db_url, folder, params
        self.random = random.Random(params.seed)
        self.media_root = folder / "media"
        self.faults: list[Fault] = []
        self.workers: dict[str, Process] = {}
        self.tokens: dict[str, str] = {}
        self.simulators: list[tuple[Process, str]] = []
        self.pairing: dict[str, int] = {}  # worker name -> simulator index
        self.task_pks: list[int] = []
        self.pending_restarts: list[str] = []
        self.phases = plan(params)
        # The submit gate: tasks numbered below `allowed` may be submitted; `closed` ends a run's waiting.
        self.gate = threading.Condition()
        self.allowed = 0
        self.closed = False
        folder.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.set_inheritable(True)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.scheduler: Process | None = None

    # -- processes -----------------------------------------------------------------------------------
    def _server_env(self) -> dict:
        return {
            **os.environ,
            **FARM_ENV,
            "DJANGO_SETTINGS_MODULE": "t2i_project.settings",
            "DATABASE_URL": self.db_url,
            "SECRET_KEY": "chaos-secret-key-not-for-production-0123456789",
            "DEBUG": "0",
            "MEDIA_ROOT": str(self.media_root),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }

    def _standalone_env(self, **extra: str) -> dict:
        drop = ("DATABASE_URL", "SECRET_KEY", "T2I_TEST_SQLITE")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        return env | {"DJANGO_SETTINGS_MODULE": "t2i_project.settings", "PYTHONUNBUFFERED": "1"} | extra

    def start_scheduler(self) -> None:
        cmd = [
            sys.executable, "-m", "gunicorn", "t2i_project.wsgi", "--worker-class=gthread", "--workers=2",
            "--threads=24", f"--bind=fd://{self.listener.fileno()}", "--graceful-timeout=5",
            "--timeout=60", "--log-level=warning",
        ]  # fmt: skip
        self.scheduler = Process("scheduler", cmd, self._server_env(), self.folder / "scheduler.log")
        self.scheduler.start(pass_fds=(self.listener.fileno(),))
        self._wait(self._healthy, 60, "the scheduler to answer /healthz")

    def _healthy(self) -> bool:
        if not self.scheduler.alive():
            raise RuntimeError(f"the scheduler exited; see {self.scheduler.log_path}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start_simulator(self, index: int, port: int | None = None) -> None:
        port = port or free_port()
        faults = [
            "--ws-drop-rate=0.03",
            "--history-delay=0.1",
            "--error-rate=0.02",
            # Even simulators raise OOM (retryable), odd ones a plain exception (not retryable).
            f"--error-kind={'oom' if index % 2 == 0 else 'exception'}",
            f"--view-delay={0.3 if index == 0 else 0.0}",  # one slow /view
            "--view-fail-rate=0.02",
        ]
        cmd = [
            sys.executable, "manage.py", "comfyui_simulator", f"--port={port}",
            f"--job-time={self.p.job_time}", f"--seed={self.p.seed + index}",
            f"--output-dir={self.folder / f'comfyui-{index}'}", *faults,
        ]  # fmt: skip
        process = Process(
            f"comfyui-{index}", cmd, self._standalone_env(), self.folder / f"comfyui-{index}.log"
        )
        url = f"http://127.0.0.1:{port}"
        if index < len(self.simulators):
            self.simulators[index] = (process, url)
        else:
            self.simulators.append((process, url))
        process.start()
        self._wait(lambda: self._answers(f"{url}/system_stats"), 30, f"simulator {index}")

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, name: str) -> None:
        _, comfyui = self.simulators[self.pairing[name]]
        cmd = [
            sys.executable, "manage.py", "runworker", f"--scheduler={self.url}", f"--comfyui={comfyui}",
            f"--name={name}", "--grace=5", "--prefetch=2",
        ]  # fmt: skip
        env = self._standalone_env(T2I_WORKER_TOKEN=self.tokens[name])
        self.workers[name] = Process(name, cmd, env, self.folder / f"{name}.log").start()

    # -- setup ---------------------------------------------------------------------------------------
    def prepare(self) -> str:
        """The user (and its API token), the default templates and the workers' tokens, in the database."""
        from django.contrib.auth import get_user_model

        from generation import workflows
        from generation.models import WorkflowTemplate
        from generation.services import api_token_create
        from workers_app import services as worker_services

        for name, workflow, bindings in (
            ("sd15-txt2img", workflows.DEFAULT_SD15_WORKFLOW, workflows.DEFAULT_SD15_BINDINGS),
            ("noise-test", workflows.NOISE_TEST_WORKFLOW, workflows.NOISE_TEST_BINDINGS),
        ):
            WorkflowTemplate.objects.get_or_create(
                name=name, defaults={"workflow": workflow, "bindings": bindings}
            )
        user, _ = get_user_model().objects.get_or_create(username="chaos")
        for n in range(self.p.workers):
            name = f"chaos-gpu-{n + 1}"
            _, self.tokens[name] = worker_services.worker_create(name=name)
            self.pairing[name] = n
        return api_token_create(user=user, name="chaos")[1]

    def open_gate(self, allowed: int) -> None:
        with self.gate:
            self.allowed = allowed
            self.gate.notify_all()

    def close_gate(self) -> None:
        with self.gate:
            self.closed = True
            self.gate.notify_all()

    def submit(self, api_token: str, threads: int = 4) -> None:
        """Every task through the REST API, from a few threads (as several users' scripts would), each one
        once the gate lets it through."""
        from concurrent.futures import ThreadPoolExecutor

        from generation.models import Task

        local = threading.local()

        def one(n: int) -> str:
            with self.gate:
                self.gate.wait_for(lambda: n < self.allowed or self.closed)
                if self.closed:
                    raise RuntimeError(f"the run ended before task {n} was submitted")
            if not hasattr(local, "session"):
                local.session = requests.Session()
                local.session.headers["Authorization"] = f"Token {api_token}"
            body = {
                "prompt": f"chaos task {n}", "width": 64, "height": 64, "steps": 4, "seed": n,
                "template": "sd15-txt2img", "checkpoint": CHECKPOINT,
            }  # fmt: skip
            deadline = time.monotonic() + 120
            while True:
                try:
                    response = local.session.post(f"{self.url}/api/v1/tasks/", json=body, timeout=60)
                except requests.ConnectionError:  # refused: the scheduler is restarting; nothing was sent
                    response = None
                if response is not None and response.status_code == 201:
                    return response.json()["id"]
                # 503: the database went away. Anything else is a finding.
                if (response is not None and response.status_code != 503) or time.monotonic() > deadline:
                    detail = f"{response.status_code} {response.text[:300]}" if response is not None else ""
                    raise RuntimeError(f"submit {n}: {detail or 'the scheduler stayed unreachable'}")
                # The task may have been stored before the error (a 503 raised after the commit): a client
                # of a POST that is not idempotent looks before it sends again.
                existing = self._existing(body["prompt"])
                if existing:
                    return existing
                time.sleep(0.5)

        with ThreadPoolExecutor(threads) as pool:
            ids = list(pool.map(one, range(self.p.tasks)))
        self.task_pks = list(Task.objects.filter(public_id__in=ids).values_list("pk", flat=True))
        assert len(self.task_pks) == self.p.tasks

    def _existing(self, prompt: str) -> str | None:
        """The id of the task with this prompt, once the database answers (it may be the one that is away)."""
        from django.db import connection

        from generation.models import Task

        missing = object()
        try:
            for _ in range(600):
                found = self._db(
                    lambda: Task.objects.filter(prompt=prompt).values_list("public_id", flat=True).first(),
                    missing,
                )
                if found is not missing:
                    return str(found) if found else None
                time.sleep(0.1)
            raise RuntimeError("the database stayed unreachable")
        finally:
            connection.close()  # this submit thread's own connection

    # -- observing -----------------------------------------------------------------------------------
    def _db(self, read, default=None):
        """A read that survives the database outage (this process's connection may be terminated too)."""
        from django.db import DatabaseError, connection

        try:
            return read()
        except DatabaseError:
            connection.close()
            return default

    def finished(self) -> int:
        from generation.models import Task

        # The run's database holds only its own tasks, so this works while they are still being submitted.
        return self._db(lambda: Task.objects.filter(status__in=Task.FINISHED_STATUSES).count(), -1)

    def unfinished(self) -> int:
        from generation.models import Task

        return self._db(lambda: Task.objects.exclude(status__in=Task.FINISHED_STATUSES).count(), -1)

    def held_by(self, name: str) -> tuple[int | None, list[int]]:
        from generation.models import Task
        from workers_app.models import Worker

        def read():
            pk = Worker.objects.filter(name=name).values_list("pk", flat=True).first()
            held = Task.objects.filter(worker_id=pk, status__in=Task.ACTIVE_STATUSES).values_list(
                "pk", flat=True
            )
            return pk, list(held)

        return self._db(read, (None, []))

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    # -- faults --------------------------------------------------------------------------------------
    def kill_worker(self) -> None:
        name = self.random.choice([n for n, p in self.workers.items() if p.alive()])
        pk, held = self.held_by(name)
        fault = Fault("worker SIGKILL", name, time.time(), worker_pk=pk, held=held)
        self.workers[name].signal(signal.SIGKILL)
        self.workers[name].popen.wait(10)
        fault.ended = time.time()
        self.faults.append(fault)
        self.start_worker(name)

    def term_worker(self) -> None:
        choices = [n for n, p in self.workers.items() if p.alive() and n not in self.pending_restarts]
        if not choices:
            return
        name = self.random.choice(choices)
        pk, held = self.held_by(name)
        self.faults.append(Fault("worker SIGTERM", name, time.time(), worker_pk=pk, held=held))
        self.workers[name].signal(signal.SIGTERM)
        self.pending_restarts.append(name)

    def restart_exited_workers(self) -> None:
        for name in list(self.pending_restarts):
            if not self.workers[name].alive():
                self.pending_restarts.remove(name)
                fault = next(f for f in reversed(self.faults) if f.target == name)
                fault.ended = time.time()
                self.start_worker(name)

    def restart_simulator(self) -> None:
        index = self.random.randrange(len(self.simulators))
        _, url = self.simulators[index]
        fault = Fault("simulator restart", f"comfyui-{index}", time.time())
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{url}/simulator/restart", json={"downtime": 1.5}, timeout=5)
        fault.ended = time.time() + 1.5
        self.faults.append(fault)

    def kill_simulator(self) -> None:
        index = self.random.randrange(len(self.simulators))
        process, url = self.simulators[index]
        fault = Fault("simulator SIGKILL", f"comfyui-{index}", time.time())
        process.signal(signal.SIGKILL)
        process.popen.wait(10)
        time.sleep(1.0)
        self.start_simulator(index, port=int(url.rsplit(":", 1)[1]))
        fault.ended = time.time()
        self.faults.append(fault)

    def restart_scheduler(self) -> None:
        fault = Fault("scheduler restart", "gunicorn", time.time())
        self.scheduler.stop()
        self.start_scheduler()
        fault.ended = time.time()
        self.faults.append(fault)

    def database_outage(self) -> None:
        fault = Fault("database outage", self.db_url.split(":", 1)[0], time.time())
        if self.db_url.startswith("sqlite"):
            path = self.db_url.removeprefix("sqlite:///")
            conn = sqlite3.connect("/" + path.lstrip("/"), isolation_level=None, timeout=30)
            conn.execute("BEGIN EXCLUSIVE")  # every writer waits on the lock
            time.sleep(self.p.db_outage)
            conn.execute("ROLLBACK")
            conn.close()
        else:
            import psycopg

            base, name = self.db_url.rsplit("/", 1)
            with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
                end = time.monotonic() + self.p.db_outage
                while time.monotonic() < end:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        [name],
                    )
                    time.sleep(0.05)
        fault.ended = time.time()
        self.faults.append(fault)

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> dict:
        api_token = self.prepare()
        self.start_scheduler()
        for index in range(self.p.workers):
            self.start_simulator(index)
        for name in self.tokens:
            self.start_worker(name)
        started = time.time()
        log(f"farm up at {self.url}: {self.p.workers} simulators, {self.p.workers} workers")
        errors: list[BaseException] = []

        def submit() -> None:
            try:
                self.submit(api_token)
                log(f"{self.p.tasks} tasks submitted in {time.time() - started:.1f}s")
            except BaseException as exc:
                errors.append(exc)

        phases = self.phases
        self.open_gate(phases[0].gate if phases else self.p.tasks)
        submitter = threading.Thread(target=submit, name="submit", daemon=True)
        submitter.start()
        log("submitting, and the chaos begins")
        log("scheduled: " + (", ".join(f"{ph.kind} at {ph.trigger} finished" for ph in phases) or "nothing"))
        inject = {
            "worker SIGKILL": self.kill_worker,
            "scheduler restart": self.restart_scheduler,
            "database outage": self.database_outage,
            "simulator SIGKILL": self.kill_simulator,
        }
        last = {"kill": time.monotonic(), "term": time.monotonic(), "sim": time.monotonic()}
        deadline = time.monotonic() + self.p.timeout
        done = 0
        fired = 0  # scheduled faults injected so far
        try:
            while time.monotonic() < deadline:
                if errors:
                    raise errors[0]
                done = self.finished()
                settled = fired == len(phases) and not submitter.is_alive() and not self.pending_restarts
                if settled and self.unfinished() == 0:
                    break
                now = time.monotonic()
                self.restart_exited_workers()
                if fired < len(phases) and done >= phases[fired].trigger:
                    phase = phases[fired]
                    log(f"phase {fired + 1}/{len(phases)}: {phase.kind} with {done} tasks finished")
                    count = len(self.faults)
                    inject[phase.kind]()
                    for fault in self.faults[count:]:
                        fault.phase, fault.finished = fired, done
                    fired += 1
                    if phase.kind == "worker SIGKILL":
                        last["kill"] = now
                    self.open_gate(phases[fired].gate if fired < len(phases) else self.p.tasks)
                elif now - last["kill"] >= self.p.kill_every:
                    last["kill"] = now
                    self.kill_worker()
                elif now - last["term"] >= self.p.term_every:
                    last["term"] = now
                    self.term_worker()
                elif now - last["sim"] >= self.p.simulator_restart_every:
                    last["sim"] = now
                    self.restart_simulator()
                time.sleep(0.2)
        finally:
            self.close_gate()
        elapsed = time.time() - started
        log(f"{done}/{self.p.tasks} finished after {elapsed:.1f}s; {len(self.faults)} faults injected")
        for _ in range(50):  # workers started by the last faults come up, then all must settle idle
            self.restart_exited_workers()
            if not self.pending_restarts:
                break
            time.sleep(0.2)
        time.sleep(2.0)
        busy = self._db(self._busy_workers, ["(database unreadable)"])
        return {"elapsed": elapsed, "busy_workers": busy}

    @staticmethod
    def _busy_workers() -> list[str]:
        from workers_app.models import Worker

        busy = Worker.objects.with_state().filter(holds_leases=True)
        return list(busy.values_list("name", flat=True))

    def stop(self) -> None:
        for process in self.workers.values():
            process.signal(signal.SIGTERM)
        for process in self.workers.values():
            process.stop()
        for process, _ in self.simulators:
            process.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.listener.close()

    # -- the verdict ---------------------------------------------------------------------------------
    def check(self) -> dict:
        """Counts and violations (an empty list of violations means every property held)."""
        from generation.models import Image, Task, TaskAttempt

        violations: list[str] = []
        counts: Counter = Counter()
        max_attempts = int(FARM_ENV["T2I_MAX_ATTEMPTS"])
        tasks = Task.objects.filter(pk__in=self.task_pks).prefetch_related("images", "attempt_set")
        for task in tasks:
            counts[task.status] += 1
            attempts = list(task.attempt_set.all())
            completed = [a for a in attempts if a.outcome == TaskAttempt.Outcome.COMPLETED]
            counts["attempts"] += len(attempts)
            if len(completed) > 1:
                violations.append(f"{task.public_id}: completed {len(completed)} times")
            if any(a.outcome == TaskAttempt.Outcome.ACTIVE for a in attempts):
                violations.append(f"{task.public_id}: an attempt is still active")
            images = list(task.images.all())
            if task.status == Task.Status.COMPLETED:
                if len(completed) != 1:
                    violations.append(f"{task.public_id}: completed without one completed attempt")
                if len(images) != task.batch_size:
                    violations.append(f"{task.public_id}: {len(images)} image(s), expected {task.batch_size}")
                for image in images:
                    path = self.media_root / image.file.name
                    if completed and image.attempt_id != completed[0].pk:
                        violations.append(f"{task.public_id}: image {image.pk} of another attempt")
                    if not path.is_file():
                        violations.append(f"{task.public_id}: image file {image.file.name} missing")
                    elif sha256_file(path) != image.sha256:
                        violations.append(f"{task.public_id}: image file {image.file.name} SHA-256 differs")
                counts["images"] += len(images)
            elif task.status == Task.Status.FAILED:
                counts[f"failed: {task.error_code}"] += 1
                if not task.error_code:
                    violations.append(f"{task.public_id}: failed without a reason")
                early = task.attempts < max_attempts
                retryable = task.error_code in (
                    "comfyui_lost",
                    "worker_lost",
                    "internal",
                    "upload_failed",
                ) or (
                    task.error_code == "execution_error"
                    and any(m in task.error_message.lower() for m in OOM_MARKERS)
                )
                if early and retryable:
                    violations.append(
                        f"{task.public_id}: failed after {task.attempts}/{max_attempts} attempts with the "
                        f"retryable {task.error_code}: {task.error_message[:120]}"
                    )
                if images:
                    violations.append(f"{task.public_id}: failed but has {len(images)} image(s)")
            else:
                violations.append(f"{task.public_id}: still {task.status}")
        stored_tasks = Task.objects.count()
        if stored_tasks != self.p.tasks:
            violations.append(f"{stored_tasks} tasks in the database for {self.p.tasks} submitted")
        orphans = Image.objects.exclude(task__status=Task.Status.COMPLETED).count()
        if orphans:
            violations.append(f"{orphans} image row(s) of tasks that are not completed")
        known = set(Image.objects.values_list("file", flat=True)) | set(
            Image.objects.exclude(thumbnail="").values_list("thumbnail", flat=True)
        )
        images_dir = self.media_root / "images"
        stored = {str(p.relative_to(self.media_root)) for p in images_dir.rglob("*") if p.is_file()}
        stray = sorted(stored - known)
        if stray:
            violations.append(f"{len(stray)} stored file(s) without a row, e.g. {stray[:3]}")
        counts["files"] = len(stored)
        for index, phase in enumerate(self.phases):
            fired = [f for f in self.faults if f.phase == index]
            if not fired:
                violations.append(f"the scheduled {phase.kind} (at {phase.trigger} finished) never fired")
            elif _first_completion(Task, fired[-1].ended or fired[-1].started) is None:
                violations.append(f"no task completed after the scheduled {phase.kind}")
        return {"counts": counts, "violations": violations}

    def recovery(self) -> list[tuple[Fault, str, dict[str, float]]]:
        """For each fault, how long until the farm (or the hit worker) was productive again: a line of text
        and the figures ("re-leased", "productive", "completion") for the summary."""
        from generation.models import Task, TaskAttempt

        rows = []
        for fault in self.faults:
            after = fault.ended or fault.started
            if fault.kind.startswith("worker"):
                parts, figures = [], {}
                if fault.held:
                    # Each task it held: leased again by someone (or finished) after the fault.
                    times = []
                    for pk in fault.held:
                        next_lease = (
                            TaskAttempt.objects.filter(task_id=pk, leased_at__gt=_dt(fault.started))
                            .order_by("leased_at")
                            .values_list("leased_at", flat=True)
                            .first()
                        )
                        if next_lease is not None:
                            times.append(next_lease.timestamp() - fault.started)
                    if times:
                        figures["re-leased"] = max(times)
                        parts.append(f"its {len(fault.held)} lease(s) re-leased after {max(times):.1f}s")
                    else:
                        parts.append(f"its {len(fault.held)} lease(s) finished without a new lease")
                first = _first_completion(Task, after, worker_pk=fault.worker_pk)
                if first:
                    figures["productive"] = first - fault.started
                parts.append(f"worker completing again after {first - fault.started:.1f}s" if first else "—")
                rows.append((fault, "; ".join(parts), figures))
            else:
                first = _first_completion(Task, after)
                what = (
                    f"first completion {first - after:.1f}s after it ended"
                    if first
                    else "no completion after"
                )
                figures = {"completion": first - after} if first else {}
                rows.append((fault, f"lasted {after - fault.started:.1f}s; {what}", figures))
        return rows


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dt(timestamp: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, tz=UTC)


def _first_completion(Task, after: float, worker_pk: int | None = None) -> float | None:
    qs = Task.objects.filter(status=Task.Status.COMPLETED, finished_at__gt=_dt(after))
    if worker_pk is not None:
        qs = qs.filter(worker_id=worker_pk)
    first = qs.order_by("finished_at").values_list("finished_at", flat=True).first()
    return first.timestamp() if first else None


def report(run: ChaosRun, result: dict, verdict: dict) -> None:
    counts = verdict["counts"]
    p, database = run.p, run.db_url.split(":")[0]
    other = p.tasks - counts["completed"] - counts["failed"]
    print()
    print(f"chaos: {p.tasks} tasks, {p.workers} workers, {p.workers} simulators, {database}")
    print(f"  finished in {result['elapsed']:.1f}s")
    print(f"  completed {counts['completed']}, failed {counts['failed']}, other {other}")
    for key in sorted(k for k in counts if k.startswith("failed: ")):
        print(f"    {key}: {counts[key]}")
    files = counts["files"]
    print(f"  attempts {counts['attempts']}, images {counts['images']}, files (+ thumbnails) {files}")
    print(f"  workers busy after the queue emptied: {result['busy_workers'] or 'none'}")
    kinds = Counter(f.kind for f in run.faults)
    print("  faults: " + ", ".join(f"{kind} ×{n}" for kind, n in sorted(kinds.items())))
    scheduled = [f for f in run.faults if f.phase is not None]
    print(
        "  scheduled (tasks finished: due / when it fired): "
        + (", ".join(f"{f.kind} {run.phases[f.phase].trigger}/{f.finished}" for f in scheduled) or "none")
    )
    rows = run.recovery()
    print("  recovery, by fault (seconds: median / max):")
    by_kind: dict[tuple[str, str], list[float]] = {}
    for fault, _, figures in rows:
        for name, value in figures.items():
            by_kind.setdefault((fault.kind, name), []).append(value)
    labels = {
        "re-leased": "its leases re-leased after",
        "productive": "the worker completing again after",
        "completion": "first completion after the fault ended",
    }
    for (kind, name), values in sorted(by_kind.items()):
        values.sort()
        median = values[len(values) // 2]
        print(f"    {kind:<18} {labels[name]:<40} {median:5.1f} / {values[-1]:5.1f}  (n={len(values)})")
    print("  recovery, each fault:")
    for fault, text, _ in rows:
        print(f"    {fault.kind:<18} {fault.target:<14} {text}")
    print(f"  violations: {len(verdict['violations'])}")
    for line in verdict["violations"][:30]:
        print(f"    {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--folder", default=None, help="where logs, media and simulator files go")
    args = parser.parse_args()

    from bench.common import database_url, setup_django

    db_url = database_url(args.db, "t2i_chaos")
    setup_django(db_url, **FARM_ENV)
    folder = Path(args.folder or f"/tmp/t2i-chaos-{int(time.time())}")
    params = Params(tasks=args.tasks, workers=args.workers, timeout=args.timeout, seed=args.seed)
    run = ChaosRun(db_url, folder, params)
    log(f"logs and files in {folder}")
    try:
        result = run.run()
    finally:
        run.stop()
    verdict = run.check()
    report(run, result, verdict)
    ok = not verdict["violations"] and not result["busy_workers"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
