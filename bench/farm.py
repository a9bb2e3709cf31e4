"""The whole farm as real processes, for the end-to-end benchmarks (dispatch, idle gap, scaling, read path,
memory): the scheduler under gunicorn on a fresh database, `manage.py runworker` daemons and ComfyUI
simulators (`manage.py comfyui_simulator` processes, or many in one `bench.simhost` process).

    python -m bench.farm --db postgres --phases dispatch,gap,scaling,memory

`python -m bench` runs this module in its own process (after bench.lease) and prints the joint table.
Every timestamp compared across processes is wall-clock (`time.time()`) on this one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from bench.common import ROOT, Server, bench_env, collect_static, database_url, free_port, setup_django

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # what the simulator offers by default
TEMPLATE = "sd15-txt2img"  # the farm's default template: checkpoint, two prompts, KSampler, VAE, SaveImage
WORDS = (
    "fox",
    "lighthouse",
    "village",
    "robot",
    "garden",
    "harbour",
    "owl",
    "castle",
    "reef",
    "skyline",
    "market",
)


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, killed if it lingers."""

    def __init__(self, cmd: list[str], log: Path, env: dict, *, stdout_pipe: bool = False) -> None:
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if stdout_pipe else self.log,
            stderr=self.log,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches us, not every child at once
        )
        self.pid = self.proc.pid

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()

    def stop(self, timeout: float = 15.0) -> None:
        self.terminate()
        self.wait(timeout)


def _wait_http(url: str, what: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{what} exited; see {proc.log_path}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url}; see {proc.log_path}")


# --- simulators -----------------------------------------------------------------------------------------


def sim_stats(url: str) -> list[dict]:
    """The simulator's per-prompt times (GET /simulator/stats)."""
    return requests.get(f"{url}/simulator/stats", timeout=30).json()["prompts"]


def sim_set(url: str, **faults) -> None:
    requests.post(f"{url}/simulator/faults", json=faults, timeout=10).raise_for_status()


