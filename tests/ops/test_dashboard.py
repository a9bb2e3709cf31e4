"""The farm figures: counts, percentiles (as percentile_cont interpolates them) and utilisation."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import dashboard, services
from generation.models import Task
from tests.conftest import capabilities, make_worker
from tests.factories import TaskFactory
from tests.ops.conftest import backdate, run
from workers_app.models import Worker

pytestmark = pytest.mark.django_db


def interpolated(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def finished_tasks(worker, runs: list[float], *, now, finished_ago: float = 60) -> list[Task]:
    """Completed tasks whose run times are `runs` seconds and whose waits are twice that."""
    tasks = []
    for seconds in runs:
        TaskFactory()
        task = run(worker)
        backdate(
            task,
            created=finished_ago + 3 * seconds,
            leased=finished_ago + seconds,
            started=finished_ago + seconds,
            finished=finished_ago,
            now=now,
        )
        tasks.append(task)
    return tasks


def test_percentiles_interpolate_like_percentile_cont(worker):
    now = timezone.now()
    runs = [1.0, 2.0, 3.0, 4.0, 10.0, 40.0, 7.5]
    finished_tasks(worker, runs, now=now)
    qs = Task.objects.filter(status=Task.Status.COMPLETED)
    p50, p95 = dashboard.percentiles(qs, dashboard.RUN, (0.5, 0.95))
    assert p50 == pytest.approx(interpolated(runs, 0.5))
    assert p95 == pytest.approx(interpolated(runs, 0.95))
    wait50, _ = dashboard.percentiles(qs, dashboard.WAIT, (0.5, 0.95))
    assert wait50 == pytest.approx(2 * interpolated(runs, 0.5))
    assert dashboard.percentiles(qs.none(), dashboard.RUN, (0.5,)) == [None]


def test_farm_figures_for_the_last_hour(worker):
    now = timezone.now()
    finished_tasks(worker, [5.0, 15.0], now=now, finished_ago=120)
    finished_tasks(worker, [100.0], now=now, finished_ago=2 * 3600)  # outside the window
    TaskFactory()
    failed = run(worker, complete=False)
    Task.objects.filter(pk=failed.pk).update(finished_at=now - timedelta(seconds=30))
    TaskFactory(priority=5)
    TaskFactory(priority=5)
    TaskFactory()
    services.task_lease_next(worker=worker)  # one priority-5 task

    figures = dashboard.farm_figures(now=timezone.now())
    assert figures.queue_by_priority == [(5, 1), (0, 1)]
    assert figures.queued == 2
    assert figures.tasks_by_status == {"queued": 2, "leased": 1, "running": 0}
    assert (figures.completed_last_hour, figures.failed_last_hour) == (2, 1)
    assert figures.throughput_per_minute == pytest.approx(2 / 60)
    assert sum(c for _, c, _ in figures.per_minute) == 2 and sum(f for _, _, f in figures.per_minute) == 1
    assert len(figures.per_minute) in (60, 61)
    assert figures.run_p50 == pytest.approx(10.0) and figures.run_p95 == pytest.approx(14.5)
    assert figures.oldest_queued_age >= 0
    assert [t.priority for t in figures.running] == [5]


def test_utilisation_is_busy_time_over_online_time(worker):
    now = timezone.now()
    Worker.objects.filter(pk=worker.pk).update(registered_at=now - timedelta(hours=3))
    # 30 minutes of work inside the window, 10 of them from a task that started before it.
    TaskFactory()
    task = run(worker)
    backdate(task, created=4000, leased=3900, started=3900, finished=3000, now=now)  # 10 min in window
    TaskFactory()
    task = run(worker)
    backdate(task, created=1300, leased=1200, started=1200, finished=600, now=now)  # 10 min
    TaskFactory()
    services.task_lease_next(worker=worker)
    active = Task.objects.get(status=Task.Status.LEASED)
    services.task_start(worker=worker, task_id=active.public_id, lease_token=active.lease_token)
    backdate(active, created=700, leased=600, started=600, finished=None, now=now)  # 10 min, still running
    late, _ = make_worker("gpu-late")
    Worker.objects.filter(pk=late.pk).update(registered_at=now - timedelta(minutes=15))

    rows = {u.worker.name: u for u in dashboard.worker_utilisation(now - timedelta(hours=1), now)}
    assert rows["gpu-1"].busy_seconds == pytest.approx(1800, abs=1)
    assert rows["gpu-1"].online_seconds == pytest.approx(3600, abs=1)
    assert rows["gpu-1"].ratio == pytest.approx(0.5, abs=0.01)
    assert rows["gpu-late"].online_seconds == pytest.approx(900, abs=1) and rows["gpu-late"].busy_seconds == 0


def test_offline_worker_counts_online_until_its_last_heartbeat(worker):
    now = timezone.now()
    Worker.objects.filter(pk=worker.pk).update(
        status=Worker.Status.OFFLINE,
        registered_at=now - timedelta(hours=2),
        last_heartbeat=now - timedelta(minutes=40),
    )
    [row] = dashboard.worker_utilisation(now - timedelta(hours=1), now)
    assert row.online_seconds == pytest.approx(20 * 60, abs=1)


def test_worker_stats_and_median(worker):
    now = timezone.now()
    finished_tasks(worker, [10.0, 20.0, 30.0, 40.0], now=now, finished_ago=1)
    TaskFactory()
    run(worker, complete=False)
    other, _ = make_worker("gpu-2")
    finished_tasks(other, [7.0], now=now, finished_ago=1)
    since = now - timedelta(hours=1)
    rows = {w.name: w for w in dashboard.workers_with_stats(Worker.objects.all(), since=since)}
    assert (rows["gpu-1"].done_today, rows["gpu-1"].failed_today) == (4, 1)
    assert dashboard.failure_rate(rows["gpu-1"]) == pytest.approx(0.2)
    assert dashboard.failure_rate(rows["gpu-2"]) == 0.0
    idle, _ = make_worker("gpu-idle")
    assert (
        dashboard.failure_rate(
            dashboard.workers_with_stats(Worker.objects.filter(pk=idle.pk), since=since)[0]
        )
        is None
    )
    medians = dashboard.median_run_seconds([worker.pk, other.pk], since=since)
    assert medians == {worker.pk: pytest.approx(25.0), other.pk: pytest.approx(7.0)}


def test_version_skew_needs_a_majority():
    a, _ = make_worker("gpu-a")
    b, _ = make_worker("gpu-b", caps=capabilities() | {"comfyui_version": "0.4.0"})
    assert dashboard.version_skew(list(Worker.objects.all())) == {}  # one against one: no majority
    c, _ = make_worker("gpu-c", caps=capabilities(nodes=["SaveImage", "KSampler", "CustomNode"]))
    skew = dashboard.version_skew(list(Worker.objects.all()))
    assert skew[b.pk] == ["ComfyUI 0.4.0 (most run 0.3.64)"]
    assert skew[c.pk] == ["node set differs: 6 missing, 1 extra"]
    assert a.pk not in skew


def test_template_checkpoint_needs(settings):
    from generation.models import WorkflowTemplate

    sd15 = WorkflowTemplate.objects.get(name="sd15-txt2img")
    assert dashboard.template_checkpoint(sd15) == dashboard.ANY_CHECKPOINT
    settings.T2I = {**settings.T2I, "DEFAULT_CHECKPOINT": "sdxl.safetensors"}
    assert dashboard.template_checkpoint(sd15) == "sdxl.safetensors"
    fixed = WorkflowTemplate(name="fixed", workflow=sd15.workflow, bindings={"prompt": ["6", "text"]})
    assert dashboard.template_checkpoint(fixed) == "v1-5-pruned-emaonly.safetensors"
    noise = WorkflowTemplate.objects.get(name="noise-test")
    assert dashboard.template_checkpoint(noise) is None
    worker, _ = make_worker("gpu-x")
    [fit] = dashboard.template_fit(fixed, [worker])
    assert fit.missing_nodes == [] and not fit.has_checkpoint and not fit.ok


def test_recent_throughput_is_the_last_five_minutes_not_the_hour(worker):
    """Ten tasks in the last two minutes and none before: the hour's average is 10/60 per minute, the last
    five minutes' rate is ten over the time those minute buckets cover."""
    now = timezone.now()
    for _ in range(10):
        finished_tasks(worker, [1.0], now=now, finished_ago=60)
    figures = dashboard.farm_figures(now=now)
    assert figures.throughput_per_minute == pytest.approx(10 / 60)
    first_bucket = figures.per_minute[-5][0]
    covered = (now - first_bucket).total_seconds() / 60
    assert 4 <= covered <= 5
    assert figures.recent_throughput_per_minute(5) == pytest.approx(10 / covered)
    assert dashboard.farm_figures(now=now + timedelta(minutes=10)).recent_throughput_per_minute(5) == 0
