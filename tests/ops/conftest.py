"""Fixtures for the operations console: a logged-in staff client, and tasks (made by `TaskFactory`) driven
through the services."""

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from generation import services
from generation.models import Task
from tests.conftest import png_bytes


@pytest.fixture(autouse=True)
def _first_in_line(settings):
    """These tests drive the worker they name through tasks (`run`); which worker placement would choose
    instead is tested in tests/generation (test_placement, test_smart_leasing)."""
    settings.T2I = {**settings.T2I, "SCHEDULER": "fifo"}


@pytest.fixture
def admin_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def run(worker, *, complete: bool = True, code: str = "comfyui_error") -> Task:
    """Lease the next task to `worker`, start it, then complete it with a real PNG or fail it for good."""
    lease = services.task_lease_next(worker=worker)
    assert lease is not None
    task = lease.task
    services.task_start(worker=worker, task_id=task.public_id, lease_token=task.lease_token)
    if complete:
        files = [SimpleUploadedFile("out.png", png_bytes(task.width, task.height), "image/png")]
        return services.task_complete(
            worker=worker, task_id=task.public_id, lease_token=task.lease_token, files=files
        ).task
    return services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=task.lease_token,
        code=code,
        message="it broke",
        retryable=False,
    )


def backdate(
    task: Task, *, created: float, leased: float, started: float, finished: float | None, now
) -> None:
    """Set a task's (and its attempt's) timestamps to `now` minus the given seconds."""
    stamps = {
        "created_at": now - timedelta(seconds=created),
        "leased_at": now - timedelta(seconds=leased),
        "started_at": now - timedelta(seconds=started),
        "finished_at": None if finished is None else now - timedelta(seconds=finished),
    }
    Task.objects.filter(pk=task.pk).update(**stamps)
    task.attempt_set.update(**{k: v for k, v in stamps.items() if k != "created_at"})
