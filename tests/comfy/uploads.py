"""Uploads and the tasks that use them, for the tests of the uploads' lifecycle (services, API, pages)."""

from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from generation import services
from generation.models import InputImage, Task
from tests.comfy.test_input_images import LOAD_NODES, load_image
from tests.conftest import capabilities, make_worker, png_bytes


def image_loader_worker():
    """A worker that runs LoadImage workflows, so that they can be submitted."""
    return make_worker("gpu-load", capabilities(nodes=LOAD_NODES))


def make_upload(owner, name="cat.png", *, kind="input", subfolder="", size=(16, 12), color=(200, 30, 30)):
    image = SimpleUploadedFile(name, png_bytes(*size, color=color), "image/png")
    return services.input_image_upload(owner=owner, upload=image, kind=kind, subfolder=subfolder)


def task_using(owner, upload: InputImage, status=Task.Status.QUEUED) -> Task:
    """A task submitted as the front door submits one, naming `upload`, then put in `status`."""
    task = services.task_submit_workflow(owner=owner, workflow=load_image(upload.comfy_name))
    assert list(task.input_images.all()) == [upload]
    if status != Task.Status.QUEUED:
        finished = timezone.now() if status in Task.FINISHED_STATUSES else None
        lease = None if finished else "6d1f3c0e-0000-4000-8000-000000000001"
        Task.objects.filter(pk=task.pk).update(status=status, finished_at=finished, lease_token=lease)
        task.refresh_from_db()
    return task
