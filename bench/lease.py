"""Lease throughput and latency through the worker API, against the raw-SQL ceiling on the same database.

    python -m bench.lease --db postgres            # N = 1, 8, 32, 50, no think time, then the realistic farm
    python -m bench.lease --db sqlite --duration 5

N simulated workers (threads, each with its own token and HTTP session) lease and complete tiny tasks
(64x64 PNG) against the scheduler under gunicorn (threaded workers). Prints cycles/s and p50/p99 latency
per N, the same for a raw SQL lease+complete loop, and for 50 workers pausing about 1 s between cycles
(with status readers polling once a second) the lease and status-read latencies beside the targets.
"""

import argparse
import io
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import requests
from PIL import Image as PILImage

from bench.common import Server, database_url, ms, pct, setup_django, verdict

NODES = ["EmptyImage", "ImageAddNoise", "SaveImage"]


def tiny_png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (64, 64), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Stats:
    cycles: int = 0
    empty: int = 0
    errors: int = 0
    lease: list[float] = field(default_factory=list)
    complete: list[float] = field(default_factory=list)
    status: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def seed_tasks(count: int) -> None:
    from generation.models import Task, WorkflowTemplate

    template = WorkflowTemplate.objects.get(name="noise-test")
    batch = [
        Task(
            prompt=f"bench {i}", width=64, height=64, steps=1, seed=random.getrandbits(64), template=template
        )
        for i in range(count)
    ]
    Task.objects.bulk_create(batch, batch_size=2000)
    from django.db import connection

    with connection.cursor() as cursor:  # fresh statistics, as autovacuum would keep them in production
        cursor.execute("ANALYZE generation_task" if connection.vendor == "postgresql" else "ANALYZE")


def make_workers(count: int, prefix: str) -> list[str]:
    from tests.conftest import capabilities
    from workers_app.services import worker_create, worker_register

    tokens = []
    for i in range(count):
        worker, token = worker_create(name=f"{prefix}-{i}-{uuid.uuid4().hex[:6]}")
        worker_register(worker=worker, capabilities=capabilities(checkpoints=(), nodes=NODES))
        tokens.append(token)
    return tokens


def worker_loop(url: str, token: str, stop: threading.Event, stats: Stats, think: float, png: bytes) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = session.post(f"{url}/api/v1/worker/lease", json={}, timeout=30)
        except requests.RequestException:
            with stats.lock:
                stats.errors += 1
            continue
        t1 = time.perf_counter()
        if r.status_code == 204:
            with stats.lock:
                stats.empty += 1
            stop.wait(0.05)
            continue
        if r.status_code != 200:
            with stats.lock:
                stats.errors += 1
            continue
        job = r.json()
        files = [("images", ("out.png", png, "image/png"))]
        try:
            c = session.post(
                f"{url}/api/v1/worker/tasks/{job['task_id']}/complete",
                data={"lease_token": job["lease_token"]},
                files=files,
                timeout=30,
            )
            ok = c.status_code == 200
        except requests.RequestException:
            ok = False
        t2 = time.perf_counter()
        with stats.lock:
            if ok:
                stats.cycles += 1
                stats.lease.append(t1 - t0)
                stats.complete.append(t2 - t1)
            else:
                stats.errors += 1
        if think:
            stop.wait(random.uniform(0.8 * think, 1.2 * think))


def status_loop(url: str, api_token: str, task_ids: list[str], stop: threading.Event, stats: Stats) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {api_token}"
    stop.wait(random.uniform(0, 1))
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = session.get(f"{url}/api/v1/tasks/{random.choice(task_ids)}/", timeout=30)
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        with stats.lock:
            if ok:
                stats.status.append(time.perf_counter() - t0)
            else:
                stats.errors += 1
        stop.wait(1.0)


def heartbeat_loop(url: str, tokens: list[str], stop: threading.Event) -> None:
    """Keep the simulated workers alive (the scheduler marks a worker offline after 15 s of silence)."""
    session = requests.Session()
    while not stop.wait(4.0):
        for token in tokens:
            session.post(
                f"{url}/api/v1/worker/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"}
            )


def run_http(
    url: str, tokens: list[str], duration: float, think: float = 0.0, readers: int = 0, api=None
) -> Stats:
    stats, stop, png = Stats(), threading.Event(), tiny_png()
    threads = [threading.Thread(target=worker_loop, args=(url, t, stop, stats, think, png)) for t in tokens]
    threads.append(threading.Thread(target=heartbeat_loop, args=(url, tokens, stop)))
    if readers:
        api_token, task_ids = api
        threads += [
            threading.Thread(target=status_loop, args=(url, api_token, task_ids, stop, stats))
            for _ in range(readers)
        ]
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    return stats


