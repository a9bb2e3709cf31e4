"""/metrics under a working farm: p50/p99 of 200 scrapes while completions commit, the way /metrics scraped
before (rolling the counters up on each scrape, under a write lock) against now (read-only), in one run.

    python -m bench.metrics_scrape [--db sqlite|postgres] [--tasks 5000] [--scrapes 200] [--scrapers 4]

In-process: the registry is collected as the view does (`generate_latest`), by `--scrapers` threads at once,
while a writer thread finishes one task every 10 ms (a busy farm's completions) in a transaction of its own.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import timedelta

from bench.common import database_url, ms, pct, setup_django


def seed(count: int) -> list[int]:
    """`count` finished tasks spread over the last hour and as many queued ones for the writer to finish."""
    from django.utils import timezone

    from generation.models import Task, WorkflowTemplate
    from workers_app.models import Worker
    from workers_app.services import worker_create

    worker, _ = worker_create(name="bench-gpu")
    Worker.objects.filter(pk=worker.pk).update(registered_at=timezone.now())
    template = WorkflowTemplate.objects.get(name="sd15-txt2img")
    now = timezone.now()
    common = {"prompt": "bench", "template": template, "checkpoint": "sim.safetensors", "seed": "1"}
    Task.objects.bulk_create(
        Task(
            **common,
            status=Task.Status.COMPLETED,
            worker=worker,
            created_at=now - timedelta(seconds=3600 - i * 3600 / count),
            leased_at=now - timedelta(seconds=3590 - i * 3600 / count),
            started_at=now - timedelta(seconds=3590 - i * 3600 / count),
            finished_at=now - timedelta(seconds=3580 - i * 3600 / count),
        )
        for i in range(count)
    )
    queued = Task.objects.bulk_create(Task(**common, status=Task.Status.QUEUED) for _ in range(count))
    return [t.pk for t in queued] or list(Task.objects.filter(status="queued").values_list("pk", flat=True))


def writer(pks: list[int], worker_id: int, stop: threading.Event) -> None:
    from django.db import connection, transaction
    from django.utils import timezone

    from generation.models import Task

    for pk in pks:
        if stop.is_set():
            break
        with transaction.atomic():
            now = timezone.now()
            Task.objects.filter(pk=pk).update(
                status=Task.Status.COMPLETED,
                worker_id=worker_id,
                leased_at=now,
                started_at=now,
                finished_at=now,
            )
        time.sleep(0.01)
    connection.close()


def scrapes(count: int, threads: int, *, roll_up_first: bool) -> list[float]:
    from django.db import connection
    from prometheus_client import generate_latest

    from generation.metrics import metrics_rollup, registry

    times: list[float] = []
    lock = threading.Lock()

    def scraper(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            if roll_up_first:  # what every scrape did before: a write transaction on the watermark row
                metrics_rollup()
            generate_latest(registry)
            with lock:
                times.append(time.perf_counter() - started)
        connection.close()

    pool = [threading.Thread(target=scraper, args=(count // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--scrapers", type=int, default=4)
    args = parser.parse_args()
    setup_django(database_url(args.db, "t2i_bench_metrics"), T2I_LISTEN_NOTIFY="0")
    from generation.metrics import metrics_rollup
    from workers_app.models import Worker

    queued = seed(args.tasks)
    worker_id = Worker.objects.get().pk
    print(f"/metrics, {args.scrapes} scrapes by {args.scrapers} threads, {args.db}, {args.tasks} finished")
    print("tasks rolled up before each mode, while a writer finishes a task every 10 ms:")
    print(f"{'mode':<36} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    half = len(queued) // 2
    for label, roll_up_first, pks in (
        ("before: roll-up on every scrape", True, queued[:half]),
        ("now: read-only scrape", False, queued[half:]),
    ):
        metrics_rollup()  # both modes start from counters the roll-up job has just advanced
        stop = threading.Event()
        thread = threading.Thread(target=writer, args=(pks, worker_id, stop))
        thread.start()
        times = scrapes(args.scrapes, args.scrapers, roll_up_first=roll_up_first)
        stop.set()
        thread.join()
        print(f"{label:<36} {ms(pct(times, 50)):>8} {ms(pct(times, 99)):>8} {ms(max(times)):>8}")


if __name__ == "__main__":
    main()
