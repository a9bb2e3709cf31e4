"""What the ComfyUI front door (`/comfy/…`) adds to a plain ComfyUI client's round trip (issue 14).

    python -m bench.front_door                  # 50 jobs per client at 128x128
    python -m bench.front_door --jobs 20 --sizes 128,512

Real processes, as `python -m bench.latency` starts them: the scheduler under gunicorn with its production
configuration (ASGI) on a fresh PostgreSQL database, one `manage.py runworker` daemon and one
`manage.py comfyui_simulator --job-time 0.01`. Two clients run the same code, a plain ComfyUI API client, and
take turns, one job each per round, so that drift of the machine's speed hits them alike:

- direct: straight to the worker's ComfyUI (the simulator);
- front door: the farm's `http://FARM/comfy` with the user's API token in the `Authorization` header.

Each client keeps one keep-alive HTTP session and one WebSocket (`/ws?clientId=…`, opened before the first
prompt) and sends each prompt with a `prompt_id` of its own choosing, as ComfyUI's documented clients do. Per
job it records, from the `POST /prompt` call: the first `executing` frame of its prompt, the last frame
(`executing` with `node: null`), and every image of `/history/{id}` fetched with `/view` ("images in hand").
The goal (issue 14) is the front door's added p50 of "images in hand" at most 30 ms. The stages table says
where a job's time went: the client's own steps for both, and for the front door also the farm's task
timestamps (created, leased, started, finished; wall-clock on this one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import requests
import websocket

from bench.common import ms, pct, save_figures, verdict
from bench.farm import Farm
from bench.latency import JOB_TIME, add_job_options, noise_workflow

ADDED_P50 = 30.0  # ms, the goal for images in hand
MARKS = ("first executing", "last frame", "images in hand")
CLIENTS = ("direct", "front door")


@dataclass
class Job:
    """One job as a client saw it: seconds from the POST /prompt call to each mark; the wall-clock times
    (time.time()) of its steps, and the farm's task timestamps for the front door's jobs (stages)."""

    client: str
    size: int
    marks: dict[str, float]
    prompt_id: str = ""
    wall: dict[str, float] = field(default_factory=dict)
    task: dict[str, float] = field(default_factory=dict)


class ComfyClient:
    """A plain ComfyUI API client: POST /prompt with its own prompt_id, /ws until done, /history, /view."""

    def __init__(self, name: str, url: str, headers: dict[str, str] | None = None) -> None:
        self.name, self.url = name, url
        self.client_id = f"bench-{name.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
        self.session = requests.Session()
        self.session.headers.update(headers or {})
        ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        header = [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.ws = websocket.create_connection(ws_url, timeout=30, header=header)

    def run(self, size: int) -> Job:
        prompt_id = str(uuid.uuid4())
        began, wall = time.monotonic(), {"began": time.time()}
        body = {"prompt": noise_workflow(size), "client_id": self.client_id, "prompt_id": prompt_id}
        answer = self.session.post(f"{self.url}/prompt", json=body, timeout=30)
        wall["answered"] = time.time()
        if answer.status_code != 200:
            raise RuntimeError(f"{self.name}: POST /prompt: {answer.status_code} {answer.text[:300]}")
        if answer.json().get("prompt_id") != prompt_id:
            raise RuntimeError(f"{self.name}: the answer names another prompt: {answer.text[:300]}")
        marks = {"first executing": self._until_done(prompt_id, began)}
        marks["last frame"] = time.monotonic() - began
        wall["last frame"] = time.time()
        entry = self.session.get(f"{self.url}/history/{prompt_id}", timeout=30).json()[prompt_id]
        wall["history"] = time.time()
        images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
        if not images:
            raise RuntimeError(f"{self.name}: no images in the history of {prompt_id}")
        for image in images:
            params = {k: image[k] for k in ("filename", "subfolder", "type")}
            self.session.get(f"{self.url}/view", params=params, timeout=30).raise_for_status()
        marks["images in hand"] = time.monotonic() - began
        wall["images in hand"] = time.time()
        return Job(self.name, size, marks, prompt_id, wall)

    def _until_done(self, prompt_id: str, began: float) -> float:
        """Read frames until this prompt's `executing` with `node: null`; when its first `executing` came."""
        first = None
        while True:
            message = self.ws.recv()
            if not isinstance(message, str):
                continue  # a binary (preview or image) frame
            event = json.loads(message)
            data = event.get("data") or {}
            if event.get("type") != "executing" or data.get("prompt_id") != prompt_id:
                continue
            if first is None:
                first = time.monotonic() - began
            if data.get("node") is None:
                return first

    def close(self) -> None:
        self.ws.close()
        self.session.close()


