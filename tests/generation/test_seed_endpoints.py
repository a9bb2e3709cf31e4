"""The original design's endpoints, end to end: POST /generate, GET /status/<id>, and a worker using
POST /register, /heartbeat, /task and /complete (a multipart image, no lease token)."""

import hashlib
import uuid
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from generation.models import Image, Task, TaskAttempt
from tests.conftest import capabilities, make_worker, media_files, png_bytes, worker_client
from workers_app.models import Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def seed_worker(db):
    """A worker made with `createworker` that has not registered yet, and its client."""
    worker, token = make_worker("seed-gpu", register=False)
    return worker, worker_client(token)


def generate(client, **fields):
    body = {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "width": 64, "height": 64}
    return client.post("/generate", body | fields, format="json")


def status(client, prompt_id: str) -> dict:
    response = client.get(f"/status/{prompt_id}")
    assert response.status_code == HTTPStatus.OK, response.content
    return response.json()


def test_generate_then_a_worker_runs_it_to_completed(api, seed_worker):
    worker, wclient = seed_worker
    created = generate(api)
    assert created.status_code == HTTPStatus.OK, created.json()
    prompt_id = created.json()["prompt_id"]
    assert created.json() == {"prompt_id": prompt_id, "status": "pending"}
    task = Task.objects.get(public_id=prompt_id)
    assert (task.prompt, task.negative_prompt, task.width, task.height) == (
        "a lighthouse at dusk",
        "blurry",
        64,
        64,
    )
    assert status(api, prompt_id) == {
        "prompt_id": prompt_id,
        "status": "pending",
        "progress": 0,
        "image_url": None,
        "images": [],
        "error": None,
        "queue_position": 1,
        "eta_seconds": None,  # no worker has registered yet
    }

    registered = wclient.post(
        "/register", {"name": "seed-gpu", "capabilities": capabilities()}, format="json"
    )
    assert registered.status_code == HTTPStatus.OK
    assert registered.json()["registered"] is True and registered.json()["worker_id"] == worker.pk
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.IDLE

    beat = wclient.post("/heartbeat", {}, format="json")
    assert beat.status_code == HTTPStatus.OK and beat.json()["status"] == "ok"

    job = wclient.post("/task", {}, format="json")
    assert job.status_code == HTTPStatus.OK
    assert job.json()["prompt_id"] == job.json()["task_id"] == prompt_id
    assert job.json()["workflow"]["6"]["inputs"]["text"] == "a lighthouse at dusk"
    assert job.json()["workflow"]["7"]["inputs"]["text"] == "blurry"
    assert status(api, prompt_id)["status"] == "pending"  # leased, not yet running
    assert Task.objects.get(pk=task.pk).status == Task.Status.LEASED

    progress = wclient.post(
        f"/api/v1/worker/tasks/{prompt_id}/progress",
        {"lease_token": job.json()["lease_token"], "value": 5, "max": 10},
        format="json",
    )
    assert progress.status_code == HTTPStatus.OK
    running = status(api, prompt_id)
    assert running["status"] == "running" and running["progress"] == 50

    image = png_bytes(64, 64)
    done = wclient.post(
        "/complete",
        {"prompt_id": prompt_id, "images": [SimpleUploadedFile("ComfyUI_00001_.png", image, "image/png")]},
        format="multipart",
    )
    assert done.status_code == HTTPStatus.OK, done.json()
    assert done.json()["task_id"] == prompt_id and done.json()["status"] == "completed"

    final = status(api, prompt_id)
    assert final["status"] == "completed" and final["progress"] == 100 and final["error"] is None
    stored = Image.objects.get(task=task)
    assert final["image_url"] == f"http://testserver{stored.file.url}"
    assert final["images"] == [final["image_url"]]
    assert final["queue_position"] is None
    assert stored.sha256 == hashlib.sha256(image).hexdigest() and stored.file.read() == image
    assert media_files() == sorted([stored.file.name, stored.thumbnail.name])
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert TaskAttempt.objects.get(task=task).outcome == TaskAttempt.Outcome.COMPLETED

    # The seed worker retries its /complete (say the answer was lost): same answer, nothing duplicated.
    again = wclient.post(
        "/complete",
        {"prompt_id": prompt_id, "images": [SimpleUploadedFile("ComfyUI_00001_.png", image, "image/png")]},
        format="multipart",
    )
    assert again.status_code == HTTPStatus.OK, again.json()
    assert [i["id"] for i in again.json()["images"]] == [str(stored.public_id)]
    assert Image.objects.count() == 1 and len(media_files()) == 2

    assert wclient.post("/task", {}, format="json").status_code == HTTPStatus.NO_CONTENT


