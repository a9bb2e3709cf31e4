"""The worker API's hand-built answers (lease, complete) equal what their documented serializers produce."""

from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIRequestFactory

from generation import services
from tests.conftest import png_bytes
from tests.factories import TaskFactory
from workers_app import apis

pytestmark = pytest.mark.django_db


def test_lease_output_equals_the_lease_serializer(worker):
    TaskFactory(template__name="noise-test")
    lease = services.task_lease_next(worker=worker)

    assert apis.lease_output(lease) == dict(apis.LeaseOutput(lease).data)


def test_complete_output_equals_the_complete_serializer(wapi, worker):
    TaskFactory(template__name="noise-test")
    lease = services.task_lease_next(worker=worker)
    task = services.task_complete(
        worker=worker,
        task_id=lease.task.public_id,
        lease_token=lease.attempt.lease_token,
        files=[SimpleUploadedFile("a.png", png_bytes(64, 64), "image/png")],
    )
    request = APIRequestFactory().get("/")

    built = apis.complete_output(task, request)
    assert built == apis.CompleteOutput(task, context={"request": request}).data
    assert built["images"][0]["thumbnail_url"]  # made in the completion

    retried = wapi.post(
        f"/api/v1/worker/tasks/{lease.task.public_id}/complete",
        {
            "lease_token": str(lease.attempt.lease_token),
            "images": [SimpleUploadedFile("a.png", png_bytes(64, 64))],
        },
        format="multipart",
    )
    assert retried.status_code == HTTPStatus.OK
    assert (
        retried.json()["images"] == built["images"]
    )  # a retry answers the same, read back from the database


def test_complete_output_with_a_carried_lease_equals_the_complete_serializer(worker):
    TaskFactory.create_batch(2, template__name="noise-test")
    lease = services.task_lease_next(worker=worker)
    task, following = services.task_complete_and_lease(
        worker=worker,
        task_id=lease.task.public_id,
        lease_token=lease.attempt.lease_token,
        files=[SimpleUploadedFile("a.png", png_bytes(64, 64), "image/png")],
    )
    request = APIRequestFactory().get("/")
    task.next = following

    built = apis.complete_output(task, request, following)
    assert built == apis.CompleteOutput(task, context={"request": request}).data
    assert built["next"]["lease_token"] == str(following.attempt.lease_token)
