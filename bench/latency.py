"""One small job at a time: what the farm adds to a direct ComfyUI round trip (issue 16).

    python -m bench.latency                  # 50 jobs at 128x128 and 50 at 512x512 per client
    python -m bench.latency --jobs 20 --sizes 128 --poll-ms 50

Real processes, as `python -m bench` starts them: the scheduler under gunicorn with the production
configuration (t2i_project/gunicorn.conf.py: uvicorn workers, ASGI) on a fresh PostgreSQL database, one
`manage.py runworker` daemon and one `manage.py comfyui_simulator --job-time 0.01`. Three clients take turns,
one job each per round, so that drift of the machine's speed hits them alike (four with `--all-tasks`):

- direct: straight to the simulator, as a plain ComfyUI client would: POST /prompt, wait on its /ws for
  `executing` with `node: null`, GET /history/{id}, GET /view of each image;
- stream: through the farm: POST /api/v1/tasks/ (DRF token, template `noise-test`), then the task's event
  stream GET /api/v1/tasks/{id}/events until the task is finished, then GET of each image;
- poll: the same, but reading GET /api/v1/tasks/{id}/ every `--poll-ms` until it is finished;
- all-tasks stream (`--all-tasks`): a user of its own who keeps the all-tasks event stream
  GET /api/v1/tasks/events open across jobs, as the direct client keeps its socket, and waits there for each
  task's final event.

Each client keeps one keep-alive HTTP session (the direct one also its socket, the all-tasks one its
stream). A job's latency runs from the client's first request to its last image received. The stage
breakdown comes from the task's own timestamps (created, leased, started, finished), the simulator's clock
(GET /simulator/stats: prompt received, execution_start, execution_success) and the client's (submit
returned, final state seen, images fetched); all are wall-clock times on this one machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import requests
import websocket

from bench.common import ms, pct, save_figures, verdict
from bench.farm import Farm, prefix_task, sim_stats

JOB_TIME = 0.01
TEMPLATE = "noise-test"
FINISHED = frozenset({"completed", "failed", "cancelled"})
ADDED_P50_128, ADDED_P99_128, ADDED_P50_512 = 30.0, 60.0, 50.0  # ms, the goals


@dataclass
class Job:
    """One job as a client saw it; wall-clock seconds (time.time())."""

    client: str
    size: int
    began: float
    done: float
    task: dict = field(default_factory=dict)  # the final task JSON (farm clients)
    submitted: float = 0.0  # the submit call returned
    seen: float = 0.0  # the client learnt that the task finished

    @property
    def seconds(self) -> float:
        return self.done - self.began


# -- the clients ---------------------------------------------------------------------------------------
def noise_workflow(size: int) -> dict:
    """The `noise-test` template's graph (EmptyImage -> ImageAddNoise -> SaveImage), with a fresh seed so
    that ComfyUI's cache never answers for it."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                       "color": 3368601}},
        "2": {"class_type": "ImageAddNoise",
              "inputs": {"image": ["1", 0], "seed": random.getrandbits(48), "strength": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "direct"}},
    }  # fmt: skip


