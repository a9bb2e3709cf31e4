"""Two scheduler instances side by side on one database: dispatch from one to the other, and the farm when
one of them dies.

    python -m bench.instances                          # phase A 20 idle workers, 30 s; phase B 20 workers,
                                                       # 200 tasks of 1 s, instance B killed after a third
    python -m bench.instances --phases b --tasks 400 --busy-workers 40

Two gunicorn masters (t2i_project/gunicorn.conf.py, as production, each with its own uvicorn processes) on
two ports share one fresh PostgreSQL database and one MEDIA_ROOT, as two machines behind a load balancer
would.

Phase A, dispatch across instances: M simulated idle daemons (bench.scale's: exactly what an idle protocol-2
runworker sends) long-poll on instance B only; a probe submits one task a second to instance A through the
REST API. Prints submit returned (A) -> the lease answer carrying that task (B) p50/p99: A's commit reaches
B's waiting room through PostgreSQL LISTEN/NOTIFY. The workers complete each task at once.

Phase B, one instance killed mid-run (a fresh database and fresh instances): W simulated busy daemons
(bench.busy's: exactly what a working runworker sends, 1 s jobs) are given both URLs, half of them A first
and half B first. Each sticks to its URL and moves to the other after a connection error, a timeout or a
502/503/504, where runworker's retry of that call goes (a failed completion is retried there with the same
lease token). T tasks are submitted alternately to A and B (to the other one when one does not answer), by
default as fast as the workers run them, so that work is in flight when instance B's master and workers are
SIGKILLed together, once a third of the tasks have completed. The run ends when every task has finished (a
task leased through B whose answer never arrived comes back when its lease expires, T2I_LEASE_SECONDS, 30 s
by default) or at the deadline. Then the database is checked: exactly T tasks, each completed exactly once
(status completed, exactly one completed attempt, as many images as its batch), none failed, queued, leased
or running. Prints the counts, "every task ended exactly once: yes/no", how long after the kill the last task
finished and the longest pause between two completions after the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from pathlib import Path

from bench.busy import (
    CALL_TIMEOUT,
    Daemon,
    SchedulerCalls,
    SchedulerServer,
    Stats,
    task_body,
)
from bench.common import add_suite_arguments, database_url, pct, save_figures, setup_django, staff_api_token
from bench.lease import make_workers
from bench.scale import Farm

DATABASE = "t2i_bench_instances"


def instance_log(path: Path | None, name: str) -> Path | None:
    """Each instance's log beside the other: server.log -> server-A.log, server-B.log."""
    return path.with_name(f"{path.stem}-{name}{path.suffix}") if path else None


def fresh_database() -> tuple[str, str]:
    """An empty, migrated database (the same name, dropped first), and a staff user's REST token."""
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.db import connections

    connections.close_all()
    db_url = database_url("postgres", DATABASE)
    call_command("migrate", verbosity=0)
    ContentType.objects.clear_cache()
    api_token = staff_api_token("bench-user")
    return db_url, api_token


def servers(args, db_url: str) -> tuple[SchedulerServer, SchedulerServer]:
    kwargs = {"processes": args.processes, "threads": args.threads}
    a = SchedulerServer(db_url, log=instance_log(args.server_log, "A"), **kwargs)
    try:
        b = SchedulerServer(db_url, log=instance_log(args.server_log, "B"), **kwargs)
    except BaseException:
        a.stop()
        raise
    return a, b


# --- phase A: dispatch across instances ------------------------------------------------------------------


def phase_a(args, db_url: str, api_token: str) -> list:
    from bench.report import Figure

    tokens = make_workers(args.idle_workers, "idle")
    print(
        f"\nphase A: {args.idle_workers} idle protocol-2 workers long-poll on instance B; a task a second "
        f"submitted to instance A (warm-up {args.warmup:g} s, measured {args.dispatch_seconds:g} s)",
        flush=True,
    )
    a, b = servers(args, db_url)
    with a, b:
        farm = Farm(b.url, tokens, api_token, args.dispatch_seconds, 2, args.warmup, probe_url=a.url)
        asyncio.run(farm.run())
    dp50, dp99 = pct(farm.dispatch, 50) * 1000, pct(farm.dispatch, 99) * 1000
    sp50, sp99 = pct(farm.status, 50) * 1000, pct(farm.status, 99) * 1000
    errors = sum(farm.counts.values())
    verdict = "PASS" if dp50 <= 30 else "MISS"
    first = sum(1 for d in farm.dispatch if d < 0)
    tp50, tp99 = pct(farm.dispatch_sent, 50) * 1000, pct(farm.dispatch_sent, 99) * 1000
    print(f"submit returned (A) -> lease answer (B): p50 {dp50:.1f} ms, p99 {dp99:.1f} ms over "
          f"{len(farm.dispatch)} tasks (target p50 <= 30 ms: {verdict}); the lease answer came before the "
          f"submit's own answer for {first} of them")  # fmt: skip
    print(f"submit sent (A) -> lease answer (B): p50 {tp50:.1f} ms, p99 {tp99:.1f} ms; probe tasks no "
          f"lease answer carried by the end: {len(farm.submitted)}")  # fmt: skip
    detail = ", ".join(f"{k} x{v}" for k, v in sorted(farm.counts.items()))
    print(f"status read on A: p50 {sp50:.1f} ms, p99 {sp99:.1f} ms; refused or failed requests: {errors}"
          + (f"  {detail}" if errors else ""))  # fmt: skip
    return [
        Figure("instances", "submit on A -> lease answer on B, p50", dp50, "ms", "postgres", "<=", 30),
        Figure("instances", "submit on A -> lease answer on B, p99", dp99, "ms", "postgres"),
        Figure("instances", "submit sent to A -> lease answer on B, p50", tp50, "ms", "postgres"),
        Figure("instances", "phase A: refused or failed requests", errors, "", "postgres", "<=", 0),
    ]


