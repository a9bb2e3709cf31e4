"""Lease throughput and latency through the worker API, against the raw-SQL ceiling on the same database.

    python -m bench.lease --db postgres   # N = 1, 8, 32, 50, 64, no think time, then the realistic farm
    python -m bench.lease --db sqlite --duration 5

N simulated workers (threads, each with its own token and HTTP session, spread over several client
processes) lease and complete tiny tasks (64x64 PNG) against the scheduler under gunicorn (threaded
workers). As runworker does, each completion asks for the next lease (`lease_next`), so a busy worker
makes one request per task; the 50-worker row is repeated with a lease request and a completion per task.
Prints cycles/s and p50/p99 latency per N, the same for a raw SQL lease+complete loop, and for 50
workers pausing about 1 s between cycles (with status readers polling once a second) the lease and
status-read latencies beside the targets. The load generator's own CPU is printed with each row: a client
process near 1.0 core would be the bottleneck, not the server.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import threading
import time
import uuid
from pathlib import Path

import requests
from PIL import Image as PILImage

from bench.clients import ClientResult, run_clients
from bench.common import Server, database_url, ms, pct, setup_django, verdict

NODES = ["EmptyImage", "ImageAddNoise", "SaveImage"]
TARGET_RATE = {"postgres": 300, "sqlite": 150}
TARGET_AT = 50  # workers, no think time


def tiny_png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (64, 64), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def seed_tasks(count: int) -> None:
    from django.db import connection

    from generation.models import Task, WorkflowTemplate

    template = WorkflowTemplate.objects.get(name="noise-test")
    batch = [
        Task(
            prompt=f"bench {i}", width=64, height=64, steps=1, seed=random.getrandbits(63), template=template
        )
        for i in range(count)
    ]
    Task.objects.bulk_create(batch, batch_size=2000)
    with connection.cursor() as cursor:  # fresh statistics, as autovacuum would keep them in production
        cursor.execute("ANALYZE generation_task" if connection.vendor == "postgresql" else "ANALYZE")


def vacuum() -> None:
    """What autovacuum would have done in a farm's quiet moments after the runs above churned through
    thousands of rows: without it, the realistic run below would share the machine with autovacuum (as
    pgbench also vacuums before each run)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE generation_task, generation_taskattempt, generation_image, "
                           "workers_app_worker")  # fmt: skip
        else:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def make_workers(count: int, prefix: str) -> list[str]:
    from tests.conftest import capabilities
    from workers_app.services import worker_create, worker_register

    tokens = []
    for i in range(count):
        worker, token = worker_create(name=f"{prefix}-{i}-{uuid.uuid4().hex[:6]}")
        worker_register(worker=worker, capabilities=capabilities(checkpoints=(), nodes=NODES))
        tokens.append(token)
    return tokens


# --- client threads (run in the client processes; see bench.clients) -------------------------------------

_PNG = None


def client(job: dict, stop: threading.Event, rec) -> None:
    {"worker": _worker, "status": _status, "raw": _raw}[job["kind"]](job, stop, rec)


HEARTBEAT_EVERY = 4.0  # seconds; the scheduler marks a worker offline after 15 s of silence


def _error(rec, why: str) -> None:
    rec.count("errors")
    rec.count(f"error: {why}")


def _worker(job: dict, stop: threading.Event, rec) -> None:
    global _PNG
    _PNG = _PNG or tiny_png()
    url, think = job["url"], job.get("think", 0.0)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {job['token']}"
    # carry: each completion asks for the next lease (`lease_next`), as runworker does; a worker calls
    # `lease` only when a completion brought none.
    carry = job.get("carry", False)
    form = {"lease_next": "true"} if carry else {}
    if think:
        stop.wait(random.uniform(0, think))  # spread the first requests
    lease, beat = None, time.monotonic()
    while not stop.is_set():
        if time.monotonic() - beat >= HEARTBEAT_EVERY:  # its own heartbeat, as a daemon's
            beat = time.monotonic()
            held = [{"task_id": lease["task_id"], "lease_token": lease["lease_token"]}] if lease else []
            try:
                session.post(f"{url}/api/v1/worker/heartbeat", json={"tasks": held}, timeout=30)
            except requests.RequestException as exc:
                rec.count(f"heartbeat error: {type(exc).__name__}")
        t0 = time.perf_counter()
        if lease is None:
            try:
                r = session.post(f"{url}/api/v1/worker/lease", json={}, timeout=30)
            except requests.RequestException as exc:
                _error(rec, f"lease {type(exc).__name__}")
                continue
            if r.status_code == 204:
                rec.count("empty")
                stop.wait(0.05)
                continue
            if r.status_code != 200:
                _error(rec, f"lease HTTP {r.status_code}")
                continue
            lease = r.json()
            rec.sample("lease", time.perf_counter() - t0)
        t1 = time.perf_counter()
        try:
            c = session.post(
                f"{url}/api/v1/worker/tasks/{lease['task_id']}/complete",
                data={"lease_token": lease["lease_token"], **form},
                files=[("images", ("out.png", _PNG, "image/png"))],
                timeout=30,
            )
            why = "" if c.status_code == 200 else f"complete HTTP {c.status_code}"
        except requests.RequestException as exc:
            why = f"complete {type(exc).__name__}"
        t2 = time.perf_counter()
        lease = c.json().get("next") if not why and carry else None
        if why:
            _error(rec, why)
            continue
        if not stop.is_set():  # a cycle cut by the end of the run is not counted
            rec.count("cycles")
            rec.sample("complete", t2 - t1)
        if think:
            stop.wait(random.uniform(0.8 * think, 1.2 * think))
    if lease is not None:  # hand back what the last completion carried
        session.post(
            f"{url}/api/v1/worker/tasks/{lease['task_id']}/release",
            json={"lease_token": lease["lease_token"]},
            timeout=30,
        )


