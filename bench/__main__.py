"""`python -m bench` (`make bench`): every farm benchmark against real processes, one table of targets.

    python -m bench                        # PostgreSQL, default sizes (about 10 minutes on 2 cores)
    python -m bench --db sqlite --quick    # SQLite, small sizes (about 2 minutes)
    python -m bench --only lease,dispatch  # some of: machine, ratio, lease, dispatch, gap, scaling, read,
                                           # memory, latency, front_door; and, only when named, busy and
                                           # instances (PostgreSQL), scheduling (no database)

On PostgreSQL it first runs bench.reference (the issue's reference design, a minimal DRF view with an ORM
lease, and the raw-SQL ceiling), whose figures say how fast this machine is against the one the targets were
set on, and bench.ratio (server CPU per lease+complete cycle, the scheduler against that reference in turns
under the same server configuration: the ratio the CPU budgets are stated in). Then bench.lease (simulated
HTTP workers against the scheduler under gunicorn, and the raw-SQL ceiling) and bench.farm (the scheduler
under gunicorn, `manage.py runworker` daemons and ComfyUI simulators as processes: dispatch latency, GPU
idle gap, scaling, read path under load, memory), each in its own process on its own fresh database; on
PostgreSQL, bench.latency (one small job at a time: what the farm adds to a direct ComfyUI round trip). Prints
every figure beside its target with PASS/MISS and the database it came from, and writes
bench/results/<date>.json with the plots <date>-latency.png and <date>-scaling.png.
Each number is measured in this run; nothing is carried over from earlier runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.common import ROOT
from bench.report import Figure, Series, plot, table, write_json

SECTIONS = (
    "machine", "ratio", "lease", "dispatch", "gap", "scaling", "read", "memory", "latency", "front_door",
)  # fmt: skip
# Run only when --only names them: bench.busy fills the machine for minutes and bench.instances runs two
# schedulers and kills one (PostgreSQL); bench.scheduling replays FIFO against placement in simulated time
# (no database, either --db).
NAMED_ONLY = ("busy", "instances", "scheduling")

# Sizes per mode; every one is also a flag. "postgres" fits in ~10 minutes, "sqlite" and "quick" in less.
SIZES = {
    "postgres": {
        "lease_workers": "1,8,32,50,64", "lease_duration": 5.0, "think_workers": 50, "think_duration": 15.0,
        "dispatch_tasks": 500, "gap_jobs": 60, "scaling_workers": "1,4,16,32",
        "scaling_fast_workers": "1,4,16", "scaling_window": 12.0, "readers": 200, "read_duration": 20.0,
        "memory_tasks": 1000, "latency_jobs": 50,
    },
    "sqlite": {
        "lease_workers": "1,8,32,50", "lease_duration": 4.0, "think_workers": 50, "think_duration": 10.0,
        "dispatch_tasks": 200, "gap_jobs": 40, "scaling_workers": "1,4,16", "scaling_fast_workers": "1,4",
        "scaling_window": 10.0, "readers": 100, "read_duration": 12.0, "memory_tasks": 500,
        "latency_jobs": 0,
    },
    "quick": {
        "lease_workers": "1,50", "lease_duration": 3.0, "think_workers": 50, "think_duration": 5.0,
        "dispatch_tasks": 60, "gap_jobs": 15, "scaling_workers": "1,4", "scaling_fast_workers": "4",
        "scaling_window": 5.0, "readers": 50, "read_duration": 6.0, "memory_tasks": 200,
        "latency_jobs": 15,
    },
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"some of {', '.join(SECTIONS + NAMED_ONLY)}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument(
        "--wait-quiet", type=float, default=0, metavar="SECONDS",
        help="first wait up to SECONDS for the 1-minute load average to drop below 1.5",
    )  # fmt: skip
    sizes = parser.add_argument_group("sizes (defaults depend on --db and --quick)")
    sizes.add_argument("--lease-workers", help="simulated workers per lease run, comma-separated")
    sizes.add_argument("--lease-duration", type=float, help="seconds per lease run")
    sizes.add_argument("--think-workers", type=int, help="workers of the 1 s think-time run (and readers)")
    sizes.add_argument("--think-duration", type=float)
    sizes.add_argument("--dispatch-tasks", type=int)
    sizes.add_argument("--dispatch-workers", type=int, default=4)
    sizes.add_argument("--gap-jobs", type=int)
    sizes.add_argument("--scaling-workers", help="worker counts with 1 s jobs")
    sizes.add_argument("--scaling-fast-workers", help="worker counts with 200 ms jobs")
    sizes.add_argument("--scaling-window", type=float)
    sizes.add_argument("--readers", type=int, help="status pollers of the read-path run")
    sizes.add_argument("--gallery-viewers", type=int, default=4)
    sizes.add_argument("--read-duration", type=float)
    sizes.add_argument("--memory-tasks", type=int)
    sizes.add_argument("--latency-jobs", type=int, help="jobs per client and image size (bench.latency)")
    sizes.add_argument("--size", type=int, default=512, help="image size of the farm's tasks")
    server = parser.add_argument_group("scheduler")
    server.add_argument("--processes", type=int, default=2, help="gunicorn worker processes")
    server.add_argument(
        "--threads", type=int, default=0, help="0: ASGI, the production configuration; N: WSGI, gthread x N"
    )
    server.add_argument(
        "--ratio-threads",
        type=int,
        default=16,
        help="ratio: both apps under WSGI gthread x N (the reference design keeps a connection per thread, "
        "which ASGI's threads would never close)",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else args.db
    for key, value in SIZES[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS) - set(NAMED_ONLY)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


class CpuWatch:
    """Cores used on the machine during the run by processes outside this benchmark (PostgreSQL included:
    its backends serve other people's tests as well as ours)."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.start = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()
        self.loads: list[float] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def _sample(self) -> None:
        while not self._stop.wait(5):
            self.loads.append(os.getloadavg()[0])

    def finish(self) -> dict:
        self._stop.set()
        wall = time.monotonic() - self.start
        busy, own = self._busy() - self.busy0, self._own() - self.own0
        return {
            "wall_seconds": round(wall, 1),
            "benchmark_cores": round(own / wall, 2),
            "other_cores": round(max(0.0, busy - own) / wall, 2),
            "load_avg_1min_mean": round(sum(self.loads) / len(self.loads), 2) if self.loads else None,
            "load_avg_1min_max": round(max(self.loads), 2) if self.loads else None,
        }


def wait_quiet(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= 1.5 and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: load average {os.getloadavg()[0]:.2f}", flush=True)
        time.sleep(30)


def _run_suite(module: str, argv: list[str], work: Path) -> tuple[list[Figure], list[Series], dict]:
    out = work / f"{module.rsplit('.', 1)[-1]}.json"
    cmd = [sys.executable, "-m", module, *argv, "--json", str(out)]
    print(f"\n$ {shlex.join(cmd[1:])}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode or not out.exists():
        print(f"{module} failed (exit {result.returncode})", flush=True)
        failed = Figure(module.rsplit(".", 1)[-1], "suite failed to finish", float("nan"), "", "-", "<=", 0)
        return [failed], [], {}
    data = json.loads(out.read_text())
    figures = [Figure.from_dict(f) for f in data["figures"]]
    return figures, [Series.from_dict(s) for s in data["series"]], data.get("details", {})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    started = datetime.now()
    load_before = os.getloadavg()
    watch = CpuWatch()
    work = Path(tempfile.mkdtemp(prefix="t2i-bench-"))
    os.environ.setdefault("T2I_BENCH_MEDIA", str(work / "media"))
    figures: list[Figure] = []
    series: list[Series] = []
    details: dict = {}
    loads = " ".join(f"{x:.2f}" for x in load_before)
    print(f"bench: {args.db}{' (quick)' if args.quick else ''}; {os.cpu_count()} cores; load average {loads}")

    if "machine" in args.sections and args.db == "postgres":
        # The reference design and the raw-SQL ceiling on this machine, against the figures quoted
        # for the machine its targets were set on: how fast this machine is, for reading everything else.
        f, s, d = _run_suite("bench.reference", ["--workers", "50", "--duration", str(args.lease_duration),
                             "--server-log", str(work / "reference.log")], work)  # fmt: skip
        figures += f
    if "ratio" in args.sections and args.db == "postgres":
        # Server CPU per lease+complete cycle against the reference design, in turns under the same server
        # configuration: the ratio the CPU budgets are stated in (the machine's speed drifts between days).
        f, s, d = _run_suite("bench.ratio", ["--workers", "50", "--duration", str(args.lease_duration),
                             "--processes", str(args.processes), "--threads", str(args.ratio_threads),
                             "--server-log", str(work / "ratio.log")], work)  # fmt: skip
        figures += f
    if "lease" in args.sections:
        lease_argv = [
            "--db", args.db, "--workers", args.lease_workers, "--duration", str(args.lease_duration),
            "--think-workers", str(args.think_workers), "--think-duration", str(args.think_duration),
            "--processes", str(args.processes), "--threads", str(args.threads),
            "--server-log", str(work / "lease-scheduler.log"),
        ]  # fmt: skip
        f, s, d = _run_suite("bench.lease", lease_argv, work)
        figures += f
        series += s
        details |= d
    farm_phases = [p for p in ("dispatch", "gap", "scaling", "read", "memory") if p in args.sections]
    if farm_phases:
        farm_argv = [
            "--db", args.db, "--phases", ",".join(farm_phases),
            "--farm-processes", str(args.processes), "--farm-threads", str(args.threads),
            "--size", str(args.size), "--dispatch-tasks", str(args.dispatch_tasks),
            "--dispatch-workers", str(args.dispatch_workers), "--gap-jobs", str(args.gap_jobs),
            "--scaling-workers", args.scaling_workers, "--scaling-fast-workers", args.scaling_fast_workers,
            "--scaling-window", str(args.scaling_window), "--readers", str(args.readers),
            "--gallery-viewers", str(args.gallery_viewers), "--read-duration", str(args.read_duration),
            "--memory-tasks", str(args.memory_tasks),
        ]  # fmt: skip
        f, s, d = _run_suite("bench.farm", farm_argv, work)
        figures += f
        series += s
        details |= d
    if "latency" in args.sections and args.db == "postgres":
        # One small job at a time (PostgreSQL only): direct to the simulator, through the farm with the event
        # stream, and polling; the scheduler with its production configuration.
        f, s, d = _run_suite("bench.latency", ["--jobs", str(args.latency_jobs)], work)
        figures += f
    if "front_door" in args.sections and args.db == "postgres":
        # The ComfyUI front door: one plain ComfyUI client direct to the simulator, the same through /comfy.
        f, s, d = _run_suite("bench.front_door", ["--jobs", str(args.latency_jobs)], work)
        figures += f

    if "scheduling" in args.sections:
        # FIFO against placement, replayed in simulated time: the mixed farm (8 workers x 400 tasks;
        # 64 x 10,000 unless --quick) and identical workers with one checkpoint.
        f, s, d = _run_suite("bench.scheduling", ["--quick"] if args.quick else [], work)
        figures += f
    if "busy" in args.sections and args.db == "postgres":
        # A busy farm: 200 simulated runworker daemons x 10 s jobs (quick: 50 x 5 s), CPU per task.
        busy_argv = ["--workers", "50", "--job-seconds", "5", "--duration", "40"] if args.quick else []
        f, s, d = _run_suite("bench.busy", [*busy_argv, "--server-log", str(work / "busy.log")], work)
        figures += f
    if "instances" in args.sections and args.db == "postgres":
        # Two scheduler instances on one database: dispatch across them, then one SIGKILLed mid-run.
        inst_argv = ["--dispatch-seconds", "15", "--tasks", "90"] if args.quick else []
        inst_argv += ["--server-log", str(work / "instances.log")]
        f, s, d = _run_suite("bench.instances", inst_argv, work)
        figures += f

    machine = watch.finish()
    shutil.rmtree(work / "media", ignore_errors=True)  # thousands of uploaded PNGs
    load_after = os.getloadavg()
    command = "python -m bench" + (
        "" if argv is None and len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:])
    )
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "database": args.db,
        "quick": args.quick,
        "sizes": {k: getattr(args, k) for k in SIZES["postgres"]} | {"size": args.size},
        "scheduler": f"gunicorn {args.processes} processes, "
        + (f"gthread x {args.threads} (WSGI)" if args.threads else "uvicorn (ASGI)"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            **machine,
        },
        "details": details,
    }
    title = (f"{args.db}, {os.cpu_count()} cores, load before {load_before[0]:.2f}, other processes "
             f"{machine['other_cores']:.2f} cores, {started:%Y-%m-%d %H:%M}")  # fmt: skip
    print(f"\n=== {command}  ({started:%Y-%m-%d %H:%M}, {machine['wall_seconds']:.0f} s) ===")
    print(f"machine: {os.cpu_count()} cores; load average before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f}; during the run this benchmark used {machine['benchmark_cores']:.2f} cores "
          f"and other processes (PostgreSQL included) {machine['other_cores']:.2f}")  # fmt: skip
    print(table(figures))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{started:%Y-%m-%d_%H%M}{'-' + args.db if args.db != 'postgres' else ''}"
    write_json(Path(f"{stem}.json"), meta, figures, series)
    written = [Path(f"{stem}.json"), *plot(stem, series, title)]
    print(
        "wrote " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in written)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