# --- phase B: one instance killed mid-run ----------------------------------------------------------------


class Failover:
    """W busy daemons on two instances, T tasks, instance B SIGKILLed once a third of them completed."""

    def __init__(self, args, a: SchedulerServer, b: SchedulerServer, tokens: list[str], api_token: str):
        self.args, self.a, self.b, self.tokens, self.api_token = args, a, b, tokens, api_token
        self.stats = Stats()
        self.accepted = 0  # submits answered 201
        self.submit_retries = 0  # submits sent again to the other instance (the first got no answer)
        self.stored_unanswered = 0  # submits whose answer was lost although the task was stored
        self.t0 = self.killed_at = self.done_at = 0.0
        self.completed_at_kill = 0

    def distinct_completed(self) -> int:
        return len({task_id for _, task_id in self.stats.completed})

    async def run(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=5)  # as bench.busy
        async with aiohttp.ClientSession(connector=connector) as session:
            urls = [self.a.url, self.b.url]
            daemons = []
            for i, token in enumerate(self.tokens):
                mine = urls if i % 2 == 0 else urls[::-1]  # half stick to A, half to B
                calls = SchedulerCalls(session, mine, token, 2, self.stats)
                daemons.append(Daemon(calls, f"failover-{i}", self.args.job_seconds, 2, self.stats))
            self.t0 = time.monotonic()
            spread = self.args.job_seconds / len(daemons)
            tasks = [asyncio.create_task(d.run(i * spread)) for i, d in enumerate(daemons)]
            tasks.append(asyncio.create_task(self.submit_all(session)))
            try:
                await self.watch()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def watch(self) -> None:
        """Kill B once a third of the tasks completed; then wait until the database has nothing unfinished."""
        while self.distinct_completed() < math.ceil(self.args.tasks / 3):
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.b.kill)
        self.killed_at = time.monotonic()
        self.completed_at_kill = self.distinct_completed()
        print(f"{self.killed_at - self.t0:.1f} s: instance B killed (master and workers, SIGKILL) with "
              f"{self.completed_at_kill} of {self.args.tasks} tasks completed", flush=True)  # fmt: skip
        deadline = self.killed_at + self.args.deadline
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            submitted = self.accepted + self.stored_unanswered
            if submitted >= self.args.tasks and await asyncio.to_thread(unfinished) == 0:
                self.done_at = time.monotonic()
                return

    async def submit_all(self, session) -> None:
        """T tasks at `submit_rate` a second, alternately to A and B; a submit that got no answer (or a
        502/503/504) goes to the other instance, and so do the next ones, as a user's client with two
        addresses would send them. The submit API is not idempotent: after a lost answer the client looks
        for its task (by its prompt, in the database, as bench.chaos does) before it sends it again."""
        import aiohttp

        headers = {"Authorization": f"Token {self.api_token}"}
        urls = [self.a.url, self.b.url]
        down: set[int] = set()  # instances that did not answer
        for i in range(self.args.tasks):
            due = self.t0 + i / self.args.submit_rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            target = i % 2 if len(down) != 1 else 1 - next(iter(down))
            prompt = f"instances {i}"
            while True:
                try:
                    async with session.post(
                        f"{urls[target]}/api/v1/tasks/",
                        json=task_body(prompt),
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
                    ) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.stats.error(f"submit {type(exc).__name__}")
                    status = None
                if status == 201:
                    self.accepted += 1
                    break
                if status is None and await asyncio.to_thread(stored, prompt):
                    self.stored_unanswered += 1  # stored before the instance died: not sent again
                    break
                if status is not None:
                    self.stats.error(f"submit HTTP {status}")
                if status is None or status in (502, 503, 504):
                    self.submit_retries += 1
                    down.add(target)
                    target = 1 - target
                await asyncio.sleep(0.1)


def stored(prompt: str) -> bool:
    from django.db import connection

    from generation.models import Task

    try:
        return Task.objects.filter(prompt=prompt).exists()
    finally:
        connection.close()  # this runs on a helper thread: leave no connection behind


def unfinished() -> int:
    from django.db import connection

    from generation.models import Task

    try:
        return Task.objects.exclude(status__in=Task.FINISHED_STATUSES).count()
    finally:
        connection.close()  # this runs on a helper thread: leave no connection behind