def run_raw_sql(db_url: str, workers: int, duration: float) -> Stats:
    """The ceiling: one-statement lease and one-statement complete, no HTTP, no ORM."""
    stats, stop = Stats(), threading.Event()
    postgres = db_url.startswith("postgres")

    def loop() -> None:
        if postgres:
            import psycopg

            conn = psycopg.connect(db_url, autocommit=True)
            lease_sql = (
                "UPDATE generation_task SET status='leased', lease_token=gen_random_uuid(), leased_at=now(), "
                "lease_expires_at=now() + interval '30 seconds' WHERE id = (SELECT id FROM generation_task "
                "WHERE status='queued' ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "RETURNING id"
            )
            complete_sql = "UPDATE generation_task SET status='completed', lease_token=NULL WHERE id=%s"
        else:
            import sqlite3

            conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
            lease_sql = (
                "UPDATE generation_task SET status='leased', lease_token=hex(randomblob(16)) WHERE id = "
                "(SELECT id FROM generation_task WHERE status='queued' ORDER BY priority DESC, id LIMIT 1) "
                "RETURNING id"
            )
            complete_sql = "UPDATE generation_task SET status='completed', lease_token=NULL WHERE id=?"
        while not stop.is_set():
            t0 = time.perf_counter()
            row = conn.execute(lease_sql).fetchone()
            t1 = time.perf_counter()
            if row is None:
                with stats.lock:
                    stats.empty += 1
                continue
            conn.execute(complete_sql, (row[0],))
            t2 = time.perf_counter()
            with stats.lock:
                stats.cycles += 1
                stats.lease.append(t1 - t0)
                stats.complete.append(t2 - t1)
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    return stats


def row(label: str, stats: Stats, duration: float) -> str:
    rate = stats.cycles / duration
    return (
        f"{label:<28} {rate:>9.0f} {ms(pct(stats.lease, 50)):>9} {ms(pct(stats.lease, 99)):>9} "
        f"{ms(pct(stats.complete, 50)):>9} {ms(pct(stats.complete, 99)):>9} {stats.errors:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--workers", default="1,8,32,50", help="comma-separated N values")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--processes", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=32, help="threads per gunicorn process")
    parser.add_argument("--think-workers", type=int, default=50)
    parser.add_argument("--think-duration", type=float, default=20.0)
    args = parser.parse_args()

    db_url = database_url(args.db, "t2i_bench_lease")
    setup_django(db_url)
    ns = [int(n) for n in args.workers.split(",")]
    per_run = int(args.duration * 1500) + 1000
    seed_tasks(per_run * len(ns) + 4000)
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    reader = User.objects.create_user("bench-reader", is_staff=True)
    api_token = Token.objects.create(user=reader).key

    print(
        f"database: {args.db}; server: gunicorn {args.processes} processes x {args.threads} threads (gthread)"
    )
    heads = ("cycles/s", "lease p50", "lease p99", "done p50", "done p99")
    print(f"{'run':<28} " + " ".join(f"{h:>9}" for h in heads) + f" {'errors':>7}")
    results = {}
    with Server(db_url, processes=args.processes, threads=args.threads) as server:
        for n in ns:
            stats = run_http(server.url, make_workers(n, f"n{n}"), args.duration)
            results[n] = stats
            print(row(f"HTTP API, {n} workers", stats, args.duration), flush=True)
        from generation.models import Task

        task_ids = [str(t) for t in Task.objects.values_list("public_id", flat=True)[:500]]
        think = run_http(
            server.url,
            make_workers(args.think_workers, "think"),
            args.think_duration,
            think=1.0,
            readers=args.think_workers,
            api=(api_token, task_ids),
        )
        print(row(f"HTTP, {args.think_workers} workers, 1 s think", think, args.think_duration), flush=True)
    raw = {}
    for n in ns:
        raw[n] = run_raw_sql(db_url, n, args.duration)
        print(row(f"raw SQL, {n} connections", raw[n], args.duration), flush=True)

    print()
    target = 300 if args.db == "postgres" else 150
    top = max(ns)
    rate = results[top].cycles / args.duration
    ceiling = raw[top].cycles / args.duration
    print(f"{top} workers, no think: {rate:.0f} cycles/s (target >= {target}) {verdict(rate >= target)}; "
          f"errors {results[top].errors} (target 0) {verdict(results[top].errors == 0)}; "
          f"raw SQL ceiling {ceiling:.0f} cycles/s, API/raw = {rate / ceiling:.0%}")  # fmt: skip
    lease50, lease99 = pct(think.lease, 50), pct(think.lease, 99)
    status99 = pct(think.status, 99)
    print(f"{args.think_workers} workers with 1 s think: lease p50 {ms(lease50)} ms (target <= 10) "
          f"{verdict(lease50 <= 0.010)}, p99 {ms(lease99)} ms (target <= 40) {verdict(lease99 <= 0.040)}; "
          f"status p99 {ms(status99)} ms over {len(think.status)} reads (target <= 40) "
          f"{verdict(status99 <= 0.040)}; errors {think.errors}")  # fmt: skip


if __name__ == "__main__":
    main()
