"""A task through every state, through the HTTP API, checking the JSON and the database each step."""

import hashlib
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from generation.models import Image, Task, TaskAttempt
from tests.conftest import CHECKPOINT, png_bytes
from workers_app.models import Worker

pytestmark = pytest.mark.django_db


def submit(api, **overrides):
    body = {
        "prompt": "a lighthouse at dusk",
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 2**64 - 1,
    } | overrides
    return api.post("/api/v1/tasks/", body, format="json")


def lease(wapi):
    return wapi.post("/api/v1/worker/lease", {}, format="json")


def test_task_goes_queued_leased_running_completed(api, wapi, worker, django_capture_on_commit_callbacks):
    response = submit(api)
    assert response.status_code == HTTPStatus.CREATED, response.json()
    body = response.json()
    assert body["status"] == "queued"
    assert body["seed"] == str(2**64 - 1)
    assert body["checkpoint"] == CHECKPOINT
    assert body["queue_position"] == 1
    task = Task.objects.get(public_id=body["id"])
    assert task.seed == 2**64 - 1 and task.status == Task.Status.QUEUED

    leased = lease(wapi)
    assert leased.status_code == HTTPStatus.OK
    job = leased.json()
    assert job["task_id"] == body["id"] and job["attempt"] == 1
    workflow = job["workflow"]
    assert workflow["6"]["inputs"]["text"] == "a lighthouse at dusk"
    assert workflow["3"]["inputs"]["seed"] == 2**64 - 1
    assert workflow["4"]["inputs"]["ckpt_name"] == CHECKPOINT
    assert workflow["9"]["inputs"]["filename_prefix"] == job["filename_prefix"]
    task.refresh_from_db()
    assert task.status == Task.Status.LEASED and task.worker == worker
    assert Worker.objects.get(pk=worker.pk).state == Worker.Status.BUSY
    assert api.get(f"/api/v1/tasks/{body['id']}/").json()["status"] == "leased"

    token = job["lease_token"]
    started = wapi.post(
        f"/api/v1/worker/tasks/{body['id']}/start",
        {"lease_token": token, "comfyui_prompt_id": "p-1"},
        format="json",
    )
    assert started.status_code == HTTPStatus.OK
    progress = wapi.post(
        f"/api/v1/worker/tasks/{body['id']}/progress",
        {"lease_token": token, "value": 2, "max": 4},
        format="json",
    )
    assert progress.status_code == HTTPStatus.OK and progress.json() == {"cancel": False}
    detail = api.get(f"/api/v1/tasks/{body['id']}/").json()
    assert detail["status"] == "running"
    assert detail["progress"] == {"value": 2.0, "max": 4.0, "percent": 50}
    assert detail["worker"] == worker.name

    image = png_bytes(64, 64)
    with django_capture_on_commit_callbacks(execute=True):
        done = wapi.post(
            f"/api/v1/worker/tasks/{body['id']}/complete",
            {"lease_token": token, "images": [SimpleUploadedFile("out_00001_.png", image, "image/png")]},
            format="multipart",
        )
    assert done.status_code == HTTPStatus.OK, done.json()
    assert done.json()["status"] == "completed"
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and task.finished_at is not None and task.lease_token is None
    stored = Image.objects.get(task=task)
    assert stored.sha256 == hashlib.sha256(image).hexdigest()
    assert stored.file.read() == image
    assert stored.thumbnail  # made after commit
    attempt = TaskAttempt.objects.get(task=task)
    assert attempt.outcome == TaskAttempt.Outcome.COMPLETED and attempt.comfyui_prompt_id == "p-1"
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.IDLE
    final = api.get(f"/api/v1/tasks/{body['id']}/").json()
    assert final["progress"]["percent"] == 100
    assert final["images"][0]["url"].startswith("http://testserver/media/images/")
    assert final["attempt_history"][0]["outcome"] == "completed"


def test_failed_task_reports_reason(api, wapi):
    task_id = submit(api).json()["id"]
    job = lease(wapi).json()
    response = wapi.post(
        f"/api/v1/worker/tasks/{task_id}/fail",
        {
            "lease_token": job["lease_token"],
            "code": "workflow_invalid",
            "message": "Value not in list",
            "retryable": False,
            "details": {"node_id": "4", "node_type": "CheckpointLoaderSimple", "input": "ckpt_name"},
        },
        format="json",
    )
    assert response.status_code == HTTPStatus.OK
    assert response.json()["status"] == "failed"
    detail = api.get(f"/api/v1/tasks/{task_id}/").json()
    assert detail["error"]["code"] == "workflow_invalid"
    assert "node_type=CheckpointLoaderSimple" in detail["error"]["message"]
    assert Task.objects.get(public_id=task_id).status == Task.Status.FAILED


def test_cancel_queued_and_running(api, wapi):
    queued_id = submit(api, priority=-1).json()["id"]
    running_id = submit(api).json()["id"]
    job = lease(wapi).json()
    assert job["task_id"] == running_id  # higher priority first

    assert api.post(f"/api/v1/tasks/{queued_id}/cancel/").json()["status"] == "cancelled"
    assert api.post(f"/api/v1/tasks/{running_id}/cancel/").json()["status"] == "cancelled"
    assert Task.objects.get(public_id=running_id).status == Task.Status.CANCELLED
    assert TaskAttempt.objects.get(task__public_id=running_id).outcome == TaskAttempt.Outcome.CANCELLED

    # The worker learns of it by heartbeat, and its later calls are refused.
    beat = wapi.post(
        "/api/v1/worker/heartbeat",
        {"tasks": [{"task_id": running_id, "lease_token": job["lease_token"]}]},
        format="json",
    ).json()
    assert beat["cancel"] == [running_id] and beat["renewed"] == []
    late = wapi.post(
        f"/api/v1/worker/tasks/{running_id}/progress",
        {"lease_token": job["lease_token"], "value": 1, "max": 2},
    )
    assert late.status_code == HTTPStatus.CONFLICT and late.json()["error"] == "lease_lost"
    again = api.post(f"/api/v1/tasks/{running_id}/cancel/")
    assert again.status_code == HTTPStatus.CONFLICT and again.json()["error"] == "task_finished"


def test_lease_returns_204_when_nothing_is_queued(wapi):
    response = wapi.post("/api/v1/worker/lease?wait=0.2", {}, format="json")
    assert response.status_code == HTTPStatus.NO_CONTENT


def test_list_tasks_shows_only_mine(api, user, other_user):
    submit(api)
    from rest_framework.test import APIClient

    other = APIClient()
    other.force_authenticate(other_user)
    submit(other)
    mine = api.get("/api/v1/tasks/").json()
    assert [t["owner"] for t in mine["results"]] == ["alice"]
    assert api.get("/api/v1/tasks/?status=completed").json()["results"] == []