class DirectClient:
    """A plain ComfyUI client: one session, one socket opened before the first prompt."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = f"bench-direct-{uuid.uuid4().hex[:8]}"
        self.session = requests.Session()
        ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        self.ws = websocket.create_connection(ws_url, timeout=30)

    def run(self, size: int) -> Job:
        began = time.time()
        body = {"prompt": noise_workflow(size), "client_id": self.client_id}
        answer = self.session.post(f"{self.url}/prompt", json=body, timeout=30)
        answer.raise_for_status()
        prompt_id = answer.json()["prompt_id"]
        self._until_done(prompt_id)
        entry = self.session.get(f"{self.url}/history/{prompt_id}", timeout=30).json()[prompt_id]
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                params = {k: image[k] for k in ("filename", "subfolder", "type")}
                self.session.get(f"{self.url}/view", params=params, timeout=30).raise_for_status()
        return Job("direct", size, began, time.time())

    def _until_done(self, prompt_id: str) -> None:
        while True:
            message = self.ws.recv()
            if not isinstance(message, str):
                continue  # a preview frame
            event = json.loads(message)
            data = event.get("data") or {}
            done = event.get("type") == "executing" and data.get("node") is None
            if done and data.get("prompt_id") == prompt_id:
                return

    def close(self) -> None:
        self.ws.close()
        self.session.close()


class AllTasksStream:
    """The all-tasks event stream (GET /api/v1/tasks/events) kept open on a thread of its own, as a ComfyUI
    client keeps its socket: each task's final event, and when it came. Reconnects when the server ends it."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "Accept": "text/event-stream"})
        self.finals: dict[str, tuple[dict, float]] = {}
        self.changed = threading.Condition()
        self.open = threading.Event()
        self.closed = False
        threading.Thread(target=self._read, name="all-tasks-stream", daemon=True).start()
        if not self.open.wait(30):
            raise RuntimeError("the all-tasks event stream did not open")

    def final(self, task_id: str, timeout: float = 60.0) -> tuple[dict, float]:
        """The task's final event and the time it came (waits for it)."""
        with self.changed:
            if not self.changed.wait_for(lambda: task_id in self.finals, timeout):
                raise RuntimeError(f"no final event for {task_id} on the all-tasks stream")
            return self.finals.pop(task_id)

    def _read(self) -> None:
        while not self.closed:
            try:
                with self.session.get(f"{self.url}/api/v1/tasks/events", stream=True, timeout=(10, 60)) as r:
                    r.raise_for_status()
                    chunks = r.iter_content(chunk_size=None)
                    first = next(chunks, b"")  # the server listens once its first chunk is out
                    self.open.set()
                    for event in sse_events(itertools.chain([first], chunks)):
                        if event["status"] in FINISHED:
                            with self.changed:
                                self.finals[event["id"]] = (event, time.time())
                                self.changed.notify_all()
            except requests.RequestException:
                if not self.closed:
                    time.sleep(0.1)

    def close(self) -> None:
        self.closed = True
        self.session.close()


class FarmClient:
    """A REST client of the farm with a DRF token: submit, follow (a task's stream, the all-tasks stream, or
    polling), fetch the images."""

    def __init__(
        self, url: str, token: str, *, poll_ms: float | None = None, all_tasks: bool = False
    ) -> None:
        self.url = url
        self.poll = poll_ms / 1000 if poll_ms else None
        self.follower = AllTasksStream(url, token) if all_tasks else None
        self.name = f"poll {poll_ms:g} ms" if poll_ms else "all-tasks stream" if all_tasks else "stream"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def run(self, size: int) -> Job:
        began = time.time()
        body = {"prompt": "one small job", "width": size, "height": size, "template": TEMPLATE,
                "seed": random.getrandbits(48)}  # fmt: skip
        answer = self.session.post(f"{self.url}/api/v1/tasks/", json=body, timeout=30)
        answer.raise_for_status()
        submitted = time.time()
        task_id = answer.json()["id"]
        if self.follower is not None:
            task, seen = self.follower.final(task_id)
        else:
            task, seen = self._polled(task_id) if self.poll else self._streamed(task_id)
        for image in task["images"]:
            self.session.get(image["url"], timeout=30).raise_for_status()
        return Job(self.name, size, began, time.time(), task, submitted, seen)

    def _polled(self, task_id: str) -> tuple[dict, float]:
        """The finished task, and when the client saw it finished."""
        assert self.poll is not None
        tick = time.monotonic()
        while True:
            task = self.session.get(f"{self.url}/api/v1/tasks/{task_id}/", timeout=30).json()
            if task["status"] in FINISHED:
                return task, time.time()
            tick += self.poll
            time.sleep(max(0.0, tick - time.monotonic()))

    def _streamed(self, task_id: str) -> tuple[dict, float]:
        """The finished task, and when the client saw it finished."""
        url = f"{self.url}/api/v1/tasks/{task_id}/events"
        final, seen = None, 0.0
        with self.session.get(url, stream=True, timeout=60, headers={"Accept": "text/event-stream"}) as r:
            r.raise_for_status()
            for event in sse_events(r.iter_content(chunk_size=None)):
                if final is None and event["status"] in FINISHED:
                    final = event
                    seen = time.time()
            # read to the end (the stream ends after its final event): the connection stays in the pool
        if final is None:
            raise RuntimeError(f"the event stream of {task_id} ended without a final event")
        return final, seen

    def close(self) -> None:
        self.session.close()
        if self.follower is not None:
            self.follower.close()


