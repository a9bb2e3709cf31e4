"""Scaling: N worker daemons, each with its own simulator, a full queue; throughput and efficiency =
throughput / (N × 1 job per job time).

The fleet grows (1, 4, 16, 32 daemons by default) and is measured at each size with 1 s jobs and, for the
sizes of issue 3, with 200 ms jobs (the simulators' job time changes at run time through
POST /simulator/faults). The simulators run 16 to a `bench.simhost` process (the real simulator code, one
port each). Throughput is read from the scheduler's own records: per worker, (completions - 1) / (time
from its first to its last completion) inside the window, summed over the workers; the simulators'
busy fraction in the same window is printed beside it. With `read` among the phases, the read-path
benchmark runs while the largest fleet works (bench.read_path).
"""

from __future__ import annotations

import time
from collections import defaultdict

from bench.common import pct
from bench.farm import sim_set, sim_stats
from bench.report import Figure, Series

PER_HOST = 16
SETTLE = 2.0  # seconds after a change before the window opens (plus two job times)


def throughput(t0: float, t1: float) -> tuple[float, int]:
    """Completions per second in [t0, t1] summed over workers, and the number of completions."""
    from datetime import UTC, datetime

    from generation.models import Task

    rows = Task.objects.filter(
        status=Task.Status.COMPLETED,
        finished_at__gte=datetime.fromtimestamp(t0, UTC),
        finished_at__lte=datetime.fromtimestamp(t1, UTC),
    ).values_list("worker_id", "finished_at")
    by_worker: dict[int, list[float]] = defaultdict(list)
    for worker_id, finished in rows:
        by_worker[worker_id].append(finished.timestamp())
    total = 0.0
    for times in by_worker.values():
        times.sort()
        if len(times) >= 2 and times[-1] > times[0]:
            total += (len(times) - 1) / (times[-1] - times[0])
    return total, sum(len(t) for t in by_worker.values())


def simulator_usage(urls: list[str], t0: float, t1: float) -> tuple[float, float]:
    """Mean share of [t0, t1] during which each simulator was executing a prompt, and the median time one
    prompt took from execution_start to execution_success (the job time plus the simulator's own work:
    drawing, encoding and saving the PNG)."""
    shares, durations = [], []
    for url in urls:
        busy = 0.0
        for e in sim_stats(url):
            start, end = e.get("execution_start"), e.get("execution_success") or e.get("execution_error")
            if start is None:
                continue
            if end is not None and t0 <= start and end <= t1:
                durations.append(end - start)
            end = end or t1
            busy += max(0.0, min(end, t1) - max(start, t0))
        shares.append(busy / (t1 - t0))
    busy = sum(shares) / len(shares) if shares else float("nan")
    return busy, pct(durations, 50)


