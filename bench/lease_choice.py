"""`python -m bench.lease_choice`: what a lease costs in the database with a deep queue and a large farm,
FIFO against placement, in the same run: 10,000 queued tasks of 50 users over 3 checkpoints, 500 live
workers of which 250 hold a running task, learned speeds for all. Times `task_lease_next` (the reads before
the claim, the plan, the claim's transaction) for workers that hold nothing; each lease is handed back
afterwards so the queue stays as deep. A fresh SQLite file in a temporary folder, or with `--db postgres` a
fresh PostgreSQL database (`--db-name`, dropped and created again), or DATABASE_URL when set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lease_choice", description=__doc__)
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--leases", type=int, default=100)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--db-name", default="t2i_bench_lease_choice", help="PostgreSQL database to create")
    args = parser.parse_args(argv)
    if "DATABASE_URL" not in os.environ:
        if args.db == "postgres":
            from bench.common import database_url

            os.environ["DATABASE_URL"] = database_url("postgres", args.db_name)
        else:
            folder = Path(tempfile.mkdtemp(prefix="t2i-lease-choice-"))
            os.environ["DATABASE_URL"] = f"sqlite:///{folder / 'db.sqlite3'}"
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    os.environ["T2I_ENV_FILE"] = ""
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("T2I_WORKER_OFFLINE_AFTER", "3600")
    os.environ.setdefault("T2I_LISTEN_NOTIFY", "0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    fill(args.workers, args.queued)
    analyze()
    print(f"{args.workers} live workers, {args.queued} queued tasks, {connection_vendor()}:")
    for scheduler in ("fifo", "smart"):
        settings.T2I = {**settings.T2I, "SCHEDULER": scheduler}
        samples, cpu = measure(args.leases)
        print(
            f"  {scheduler:5}  lease p50 {statistics.median(samples):6.2f} ms   "
            f"p95 {sorted(samples)[int(0.95 * (len(samples) - 1))]:6.2f} ms   "
            f"this process's CPU p50 {statistics.median(cpu):6.2f} ms   (n={len(samples)})"
        )
    return 0


def analyze() -> None:
    """PostgreSQL: fresh statistics after the bulk fill, as autovacuum keeps on a farm that has run a while
    (it may lag a bulk insert). SQLite keeps none unless told, and a deployment does not tell it."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def connection_vendor() -> str:
    from django.db import connection

    return connection.vendor


def fill(workers: int, queued: int) -> None:
    import random
    import uuid

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from generation import placement
    from generation.models import Task, TaskAttempt, UserShare, WorkflowTemplate
    from workers_app.models import Worker, WorkerSpeed, new_token

    rng = random.Random(5)
    checkpoints = ["sd15.safetensors", "sdxl.safetensors", "flux.safetensors"]
    template = WorkflowTemplate.objects.get(name=settings_default_template())
    nodes = sorted(set().union(*(placement_nodes(t) for t in [template])))
    now = timezone.now()
    made = []
    for i in range(workers):
        worker = Worker(
            name=f"gpu-{i}",
            status=Worker.Status.IDLE,
            registered_at=now,
            last_heartbeat=now,
            capabilities={"checkpoints": checkpoints, "node_classes": nodes},
            warm_checkpoint=rng.choice(checkpoints),
            switch_seconds=4.0,
        )
        worker.set_token(new_token())
        made.append(worker)
    Worker.objects.bulk_create(made)
    workers_ = list(Worker.objects.all())
    unit = placement.work_units(512, 512, 20, 1)
    WorkerSpeed.objects.bulk_create(
        WorkerSpeed(worker=w, checkpoint=c, seconds_per_unit=2.0 / unit / rng.choice([0.5, 1, 2]), samples=10)
        for w in workers_
        for c in checkpoints
    )
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"user-{i}", password="!") for i in range(50)
    )
    UserShare.objects.bulk_create(
        UserShare(user=u, usage_seconds=rng.uniform(0, 500), usage_at=now) for u in users
    )
    Task.objects.bulk_create(
        Task(
            owner=rng.choice(users),
            prompt="x",
            seed=i,
            width=512,
            height=512,
            checkpoint=rng.choice(checkpoints),
            template=template,
        )
        for i in range(queued)
    )
    running = Task.objects.bulk_create(
        Task(
            owner=rng.choice(users),
            prompt="x",
            seed=i,
            width=512,
            height=512,
            checkpoint=rng.choice(checkpoints),
            template=template,
            status=Task.Status.RUNNING,
            worker=w,
            lease_token=uuid.uuid4(),
            lease_expires_at=now + (now - now).__class__(hours=1),
            leased_at=now,
            started_at=now,
        )
        for i, w in enumerate(workers_[: len(workers_) // 2])
    )
    TaskAttempt.objects.bulk_create(
        TaskAttempt(
            task=t, worker=t.worker, number=1, lease_token=t.lease_token, lease_expires_at=t.lease_expires_at,
            leased_at=now,
        )
        for t in running
    )  # fmt: skip


def settings_default_template() -> str:
    from django.conf import settings

    return settings.T2I["DEFAULT_TEMPLATE"]


def placement_nodes(template) -> set[str]:
    from generation import workflows

    return workflows.node_classes(template.workflow)


def measure(leases: int) -> tuple[list[float], list[float]]:
    """Wall milliseconds per lease, and this process's CPU milliseconds (which a loaded machine's waits for
    a core do not inflate; on PostgreSQL the server's share is not in them)."""
    from generation import services
    from generation.models import Task
    from workers_app.models import Worker

    idle = list(Worker.objects.exclude(tasks__status=Task.Status.RUNNING).order_by("pk"))
    samples, cpu = [], []
    for i in range(leases):
        worker = idle[i % len(idle)]
        started, started_cpu = time.perf_counter(), time.thread_time()
        lease = services.task_lease_next(worker=worker)
        samples.append(1000 * (time.perf_counter() - started))
        cpu.append(1000 * (time.thread_time() - started_cpu))
        if lease is not None:
            services.task_release(
                worker=worker, task_id=lease.task.public_id, lease_token=lease.attempt.lease_token
            )
    return samples, cpu


if __name__ == "__main__":
    raise SystemExit(main())
