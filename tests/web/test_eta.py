"""The waiting-time estimate: median recent run time × queue position / online workers."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import farm_snapshot, placement
from generation.models import Task
from generation.web_selectors import eta_basis, eta_seconds
from tests.factories import TaskFactory
from tests.web.conftest import completed
from workers_app.models import Worker, WorkerSpeed

pytestmark = pytest.mark.django_db


def test_eta_formula():
    assert eta_seconds(3, 10.0, 2) == 15.0
    assert eta_seconds(1, 8.0, 1) == 8.0
    assert eta_seconds(None, 10.0, 2) is None  # not queued
    assert eta_seconds(2, None, 2) is None  # nothing completed yet
    assert eta_seconds(2, 10.0, 0) is None  # no worker online


def test_eta_basis_uses_the_median_of_recent_run_times(user, worker):
    now = timezone.now()
    for seconds in (4, 6, 100):
        task = completed(user, worker)
        Task.objects.filter(pk=task.pk).update(started_at=now - timedelta(seconds=seconds), finished_at=now)
    basis = eta_basis()
    assert basis.median_run_seconds == pytest.approx(6)
    assert basis.online_workers == 1
    assert basis.seconds(4) == pytest.approx(24)

    second, _ = Worker.objects.get_or_create(
        name="gpu-2", defaults={"token_hash": "x" * 64, "status": Worker.Status.IDLE}
    )
    Worker.objects.create(name="gpu-3", token_hash="y" * 64, status=Worker.Status.OFFLINE)
    assert eta_basis().seconds(4) == pytest.approx(12)
    assert second.pk


def test_eta_for_a_running_task_is_what_is_left(user, worker):
    from generation import services

    done = completed(user, worker)
    now = timezone.now()
    Task.objects.filter(pk=done.pk).update(started_at=now - timedelta(seconds=20), finished_at=now)
    task = TaskFactory(owner=user)
    lease = services.task_lease_next(worker=worker)
    services.task_report_progress(
        worker=worker, task_id=task.public_id, lease_token=lease.attempt.lease_token, value=3, maximum=4
    )
    task.refresh_from_db()
    assert eta_basis().for_task(task, None) == pytest.approx(5)


def test_task_page_shows_the_eta(alice, user, worker):
    """Placement's ETA (generation.eta): the worker's learned speed, two 90 s tasks in line."""
    TaskFactory(owner=user, prompt="first")
    second = TaskFactory(owner=user, prompt="second")
    unit = placement.work_units(second.width, second.height, second.steps, second.batch_size)
    WorkerSpeed.objects.create(worker=worker, checkpoint=second.checkpoint, seconds_per_unit=90 / unit)
    Worker.objects.filter(pk=worker.pk).update(warm_checkpoint=second.checkpoint)
    page = alice.get(f"/tasks/{second.public_id}/").content.decode()
    assert "Number 2 in the queue · done in about 3 min" in page


def test_task_page_falls_back_to_the_median_estimate_without_a_plan(alice, user, worker, settings):
    """No live worker in the plan (its heartbeat is older than the offline limit) but one still online."""
    done = completed(user, worker)
    now = timezone.now()
    Task.objects.filter(pk=done.pk).update(started_at=now - timedelta(seconds=90), finished_at=now)
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat=now - timedelta(hours=1))
    farm_snapshot.clear_cache()  # the live workers are cached for a second per process
    TaskFactory(owner=user, prompt="first")
    second = TaskFactory(owner=user, prompt="second")
    page = alice.get(f"/tasks/{second.public_id}/").content.decode()
    assert "Number 2 in the queue · done in about 3 min" in page
