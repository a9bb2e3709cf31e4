"""Load generators spread over several client processes, so that Python threads in one process (one GIL)
never limit what the server is asked to do.

`run_clients("bench.lease:client", jobs, processes=4, duration=8)` splits `jobs` (one dict per simulated
client, each run on its own thread) round-robin over the processes, starts them together, stops them after
`duration` seconds and merges what they recorded: latency samples and counters per label, and the CPU
each client process used (cores = CPU seconds / wall seconds; a process near 1.0 is GIL-bound).

A client function has the signature `fn(job: dict, stop: threading.Event, rec: Recorder) -> None` and
returns when `stop` is set.
"""

from __future__ import annotations

import importlib
import multiprocessing
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


class Recorder:
    """Thread-safe sink of one client process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def sample(self, label: str, seconds: float) -> None:
        with self._lock:
            self.samples[label].append(seconds)

    def count(self, label: str, n: int = 1) -> None:
        with self._lock:
            self.counts[label] += n


@dataclass
class ClientResult:
    duration: float
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cpu: list[float] = field(default_factory=list)  # CPU seconds of each client process

    @property
    def cores(self) -> float:
        """Total CPU of the load generator, in cores."""
        return sum(self.cpu) / self.duration

    @property
    def busiest(self) -> float:
        """CPU of the busiest client process, in cores (near 1.0: that process is saturated)."""
        return max(self.cpu, default=0.0) / self.duration

    def describe(self) -> str:
        return (
            f"client CPU {self.cores:.2f} cores over {len(self.cpu)} process(es), busiest {self.busiest:.2f}"
        )


def _child(target: str, jobs: list[dict], duration: float, ready, go, out) -> None:
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    rec, stop = Recorder(), threading.Event()
    threads = [threading.Thread(target=fn, args=(job, stop, rec), daemon=True) for job in jobs]
    ready.put(True)
    go.wait()
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    cpu = time.process_time() - cpu0
    for t in threads:
        t.join(timeout=40)
    out.put({"samples": dict(rec.samples), "counts": dict(rec.counts), "cpu": cpu})


def run_clients(target: str, jobs: list[dict], *, processes: int, duration: float) -> ClientResult:
    """Run `jobs` for `duration` seconds on `processes` client processes (spawned, started together)."""
    processes = max(1, min(processes, len(jobs)))
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [jobs[i::processes] for i in range(processes)]
    children = [
        ctx.Process(target=_child, args=(target, share, duration, ready, go, out), daemon=True)
        for share in shares
    ]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=60)
    go.set()
    result = ClientResult(duration=duration)
    for _ in children:
        part = out.get(timeout=duration + 120)
        for label, values in part["samples"].items():
            result.samples[label].extend(values)
        for label, n in part["counts"].items():
            result.counts[label] += n
        result.cpu.append(part["cpu"])
    for child in children:
        child.join(timeout=10)
    return result