def test_batch_of_images_in_order(api, seed_worker):
    _, wclient = seed_worker
    wclient.post("/register", {"capabilities": capabilities()}, format="json")
    prompt_id = generate(api, batch_size=2).json()["prompt_id"]
    wclient.post("/task", {}, format="json")
    first, second = png_bytes(64, 64, (255, 0, 0)), png_bytes(64, 64, (0, 0, 255))

    done = wclient.post(
        "/complete",
        {
            "prompt_id": prompt_id,
            "images": [
                SimpleUploadedFile("a.png", first, "image/png"),
                SimpleUploadedFile("b.png", second, "image/png"),
            ],
        },
        format="multipart",
    )

    assert done.status_code == HTTPStatus.OK
    body = status(api, prompt_id)
    images = list(Image.objects.filter(task__public_id=prompt_id).order_by("index"))
    assert [i.file.read() for i in images] == [first, second]
    assert body["images"] == [f"http://testserver{i.file.url}" for i in images]
    assert body["image_url"] == body["images"][0]


def test_failed_task_shows_failed_with_the_error(api, seed_worker):
    _, wclient = seed_worker
    wclient.post("/register", {"capabilities": capabilities()}, format="json")
    prompt_id = generate(api).json()["prompt_id"]
    job = wclient.post("/task", {}, format="json").json()

    wclient.post(
        f"/api/v1/worker/tasks/{prompt_id}/fail",
        {
            "lease_token": job["lease_token"],
            "code": "execution_error",
            "message": "CUDA error",
            "retryable": False,
        },
        format="json",
    )

    body = status(api, prompt_id)
    assert body["status"] == "failed"
    assert body["error"] == "execution_error: CUDA error"
    assert body["image_url"] is None and body["images"] == []
    assert Task.objects.get(public_id=prompt_id).status == Task.Status.FAILED


def test_cancelled_task_shows_cancelled(api):
    prompt_id = generate(api).json()["prompt_id"]

    api.post(f"/api/v1/tasks/{prompt_id}/cancel/")

    body = status(api, prompt_id)
    assert body["status"] == "cancelled" and body["error"].startswith("cancelled")
    assert body["queue_position"] is None
    assert Task.objects.get(public_id=prompt_id).status == Task.Status.CANCELLED


def test_the_seed_complete_needs_the_lease_of_this_worker(api, seed_worker):
    _, wclient = seed_worker
    wclient.post("/register", {"capabilities": capabilities()}, format="json")
    prompt_id = generate(api).json()["prompt_id"]
    image = {"images": [SimpleUploadedFile("a.png", png_bytes(), "image/png")]}

    not_leased = wclient.post("/complete", {"prompt_id": prompt_id} | image, format="multipart")

    assert not_leased.status_code == HTTPStatus.CONFLICT and not_leased.json()["error"] == "lease_lost"
    assert Task.objects.get(public_id=prompt_id).status == Task.Status.QUEUED
    assert media_files() == []


@pytest.mark.parametrize("prompt_id", [str(uuid.uuid4()), "not-a-uuid", "12345"])
def test_status_of_an_unknown_id_is_a_json_404(api, prompt_id):
    response = api.get(f"/status/{prompt_id}")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json() == {"error": "not_found", "detail": "No such task.", "fields": {}}


def test_generate_accepts_a_template(api, seed_worker):
    _, wclient = seed_worker
    wclient.post("/register", {"capabilities": capabilities()}, format="json")

    response = generate(api, template="noise-test")

    assert response.status_code == HTTPStatus.OK
    task = Task.objects.get(public_id=response.json()["prompt_id"])
    assert task.template.name == "noise-test" and task.checkpoint == ""
    workflow = wclient.post("/task", {}, format="json").json()["workflow"]
    assert {n["class_type"] for n in workflow.values()} == {"EmptyImage", "ImageAddNoise", "SaveImage"}
