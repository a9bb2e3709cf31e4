"""Who may call what: worker tokens, another worker's lease, disabled and offline workers, users' tasks,
staff-only templates, and how worker tokens are made and stored."""

import hashlib
import io
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from generation import services
from generation.exceptions import InvalidInput
from generation.models import Image, Task, TaskAttempt, WorkflowTemplate
from generation.workflows import NOISE_TEST_BINDINGS, NOISE_TEST_WORKFLOW
from tests.conftest import capabilities, make_worker, media_files, png_bytes, worker_client
from tests.factories import TaskFactory, api_token_for
from workers_app import services as worker_services
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

TASK = "/api/v1/worker/tasks/{task_id}"
# Every worker endpoint with a body that would be valid for the worker holding the lease.
WORKER_ENDPOINTS = [
    ("/api/v1/worker/register", "json", lambda job: {"capabilities": capabilities()}),
    ("/api/v1/worker/heartbeat", "json", lambda job: {"tasks": [job]}),
    ("/api/v1/worker/lease", "json", lambda job: {}),
    ("/api/v1/worker/offline", "json", lambda job: {}),
    (TASK + "/start", "json", lambda job: {"lease_token": job["lease_token"]}),
    (TASK + "/progress", "json", lambda job: {"lease_token": job["lease_token"], "value": 1, "max": 4}),
    (TASK + "/complete", "multipart", lambda job: {"lease_token": job["lease_token"], "images": [image()]}),
    (
        TASK + "/fail",
        "json",
        lambda job: {
            "lease_token": job["lease_token"],
            "code": "internal",
            "message": "x",
            "retryable": True,
        },
    ),
    (TASK + "/release", "json", lambda job: {"lease_token": job["lease_token"]}),
    ("/register", "json", lambda job: {"capabilities": capabilities()}),
    ("/heartbeat", "json", lambda job: {"tasks": [job]}),
    ("/task", "json", lambda job: {}),
    ("/complete", "multipart", lambda job: {"prompt_id": job["task_id"], "images": [image()]}),
]
ENDPOINT_IDS = [path.replace(TASK, "tasks/<id>") for path, _, _ in WORKER_ENDPOINTS]


def image() -> SimpleUploadedFile:
    return SimpleUploadedFile("out.png", png_bytes(64, 64), "image/png")


def held_lease(worker: Worker) -> dict:
    """Queue a task and lease it to `worker`; the job as the heartbeat and task endpoints name it."""
    task = TaskFactory()
    lease = services.task_lease_next(worker=worker)
    assert lease.task.pk == task.pk
    return {"task_id": str(task.public_id), "lease_token": str(lease.attempt.lease_token)}


def call(client: APIClient, path: str, fmt: str, body: dict, job: dict):
    return client.post(path.format(task_id=job["task_id"]), body, format=fmt)


def snapshot(task_id: str) -> tuple:
    task = Task.objects.get(public_id=task_id)
    attempts = list(
        TaskAttempt.objects.filter(task=task).values_list("worker_id", "outcome", "lease_expires_at")
    )
    fields = (task.status, task.worker_id, task.lease_token, task.lease_expires_at, task.progress_value)
    return fields, task.attempts, attempts, Image.objects.count(), media_files()


# --- Worker tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, "not_authenticated"),
        ("Bearer not-a-real-token", "authentication_failed"),
        ("Bearer", "authentication_failed"),
        ("Bearer two tokens", "authentication_failed"),
        ("Bearer \xff\xfe", "authentication_failed"),
        ("Basic dXNlcjpwYXNz", "not_authenticated"),
    ],
    ids=["none", "wrong", "no-token", "two-parts", "not-utf8", "other-scheme"],
)
@pytest.mark.parametrize(("path", "fmt", "body"), WORKER_ENDPOINTS, ids=ENDPOINT_IDS)
def test_worker_endpoints_need_a_valid_token(worker, path, fmt, body, header, error):
    job = held_lease(worker)
    before = snapshot(job["task_id"])
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = call(client, path, fmt, body(job), job)

    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["error"] == error
    assert set(response.json()) == {"error", "detail", "fields"}
    assert response["WWW-Authenticate"] == "Bearer"
    assert snapshot(job["task_id"]) == before


def test_a_users_api_token_is_not_a_worker_token(user, worker):
    job = held_lease(worker)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")

    response = client.post("/api/v1/worker/lease", {}, format="json")

    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert Task.objects.get(public_id=job["task_id"]).worker_id == worker.pk


