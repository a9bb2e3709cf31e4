"""`python -m bench.scheduling --live` (or `python -m bench.scheduling_live`): the standard mixed farm of
bench.scheduling run for real, FIFO and smart in turns, each on a fresh PostgreSQL database: the scheduler
under gunicorn, 8 `manage.py comfyui_simulator` processes with the farm's knobs and 8 `manage.py runworker`
daemons, at half speed (1 s of simulated work = 0.5 s), so that this machine carries it.

The farm as bench.scheduling.mixed() describes it: 2 fast (x2), 4 normal, 2 slow (x0.5) simulators holding the
3 checkpoints, each warm on one (2-3-3: a prompt run on it before its daemon starts, and the worker's warm
checkpoint set to match); a 4 s switch (2 s real, given as --switch-time x speed because the simulator divides
every node's time by its speed factor); one job = 2 s at x1 (1 s real). The farm has run before: FIFO's pass
starts with the speeds and switch cost the replay's "learned costs" give each worker (10 samples each), which
live learning then corrects (the daemons' and the scheduler's overheads per task are in what it learns); the
smart pass starts with what the FIFO pass learned, as a farm that has run for a while would (`--mode smart`
alone starts from the replay's). User 1 queues the flood at once; users
2 and 3 one task every 3 s for the first 60 s (simulated), at the replay's seeded times, through the submit
service. Each task's ETA at submit is generation.eta's answer right after it is queued (what the REST answer
and /status show). The figures are computed from the database afterwards (task execution start and finish,
each attempt's worker and checkpoint) with the replay's measures, in simulated seconds.

Each mode runs in its own process (Django settings and database are per process); this one prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import scheduling
from bench.scheduling import CHECKPOINTS, JOB_SECONDS, UNIT, Result, Timings

SCALE = 0.5  # real seconds per simulated second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling_live", description=__doc__)
    parser.add_argument("--flood", type=int, default=400, help="tasks user 1 queues at once")
    parser.add_argument(
        "--db-name", default="t2i_bench_sched_live", help="PostgreSQL databases: NAME_fifo, NAME_smart"
    )
    parser.add_argument("--timeout", type=float, default=360.0, help="real seconds a mode may take at most")
    parser.add_argument("--mode", choices=["fifo", "smart"], help=argparse.SUPPRESS)  # one mode, in a child
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--costs-in", type=Path, help=argparse.SUPPRESS)  # learned costs to start from
    parser.add_argument("--costs-out", type=Path, help=argparse.SUPPRESS)  # what this pass learned
    parser.add_argument("--json", type=Path, help="write both modes' results here")
    args = parser.parse_args(argv)
    if args.mode:
        result = run_mode(args.mode, args)
        args.out.write_text(json.dumps(asdict(result)))
        return 0
    results = {}
    folder = Path(tempfile.mkdtemp(prefix="t2i-sched-live-"))
    costs = folder / "learned.json"
    for mode in ("fifo", "smart"):
        out = folder / f"{mode}.json"
        started = time.monotonic()
        cmd = [sys.executable, "-m", "bench.scheduling_live", "--mode", mode, "--out", str(out)]
        cmd += ["--flood", str(args.flood), "--db-name", args.db_name, "--timeout", str(args.timeout)]
        cmd += ["--costs-in", str(costs)] if costs.exists() else ["--costs-out", str(costs)]
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
        results[mode] = Result(**json.loads(out.read_text()))
        print(f"  ({mode} took {time.monotonic() - started:.0f} s real)", flush=True)
    print_table(f"live: mixed 8 workers x {args.flood} tasks, simulators at half speed", results)
    if args.json:
        args.json.write_text(json.dumps({mode: asdict(r) for mode, r in results.items()}))
    return 0


def print_table(title: str, results: dict[str, Result]) -> None:
    fifo, smart = results["fifo"], results["smart"]
    print(f"\n{title} (simulated seconds)")
    print(f"  {'':30} {'FIFO':>10} {'smart':>10} {'change':>9}")
    for label, attr, fmt in scheduling.ROWS:
        if attr in ("shown_p50", "shown_p95", "choice_ms"):
            continue  # the replay's own: ETAs re-shown every 10 s, and the pure choice's cost
        a, b = getattr(fifo, attr), getattr(smart, attr)
        change = f"{(b - a) / a:+.0%}" if a and attr != "busy_share" else ""
        print(f"  {label:30} {fmt.format(a):>10} {fmt.format(b):>10} {change:>9}")


@dataclass
class LiveWorker:
    """What bench.scheduling's measures read of a worker: its runs (start, end, user, task), simulated s."""

    busy: list[tuple[float, float, int | None, int]] = field(default_factory=list)