class Farm:
    """A fresh database, the scheduler, and whatever simulators and worker daemons the phases start."""

    def __init__(self, args: argparse.Namespace, *, db_name: str = "t2i_bench_farm") -> None:
        self.args = args
        self.db = args.db
        self.logdir = Path(tempfile.mkdtemp(prefix="t2i-bench-logs-"))
        self.db_url = database_url(args.db, db_name)
        setup_django(self.db_url)
        collect_static()
        self.env = bench_env(self.db_url)
        self.procs: list[Proc] = []
        self.server = Server(
            self.db_url, processes=args.processes, threads=args.threads, log=self.logdir / "scheduler.log"
        )
        self.url = self.server.url
        from django.contrib.auth.models import User

        from generation.services import api_token_create

        self.staff = User.objects.create_user("bench-staff", is_staff=True)
        self.api_token = api_token_create(user=self.staff, name="benchmark")[1]
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Token {self.api_token}"
        self.worker_ids: dict[int, int] = {}  # daemon pid -> Worker pk
        self.extra: dict = {}  # details for the JSON record (e.g. the CPU accounting of the scaling runs)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(15)
        self.server.stop()

    # -- processes ------------------------------------------------------------------------------------
    def simulator(self, job_time: float, *options: str) -> tuple[str, Proc]:
        """One `manage.py comfyui_simulator` process, with more of its `options` if given."""
        port = free_port()
        proc = Proc(
            _manage("comfyui_simulator", "--port", str(port), "--job-time", str(job_time), *options),
            self.logdir / f"simulator-{port}.log",
            self.env,
        )
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/system_stats", "the simulator", proc)
        return url, proc

    def simhost(self, count: int, job_time: float) -> tuple[list[str], Proc]:
        """`count` simulators in one `bench.simhost` process."""
        proc = Proc(
            [sys.executable, "-m", "bench.simhost", "--count", str(count), "--job-time", str(job_time)],
            self.logdir / f"simhost-{len(self.procs)}.log",
            self.env,
            stdout_pipe=True,
        )
        self.procs.append(proc)
        line = proc.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench.simhost did not start; see {proc.log_path}")
        return json.loads(line)["urls"], proc

    def worker(self, comfyui_url: str, *, prefetch: int = 2, name: str = "") -> Proc:
        """One `manage.py runworker` daemon driving the simulator at `comfyui_url`."""
        from workers_app.services import worker_create

        name = name or f"bench-{uuid.uuid4().hex[:8]}"
        worker, token = worker_create(name=name)
        cmd = _manage(
            "runworker", "--scheduler", self.url, "--comfyui", comfyui_url, "--name", name,
            "--prefetch", str(prefetch), "--grace", "2",
        )  # fmt: skip
        proc = Proc(cmd, self.logdir / f"worker-{name}.log", {**self.env, "T2I_WORKER_TOKEN": token})
        self.procs.append(proc)
        self.worker_ids[proc.pid] = worker.pk
        return proc

    def wait_registered(self, procs: list[Proc], timeout: float = 120.0) -> None:
        from workers_app.models import Worker

        ids = [self.worker_ids[p.pid] for p in procs]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in procs:
                if p.proc.poll() is not None:
                    raise RuntimeError(f"a worker daemon exited; see {p.log_path}")
            if Worker.objects.filter(pk__in=ids).exclude(registered_at=None).count() == len(ids):
                return
            time.sleep(0.3)
        raise RuntimeError(f"worker daemons did not register within {timeout:.0f}s; logs in {self.logdir}")

    def stop(self, procs: list[Proc]) -> None:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
            if p in self.procs:
                self.procs.remove(p)

    # -- tasks ----------------------------------------------------------------------------------------
    def seed(self, count: int, *, size: int | None = None, steps: int = 20) -> list[int]:
        """Queue `count` tasks at once (bulk insert + ANALYZE, as a busy farm's statistics would be)."""
        from django.db import connection

        from generation.models import Task, WorkflowTemplate

        size = size or self.args.size
        template = WorkflowTemplate.objects.get(name=TEMPLATE)
        tasks = Task.objects.bulk_create(
            [
                Task(
                    owner=self.staff,
                    prompt=" ".join(random.choices(WORDS, k=6)),
                    width=size,
                    height=size,
                    steps=steps,
                    seed=random.getrandbits(48),
                    checkpoint=CHECKPOINT,
                    template=template,
                )
                for _ in range(count)
            ],
            batch_size=2000,
        )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE generation_task" if connection.vendor == "postgresql" else "ANALYZE")
        return [t.pk for t in tasks]

    def submit(self, *, size: int | None = None, steps: int = 20) -> dict:
        """Submit one task through the REST API; returns its JSON."""
        size = size or self.args.size
        body = {
            "prompt": " ".join(random.choices(WORDS, k=6)),
            "width": size,
            "height": size,
            "steps": steps,
            "checkpoint": CHECKPOINT,
            "template": TEMPLATE,
        }
        response = self.api.post(f"{self.url}/api/v1/tasks/", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def drain_queue(self) -> None:
        """Cancel whatever is still queued, so that the next phase starts from an empty queue."""
        from generation.models import Task

        Task.objects.filter(status=Task.Status.QUEUED).update(status=Task.Status.CANCELLED)

    def completed(self) -> int:
        from generation.models import Task

        return Task.objects.filter(status=Task.Status.COMPLETED).count()


def prefix_task(prefix: str | None) -> str | None:
    """The task uuid in a filename prefix `t2i/<uuid>_a<n>`."""
    if not prefix or not prefix.startswith("t2i/"):
        return None
    return prefix[4:].rsplit("_a", 1)[0]


# --- the command -----------------------------------------------------------------------------------------

PHASES = ("dispatch", "gap", "scaling", "read", "memory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("farm (real processes)")
    group.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    group.add_argument("--farm-processes", dest="processes", type=int, default=2, help="gunicorn processes")
    group.add_argument(
        "--farm-threads",
        dest="threads",
        type=int,
        default=0,
        help="0: ASGI (production); N: WSGI gthread x N",
    )
    group.add_argument("--size", type=int, default=512, help="image width and height of the farm's tasks")
    group.add_argument("--dispatch-tasks", type=int, default=500)
    group.add_argument("--dispatch-workers", type=int, default=4)
    group.add_argument("--gap-jobs", type=int, default=60, help="jobs per idle-gap measurement")
    group.add_argument("--scaling-workers", default="1,4,16,32", help="worker counts, job time 1 s")
    group.add_argument("--scaling-fast-workers", default="1,4,16", help="worker counts, job time 200 ms")
    group.add_argument("--scaling-window", type=float, default=12.0, help="seconds measured per level")
    group.add_argument("--readers", type=int, default=200, help="status pollers in the read-path phase")
    group.add_argument("--gallery-viewers", type=int, default=4, help="gallery page viewers (read path)")
    group.add_argument("--read-duration", type=float, default=20.0)
    group.add_argument("--memory-tasks", type=int, default=1000)


def measure(args: argparse.Namespace) -> tuple[list, list, dict]:
    from bench import dispatch, idle_gap, memory, scaling
    from bench.report import Figure

    phases = [p for p in args.phases.split(",") if p]
    if "read" in phases and "scaling" not in phases:  # the read path runs while the scaling fleet works
        phases.append("scaling")
        args.scaling_workers, args.scaling_fast_workers = args.scaling_workers.split(",")[-1], ""
    figures, series = [], []
    farm = Farm(args)
    print(
        f"farm: database {farm.db}; scheduler: gunicorn {args.processes} processes x {args.threads} threads; "
        f"tasks {TEMPLATE} {args.size}x{args.size}, 20 steps; logs in {farm.logdir}",
        flush=True,
    )
    try:
        for phase, module in (
            ("dispatch", dispatch),
            ("gap", idle_gap),
            ("scaling", scaling),
            ("memory", memory),
        ):
            if phase in phases:
                started = time.monotonic()
                f, s = module.run(farm, args)
                figures += f
                series += s
                farm.drain_queue()
                print(f"  ({phase} took {time.monotonic() - started:.0f} s)", flush=True)
        figures.append(
            Figure("memory", "scheduler process peak RSS (farm run)", farm.server.peak_rss_mb(), "MB",
                   farm.db, "<=", 150, note=f"highest VmHWM of the {args.processes} gunicorn processes")
        )  # fmt: skip
    finally:
        farm.close()
    return figures, series, farm.extra


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    add_arguments(parser)
    parser.add_argument("--json", type=Path, help="write the figures here (used by python -m bench)")
    args = parser.parse_args()
    figures, series, extra = measure(args)
    from bench.report import table

    print()
    print(table(figures))
    if args.json:
        record = {"figures": [f.as_dict() for f in figures], "series": [s.as_dict() for s in series]}
        args.json.write_text(json.dumps(record | {"details": extra}, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
