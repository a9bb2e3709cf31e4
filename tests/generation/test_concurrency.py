"""Leasing under real concurrency: several OS processes claim from one queue in the test database, plus
checks of the claim query itself (FOR UPDATE SKIP LOCKED on PostgreSQL, the claim index on SQLite)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from generation import services
from generation.models import Task, TaskAttempt, WorkflowTemplate
from tests.conftest import CHECKPOINT, make_worker, submit_task
from workers_app.models import Worker

PROCESSES = 8
TASKS = 2000
ROOT = Path(settings.BASE_DIR)

# One leasing process: it opens the parent's test database, says "ready", waits for "go" on stdin so all
# processes start together, then leases until nothing is left and prints what it got as JSON.
CHILD = """
import json, os, sys
import django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = os.environ["T2I_CHILD_DB_NAME"]
django.setup()
from generation import services
from generation.models import Task
from workers_app.models import Worker

worker = Worker.objects.get(pk=int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
leased, errors = [], []
while len(errors) < 20:
    try:
        lease = services.task_lease_next(worker=worker)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        continue
    if lease is None:
        # Placement may leave this worker nothing while another should run what is queued: ask again
        # until the queue is empty.
        if not Task.objects.filter(status=Task.Status.QUEUED).exists():
            break
        continue
    leased.append([str(lease.task.public_id), str(lease.attempt.lease_token)])
print(json.dumps({"leased": leased, "errors": errors}), flush=True)
"""


def start_children(worker_ids: list[int], scheduler: str = "smart") -> list[subprocess.Popen]:
    env = os.environ | {
        "T2I_SCHEDULER": scheduler,
        "DJANGO_SETTINGS_MODULE": "t2i_project.settings_test",
        "T2I_CHILD_DB_NAME": str(connection.settings_dict["NAME"]),
        # Leases and liveness outlast the run: this test is about claiming, not about expiry.
        "T2I_LEASE_SECONDS": "3600",
        "T2I_WORKER_OFFLINE_AFTER": "3600",
        "LOG_LEVEL": "WARNING",
    }
    return [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(pk)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pk in worker_ids
    ]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["fifo", "smart"])
@pytest.mark.django_db(transaction=True)
def test_processes_lease_every_task_exactly_once(scheduler):
    workers = [make_worker(f"proc-{i}")[0] for i in range(PROCESSES)]
    # Each process keeps what it leases: a prefetch depth as deep as the queue.
    Worker.objects.filter(pk__in=[w.pk for w in workers]).update(prefetch=TASKS)
    template = WorkflowTemplate.objects.get(name="sd15-txt2img")
    Task.objects.bulk_create(
        Task(prompt=f"task {i}", width=64, height=64, seed=i, checkpoint=CHECKPOINT, template=template)
        for i in range(TASKS)
    )
    all_ids = {str(pk) for pk in Task.objects.values_list("public_id", flat=True)}
    connection.close()  # the children write; do not hold anything open meanwhile

    children = start_children([w.pk for w in workers], scheduler)
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        started = time.monotonic()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    elapsed = time.monotonic() - started

    results = []
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
        assert "database is locked" not in stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    errors = [e for r in results for e in r["errors"]]
    assert errors == []
    pairs = [tuple(p) for r in results for p in r["leased"]]
    task_ids = [task_id for task_id, _ in pairs]
    assert len(task_ids) == len(set(task_ids)) == TASKS  # nobody leased a task twice
    assert set(task_ids) == all_ids  # none lost
    assert len({token for _, token in pairs}) == TASKS
    assert sum(1 for r in results if r["leased"]) >= 2  # they really did run side by side

    assert TaskAttempt.objects.count() == TASKS
    assert not Task.objects.exclude(status=Task.Status.LEASED).exists()
    in_db = {(str(t), str(k)) for t, k in Task.objects.values_list("public_id", "lease_token")}
    assert in_db == set(pairs)
    per_worker = {w.name: TaskAttempt.objects.filter(worker=w).count() for w in workers}
    assert per_worker == {w.name: len(r["leased"]) for w, r in zip(workers, results, strict=True)}
    print(
        f"{PROCESSES} processes leased {TASKS} tasks in {elapsed:.1f} s on {connection.vendor} ({scheduler})"
    )


@pytest.mark.postgres
@pytest.mark.django_db
def test_claim_uses_for_update_skip_locked_on_postgresql(worker):
    submit_task(prompt="x")

    with CaptureQueriesContext(connection) as queries:
        assert services.task_lease_next(worker=worker) is not None

    claims = [q["sql"] for q in queries.captured_queries if 'FROM "generation_task"' in q["sql"]]
    assert any("FOR UPDATE SKIP LOCKED" in sql for sql in claims), claims


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return " | ".join(row[-1] for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's planner; PostgreSQL locks rows instead")
@pytest.mark.parametrize("scheduler", ["fifo", "smart"])
@pytest.mark.django_db
def test_claim_query_uses_the_claim_index_on_sqlite(worker, settings, scheduler):
    settings.T2I = {**settings.T2I, "SCHEDULER": scheduler}
    template = WorkflowTemplate.objects.get(name="sd15-txt2img")
    finished = [Task.Status.COMPLETED, Task.Status.FAILED, Task.Status.QUEUED]
    Task.objects.bulk_create(
        Task(
            prompt="x",
            seed=i,
            checkpoint=CHECKPOINT,
            template=template,
            status=finished[i % 3],
            priority=i % 4,
        )
        for i in range(600)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    with CaptureQueriesContext(connection) as queries:
        assert services.task_lease_next(worker=worker) is not None

    # fifo: the claim itself; smart: the window of the queue placement looks at (the claim is then by id)
    head = next(
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("SELECT")
        and '"generation_task"."status" = \'queued\'' in q["sql"]
        and " LIMIT " in q["sql"]
        and "ORDER BY" in q["sql"]
    )
    plan = explain(head)
    assert "USING INDEX task_claim_idx" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # the index gives the ORDER BY too: no sort
    if scheduler == "smart":
        owners = next(
            q["sql"]
            for q in queries.captured_queries
            if q["sql"].startswith('SELECT DISTINCT "generation_task"."owner_id"')
        )
        assert "task_queued_owner_idx" in explain(owners)
