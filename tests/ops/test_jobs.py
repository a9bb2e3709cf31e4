"""The background jobs, one step at a time, and their django-q2 schedules."""

import os
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from django_q.models import Schedule

from generation import jobs
from generation.models import Image, Task, TaskAttempt, WebhookDelivery
from tests.conftest import media_files
from tests.factories import TaskFactory
from tests.ops.conftest import run
from workers_app import jobs as worker_jobs
from workers_app.models import Worker

pytestmark = pytest.mark.django_db


def test_migrations_created_the_schedules():
    rows = Schedule.objects.filter(name__startswith=jobs.SCHEDULE_PREFIX)
    assert set(rows.values_list("name", "func", "minutes")) == {*jobs.SCHEDULES, *worker_jobs.SCHEDULES}


def test_ensure_schedules_is_idempotent_and_repairs_rows():
    Schedule.objects.filter(func="generation.jobs.thumbnails_job").update(minutes=99, schedule_type="D")
    Schedule.objects.create(name="t2i: an old job", func="generation.jobs.gone", schedule_type="I", minutes=1)
    Schedule.objects.create(name="someone else's job", func="x.y", schedule_type="I", minutes=1)
    assert jobs.ensure_schedules() == len(jobs.SCHEDULES)
    assert jobs.ensure_schedules() == len(jobs.SCHEDULES)
    ours = Schedule.objects.filter(name__startswith=jobs.SCHEDULE_PREFIX, func__startswith="generation.jobs.")
    assert ours.count() == len(jobs.SCHEDULES)
    thumbnails = ours.get(func="generation.jobs.thumbnails_job")
    assert (thumbnails.schedule_type, thumbnails.minutes, thumbnails.repeats) == ("I", 5, -1)
    assert Schedule.objects.filter(name="someone else's job").exists()
    sweep = worker_jobs.SCHEDULES[0]
    assert Schedule.objects.filter(name=sweep[0], func=sweep[1]).exists()  # another app's schedule stays


def test_the_liveness_sweep_schedule_moves_from_generation_jobs():
    """A farm migrated before the sweep moved to workers_app.jobs has its row pointing at the old path."""
    name, func, minutes = worker_jobs.SCHEDULES[0]
    Schedule.objects.filter(name=name).update(func="generation.jobs.farm_maintenance", minutes=7)
    assert jobs.ensure_schedules(schedules=worker_jobs.SCHEDULES) == 1
    assert Schedule.objects.filter(name=name).values_list("func", "minutes").get() == (func, minutes)


def test_every_scheduled_function_exists():
    from django.utils.module_loading import import_string

    for _, func, _ in [*jobs.SCHEDULES, *worker_jobs.SCHEDULES]:
        assert callable(import_string(func))


def test_maintenance_marks_silent_workers_offline_and_requeues(worker, settings):
    task = TaskFactory()
    from generation import services

    services.task_lease_next(worker=worker)
    long_ago = timezone.now() - timedelta(seconds=settings.T2I["WORKER_OFFLINE_AFTER"] + 5)
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat=long_ago)
    summary = worker_jobs.farm_maintenance(duration=0)
    assert summary.startswith("1 sweeps: 1 worker(s) marked offline")
    worker.refresh_from_db()
    task.refresh_from_db()
    assert worker.status == Worker.Status.OFFLINE
    assert task.status == Task.Status.QUEUED
    assert TaskAttempt.objects.get(task=task).outcome == TaskAttempt.Outcome.EXPIRED


def test_maintenance_requeues_expired_leases(worker):
    task = TaskFactory()
    from generation import services

    services.task_lease_next(worker=worker)
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert worker_jobs.maintenance_step() == (0, 1)
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED


def test_maintenance_repeats_its_step(monkeypatch, settings):
    settings.T2I = {**settings.T2I, "MAINTENANCE_EVERY": 0.5}
    calls = []
    monkeypatch.setattr(worker_jobs, "maintenance_step", lambda: calls.append(1) or (0, 0))
    worker_jobs.farm_maintenance(duration=1.2)
    assert len(calls) == 3  # at 0, 0.5 and 1.0 seconds


