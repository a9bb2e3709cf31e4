"""Live previews for the REST API and the web site: a task submitted with `preview_method` gets the worker's
latent previews (as a front-door client's does), keeps the newest, and shows it while it runs."""

import base64
from http import HTTPStatus

import pytest
from django.urls import reverse

from generation import services
from generation.models import Task, TaskPreview
from generation.serializers import TaskOutput
from generation.services.frames import PREVIEW
from tests.conftest import CHECKPOINT, submit_task
from tests.generation.test_leasing import lease, upload

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8\xff\xe0preview"


def running_with_preview(worker, owner, *, preview_method: str = "auto", frames: bool = True):
    task = submit_task(owner=owner, checkpoint=CHECKPOINT, preview_method=preview_method)
    held = lease(worker)
    services.task_start(worker=worker, task_id=task.public_id, lease_token=held.attempt.lease_token)
    if frames:
        frame = [PREVIEW, {"node": "3", "format": "jpeg", "image": base64.b64encode(JPEG).decode()}]
        relayed = services.task_relay_frames(
            worker=worker, task_id=task.public_id, lease_token=held.attempt.lease_token, frames=[frame]
        )
        assert relayed == 0  # no socket client follows it: only kept
    task.refresh_from_db()
    return task, held


def test_the_rest_submit_takes_a_preview_method_and_refuses_an_unknown_one(api, worker):
    url = reverse("api:task-list")
    created = api.post(url, {"prompt": "a fox", "preview_method": "taesd"}, format="json")
    assert created.status_code == HTTPStatus.CREATED, created.json()
    assert created.json()["preview_method"] == "taesd"
    refused = api.post(url, {"prompt": "a fox", "preview_method": "fast"}, format="json")
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert "preview_method" in refused.json()["fields"]
    assert Task.objects.count() == 1


def test_a_running_task_shows_its_newest_preview_to_whoever_may_see_it(
    api, worker, user, anon, client_for, other_user
):
    task, held = running_with_preview(worker, user)
    stored = TaskPreview.objects.get(task=task)
    assert bytes(stored.data) == JPEG
    answer = api.get(reverse("api:task-detail", args=[task.public_id])).json()
    url = answer["preview_url"]
    assert url.endswith(f"/api/v1/tasks/{task.public_id}/preview?at=0")
    image = api.get(url)
    assert image.status_code == HTTPStatus.OK
    assert (image["Content-Type"], image.content, image["Cache-Control"]) == ("image/jpeg", JPEG, "no-store")
    other = client_for(other_user).get(url)
    assert other.status_code == HTTPStatus.NOT_FOUND  # another user's task: as if it did not exist
    services.task_complete(
        worker=worker, task_id=task.public_id, lease_token=held.attempt.lease_token, files=[upload()]
    )
    task.refresh_from_db()
    assert TaskOutput(task).data["preview_url"] is None  # finished: its images show instead


def test_no_preview_url_for_a_task_that_did_not_ask_and_a_404_before_the_first_preview(api, worker, user):
    task, _ = running_with_preview(worker, user, frames=False)
    assert api.get(reverse("api:task-preview", args=[task.public_id])).status_code == HTTPStatus.NOT_FOUND
    plain = submit_task(owner=user, checkpoint=CHECKPOINT)
    assert TaskOutput(plain).data["preview_url"] is None and plain.preview_method == ""


def test_previews_of_a_task_that_did_not_ask_are_not_kept(worker, user):
    running_with_preview(worker, user, preview_method="none")
    assert not TaskPreview.objects.exists()


def test_the_task_page_has_the_live_preview_and_the_form_offers_it(worker, user, client_for):
    task, _ = running_with_preview(worker, user)
    page = client_for(user).get(reverse("web:task", kwargs={"task_id": task.public_id}))
    assert b'data-field="preview"' in page.content
    form = client_for(user).get(reverse("web:generate")).content.decode()
    assert 'name="preview_method"' in form and 'value="auto"' in form and 'value="none"' not in form
