"""Dispatch latency: from the submit call returning to ComfyUI (the simulator) receiving the prompt, while
the workers are idle and long-polling `lease` with `wait`.

`--dispatch-workers` daemons, each with its own `manage.py comfyui_simulator` process (20 ms jobs, so a
worker is free again well before the next submit). Tasks are submitted one at a time through the REST API,
50–80 ms apart. The submit time is taken when the API call returns; the receive time is the simulator's
own clock at the start of its POST /prompt handler (GET /simulator/stats); the task is found by the
filename prefix of its workflow (`t2i/<task uuid>_a1`). A negative latency is real: the worker can lease
the task (woken by the commit's NOTIFY) and hand it to ComfyUI before the submit's answer reaches the client.
"""

from __future__ import annotations

import random
import time

from bench.common import pct
from bench.farm import prefix_task, sim_stats
from bench.report import Figure, Series

JOB_TIME = 0.02


def run(farm, args) -> tuple[list, list]:
    n, count = args.dispatch_workers, args.dispatch_tasks
    print(f"dispatch: {count} tasks, {n} idle workers, each with its own simulator process", flush=True)
    sims = [farm.simulator(JOB_TIME) for _ in range(n)]
    workers = [farm.worker(url, prefetch=2) for url, _ in sims]
    farm.wait_registered(workers)
    time.sleep(1.0)  # every daemon is in its long-poll now

    submitted: dict[str, float] = {}
    call: list[float] = []
    for _ in range(count):
        t0 = time.time()
        task = farm.submit()
        done = time.time()
        submitted[task["id"]] = done
        call.append(done - t0)
        time.sleep(random.uniform(0.05, 0.08))

    received: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while len(received) < count and time.monotonic() < deadline:
        for url, _ in sims:
            for entry in sim_stats(url):
                task_id = prefix_task(entry["filename_prefix"])
                if task_id in submitted:
                    received.setdefault(task_id, entry["received"])
        if len(received) < count:
            time.sleep(0.5)
    farm.stop(workers)
    farm.stop([proc for _, proc in sims])

    latencies = [received[t] - submitted[t] for t in submitted if t in received]
    lost = count - len(latencies)
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    print(
        f"  submit -> ComfyUI: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(latencies)} tasks"
        f" ({lost} not received); submit call p50 {pct(call, 50) * 1000:.1f} ms",
        flush=True,
    )
    db = farm.db
    note = f"{len(latencies)} tasks, {n} idle workers; {lost} never reached ComfyUI within 60 s"
    figures = [
        Figure(
            "dispatch", "submit returned -> ComfyUI got prompt, p50", p50 * 1000, "ms", db, "<=", 50, note
        ),
        Figure("dispatch", "submit returned -> ComfyUI got prompt, p99", p99 * 1000, "ms", db, "<=", 150),
        Figure("dispatch", "submit API call itself, p50", pct(call, 50) * 1000, "ms", db),
        Figure("dispatch", "tasks never dispatched", lost, "", db, "<=", 0),
    ]
    series = [
        Series("dispatch", "submit returned -> prompt received", "latency", latencies, db=db),
        Series("dispatch", "submit API call", "latency", call, db=db),
    ]
    return figures, series