def test_thumbnails_job_makes_missing_ones(worker):
    TaskFactory()
    task = run(worker)
    image = Image.objects.get(task=task)
    default_storage.delete(image.thumbnail.name)  # as if making it had failed in the completion
    Image.objects.filter(pk=image.pk).update(thumbnail="")
    assert jobs.thumbnails_job() == "1 thumbnail(s) made"
    assert default_storage.exists(Image.objects.get(task=task).thumbnail.name)


def test_retention_is_off_by_default(worker):
    TaskFactory()
    task = run(worker)
    Task.objects.filter(pk=task.pk).update(finished_at=timezone.now() - timedelta(days=3650))
    assert jobs.tasks_purge_expired() == 0
    assert Task.objects.filter(pk=task.pk).exists()


def test_retention_deletes_old_finished_tasks_with_files(
    worker, settings, django_capture_on_commit_callbacks
):
    settings.T2I = {**settings.T2I, "RETENTION_DAYS": 7}
    TaskFactory(callback_url="http://127.0.0.1:9/hook")
    with django_capture_on_commit_callbacks(execute=True):
        old = run(worker)
    TaskFactory()
    recent = run(worker)
    queued = TaskFactory()
    Task.objects.filter(pk=queued.pk).update(created_at=timezone.now() - timedelta(days=30))
    image = Image.objects.get(task=old)
    files = [image.file.name, image.thumbnail.name]
    assert all(default_storage.exists(name) for name in files)
    assert WebhookDelivery.objects.filter(task=old).exists()
    Task.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=8))

    assert jobs.retention_job() == "1 task(s) purged"
    assert not Task.objects.filter(pk=old.pk).exists()
    assert not Image.objects.filter(task_id=old.pk).exists()
    assert not TaskAttempt.objects.filter(task_id=old.pk).exists()
    assert not WebhookDelivery.objects.filter(task_id=old.pk).exists()
    assert not any(default_storage.exists(name) for name in files)
    assert Task.objects.filter(pk__in=[recent.pk, queued.pk]).count() == 2
    assert default_storage.exists(Image.objects.get(task=recent).file.name)


def test_retention_works_in_batches(worker, settings):
    settings.T2I = {**settings.T2I, "RETENTION_DAYS": 1}
    for _ in range(5):
        TaskFactory()
    Task.objects.update(status=Task.Status.CANCELLED, finished_at=timezone.now() - timedelta(days=2))
    assert jobs.tasks_purge_expired(batch=2) == 5
    assert not Task.objects.exists()


# --- Orphaned files --------------------------------------------------------------------------------------


def _age(name: str, hours: float) -> None:
    when = (timezone.now() - timedelta(hours=hours)).timestamp()
    os.utime(default_storage.path(name), (when, when))


def test_orphaned_files_are_removed_once_old_and_named_files_stay(worker, django_capture_on_commit_callbacks):
    """A completion killed between writing its files and committing their rows leaves them behind."""
    TaskFactory()
    with django_capture_on_commit_callbacks(execute=True):
        task = run(worker)
    image = Image.objects.get(task=task)
    named = {image.file.name, image.thumbnail.name}
    old_orphan = default_storage.save("images/2026/12/01/lost_a1_0.png", ContentFile(b"x" * 100))
    young_orphan = default_storage.save("images/2026/12/05/in-flight_a1_0.png", ContentFile(b"y"))
    for name in (*named, old_orphan):
        _age(name, hours=2)

    assert jobs.media_sweep_orphans() == 1
    assert set(media_files()) == {*named, young_orphan}
    assert jobs.orphans_job() == "0 orphaned file(s) removed"


def test_temporary_uploads_left_by_a_killed_request_are_removed(settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    folder = tmp_path / "uploads"
    folder.mkdir()
    old, young, other = folder / "tmpab12.upload.png", folder / "tmpcd34.upload.png", folder / "notes.txt"
    for path in (old, young, other):
        path.write_bytes(b"x")
    hours_ago = (timezone.now() - timedelta(hours=2)).timestamp()
    for path in (old, other):
        os.utime(path, (hours_ago, hours_ago))

    assert jobs.media_sweep_orphans() == 1
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "tmpcd34.upload.png"]