class CpuMeter:
    """CPU seconds used by each group of processes, and by the whole machine, between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        import psutil

        self.psutil = psutil
        self.procs = {k: [psutil.Process(p) for p in pids] for k, pids in groups.items()}

    def _read(self) -> dict:
        out = {}
        for name, procs in self.procs.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except self.psutil.NoSuchProcess:
                    pass
            out[name] = total
        postgres = {}  # per backend: backends come and go during a window
        for p in self.psutil.process_iter(["name", "cpu_times"]):
            if p.info["name"] == "postgres" and p.info["cpu_times"]:
                postgres[p.pid] = p.info["cpu_times"].user + p.info["cpu_times"].system
        out["postgres"] = postgres
        t = self.psutil.cpu_times()
        out["machine"] = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        return out

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), self._read()

    def stop(self) -> dict[str, float]:
        """Cores used per group over the interval; "other" is the machine minus every named group."""
        wall, c1 = time.monotonic() - self.t0, self._read()
        before = self.c0["postgres"]  # a backend that ended in the window is missed; a new one counts whole
        pg = sum(cpu - before.get(pid, 0.0) for pid, cpu in c1.pop("postgres").items())
        cores = {k: (c1[k] - self.c0[k]) / wall for k in c1} | {"postgres": pg / wall}
        cores["other"] = max(0.0, cores["machine"] - sum(v for k, v in cores.items() if k != "machine"))
        return cores


def thumbnail_cpu_ms(size: int) -> float:
    """CPU time of one thumbnail (generation.images.make_thumbnail) of a simulator picture, median of 15."""
    from generation.images import make_thumbnail
    from workers_app.simulator import images

    png = images.encode_png(images.render_prompt(size, size, "a red fox in the snow", 1))
    times = []
    for _ in range(15):
        t = time.process_time()
        make_thumbnail(png)
        times.append(time.process_time() - t)
    return pct(times, 50) * 1000


class Fleet:
    """Simulator hosts and worker daemons, grown on demand."""

    def __init__(self, farm, size: int, job_time: float) -> None:
        self.farm = farm
        self.urls: list[str] = []
        self.hosts = []
        for start in range(0, size, PER_HOST):
            urls, proc = farm.simhost(min(PER_HOST, size - start), job_time)
            self.urls += urls
            self.hosts.append(proc)
        self.workers = []
        self.job_time = job_time

    def grow(self, n: int) -> None:
        new = [self.farm.worker(url) for url in self.urls[len(self.workers) : n]]
        self.workers += new
        if new:
            self.farm.wait_registered(new)

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(
            {
                "scheduler": self.farm.server.worker_pids(),
                "daemons": [w.pid for w in self.workers],
                "simulators": [h.pid for h in self.hosts],
            }
        )

    def set_job_time(self, job_time: float) -> None:
        for url in self.urls:
            sim_set(url, job_time=job_time)
        self.job_time = job_time

    def stop(self) -> None:
        self.farm.stop(self.workers)
        self.farm.stop(self.hosts)


def keep_queue_full(farm, n: int, job_time: float, seconds: float) -> None:
    from generation.models import Task

    need = int(n / job_time * seconds * 1.3) + 4 * n
    queued = Task.objects.filter(status=Task.Status.QUEUED).count()
    if queued < need:
        farm.seed(need - queued)


def run(farm, args) -> tuple[list, list]:
    slow = [int(n) for n in args.scaling_workers.split(",") if n]
    fast = [int(n) for n in args.scaling_fast_workers.split(",") if n]
    sizes = sorted(set(slow + fast))
    window = args.scaling_window
    print(f"scaling: {', '.join(map(str, sizes))} workers; 1 s jobs at {slow}, 200 ms jobs at {fast}; "
          f"{window:.0f} s windows", flush=True)  # fmt: skip
    fleet = Fleet(farm, max(sizes), 1.0)
    db = farm.db
    results: dict[float, dict[int, float]] = {1.0: {}, 0.2: {}}
    figures, series, cpu_log = [], [], []
    try:
        for n in sizes:
            fleet.grow(n)
            for job_time, levels in ((1.0, slow), (0.2, fast)):
                if n not in levels:
                    continue
                fleet.set_job_time(job_time)
                keep_queue_full(farm, n, job_time, window + SETTLE + 2 * job_time + 5)
                time.sleep(SETTLE + 2 * job_time)
                meter = fleet.cpu_meter()
                meter.start()
                t0 = time.time()
                time.sleep(window)
                t1 = time.time()
                cores = meter.stop()
                rate, done = throughput(t0, t1)
                ideal = n / job_time
                busy, job = simulator_usage(fleet.urls[:n], t0, t1)
                results[job_time][n] = rate / ideal
                per_task = {k: 1000 * v / rate for k, v in cores.items()} if rate else {}
                cpu = (f"CPU {cores['machine']:.2f} cores: scheduler {cores['scheduler']:.2f}, daemons "
                       f"{cores['daemons']:.2f}, simulators {cores['simulators']:.2f}, PostgreSQL "
                       f"{cores['postgres']:.2f}, other {cores['other']:.2f}")  # fmt: skip
                if per_task:
                    cpu += (f"; per task: scheduler {per_task['scheduler']:.0f} ms, daemons "
                            f"{per_task['daemons']:.0f} ms, simulators {per_task['simulators']:.0f} ms, "
                            f"PostgreSQL {per_task['postgres']:.0f} ms")  # fmt: skip
                print(f"  {n:>3} workers, {job_time * 1000:.0f} ms jobs: {rate:.2f} tasks/s of {ideal:.1f} "
                      f"({rate / ideal:.1%}); simulators busy {busy:.1%}, a job takes {job * 1000:.0f} ms "
                      f"there; {done} completions; {cpu}", flush=True)  # fmt: skip
                target = (job_time == 1.0 and n == max(slow)) or (job_time == 0.2 and n == max(fast))
                name = f"{n} workers, {job_time * 1000:.0f} ms jobs: efficiency"
                note = (f"{rate:.2f} tasks/s of {ideal:.1f}; simulators busy {busy:.1%} (a job took "
                        f"{job * 1000:.0f} ms in the simulator); {cpu}")  # fmt: skip
                figures.append(
                    Figure("scaling", name, 100 * rate / ideal, "%", db, ">=" if target else "",
                           95 if target else None, note)
                )  # fmt: skip
                cpu_log.append({"workers": n, "job_time": job_time, "tasks_per_s": rate, "busy": busy,
                                "job_seconds": job, "cores": cores, "ms_cpu_per_task": per_task})  # fmt: skip
        if "read" in args.phases.split(","):
            from bench import read_path

            fleet.set_job_time(1.0)
            keep_queue_full(farm, len(fleet.workers), 1.0, args.read_duration + 10)
            f, s = read_path.run(farm, args, fleet)
            figures += f
            series += s
    finally:
        fleet.stop()
    if cpu_log:
        thumb = thumbnail_cpu_ms(args.size)
        last = cpu_log[-1]
        share = thumb / last["ms_cpu_per_task"]["scheduler"] if last["ms_cpu_per_task"] else float("nan")
        print(f"  a {args.size} px thumbnail (made in the completion request) costs {thumb:.1f} ms CPU: "
              f"{share:.0%} of the scheduler's CPU per task in the last run", flush=True)  # fmt: skip
        figures.append(
            Figure("scaling", f"CPU of one {args.size} px thumbnail (complete request)", thumb, "ms", "-",
                   note=f"{share:.0%} of the scheduler's CPU per task at {last['workers']} workers")
        )  # fmt: skip
        farm.extra["scaling_cpu"] = cpu_log
    for job_time, label in ((1.0, "1 s jobs"), (0.2, "200 ms jobs")):
        points = sorted(results[job_time].items())
        if not points:
            continue
        xs = [n for n, _ in points]
        kw = {"xlabel": "workers (each with its own simulator)"}
        series += [
            Series("scaling", label, "curve", x=xs, y=[100 * e for _, e in points], db=db,
                   ylabel="efficiency (% of workers x jobs/s)", **kw),
            Series("scaling", label, "curve", x=xs, y=[e * n / job_time for n, e in points], db=db,
                   ylabel="tasks/s", **kw),
            Series("scaling", f"ideal, {label}", "curve", x=xs, y=[n / job_time for n in xs],
                   ylabel="tasks/s", **kw),
        ]  # fmt: skip
    return figures, series
