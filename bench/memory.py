"""Memory of one worker daemon over many tasks: its RSS every 100 completed tasks (psutil) and its peak
(Linux VmHWM), which must stay flat as the task count grows. One `manage.py runworker` daemon, prefetch 2,
one `manage.py comfyui_simulator` process with 10 ms jobs, the farm's usual tasks.
"""

from __future__ import annotations

import time

from bench.common import peak_rss_mb, rss_mb
from bench.report import Figure, Series

FLAT_MB = 5.0  # growth from the first to the last sample still counted as flat
EVERY = 100


def run(farm, args) -> tuple[list, list]:
    count = args.memory_tasks
    print(f"memory: one worker daemon over {count} tasks, RSS every {EVERY}", flush=True)
    url, sim = farm.simulator(0.01)
    farm.seed(count + 10)
    start = farm.completed()
    worker = farm.worker(url, prefetch=2)
    farm.wait_registered([worker])
    samples: list[tuple[int, float]] = []
    mark, deadline, last_change, last_done = EVERY, time.monotonic() + count * 2 + 60, time.monotonic(), 0
    while mark <= count and time.monotonic() < deadline:
        done = farm.completed() - start
        if done >= mark:
            samples.append((done, rss_mb(worker.pid)))
            print(f"  {done:>5} tasks: RSS {samples[-1][1]:.1f} MB", flush=True)
            mark += EVERY
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > 60:
            print("  no progress for 60 s; stopping the memory run", flush=True)
            break
        time.sleep(0.2)
    peak = peak_rss_mb(worker.pid)
    farm.stop([worker])
    farm.stop([sim])
    db = farm.db
    first, last = (samples[0][1], samples[-1][1]) if samples else (float("nan"), float("nan"))
    done = samples[-1][0] if samples else 0
    print(f"  first {first:.1f} MB, last {last:.1f} MB, peak {peak:.1f} MB", flush=True)
    figures = [
        Figure("memory", f"worker daemon RSS after {samples[0][0] if samples else 0} tasks (first)", first,
               "MB", db),
        Figure("memory", f"worker daemon RSS after {done} tasks (last)", last, "MB", db),
        Figure("memory", "worker daemon peak RSS", peak, "MB", db, "<=", 80),
        Figure("memory", "worker daemon growth, first to last sample", last - first, "MB", db, "<=", FLAT_MB,
               note=f"flat = at most {FLAT_MB:g} MB more after {done} tasks than after {EVERY}"),
    ]  # fmt: skip
    series = [
        Series("memory", "worker daemon RSS", "curve", x=[d for d, _ in samples], y=[m for _, m in samples],
               db=db, xlabel="tasks completed", ylabel="RSS (MB)")
    ]  # fmt: skip
    return figures, series