def measure(args: argparse.Namespace) -> list[Job]:
    farm_args = argparse.Namespace(db="postgres", processes=args.processes, threads=0, size=args.sizes[0])
    farm = Farm(farm_args, db_name="t2i_bench_front_door")
    print(f"front door: scheduler gunicorn -c t2i_project/gunicorn.conf.py, {args.processes} processes "
          f"(ASGI), PostgreSQL; one runworker daemon; simulator --job-time {JOB_TIME}; logs in {farm.logdir}",
          flush=True)  # fmt: skip
    clients: list[ComfyClient] = []
    try:
        sim_url, _sim = farm.simulator(JOB_TIME)
        worker = farm.worker(sim_url, prefetch=args.prefetch)
        farm.wait_registered([worker])
        time.sleep(1.0)  # the daemon is in its long poll now
        clients = [
            ComfyClient("direct", sim_url),
            ComfyClient("front door", f"{farm.url}/comfy", {"Authorization": f"Token {farm.api_token}"}),
        ]
        jobs: list[Job] = []
        for size in args.sizes:
            for round_ in range(args.warmup + args.jobs):
                for client in clients:
                    job = client.run(size)
                    if round_ >= args.warmup:
                        jobs.append(job)
            print(f"  {size}x{size}: {args.jobs} jobs per client done", flush=True)
        _task_times([j for j in jobs if j.client == "front door"])
        return jobs
    finally:
        for client in clients:
            client.close()
        farm.close()


def _task_times(jobs: list[Job]) -> None:
    """The farm's timestamps of the front door's tasks (found by the client's prompt ids)."""
    from generation.models import Task

    names = ("created_at", "leased_at", "started_at", "finished_at")
    rows = Task.objects.filter(client_prompt_id__in=[j.prompt_id for j in jobs]).values(
        "client_prompt_id", *names
    )
    found = {row["client_prompt_id"]: row for row in rows}
    for job in jobs:
        row = found.get(job.prompt_id, {})
        job.task = {name[:-3]: row[name].timestamp() for name in names if row.get(name)}


def stages(job: Job) -> dict[str, float]:
    """Seconds in each stage of one job; the farm's stages (task timestamps) for the front door only."""
    w, t, nan = job.wall, job.task, float("nan")
    farm = {
        "  POST sent -> task created": t.get("created", nan) - w["began"],
        "  task created -> POST answered": w["answered"] - t.get("created", nan),
        "  created -> leased": t.get("leased", nan) - t.get("created", nan),
        "  leased -> started": t.get("started", nan) - t.get("leased", nan),
        "  started -> finished": t.get("finished", nan) - t.get("started", nan),
        "  finished -> last frame": w["last frame"] - t.get("finished", nan),
    }
    return {
        "POST /prompt answered": w["answered"] - w["began"],
        **(farm if job.task else {}),
        "last frame -> /history answered": w["history"] - w["last frame"],
        "/history -> images in hand (/view)": w["images in hand"] - w["history"],
    }


def print_stages(jobs: list[Job], size: int) -> None:
    rows = {name: [stages(j) for j in jobs if (j.client, j.size) == (name, size)] for name in CLIENTS}
    print(f"\n{size}px stages, p50 / p99 ms")
    for stage in rows["front door"][0]:
        cells = []
        for name in CLIENTS:
            values = [r[stage] for r in rows[name] if stage in r and r[stage] == r[stage]]
            cells.append(f"{ms(pct(values, 50))} / {ms(pct(values, 99))}" if values else "")
        print(f"  {stage:<38}" + "".join(f"{cell:>20}" for cell in cells))


def report(jobs: list[Job], sizes: list[int]) -> list:
    """Print p50/p99 per mark for both clients and the added ms; return the figures for `python -m bench`."""
    from bench.report import Figure

    figures = []
    print(f"\n{'size':>7} {'mark':<17} {'direct p50/p99':>16} {'front door p50/p99':>20} {'added':>16}")
    for size in sizes:
        for mark in MARKS:
            p = {
                name: [pct([j.marks[mark] for j in jobs if (j.client, j.size) == (name, size)], q) * 1000
                       for q in (50, 99)]
                for name in ("direct", "front door")
            }  # fmt: skip
            added = [p["front door"][i] - p["direct"][i] for i in (0, 1)]
            cells = [f"{a:>7.1f} /{b:>7.1f}" for a, b in (p["direct"], p["front door"])]
            extra = f"{added[0]:>+7.1f} /{added[1]:>+7.1f}"
            print(f"{size:>5}px {mark:<17} {cells[0]:>16} {cells[1]:>20} {extra}")
            text = f"{size}px front door {mark}: added p50 (p99 {added[1]:+.1f} ms)"
            goal = ADDED_P50 if mark == "images in hand" else None
            figures.append(Figure("front_door", text, added[0], "ms", "postgres", "<=" if goal else "", goal))
    for size in sizes:
        print_stages(jobs, size)
    print("goal:")
    for figure in figures:
        if figure.target is not None:
            print(f"  {figure.name:<60} {figure.value:>+7.1f} ms  (<= {figure.target:g})  "
                  f"{verdict(figure.value <= figure.target)}")  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_job_options(parser, sizes="128")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started, load = datetime.now(), os.getloadavg()[0]
    jobs = measure(args)
    print(f"\n=== python -m bench.front_door ({started:%Y-%m-%d %H:%M}; {os.cpu_count()} cores; load average "
          f"before {load:.2f}, after {os.getloadavg()[0]:.2f}) ===")  # fmt: skip
    save_figures(args.json, report(jobs, args.sizes))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