def sse_events(chunks: Iterator[bytes]) -> Iterator[dict]:
    """The `data` of each server-sent event in a byte stream."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield json.loads(b"\n".join(data))


# -- the run ---------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> tuple[list[Job], dict[str, dict], Farm]:
    farm_args = argparse.Namespace(db="postgres", processes=args.processes, threads=0, size=args.sizes[0])
    farm = Farm(farm_args, db_name="t2i_bench_latency")
    print(f"latency: scheduler gunicorn -c t2i_project/gunicorn.conf.py, {args.processes} processes (ASGI), "
          f"PostgreSQL; one runworker daemon; simulator --job-time {JOB_TIME}; logs in {farm.logdir}",
          flush=True)  # fmt: skip
    sim_url, _sim = farm.simulator(JOB_TIME)
    worker = farm.worker(sim_url, prefetch=args.prefetch)
    farm.wait_registered([worker])
    time.sleep(1.0)  # the daemon is in its long poll now
    direct = DirectClient(sim_url)
    clients: list[tuple[str, Callable[[int], Job]]] = [("direct", direct.run)]
    farm_clients = [
        FarmClient(farm.url, farm.api_token),
        FarmClient(farm.url, farm.api_token, poll_ms=args.poll_ms),
    ]
    if args.all_tasks:  # a user of its own: its stream hears no other client's tasks
        from django.contrib.auth.models import User

        from generation.services import api_token_create

        follower = User.objects.create_user("bench-all-tasks", is_staff=True)
        token = api_token_create(user=follower, name="benchmark")[1]
        farm_clients.append(FarmClient(farm.url, token, all_tasks=True))
    clients += [(c.name, c.run) for c in farm_clients]
    jobs: list[Job] = []
    cpu0 = _cpu(farm, worker.pid)
    try:
        for size in args.sizes:
            for round_ in range(args.warmup + args.jobs):
                for _name, run in clients:
                    job = run(size)
                    if job.task and job.task["status"] != "completed":
                        raise RuntimeError(f"task {job.task['id']} ended {job.task['status']}")
                    if round_ >= args.warmup:
                        jobs.append(job)
            print(f"  {size}x{size}: {args.jobs} jobs per client done", flush=True)
        cpu1 = _cpu(farm, worker.pid)
        stats = {prefix_task(e["filename_prefix"]): e for e in sim_stats(sim_url)}
    finally:
        direct.close()
        for client in farm_clients:
            client.close()
        farm.close()
    farm_jobs = (args.warmup + args.jobs) * len(args.sizes) * len(farm_clients)
    cpu = {k: (cpu1[k] - cpu0[k]) / farm_jobs for k in cpu0}
    return jobs, stats, {"cpu": cpu, "logdir": farm.logdir}


def _cpu(farm: Farm, daemon_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the scheduler's processes and by the daemon."""
    import psutil

    times = psutil.Process(daemon_pid).cpu_times()
    return {"scheduler": farm.server.cpu_seconds(), "daemon": times.user + times.system}


# -- the report ------------------------------------------------------------------------------------------
def _ts(value: str | None) -> float:
    return datetime.fromisoformat(value).timestamp() if value else float("nan")


def stages(job: Job, sim: dict | None) -> dict[str, float]:
    """Seconds spent in each stage of one farm job."""
    t = job.task
    created, leased, started, finished = (_ts(t[k]) for k in ("created_at", "leased_at", "started_at",
                                                               "finished_at"))  # fmt: skip
    seen = job.seen
    sim = sim or {}
    nan = float("nan")
    received, ex_start, ex_end = (sim.get(k, nan) for k in ("received", "execution_start",
                                                            "execution_success"))  # fmt: skip
    return {
        "client -> created (submit)": created - job.began,
        "created -> leased": leased - created,
        "leased -> started": started - leased,
        "started -> finished": finished - started,
        "finished -> client saw it": seen - finished,
        "saw it -> images fetched": job.done - seen,
        "  leased -> ComfyUI got the prompt": received - leased,
        "  prompt received -> execution_start": ex_start - received,
        "  execution_start -> scheduler started": started - ex_start,
        "  execution_start -> execution_success": ex_end - ex_start,
        "  execution_success -> finished": finished - ex_end,
    }


def report(jobs: list[Job], stats: dict[str, dict], args: argparse.Namespace, extra: dict) -> list:
    """Print the latencies, the stages and the goals; return the figures for `python -m bench`."""
    names = ["direct", "stream", f"poll {args.poll_ms:g} ms"] + (
        ["all-tasks stream"] if args.all_tasks else []
    )
    p = {
        (size, name): [pct([j.seconds for j in jobs if j.size == size and j.client == name], q) * 1000
                       for q in (50, 99)]
        for size in args.sizes for name in names
    }  # fmt: skip
    print(f"\n{'size':>7} {'client':<16} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}")
    for (size, name), (p50, p99) in p.items():
        direct = p[size, "direct"]
        added = f"{p50 - direct[0]:>+10.1f} {p99 - direct[1]:>+10.1f}" if name != "direct" else ""
        print(f"{size:>5}px {name:<16} {p50:>8.1f} {p99:>8.1f} {added}")
    print_stages(jobs, stats, args.sizes, names[1:])
    cpu = extra["cpu"]
    print(f"CPU per farm job: scheduler {ms(cpu['scheduler'])} ms, daemon {ms(cpu['daemon'])} ms")
    return goals(p, args.sizes, names, args.poll_ms)


