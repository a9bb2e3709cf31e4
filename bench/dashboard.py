"""How fast are the farm figures with a million tasks? Seeds PostgreSQL and times every dashboard query,
the /metrics scrape, /healthz and the busiest admin pages.

    .venv/bin/python bench/dashboard.py                 # creates (or reuses with --keep) its own database
    .venv/bin/python bench/dashboard.py --tasks 200000 --repeat 3

The database is BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/t2i_bench_dashboard): it is
dropped and created again unless --keep is given and it already holds the tasks. Seeding is one
INSERT … SELECT generate_series for the tasks and one INSERT … SELECT for their attempts, then VACUUM ANALYZE.

Shape of the data: tasks spread evenly over the last 30 days (so about 1,400 finish in any hour); the newest
5,000 are queued at five priorities, 40 are running on 20 workers; of the rest 97% completed, 2% failed and
1% cancelled; every leased task has one attempt.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/t2i_bench_dashboard"
WORKERS = 20
QUEUED = 5000
RUNNING = 40


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="Timed runs per figure (the median is shown).")
    parser.add_argument("--keep", action="store_true", help="Reuse the database when it is already seeded.")
    return parser.parse_args()


def prepare_database(url: str, keep: bool) -> bool:
    """Create the benchmark database; True when it must be seeded."""
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and keep:
            return False
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return True


def seed(total: int) -> None:
    from django.db import connection

    from generation.models import WorkflowTemplate
    from tests.conftest import capabilities
    from workers_app import services as worker_services

    workers = []
    for i in range(WORKERS):
        worker, _ = worker_services.worker_create(name=f"gpu-{i:02d}")
        caps = capabilities(checkpoints=["sd15.safetensors", "sdxl.safetensors", "flux.safetensors"])
        workers.append(worker_services.worker_register(worker=worker, capabilities=caps).pk)
    template = WorkflowTemplate.objects.get(name="sd15-txt2img").pk
    finished = total - QUEUED - RUNNING
    params = {
        "total": total,
        "finished": finished,
        "running_end": finished + RUNNING,
        "template": template,
        "workers": workers,
        "nworkers": len(workers),
    }
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO generation_task (
                public_id, prompt, negative_prompt, width, height, steps, cfg, sampler, scheduler, seed,
                batch_size, checkpoint, template_id, priority, status, progress_value, progress_max,
                created_at, leased_at, started_at, finished_at, error_code, error_message, warning, attempts,
                lease_count, max_attempts, worker_id, lease_token, lease_expires_at, callback_url)
            SELECT gen_random_uuid(), 'bench prompt ' || g, '', 512, 512, 20, 7.0, 'euler', 'normal',
                (g::bigint * 7919)::text, 1,
                (ARRAY['sd15.safetensors', 'sdxl.safetensors', 'flux.safetensors'])[1 + g %% 3],
                %(template)s, CASE WHEN g > %(running_end)s THEN (g %% 5) * 10 ELSE 0 END, s.status,
                CASE WHEN s.status IN ('completed', 'running') THEN 20 ELSE 0 END,
                CASE WHEN s.status IN ('completed', 'running') THEN 20 ELSE 0 END,
                t.created, t.leased, t.started,
                CASE WHEN s.status IN ('completed', 'failed', 'cancelled') THEN t.finished END,
                CASE s.status WHEN 'failed' THEN 'comfyui_error' WHEN 'cancelled' THEN 'cancelled'
                     ELSE '' END,
                '', '', CASE WHEN t.leased IS NULL THEN 0 ELSE 1 END,
                CASE WHEN t.leased IS NULL THEN 0 ELSE 1 END, 3,
                CASE WHEN t.leased IS NOT NULL THEN (%(workers)s::bigint[])[1 + g %% %(nworkers)s] END,
                CASE WHEN s.status = 'running' THEN gen_random_uuid() END,
                CASE WHEN s.status = 'running' THEN now() + interval '30 seconds' END, ''
            FROM generate_series(1, %(total)s) AS g
            CROSS JOIN LATERAL (SELECT CASE
                WHEN g > %(running_end)s THEN 'queued'
                WHEN g > %(finished)s THEN 'running'
                WHEN g %% 100 < 2 THEN 'failed'
                WHEN g %% 100 = 2 THEN 'cancelled'
                ELSE 'completed' END AS status) AS s
            CROSS JOIN LATERAL (SELECT
                now() - interval '30 days' * (1 - g::float / %(total)s) - interval '3 minutes' AS created
            ) AS c
            CROSS JOIN LATERAL (SELECT c.created,
                CASE WHEN s.status = 'queued' OR (s.status = 'cancelled') THEN NULL
                     ELSE c.created + make_interval(secs => g %% 120) END AS leased,
                CASE WHEN s.status IN ('completed', 'running', 'failed')
                     THEN c.created + make_interval(secs => g %% 120 + 1) END AS started,
                CASE WHEN s.status = 'cancelled' THEN c.created + interval '10 seconds'
                     ELSE c.created + make_interval(secs => g %% 120 + 6 + g %% 40) END AS finished) AS t
            """,
            params,
        )
        print(f"  tasks inserted in {time.perf_counter() - started:.1f} s")
        step = time.perf_counter()
        cursor.execute(
            """
            INSERT INTO generation_taskattempt (
                task_id, worker_id, number, lease_token, lease_expires_at, leased_at, started_at, finished_at,
                outcome, error_code, error_message, comfyui_prompt_id)
            SELECT id, worker_id, 1, COALESCE(lease_token, gen_random_uuid()),
                COALESCE(lease_expires_at, finished_at, leased_at), leased_at, started_at,
                CASE WHEN status = 'running' THEN NULL ELSE finished_at END,
                CASE status WHEN 'running' THEN 'active' ELSE status END, error_code, '', ''
            FROM generation_task WHERE leased_at IS NOT NULL
            """
        )
        print(f"  attempts inserted in {time.perf_counter() - step:.1f} s")
        cursor.execute(
            "UPDATE workers_app_worker SET status = 'busy' "
            "WHERE id IN (SELECT worker_id FROM generation_task WHERE status = 'running')"
        )
    step = time.perf_counter()
    connection.ensure_connection()
    connection.connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    total_time = time.perf_counter() - started
    print(f"  VACUUM ANALYZE in {time.perf_counter() - step:.1f} s; seeding took {total_time:.1f} s")