TASK_ENDPOINTS = [e for e in WORKER_ENDPOINTS if e[0].startswith(TASK)]


@pytest.mark.parametrize(
    ("path", "fmt", "body"), TASK_ENDPOINTS, ids=[p.split("/")[-1] for p, _, _ in TASK_ENDPOINTS]
)
def test_another_workers_lease_is_refused_and_nothing_changes(worker, path, fmt, body):
    job = held_lease(worker)
    _, other_token = make_worker("intruder")
    before = snapshot(job["task_id"])

    response = call(worker_client(other_token), path, fmt, body(job), job)

    assert response.status_code == HTTPStatus.CONFLICT
    assert response.json()["error"] == "lease_lost"
    assert snapshot(job["task_id"]) == before


def test_another_worker_cannot_complete_through_the_seed_endpoint_or_renew(worker):
    job = held_lease(worker)
    _, other_token = make_worker("intruder")
    intruder = worker_client(other_token)
    before = snapshot(job["task_id"])

    seed = intruder.post("/complete", {"prompt_id": job["task_id"], "images": [image()]}, format="multipart")
    beat = intruder.post("/api/v1/worker/heartbeat", {"tasks": [job]}, format="json")

    assert seed.status_code == HTTPStatus.CONFLICT and seed.json()["error"] == "lease_lost"
    assert beat.status_code == HTTPStatus.OK
    assert beat.json()["lost"] == [job["task_id"]] and beat.json()["renewed"] == []
    assert snapshot(job["task_id"]) == before


@pytest.mark.parametrize(("path", "fmt", "body"), WORKER_ENDPOINTS, ids=ENDPOINT_IDS)
def test_disabled_worker_is_refused_everywhere(worker_and_token, path, fmt, body):
    worker, token = worker_and_token
    job = held_lease(worker)
    worker_services.worker_set_state(worker=worker, state="disable")
    TaskFactory()  # work is waiting, yet it must not get it
    before = snapshot(job["task_id"]), TaskAttempt.objects.count()

    response = call(worker_client(token), path, fmt, body(job), job)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["error"] == "worker_disabled"
    assert (snapshot(job["task_id"]), TaskAttempt.objects.count()) == before
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.DISABLED


def test_offline_worker_must_register_again(worker_and_token):
    worker, token = worker_and_token
    worker_services.worker_go_offline(worker=worker)
    TaskFactory()
    client = worker_client(token)

    beat = client.post("/api/v1/worker/heartbeat", {"tasks": []}, format="json")
    leased = client.post("/api/v1/worker/lease", {}, format="json")

    assert beat.status_code == leased.status_code == HTTPStatus.CONFLICT
    assert beat.json()["error"] == leased.json()["error"] == "register_required"
    assert not TaskAttempt.objects.exists()
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.OFFLINE

    assert (
        client.post("/api/v1/worker/register", {"capabilities": capabilities()}, format="json").status_code
        == HTTPStatus.OK
    )
    assert client.post("/api/v1/worker/heartbeat", {"tasks": []}, format="json").status_code == HTTPStatus.OK
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.IDLE


# --- Users ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/tasks/", "/generate"])
def test_anonymous_submit_is_refused_by_default(anon, path):
    response = anon.post(path, {"prompt": "a red fox", "width": 64, "height": 64}, format="json")

    assert response.status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    assert response.json()["error"] == "not_authenticated"
    assert not Task.objects.exists()


@pytest.mark.parametrize("path", ["/api/v1/tasks/", "/generate"])
def test_anonymous_submit_when_the_farm_allows_it(anon, settings, path):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}

    response = anon.post(path, {"prompt": "a red fox", "width": 64, "height": 64}, format="json")

    assert response.status_code in (HTTPStatus.CREATED, HTTPStatus.OK), response.json()
    task = Task.objects.get()
    assert task.owner is None
    assert str(task.public_id) in (response.json().get("id"), response.json().get("prompt_id"))