def print_stages(jobs: list[Job], stats: dict[str, dict], sizes: list[int], names: list[str]) -> None:
    columns = [(size, name) for size in sizes for name in names]
    rows = {
        column: [stages(j, stats.get(j.task["id"])) for j in jobs if (j.size, j.client) == column]
        for column in columns
    }
    print(f"\nstages, p50 / p99 ms over {min(len(r) for r in rows.values())} jobs each")
    print(f"{'':<40}" + "".join(f"{f'{size}px {name}':>24}" for size, name in columns))
    for stage in next(iter(rows.values()))[0]:
        cells = []
        for column in columns:
            values = [r[stage] for r in rows[column] if r[stage] == r[stage]]  # NaN: no simulator record
            cells.append(f"{ms(pct(values, 50))} / {ms(pct(values, 99))}")
        print(f"{stage:<40}" + "".join(f"{cell:>24}" for cell in cells))
    print()


def goals(p: dict, sizes: list[int], names: list[str], poll_ms: float) -> list:
    """The issue's goals with PASS/MISS, as figures."""
    from bench.report import Figure

    direct, stream, poll, *more = names
    checks: list[tuple[str, float, float]] = []
    for size in sizes:
        for client, label in [(stream, "event stream"), *((m, m) for m in more)]:
            added = [p[size, client][i] - p[size, direct][i] for i in (0, 1)]
            goal = ADDED_P50_128 if size <= 128 else ADDED_P50_512
            checks.append((f"{size}px {label}: added p50", added[0], goal))
            if size <= 128:
                checks.append((f"{size}px {label}: added p99", added[1], ADDED_P99_128))
        slower = p[size, poll][0] - p[size, stream][0]
        checks.append((f"{size}px {poll} over the event stream: added p50", slower, poll_ms / 2 + 10))
    print("goals:")
    figures = []
    for text, value, target in checks:
        print(f"  {text:<52} {value:>+7.1f} ms  (<= {target:g})  {verdict(value <= target)}")
        figures.append(Figure("latency", text, value, "ms", "postgres", "<=", target))
    for (size, name), (p50, p99) in p.items():
        figures.append(Figure("latency", f"{size}px {name}: p50 (p99 {p99:.1f} ms)", p50, "ms", "postgres"))
    return figures


def add_job_options(parser: argparse.ArgumentParser, *, sizes: str) -> None:
    """The options of a one-small-job-at-a-time benchmark (this one and bench.front_door)."""
    parser.add_argument("--jobs", type=int, default=50, help="measured jobs per client and size")
    parser.add_argument("--warmup", type=int, default=3, help="jobs per client and size left out first")
    parser.add_argument("--sizes", default=sizes, help="image sizes, comma-separated")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2,
                        help="gunicorn processes (the production default: one per core)")  # fmt: skip
    parser.add_argument("--prefetch", type=int, default=2, help="the daemon's --prefetch (its default: 2)")
    parser.add_argument("--json", type=Path, help="write the figures here (used by python -m bench)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_job_options(parser, sizes="128,512")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="the polling client's interval T")
    parser.add_argument("--all-tasks", action=argparse.BooleanOptionalAction, default=True,
                        help="also a client that keeps the all-tasks event stream open")  # fmt: skip
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = datetime.now()
    load = os.getloadavg()[0]
    jobs, stats, extra = measure(args)
    print(f"\n=== python -m bench.latency ({started:%Y-%m-%d %H:%M}; {os.cpu_count()} cores; load average "
          f"before {load:.2f}, after {os.getloadavg()[0]:.2f}) ===")  # fmt: skip
    figures = report(jobs, stats, args, extra)
    save_figures(args.json, figures)
    spread = statistics.pstdev([j.seconds for j in jobs if j.client == "direct"]) * 1000
    print(f"\ndirect jobs' standard deviation {spread:.1f} ms; process logs in {extra['logdir']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