def _status(job: dict, stop: threading.Event, rec) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {job['api_token']}"
    stop.wait(random.uniform(0, 1))
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = session.get(f"{job['url']}/api/v1/tasks/{random.choice(job['task_ids'])}/", timeout=30)
            why = "" if r.status_code == 200 else f"status HTTP {r.status_code}"
        except requests.RequestException as exc:
            why = f"status {type(exc).__name__}"
        if why:
            _error(rec, why)
        else:
            rec.sample("status", time.perf_counter() - t0)
        stop.wait(1.0)


def _raw(job: dict, stop: threading.Event, rec) -> None:
    """The ceiling: one-statement lease and one-statement complete, no HTTP, no ORM."""
    db_url = job["db_url"]
    if db_url.startswith("postgres"):
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
            rec.count("empty")
            continue
        conn.execute(complete_sql, (row[0],))
        t2 = time.perf_counter()
        rec.count("cycles")
        rec.sample("lease", t1 - t0)
        rec.sample("complete", t2 - t1)
    conn.close()


# --- runs ------------------------------------------------------------------------------------------------


def client_processes(n: int, requested: int) -> int:
    """Client processes for n simulated workers: 1 up to 16 workers, then one per 16, at most 4."""
    return requested if requested > 0 else max(1, min(4, n // 16))


def run_http(url, tokens, duration, *, processes, think=0.0, readers=0, api=None, carry=True) -> ClientResult:
    jobs = [{"kind": "worker", "url": url, "token": t, "think": think, "carry": carry} for t in tokens]
    per_proc = client_processes(len(tokens), processes)
    if readers:
        api_token, task_ids = api
        jobs += [{"kind": "status", "url": url, "api_token": api_token, "task_ids": task_ids}] * readers
    # run_clients deals the jobs round-robin: every process gets its share of workers and readers.
    return run_clients("bench.lease:client", jobs, processes=per_proc, duration=duration)


def run_raw_sql(db_url: str, n: int, duration: float, processes: int) -> ClientResult:
    jobs = [{"kind": "raw", "db_url": db_url} for _ in range(n)]
    return run_clients(
        "bench.lease:client", jobs, processes=client_processes(n, processes), duration=duration
    )


def why_errors(r: ClientResult) -> str:
    """The errors of a run by cause, e.g. "complete HTTP 409 x2, status ReadTimeout x1"."""
    return ", ".join(
        f"{key.split(': ', 1)[1]} x{count}" for key, count in sorted(r.counts.items()) if ": " in key
    )


def postgres_cpu() -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL process on this machine."""
    import psutil

    return {
        p.pid: p.info["cpu_times"].user + p.info["cpu_times"].system
        for p in psutil.process_iter(["name", "cpu_times"])
        if p.info["name"] == "postgres" and p.info["cpu_times"]
    }


def since(before: dict[int, float]) -> float:
    """PostgreSQL CPU seconds since `before` (a backend that ended meanwhile is missed)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in postgres_cpu().items())


def row(label: str, r: ClientResult, server_cpu: float | None = None, pg_cpu: float | None = None) -> str:
    rate = r.counts["cycles"] / r.duration
    lease, done = r.samples["lease"], r.samples["complete"]
    cycles = max(1, r.counts["cycles"])
    per_cycle = "".join(f"{cpu * 1000 / cycles:>9.1f}" for cpu in (server_cpu, pg_cpu) if cpu is not None)
    why = why_errors(r)
    return (
        f"{label:<34} {rate:>9.0f} {ms(pct(lease, 50)):>9} {ms(pct(lease, 99)):>9} "
        f"{ms(pct(done, 50)):>9} {ms(pct(done, 99)):>9} {r.counts['errors']:>7} "
        f"{r.cores:>6.2f}/{len(r.cpu)} {per_cycle}" + (f"\n{'':<34} errors: {why}" if why else "")
    )


def measure(args) -> tuple[list, list]:
    """Run the whole lease benchmark; returns (figures, series) for bench.report."""
    from bench.report import Figure, Series

    db_url = database_url(args.db, "t2i_bench_lease")
    setup_django(db_url)
    ns = [int(n) for n in args.workers.split(",")]
    seed_tasks(int(len(ns) * args.duration * 2000) + 5000)
    from django.contrib.auth.models import User

    from generation.services import api_token_create

    reader = User.objects.create_user("bench-reader", is_staff=True)
    api_token = api_token_create(user=reader, name="benchmark")[1]

    print(
        f"lease: database {args.db}; server: gunicorn {args.processes} processes, "
        + (f"gthread x {args.threads} (WSGI)" if args.threads else "uvicorn (ASGI)")
        + "; client CPU in cores / client processes",
        flush=True,
    )
    heads = ("cycles/s", "lease p50", "lease p99", "done p50", "done p99")
    print(f"{'run':<34} " + " ".join(f"{h:>9}" for h in heads) + f" {'errors':>7} {'client':>8} "
          "CPU ms/cycle: server, PostgreSQL")  # fmt: skip
    server_cpu: dict[int, float] = {}
    pg_cpu: dict[int, float | None] = {}
    on_pg = args.db == "postgres"
    http: dict[int, ClientResult] = {}
    at = TARGET_AT if TARGET_AT in ns else max(ns)
    with Server(db_url, processes=args.processes, threads=args.threads, log=args.server_log) as server:
        for n in ns:
            tokens = make_workers(n, f"n{n}")
            cpu0, pg0 = server.cpu_seconds(), postgres_cpu()
            http[n] = run_http(server.url, tokens, args.duration, processes=args.client_procs)
            server_cpu[n], pg_cpu[n] = server.cpu_seconds() - cpu0, since(pg0) if on_pg else None
            print(row(f"HTTP API, {n} workers", http[n], server_cpu[n], pg_cpu[n]), flush=True)
        # The same without `lease_next`: a lease request and a completion per task, as a daemon that does
        # not use it (or the seed protocol) works.
        cpu0, pg0 = server.cpu_seconds(), postgres_cpu()
        two = run_http(
            server.url, make_workers(at, "two"), args.duration, processes=args.client_procs, carry=False
        )
        two_cpu = server.cpu_seconds() - cpu0
        print(
            row(f"HTTP API, {at} workers, two requests", two, two_cpu, since(pg0) if on_pg else None),
            flush=True,
        )
        from generation.models import Task

        task_ids = [str(t) for t in Task.objects.values_list("public_id", flat=True)[:500]]
        vacuum()
        think = run_http(
            server.url,
            make_workers(args.think_workers, "think"),
            args.think_duration,
            processes=args.client_procs,
            think=1.0,
            readers=args.think_workers,
            api=(api_token, task_ids),
            carry=False,  # every cycle leases: the lease request's own latency is the figure
        )
        print(row(f"HTTP, {args.think_workers} workers, 1 s think", think), flush=True)
        scheduler_rss = server.peak_rss_mb()
    raw: dict[int, ClientResult] = {}
    for n in ns:
        raw[n] = run_raw_sql(db_url, n, args.duration, args.client_procs)
        print(row(f"raw SQL, {n} connections", raw[n]), flush=True)

    db = args.db
    figures, series = [], []
    for n in ns:
        rate = http[n].counts["cycles"] / args.duration
        if n == at:
            figures.append(
                Figure("lease", f"{n} workers, no think: lease+complete", rate, "cycles/s", db, ">=",
                       TARGET_RATE[db], note=http[n].describe())
            )  # fmt: skip
            figures.append(Figure("lease", f"{n} workers, no think: errors", http[n].counts["errors"], "", db,
                                  "<=", 0))  # fmt: skip
            figures.append(Figure("lease", f"{n} workers, no think: scheduler CPU per cycle",
                                  server_cpu[n] * 1000 / max(1, http[n].counts["cycles"]), "ms", db,
                                  note="all gunicorn processes, user + system"))  # fmt: skip
            figures.append(Figure("lease", f"{n} workers, no think: client CPU per cycle",
                                  http[n].cores * args.duration * 1000 / max(1, http[n].counts["cycles"]),
                                  "ms", db, note="the simulated workers (Python requests)"))  # fmt: skip
            if db == "postgres":
                figures.append(Figure("lease", f"{n} workers, no think: PostgreSQL CPU per cycle",
                                      pg_cpu[n] * 1000 / max(1, http[n].counts["cycles"]), "ms", db,
                                      note="all postgres processes"))  # fmt: skip
            two_ms = two_cpu * 1000 / max(1, two.counts["cycles"])
            figures.append(Figure("lease", f"{n} workers, no think, two requests per cycle",
                                  two.counts["cycles"] / args.duration, "cycles/s", db,
                                  note=f"no lease_next; scheduler CPU {two_ms:.1f} ms/cycle"))  # fmt: skip
            ceiling = raw[n].counts["cycles"] / args.duration
            figures.append(Figure("lease", f"raw-SQL ceiling, {n} connections", ceiling, "cycles/s", db))
            figures.append(Figure("lease", f"API / raw SQL at {n}", 100 * rate / ceiling, "%", db))
        else:
            figures.append(Figure("lease", f"{n} workers, no think", rate, "cycles/s", db,
                                  note=http[n].describe()))  # fmt: skip
    t_lease, t_status = think.samples["lease"], think.samples["status"]
    label = f"{args.think_workers} workers, 1 s think"
    figures += [
        Figure("lease", f"{label}: lease p50", pct(t_lease, 50) * 1000, "ms", db, "<=", 10),
        Figure("lease", f"{label}: lease p99", pct(t_lease, 99) * 1000, "ms", db, "<=", 40),
        Figure("lease", f"{label}: status read p99", pct(t_status, 99) * 1000, "ms", db, "<=", 40,
               note=f"{len(t_status)} reads by {args.think_workers} readers polling once a second"),
        Figure("lease", f"{label}: errors", think.counts["errors"], "", db, "<=", 0, note=why_errors(think)),
        Figure("memory", "scheduler process peak RSS (lease run)", scheduler_rss, "MB", db, "<=", 150),
    ]  # fmt: skip
    series += [
        Series("lease", f"lease, {at} workers no think", "latency", http[at].samples["lease"], db=db),
        Series("lease", f"complete, {at} workers no think", "latency", http[at].samples["complete"], db=db),
        Series("lease", f"lease, {label}", "latency", t_lease, db=db),
        Series("lease", f"status read, {label}", "latency", t_status, db=db),
        Series("lease", "HTTP API", "curve", x=ns, y=[http[n].counts["cycles"] / args.duration for n in ns],
               db=db, xlabel="simulated workers (no think)", ylabel="lease+complete cycles/s"),
        Series("lease", "raw SQL", "curve", x=ns, y=[raw[n].counts["cycles"] / args.duration for n in ns],
               db=db, xlabel="simulated workers (no think)", ylabel="lease+complete cycles/s"),
    ]  # fmt: skip

    print()
    rate = http[at].counts["cycles"] / args.duration
    ceiling = raw[at].counts["cycles"] / args.duration
    print(f"{at} workers, no think: {rate:.0f} cycles/s (target >= {TARGET_RATE[db]}) "
          f"{verdict(rate >= TARGET_RATE[db])}; errors {http[at].counts['errors']} (target 0) "
          f"{verdict(http[at].counts['errors'] == 0)}; raw SQL ceiling {ceiling:.0f} cycles/s, "
          f"API/raw = {rate / ceiling:.0%}")  # fmt: skip
    lease50, lease99, status99 = pct(t_lease, 50), pct(t_lease, 99), pct(t_status, 99)
    print(f"{label}: lease p50 {ms(lease50)} ms (target <= 10) {verdict(lease50 <= 0.010)}, p99 "
          f"{ms(lease99)} ms (target <= 40) {verdict(lease99 <= 0.040)}; status p99 {ms(status99)} ms over "
          f"{len(t_status)} reads (target <= 40) {verdict(status99 <= 0.040)}; "
          f"errors {think.counts['errors']}")  # fmt: skip
    return figures, series


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", default="1,8,32,50,64", help="comma-separated N values")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--processes", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=0, help="0: ASGI (production); N: WSGI gthread x N")
    parser.add_argument("--think-workers", type=int, default=50)
    parser.add_argument("--think-duration", type=float, default=15.0)
    parser.add_argument("--client-procs", type=int, default=0, help="client processes (0: by N, up to 4)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    add_arguments(parser)
    parser.add_argument("--json", type=Path, help="write the figures here (used by python -m bench)")
    parser.add_argument("--server-log", type=Path, help="the scheduler's log (default: the terminal)")
    args = parser.parse_args()
    figures, series = measure(args)
    if args.json:
        args.json.write_text(
            json.dumps({"figures": [f.as_dict() for f in figures], "series": [s.as_dict() for s in series]})
        )


if __name__ == "__main__":
    main()