def timed(repeat: int, fn) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), min(samples)


def main() -> None:
    args = parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
    os.environ.setdefault("DEBUG", "1")  # admin pages without collectstatic
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    must_seed = prepare_database(url, args.keep)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.utils import timezone

    from generation import dashboard
    from generation.models import Task, TaskAttempt
    from workers_app.models import Worker

    call_command("migrate", verbosity=0)
    if must_seed:
        print(f"Seeding {args.tasks:,} tasks into {urlparse(url).path.lstrip('/')} …")
        seed(args.tasks)
    setup_test_environment()
    print(
        f"\n{connection.vendor} {connection.pg_version // 10000}: {Task.objects.count():,} tasks, "
        f"{TaskAttempt.objects.count():,} attempts, {Worker.objects.count()} workers; "
        f"median (min) of {args.repeat} runs\n"
    )

    now = timezone.now()
    since = now - dashboard.WINDOW
    completed = Task.objects.filter(status=Task.Status.COMPLETED, finished_at__gte=since)
    ids = list(Worker.objects.values_list("pk", flat=True))
    today = dashboard.start_of_today()
    figures = [
        ("queue depth by priority", dashboard.queue_by_priority),
        ("queued/leased/running counts", dashboard.active_tasks_by_status),
        ("completed+failed last hour", lambda: dashboard.finished_since(since)),
        ("finished per minute (60 bars)", lambda: dashboard.finished_per_minute(since, now)),
        ("wait p50/p95 last hour", lambda: dashboard.percentiles(completed, dashboard.WAIT, (0.5, 0.95))),
        ("run p50/p95 last hour", lambda: dashboard.percentiles(completed, dashboard.RUN, (0.5, 0.95))),
        ("oldest queued age", lambda: dashboard.oldest_queued_age(now)),
        ("worker utilisation last hour", lambda: dashboard.worker_utilisation(since, now)),
        ("running tasks (20)", dashboard.running_tasks),
        ("farm_figures() all together", dashboard.farm_figures),
        (
            "workers + today's stats (annot.)",
            lambda: list(dashboard.workers_with_stats(Worker.objects.all(), since=today)),
        ),
        ("median run per worker today", lambda: dashboard.median_run_seconds(ids, since=today)),
    ]
    for label, fn in figures:
        median, best = timed(args.repeat, fn)
        print(f"  {label:<36} {median:8.1f} ms  ({best:.1f})")

    user = get_user_model().objects.filter(
        username="bench-admin"
    ).first() or get_user_model().objects.create_superuser("bench-admin", password="bench-admin-pw")
    client = Client()
    client.force_login(user)
    pages = [
        ("GET /metrics", "/metrics"),
        ("GET /healthz", "/healthz"),
        ("GET admin dashboard", "/admin/generation/task/dashboard/"),
        ("GET admin task list", "/admin/generation/task/"),
        ("GET admin task list ?status=queued", "/admin/generation/task/?status__exact=queued"),
        ("GET admin task list ?q=prompt 4242", "/admin/generation/task/?q=prompt+4242"),
        ("GET admin worker list", "/admin/workers_app/worker/"),
    ]
    print()
    started = time.perf_counter()
    client.get("/metrics")
    print(f"  first /metrics scrape (counts all rows once) {(time.perf_counter() - started) * 1000:8.1f} ms")
    for label, path in pages:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        queries: list[str] = []

        def count(execute, sql, *rest, queries=queries):
            queries.append(sql)
            return execute(sql, *rest)

        with connection.execute_wrapper(count):
            client.get(path)
        median, best = timed(args.repeat, lambda path=path: client.get(path))
        print(f"  {label:<36} {median:8.1f} ms  ({best:.1f})  {len(queries)} queries")
    body = client.get("/metrics").content.decode()
    print(f"\n  /metrics: {sum(1 for line in body.splitlines() if not line.startswith('#'))} samples")
    print(f"  /healthz: {client.get('/healthz').json()}")


if __name__ == "__main__":
    main()