def run_mode(mode: str, args: argparse.Namespace) -> Result:
    os.environ["T2I_SCHEDULER"] = mode
    os.environ["T2I_MAX_QUEUED_PER_USER"] = "0"
    from bench.farm import TEMPLATE, Farm

    farm_args = argparse.Namespace(db="postgres", processes=2, threads=0, size=512)
    farm = Farm(farm_args, db_name=f"{args.db_name}_{mode}")
    try:
        learned = json.loads(args.costs_in.read_text()) if args.costs_in else None
        workers = start_workers(farm, learned)
        result = flood_and_trickle(farm, workers, args, TEMPLATE)
        if args.costs_out:
            args.costs_out.write_text(json.dumps(learned_costs()))
        return result
    finally:
        farm.close()


def learned_costs() -> dict[str, dict]:
    """What each worker learned in this pass, by worker name: its switch cost and its speeds."""
    from workers_app.models import Worker, WorkerSpeed

    costs = {
        w.name: {"switch_seconds": w.switch_seconds, "speeds": []}
        for w in Worker.objects.filter(name__startswith="live-")
    }
    for name, checkpoint, shape, rate in WorkerSpeed.objects.filter(
        worker__name__startswith="live-"
    ).values_list("worker__name", "checkpoint", "shape", "seconds_per_unit"):
        costs[name]["speeds"].append([checkpoint, shape, rate])
    return costs


def start_workers(farm, learned: dict[str, dict] | None = None) -> dict[int, str]:
    """The mixed farm's simulators, warmed, and their daemons, registered with learned costs (`learned`, by
    worker name, else the replay's); worker pk -> the checkpoint it starts warm on."""
    import requests

    from workers_app.models import Worker, WorkerSpeed

    sims = []
    for speed, warm in scheduling.mixed().workers:
        switch = 4.0 * SCALE * speed  # the simulator divides it by the speed factor again
        url, _ = farm.simulator(
            JOB_SECONDS * SCALE, "--speed-factor", str(speed), "--switch-time", str(switch),
            "--checkpoints", ",".join(CHECKPOINTS),
        )  # fmt: skip
        sims.append((url, speed, warm))
    for url, _, warm in sims:
        response = requests.post(f"{url}/prompt", json={"prompt": warm_workflow(warm)}, timeout=10)
        response.raise_for_status()
        sims_wait(url, response.json()["prompt_id"])
    names = [f"live-{i}-x{speed:g}" for i, (_, speed, _) in enumerate(sims)]
    procs = [farm.worker(url, name=name) for name, (url, _, _) in zip(names, sims, strict=True)]
    farm.wait_registered(procs)
    warm_of = {}
    for proc, name, (_, speed, warm) in zip(procs, names, sims, strict=True):
        pk = farm.worker_ids[proc.pid]
        warm_of[pk] = warm
        replay = {
            "switch_seconds": 4.0 * SCALE,
            "speeds": [[c, "", JOB_SECONDS * SCALE / speed / UNIT] for c in CHECKPOINTS],
        }
        costs = (learned or {}).get(name, replay)
        Worker.objects.filter(pk=pk).update(
            warm_checkpoint=warm, switch_seconds=costs["switch_seconds"], switch_samples=10
        )
        WorkerSpeed.objects.bulk_create(
            WorkerSpeed(worker_id=pk, checkpoint=c, shape=shape, seconds_per_unit=rate, samples=10)
            for c, shape, rate in costs["speeds"]
        )
    # The scheduler keeps what changes only at register or with learning for farm_snapshot.STATIC_SECONDS.
    from generation import farm_snapshot

    time.sleep(farm_snapshot.STATIC_SECONDS + 0.5)
    return warm_of


def warm_workflow(checkpoint: str) -> dict:
    """The farm template's workflow for one task on `checkpoint`: what loads it in a simulator."""
    from bench.farm import TEMPLATE
    from generation.models import Task, WorkflowTemplate
    from generation.services.leasing import task_workflow

    task = Task(prompt="warm-up", width=512, height=512, seed=1, checkpoint=checkpoint)
    task.template = WorkflowTemplate.objects.get(name=TEMPLATE)
    return task_workflow(task, "warm-up")


