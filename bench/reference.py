"""The issue's reference baseline, measured on this machine: a minimal DRF view with an ORM lease.

    python -m bench.reference                      # N = 8 and 50 workers, 10 s each, then the raw-SQL ceiling
    python -m bench.reference --workers 50 --duration 5

The issue quotes figures "measured on such a machine" (2 cores): raw SQL lease+complete about 2,500
cycles/s, and a minimal DRF view with an ORM lease about 215 cycles/s at 50 workers. This script rebuilds
that minimal view (bench/reference_app: Django's startproject middleware, DRF's defaults without
authentication, `select_for_update(skip_locked=True)...first()` then `save()`, and a one-UPDATE complete)
over the scheduler's own tables in a fresh PostgreSQL database, serves it with the scheduler's gunicorn
configuration (t2i_project/gunicorn.conf.py, gthread), and drives it with the same load generator as
bench.lease (N threads, each with its own HTTP session, lease then complete, no think time, spread over
client processes). It then runs bench.lease's raw-SQL ceiling on the same database at 50 connections.

Comparing the two printed rates with the reference's 215 and 2,500 tells whether this machine is like the
reference machine, before comparing the scheduler's own figures (python -m bench.lease) with the issue's.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import requests

from bench.clients import ClientResult, run_clients
from bench.common import Server, database_url, setup_django
from bench.lease import client_processes, row, run_raw_sql, seed_tasks

SETTINGS = "bench.reference_served"  # bench.reference_app's settings, served as the scheduler is
REFERENCE = {"orm": 215, "raw": 2500}  # cycles/s at 50 workers, the reference machine
RAW_AT = 50


class ReferenceServer(Server):
    """The minimal app under gunicorn, started as Server starts the scheduler (same configuration file, same
    environment, same flags) but with the reference app's settings; CPU is measured by Server.cpu_seconds."""

    health = ("/lease", 405)  # no health page: GET on the POST-only lease view answers 405 once it is up

    def __init__(self, db_url: str, **kwargs) -> None:
        super().__init__(db_url, DJANGO_SETTINGS_MODULE=SETTINGS, app="bench.reference_asgi", **kwargs)


# --- client threads (run in the client processes; see bench.clients) -------------------------------------


def client(job: dict, stop: threading.Event, rec) -> None:
    """One simulated worker: lease, then complete (JSON), no think time; recorded as bench.lease records."""
    url = job["url"]
    session = requests.Session()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = session.post(f"{url}/lease", json={}, timeout=30)
        except requests.RequestException:
            rec.count("errors")
            continue
        t1 = time.perf_counter()
        if r.status_code == 204:
            rec.count("empty")
            stop.wait(0.05)
            continue
        if r.status_code != 200:
            rec.count("errors")
            continue
        lease = r.json()
        try:
            c = session.post(
                f"{url}/complete",
                json={"task_id": lease["task_id"], "lease_token": lease["lease_token"]},
                timeout=30,
            )
            ok = c.status_code == 200
        except requests.RequestException:
            ok = False
        t2 = time.perf_counter()
        if not ok:
            rec.count("errors")
            continue
        if not stop.is_set():  # a cycle cut by the end of the run is not counted
            rec.count("cycles")
            rec.sample("lease", t1 - t0)
            rec.sample("complete", t2 - t1)


def run_http(url: str, n: int, duration: float, processes: int) -> ClientResult:
    jobs = [{"url": url} for _ in range(n)]
    return run_clients(
        "bench.reference:client", jobs, processes=client_processes(n, processes), duration=duration
    )


def empty_note(r: ClientResult) -> str:
    return f"  (queue ran dry: {r.counts['empty']} empty leases)" if r.counts.get("empty") else ""


def measure(args) -> list:
    """Run the reference and the raw-SQL ceiling; returns bench.report figures (the machine's calibration)."""
    from bench.report import Figure

    db_url = database_url("postgres", "t2i_bench_reference")
    setup_django(db_url)
    ns = [int(n) for n in args.workers.split(",")]
    seed_tasks(int((len(ns) + 1) * args.duration * 5000) + 5000)  # the raw-SQL run is the fastest

    print(
        f"reference: minimal DRF view with an ORM lease ({SETTINGS}), database postgres; server: gunicorn "
        f"{args.processes} processes x {args.threads} threads (gthread); client CPU in cores / client "
        "processes",
        flush=True,
    )
    heads = ("cycles/s", "lease p50", "lease p99", "done p50", "done p99")
    print(f"{'run':<34} " + " ".join(f"{h:>9}" for h in heads) + f" {'errors':>7} {'client':>8} "
          f"{'server CPU ms/cycle':>9}")  # fmt: skip
    http: dict[int, ClientResult] = {}
    server = ReferenceServer(db_url, processes=args.processes, threads=args.threads, log=args.server_log)
    with server:
        for n in ns:
            cpu0 = server.cpu_seconds()
            http[n] = run_http(server.url, n, args.duration, args.client_procs)
            server_cpu = server.cpu_seconds() - cpu0
            print(row(f"minimal DRF+ORM, {n} workers", http[n], server_cpu) + empty_note(http[n]), flush=True)
    raw = run_raw_sql(db_url, RAW_AT, args.duration, args.client_procs)
    print(row(f"raw SQL, {RAW_AT} connections", raw) + empty_note(raw), flush=True)

    print()
    raw_rate = raw.counts["cycles"] / raw.duration
    print(f"raw SQL at {RAW_AT}: {raw_rate:.0f} cycles/s = {raw_rate / REFERENCE['raw']:.2f} x the reference "
          f"machine's {REFERENCE['raw']:,}")  # fmt: skip
    versus = f"{raw_rate / REFERENCE['raw']:.2f} x the issue's reference machine ({REFERENCE['raw']:,})"
    figures = [
        Figure("machine", f"raw SQL lease+complete, {RAW_AT} connections", raw_rate, "cycles/s", "postgres",
               note=versus),
    ]  # fmt: skip
    if RAW_AT in http:
        rate = http[RAW_AT].counts["cycles"] / http[RAW_AT].duration
        print(f"minimal DRF+ORM at {RAW_AT}: {rate:.0f} cycles/s = {rate / REFERENCE['orm']:.2f} x the "
              f"reference machine's {REFERENCE['orm']}; DRF+ORM / raw SQL = {rate / raw_rate:.0%} "
              f"(reference {REFERENCE['orm'] / REFERENCE['raw']:.0%})")  # fmt: skip
        figures.append(
            Figure("machine", f"reference design (minimal DRF view, ORM lease), {RAW_AT} workers", rate,
                   "cycles/s", "postgres",
                   note=f"{rate / REFERENCE['orm']:.2f} x the issue's reference machine ({REFERENCE['orm']})")
        )  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="8,50", help="comma-separated N values")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--processes", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn process")
    parser.add_argument("--client-procs", type=int, default=0, help="client processes (0: by N, up to 4)")
    parser.add_argument("--server-log", type=Path, help="the reference app's log (default: the terminal)")
    parser.add_argument("--json", type=Path, help="write the figures here (used by python -m bench)")
    args = parser.parse_args()
    figures = measure(args)
    if args.json:
        args.json.write_text(json.dumps({"figures": [f.as_dict() for f in figures], "series": []}))


if __name__ == "__main__":
    main()