def check_database() -> dict:
    """What the database says about every task once the run is over."""
    from django.db.models import Count, F, Q

    from generation.models import Task, TaskAttempt

    completed = TaskAttempt.Outcome.COMPLETED
    once = Task.objects.annotate(n=Count("attempt_set", filter=Q(attempt_set__outcome=completed)))
    return {
        "tasks": Task.objects.count(),
        "status": dict(Task.objects.values_list("status").annotate(n=Count("id")).order_by("status")),
        "attempts": dict(
            TaskAttempt.objects.values_list("outcome").annotate(n=Count("id")).order_by("outcome")
        ),
        "not_completed_once": once.exclude(n=1).count(),
        "images_not_batch": Task.objects.annotate(n=Count("images")).exclude(n=F("batch_size")).count(),
        "leased_more_than_once": Task.objects.filter(lease_count__gt=1).count(),
    }


def phase_b(args, db_url: str, api_token: str) -> list:
    from bench.report import Figure

    tokens = make_workers(args.busy_workers, "busy")
    print(
        f"\nphase B: {args.busy_workers} busy protocol-2 workers ({args.job_seconds:g} s jobs, prefetch 2), "
        f"half on A and half on B, failing over to the other; {args.tasks} tasks at {args.submit_rate:g}/s "
        f"to both; instance B SIGKILLed after a third completed; deadline {args.deadline:g} s after the kill",
        flush=True,
    )
    a, b = servers(args, db_url)
    with a, b:
        run = Failover(args, a, b, tokens, api_token)
        asyncio.run(run.run())
    db = check_database()
    stats = run.stats
    status = db["status"]
    exactly_once = (
        db["tasks"] == args.tasks
        and status == {"completed": db["tasks"]}
        and db["not_completed_once"] == 0
        and db["images_not_batch"] == 0
    )
    recovered = run.done_at - run.killed_at if run.done_at else float("nan")
    after_kill = sorted(t for t, _ in stats.completed if t >= run.killed_at)
    gaps = [later - earlier for earlier, later in zip([run.killed_at, *after_kill], after_kill, strict=False)]
    longest_gap = max(gaps, default=float("nan"))
    print(f"submits: {run.accepted} answered 201, {run.stored_unanswered} stored without an answer (found by "
          f"their prompt), {run.submit_retries} sent again to the other instance; tasks in the database: "
          f"{db['tasks']}")  # fmt: skip
    print(f"tasks by status: {status}; attempts by outcome: {db['attempts']}")
    print(f"tasks without exactly one completed attempt: {db['not_completed_once']}; tasks whose image count "
          f"is not their batch size: {db['images_not_batch']}; tasks leased more than once: "
          f"{db['leased_more_than_once']}")  # fmt: skip
    print(f"every task ended exactly once: {'yes' if exactly_once else 'no'}")
    if run.done_at:
        whole = run.done_at - run.t0
        print(f"recovered: the last task finished {recovered:.1f} s after the kill (longest pause between "
              f"two completions after it {longest_gap:.1f} s); whole run {whole:.1f} s")  # fmt: skip
    else:
        print(f"NOT recovered: {unfinished()} task(s) unfinished {args.deadline:g} s after the kill")
    print(f"daemons: {stats.failovers} failovers, {stats.lost} leases lost; failed or refused requests "
          f"{stats.error_total()}: {stats.detail()}")  # fmt: skip
    return [
        Figure("instances", "instance B killed: every task ended exactly once", float(exactly_once), "yes",
               "postgres", ">=", 1),
        Figure("instances", "instance B killed: last task finished after the kill", recovered, "s",
               "postgres"),
        Figure("instances", "instance B killed: longest pause between completions after it", longest_gap,
               "s", "postgres"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default="a,b", help="a (dispatch across instances), b (one killed)")
    parser.add_argument("--idle-workers", type=int, default=20, help="phase A: idle workers on instance B")
    parser.add_argument("--dispatch-seconds", type=float, default=30.0, help="phase A: measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="phase A: seconds before measuring")
    parser.add_argument("--busy-workers", type=int, default=20, help="phase B: workers on both instances")
    parser.add_argument("--job-seconds", type=float, default=1.0, help="phase B: seconds per job")
    parser.add_argument("--tasks", type=int, default=200, help="phase B: tasks submitted")
    parser.add_argument(
        "--submit-rate", type=float, help="phase B: tasks submitted a second (default: what the workers do)"
    )
    parser.add_argument(
        "--deadline", type=float, default=90.0, help="phase B: seconds after the kill to give up waiting"
    )
    add_suite_arguments(parser)
    args = parser.parse_args()
    if args.submit_rate is None:  # as fast as the farm works: every worker busy, work in flight at the kill
        args.submit_rate = args.busy_workers / args.job_seconds
    phases = {p.strip().lower() for p in args.phases.split(",") if p.strip()}
    setup_django(database_url("postgres", DATABASE))
    figures = []
    if "a" in phases:
        figures += phase_a(args, *fresh_database())
    if "b" in phases:
        figures += phase_b(args, *fresh_database())
    save_figures(args.json, figures)


if __name__ == "__main__":
    main()
