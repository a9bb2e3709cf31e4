"""CPU of one lease+complete cycle in process, and of its parts: where the worker hot path's time goes.

    python -m bench.cycle_cpu                 # PostgreSQL (a fresh database t2i_bench_cycle)
    python -m bench.cycle_cpu --db sqlite

One process, no HTTP server: the worker API is driven through Django's test client (the whole request path:
middleware, DRF, authentication, parsing, the services, the answer), then the services and the serializers
are timed one at a time. Prints CPU milliseconds (time.process_time) per call, the mean over many calls after
a warm-up. Use it beside `python -m bench.lease` (the same cycle under gunicorn, 50 workers, against the
reference design) to tell what the ORM, DRF and the checks cost on this machine today.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench.common import database_url, setup_django


def cpu_ms(fn: Callable[[], object], n: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1000


def database_cpu_seconds() -> float | None:
    """CPU used so far by the PostgreSQL backends serving this database (they run on this machine in the
    benchmarks); None on SQLite or when they cannot be read."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    import psutil

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = [row[0] for row in cursor.fetchall()]
    total = 0.0
    try:
        for pid in pids:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--cycles", type=int, default=300)
    args = parser.parse_args()
    setup_django(
        database_url(args.db, "t2i_bench_cycle"),
        DEBUG="0",
        T2I_WORKER_OFFLINE_AFTER="100000",
        T2I_LEASE_SECONDS="100000",
    )

    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client, RequestFactory
    from rest_framework.request import Request

    from bench.lease import NODES, seed_tasks, tiny_png
    from generation import services
    from generation.images import verify_image
    from workers_app import apis
    from workers_app import services as worker_services
    from workers_app.models import Worker, hash_token

    n = args.cycles
    seed_tasks(4 * n + 500)
    worker, token = worker_services.worker_create(name="cycle-cpu")
    worker_services.worker_register(worker=worker, capabilities={"node_classes": NODES})
    # The parts below lease n tasks before completing them: a prefetch depth that allows holding them all.
    Worker.objects.filter(pk=worker.pk).update(prefetch=min(32000, 4 * n + 500))
    worker.refresh_from_db()
    png = tiny_png()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_HOST="127.0.0.1")

    def upload() -> SimpleUploadedFile:
        return SimpleUploadedFile("out.png", png, "image/png")

    def cycle() -> None:
        lease = client.post("/api/v1/worker/lease", {}, content_type="application/json").json()
        form = {"lease_token": lease["lease_token"], "images": upload()}
        client.post(f"/api/v1/worker/tasks/{lease['task_id']}/complete", form)

    print(f"cycle_cpu: database {args.db}; CPU ms per call (process time), mean of {n} after a warm-up")
    db0 = database_cpu_seconds()
    whole = cpu_ms(cycle, n)
    print(f"{'lease + complete through the worker API (two requests)':<60} {whole:7.2f}")
    db1 = database_cpu_seconds()
    if db0 is not None and db1 is not None:  # the warm-up's 20 cycles included
        print(f"{'  PostgreSQL backends meanwhile, per cycle':<60} {(db1 - db0) / (n + 20) * 1000:7.2f}")
    request = Request(RequestFactory().get("/", HTTP_HOST="127.0.0.1"))
    token_hash = hash_token(token)
    leases: list = []
    rows = [
        ("token lookup (Worker by token hash)", lambda: Worker.objects.get(token_hash=token_hash)),
        ("task_lease_next", lambda: leases.append(services.task_lease_next(worker=worker))),
    ]
    for label, fn in rows:
        print(f"{label:<60} {cpu_ms(fn, n):7.2f}")
    first = leases[0]
    print(f"{'LeaseOutput(lease).data':<60} {cpu_ms(lambda: apis.LeaseOutput(first).data, n):7.2f}")
    pending = iter(leases[1:])

    def complete():
        held = next(pending)
        return services.task_complete(
            worker=worker, task_id=held.task.public_id, lease_token=held.attempt.lease_token, files=[upload()]
        )

    done: list = []
    print(f"{'task_complete (check, store image + thumbnail, fenced flip)':<60} "
          f"{cpu_ms(lambda: done.append(complete()), n - 40):7.2f}")  # fmt: skip
    check = cpu_ms(
        lambda: verify_image(upload(), width=64, height=64, max_bytes=10**7, field="images", thumbnail=True),
        n,
    )
    print(f"{'  of which verify_image with its thumbnail (64 px PNG)':<60} {check:7.2f}")
    completion = done[0]
    answer = cpu_ms(lambda: apis.CompleteOutput(completion, context={"request": request}).data, n)
    print(f"{'CompleteOutput(completion).data':<60} {answer:7.2f}")
    beat = cpu_ms(lambda: worker_services.worker_heartbeat(worker=worker, leases=[]), n)
    print(f"{'worker_heartbeat, no leases held':<60} {beat:7.2f}")


if __name__ == "__main__":
    main()
