"""Test data for the web pages: completed tasks (queued by `TaskFactory`, completed through the services)
with real tiny PNGs and their thumbnails."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, TestCase

from generation import services
from generation.models import Task
from tests.conftest import png_bytes
from tests.factories import TaskFactory


def complete_next(worker, *, color=(200, 30, 30)) -> Task:
    """Lease the next queued task to `worker` and complete it with real PNGs (thumbnails made too)."""
    lease = services.task_lease_next(worker=worker)
    assert lease is not None, "nothing to lease"
    task = lease.task
    files = [
        SimpleUploadedFile(f"out_{i}.png", png_bytes(task.width, task.height, color), "image/png")
        for i in range(task.batch_size)
    ]
    with TestCase.captureOnCommitCallbacks(execute=True):
        return services.task_complete(
            worker=worker, task_id=task.public_id, lease_token=lease.attempt.lease_token, files=files
        ).task


def completed(owner, worker, prompt: str = "a lighthouse at dusk", **fields) -> Task:
    """A completed task. Call it while nothing else is queued (the lease takes the oldest task)."""
    task = TaskFactory(owner=owner, prompt=prompt, **fields)
    done = complete_next(worker)
    assert done.pk == task.pk
    return done


@pytest.fixture
def alice(client_for, user) -> Client:
    return client_for(user)


@pytest.fixture
def bob(client_for, other_user) -> Client:
    return client_for(other_user)