def test_users_submit_with_an_api_token(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")

    response = client.post(
        "/api/v1/tasks/", {"prompt": "a red fox", "width": 64, "height": 64}, format="json"
    )

    assert response.status_code == HTTPStatus.CREATED
    assert Task.objects.get().owner == user


def test_a_user_cannot_see_or_cancel_another_users_task(api, user, other_user):
    theirs = TaskFactory(owner=other_user)

    for response in (
        api.get(f"/api/v1/tasks/{theirs.public_id}/"),
        api.post(f"/api/v1/tasks/{theirs.public_id}/cancel/"),
        api.get(f"/status/{theirs.public_id}"),
    ):
        assert response.status_code == HTTPStatus.NOT_FOUND
        assert response.json()["error"] == "not_found"
    assert api.get("/api/v1/tasks/").json()["results"] == []
    assert Task.objects.get(pk=theirs.pk).status == Task.Status.QUEUED


def test_staff_can_see_and_cancel_any_task(staff_api, other_user):
    theirs = TaskFactory(owner=other_user)

    seen = staff_api.get(f"/api/v1/tasks/{theirs.public_id}/")
    cancelled = staff_api.post(f"/api/v1/tasks/{theirs.public_id}/cancel/")

    assert seen.status_code == HTTPStatus.OK and seen.json()["owner"] == "bob"
    assert cancelled.status_code == HTTPStatus.OK and cancelled.json()["status"] == "cancelled"
    assert Task.objects.get(pk=theirs.pk).status == Task.Status.CANCELLED
    assert [t["id"] for t in staff_api.get("/api/v1/tasks/").json()["results"]] == [str(theirs.public_id)]


@pytest.mark.parametrize(
    ("who", "status"),
    [("anon", (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)), ("api", (HTTPStatus.FORBIDDEN,))],
)
def test_only_staff_create_templates(request, who, status, staff_api):
    body = {"name": "my-noise", "workflow": NOISE_TEST_WORKFLOW, "bindings": NOISE_TEST_BINDINGS}
    count = WorkflowTemplate.objects.count()

    refused = request.getfixturevalue(who).post("/api/v1/templates/", body, format="json")

    assert refused.status_code in status
    assert refused.json()["error"] in ("not_authenticated", "permission_denied")
    assert WorkflowTemplate.objects.count() == count
    assert staff_api.post("/api/v1/templates/", body, format="json").status_code == HTTPStatus.CREATED
    assert WorkflowTemplate.objects.filter(name="my-noise").exists()


# --- Worker tokens are made once and kept hashed --------------------------------------------------------


def test_tokens_are_stored_hashed():
    worker, token = worker_services.worker_create(name="gpu-9")

    row = Worker.objects.filter(pk=worker.pk).values().get()
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for value in row.values())
    assert len(token) >= 40  # 256 random bits, URL-safe


def test_createworker_prints_the_token_once_and_it_works():
    out = io.StringIO()

    call_command("createworker", "gpu-7", stdout=out)

    worker = Worker.objects.get(name="gpu-7")
    printed = [
        word for word in out.getvalue().split() if worker.token_hint and word.startswith(worker.token_hint)
    ]
    assert len(printed) == 1
    token = printed[0]
    assert worker.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert all(
        token not in str(value) for value in Worker.objects.filter(pk=worker.pk).values().get().values()
    )
    response = worker_client(token).post(
        "/api/v1/worker/register", {"capabilities": capabilities()}, format="json"
    )
    assert response.status_code == HTTPStatus.OK and response.json()["worker_id"] == worker.pk

    with pytest.raises(CommandError):
        call_command("createworker", "gpu-7", stdout=io.StringIO())

    rotated = io.StringIO()
    call_command("createworker", "gpu-7", "--rotate", "--token-only", stdout=rotated)
    new_token = rotated.getvalue().strip()
    assert new_token != token
    assert (
        worker_client(token).post("/api/v1/worker/heartbeat", {}, format="json").status_code
        == HTTPStatus.UNAUTHORIZED
    )
    assert (
        worker_client(new_token).post("/api/v1/worker/heartbeat", {}, format="json").status_code
        == HTTPStatus.OK
    )


def test_worker_names_are_unique_and_register_is_idempotent(worker_and_token):
    worker, token = worker_and_token
    client = worker_client(token)

    first = client.post("/api/v1/worker/register", {"capabilities": capabilities()}, format="json").json()
    second = client.post("/register", {"capabilities": capabilities()}, format="json").json()

    assert first["worker_id"] == second["worker_id"] == worker.pk
    assert Worker.objects.count() == 1
    with pytest.raises(InvalidInput, match="exists"):
        worker_services.worker_create(name=worker.name)