def sims_wait(url: str, prompt_id: str, timeout: float = 30.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{url}/history/{prompt_id}", timeout=5).json():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the warm-up prompt did not finish on {url}")


def flood_and_trickle(farm, warm_of: dict[int, str], args: argparse.Namespace, template_name: str) -> Result:
    from django.contrib.auth.models import User
    from django.db import transaction

    from generation import dispatch, eta
    from generation.models import Task, WorkflowTemplate
    from generation.services import task_submit

    users = {n: User.objects.create_user(f"live-user-{n}") for n in (1, 2, 3)}
    template = WorkflowTemplate.objects.get(name=template_name)
    pending = scheduling.arrivals(scheduling.mixed(flood=args.flood))
    trickle = [(at, job) for at, job in pending if job.user != 1]
    predicted: dict[int, float] = {}
    t0 = time.time()

    def sim(ts: float) -> float:
        return (ts - t0) / SCALE

    with transaction.atomic():
        flood = Task.objects.bulk_create(
            Task(owner=users[1], prompt=f"flood {i}", width=512, height=512, steps=20, seed=i,
                 checkpoint=CHECKPOINTS[i % len(CHECKPOINTS)], template=template)
            for i in range(args.flood)
        )  # fmt: skip
        dispatch.announce_work(len(flood))
    eta.clear_cache()
    now = time.time()
    for task in flood:
        left = eta.seconds_left(task)
        if left is not None:
            predicted[task.pk] = sim(now + left)
    for at, job in trickle:
        time.sleep(max(0.0, t0 + at * SCALE - time.time()))
        task = task_submit(
            owner=users[job.user], data={"prompt": f"trickle {job.id}", "checkpoint": job.checkpoint}
        )
        eta.clear_cache()
        left = eta.seconds_left(task)
        if left is not None:
            predicted[task.pk] = sim(time.time() + left)
    deadline = t0 + args.timeout
    open_ = Task.objects.exclude(
        status__in=[Task.Status.COMPLETED, Task.Status.FAILED, Task.Status.CANCELLED]
    )
    while open_.exists():
        if time.time() > deadline:
            raise RuntimeError(
                f"{open_.count()} tasks still open after {args.timeout:.0f} s; logs in {farm.logdir}"
            )
        time.sleep(0.5)
    return measure(users, warm_of, predicted, sim)


def measure(users: dict, warm_of: dict[int, str], predicted: dict[int, float], sim) -> Result:
    from generation.models import Task, TaskAttempt

    user_of = {u.pk: n for n, u in users.items()}
    tasks = list(
        Task.objects.values_list("pk", "owner_id", "created_at", "started_at", "finished_at", "status")
    )
    failed = [pk for pk, *_, status in tasks if status != Task.Status.COMPLETED]
    if failed:
        raise RuntimeError(f"{len(failed)} task(s) did not complete")
    submitted = {pk: max(0.0, sim(created.timestamp())) for pk, _, created, _, _, _ in tasks}
    started = {pk: sim(s.timestamp()) for pk, _, _, s, _, _ in tasks}
    finished = {pk: sim(f.timestamp()) for pk, _, _, _, f, _ in tasks}
    flood_ids = {pk for pk, owner, *_ in tasks if user_of[owner] == 1}
    runs = defaultdict(list)
    for worker_id, task_id, checkpoint, owner, s, f in TaskAttempt.objects.filter(
        outcome=TaskAttempt.Outcome.COMPLETED
    ).values_list("worker_id", "task_id", "task__checkpoint", "task__owner_id", "started_at", "finished_at"):
        runs[worker_id].append((sim(s.timestamp()), sim(f.timestamp()), user_of[owner], task_id, checkpoint))
    switches = 0
    workers = []
    for worker_id, warm in warm_of.items():
        worker = LiveWorker()
        end = float("-inf")
        for s, f, user, task_id, checkpoint in sorted(runs[worker_id]):
            switches += checkpoint != warm  # the simulator loads the checkpoint when it differs from its last
            warm = checkpoint
            # A prefetched prompt starts in ComfyUI before the daemon reports the one before it finished: the
            # GPU runs one at a time, so a run counts from the previous one's reported end.
            worker.busy.append((max(s, end), max(f, end), user, task_id))
            end = max(f, end)
        workers.append(worker)
    timings = Timings(submitted, started, finished, predicted, shown=[])
    return scheduling._measure(workers, flood_ids, timings, switches, [])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
