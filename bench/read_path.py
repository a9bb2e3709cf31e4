"""Read path under load: while the largest scaling fleet works (32 daemons, 1 s jobs), `--readers` clients
poll a task's status once a second (REST API, API token) and `--gallery-viewers` signed-in people load
/gallery/ about once a second. p50/p99 per endpoint and every error (non-200 answer or failed request).

The clients run in four processes (bench.clients) so that the load generator is not the bottleneck; its
CPU is reported with the figures.
"""

from __future__ import annotations

import random
import threading
import time

import requests

from bench.clients import run_clients
from bench.common import pct
from bench.report import Figure, Series


def client(job: dict, stop: threading.Event, rec) -> None:
    session = requests.Session()
    if job["kind"] == "status":
        session.headers["Authorization"] = f"Token {job['api_token']}"
    else:
        session.cookies.set("sessionid", job["session"], domain="127.0.0.1", path="/")
    stop.wait(random.uniform(0, 1))
    while not stop.is_set():
        if job["kind"] == "status":
            url = f"{job['url']}/api/v1/tasks/{random.choice(job['task_ids'])}/"
        else:
            url = f"{job['url']}/gallery/"
        t0 = time.perf_counter()
        try:
            status = session.get(url, timeout=30, allow_redirects=False).status_code
            why = f"HTTP {status}"
        except requests.RequestException as exc:
            status, why = 0, type(exc).__name__
        if status == 200:
            rec.sample(job["kind"], time.perf_counter() - t0)
        else:
            rec.count(f"{job['kind']} errors")
            rec.count(f"{job['kind']} error: {why}")
        stop.wait(random.uniform(0.9, 1.1))


def signed_in_session(user) -> str:
    from django.test import Client

    browser = Client()
    browser.force_login(user)
    return browser.cookies["sessionid"].value


def run(farm, args, fleet) -> tuple[list, list]:
    from bench.scaling import throughput
    from generation.models import Task

    n = len(fleet.workers)
    print(f"read path: {args.readers} status pollers and {args.gallery_viewers} gallery viewers for "
          f"{args.read_duration:.0f} s while {n} workers run 1 s jobs", flush=True)  # fmt: skip
    # The tasks people would watch: the ones queued next, running now and finished lately.
    ids = list(Task.objects.filter(status=Task.Status.QUEUED).order_by("-priority", "id")
               .values_list("public_id", flat=True)[:200])  # fmt: skip
    ids += list(
        Task.objects.exclude(status=Task.Status.QUEUED)
        .order_by("-id")
        .values_list("public_id", flat=True)[:400]
    )
    task_ids = [str(i) for i in ids]
    session = signed_in_session(farm.staff)
    jobs = [
        {"kind": "status", "url": farm.url, "api_token": farm.api_token, "task_ids": task_ids}
    ] * args.readers
    jobs += [{"kind": "gallery", "url": farm.url, "session": session}] * args.gallery_viewers
    time.sleep(3)
    t0 = time.time()
    result = run_clients("bench.read_path:client", jobs, processes=4, duration=args.read_duration)
    rate, _ = throughput(t0, time.time())
    db = farm.db
    figures, series = [], []
    for kind, label, target in (
        ("status", "task status (GET /api/v1/tasks/<id>/)", 100),
        ("gallery", "gallery page (GET /gallery/)", 300),
    ):
        values = result.samples.get(kind, [])
        errors = result.counts.get(f"{kind} errors", 0)
        p50, p99 = pct(values, 50) * 1000, pct(values, 99) * 1000
        why = ", ".join(f"{k.split(': ', 1)[1]} x{v}" for k, v in sorted(result.counts.items())
                        if k.startswith(f"{kind} error: "))  # fmt: skip
        print(f"  {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(values)} requests, {errors} errors"
              + (f" ({why})" if why else ""), flush=True)  # fmt: skip
        figures += [
            Figure("read path", f"{label} p50", p50, "ms", db, note=f"{len(values)} requests"),
            Figure("read path", f"{label} p99", p99, "ms", db, "<=", target),
            Figure("read path", f"{label} errors", errors, "", db, "<=", 0),
        ]
        series.append(Series("read path", label, "latency", values, db=db))
    figures.append(
        Figure("read path", f"farm throughput meanwhile ({n} workers, 1 s jobs)", rate, "tasks/s", db,
               note=result.describe())
    )  # fmt: skip
    print(f"  farm throughput meanwhile {rate:.2f} tasks/s; {result.describe()}", flush=True)
    return figures, series
