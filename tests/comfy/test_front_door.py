"""The ComfyUI front door's HTTP routes: answers in ComfyUI's shapes, one space per user."""

import copy
import json
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from generation import services
from generation.models import Task
from tests.comfy.workflows import NOISE, SD15, sd15_with, two_outputs
from tests.conftest import png_bytes, worker_client
from tests.factories import api_token_for

pytestmark = pytest.mark.django_db


def prompt(client, workflow=NOISE, base="/comfy", **fields):
    return client.post(f"{base}/prompt", {"prompt": workflow, **fields}, format="json")


def run(wapi, task: Task, images: list[tuple[str, bytes]]) -> None:
    """Lease `task` and complete it with `images` as (node id, bytes)."""
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    assert job["task_id"] == str(task.public_id)
    files = [SimpleUploadedFile(f"{n}.png", data, "image/png") for n, data in images]
    answer = wapi.post(
        f"/api/v1/worker/tasks/{task.public_id}/complete",
        {"lease_token": job["lease_token"], "images": files, "node_ids": [n for n, _ in images]},
        format="multipart",
    )
    assert answer.status_code == HTTPStatus.OK, answer.json()


def test_prompt_answers_like_comfyui_and_queues_a_task(api, worker, base):
    answer = prompt(api, base=base, prompt_id="my-id-1", client_id="c1")
    assert answer.status_code == HTTPStatus.OK, answer.json()
    task = Task.objects.get()
    assert answer.json() == {"prompt_id": "my-id-1", "number": task.pk, "node_errors": {}}
    assert (task.client_prompt_id, task.client_id, task.owner.username) == ("my-id-1", "c1", "alice")
    assert task.workflow == NOISE


def test_a_client_prompt_id_is_an_idempotency_key_per_user(api, other_user, worker):
    first = prompt(api, prompt_id="same").json()
    again = prompt(api, workflow=SD15, prompt_id="same").json()
    assert first == again and Task.objects.count() == 1
    bob = APIClient()
    bob.force_authenticate(other_user)
    theirs = prompt(bob, prompt_id="same").json()
    assert theirs["prompt_id"] == "same" and theirs["number"] != first["number"]
    assert Task.objects.count() == 2


def test_without_a_prompt_id_the_farms_id_is_used(api, worker):
    body = prompt(api).json()
    assert body["prompt_id"] == str(Task.objects.get().public_id)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({}, "no_prompt"),
        ({"prompt": {}}, "prompt_no_outputs"),
        ({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, "invalid_prompt"),
        ({"prompt": sd15_with("nope.safetensors")}, "prompt_outputs_failed_validation"),
        ({"prompt": [1, 2]}, "invalid_prompt"),
    ],
)
def test_a_workflow_the_farm_cannot_run_is_a_comfyui_shaped_400(api, worker, body, kind):
    answer = api.post("/comfy/prompt", body, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert answer.json()["error"]["type"] == kind
    assert set(answer.json()) == {"error", "node_errors"}
    assert not Task.objects.exists()


def test_a_missing_model_names_the_node_and_input(api, worker):
    answer = api.post("/comfy/prompt", {"prompt": sd15_with("nope.safetensors")}, format="json")
    entry = answer.json()["node_errors"]["4"]
    assert entry["class_type"] == "CheckpointLoaderSimple" and entry["dependent_outputs"] == ["9"]
    assert entry["errors"][0]["extra_info"]["input_name"] == "ckpt_name"


def test_malformed_json_and_bad_ids_are_400_json(api, worker):
    answer = api.generic("POST", "/comfy/prompt", b"{not json", content_type="text/plain")
    assert answer.status_code == HTTPStatus.BAD_REQUEST and answer.json()["error"]["type"] == "invalid_prompt"
    answer = prompt(api, prompt_id="x" * 101)
    assert answer.status_code == HTTPStatus.BAD_REQUEST and "prompt_id" in answer.json()["fields"]
    assert not Task.objects.exists()


def test_the_body_is_json_whatever_its_content_type(api, worker):
    answer = api.generic("POST", "/comfy/prompt", json.dumps({"prompt": NOISE}), content_type="text/plain")
    assert answer.status_code == HTTPStatus.OK


def test_history_and_view_serve_the_users_own_images(api, other_user, worker_and_token, base):
    _worker, token = worker_and_token
    prompt(api, workflow=two_outputs(), prompt_id="p1", client_id="c1")
    task = Task.objects.get()
    assert api.get(f"{base}/history/p1").json() == {}  # not finished: {} like ComfyUI
    first, second = png_bytes(64, 64), png_bytes(32, 32, color=(1, 2, 3))
    run(worker_client(token), task, [("3", first), ("10", second)])

    history = api.get(f"{base}/history/p1").json()
    entry = history["p1"]
    assert entry["prompt"] == [task.pk, "p1", two_outputs(), {"client_id": "c1"}, ["3", "10"]]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_success"]
    assert set(entry["outputs"]) == {"3", "10"}
    ref = entry["outputs"]["10"]["images"][0]
    assert ref["type"] == "output"
    view = api.get(f"{base}/view", ref)
    assert view.status_code == HTTPStatus.OK and view["Content-Type"] == "image/png"
    # the bytes in one answer: a streamed file is read under ASGI on the process's shared thread
    assert not view.streaming and view.content == second
    assert api.get(f"{base}/history").json() == history

    bob = APIClient()
    bob.force_authenticate(other_user)
    assert bob.get(f"{base}/history/p1").json() == {}
    assert bob.get(f"{base}/history").json() == {}
    assert bob.get(f"{base}/view", ref).status_code == HTTPStatus.NOT_FOUND


@pytest.mark.parametrize(
    "params",
    [
        {"filename": "../settings.py", "subfolder": ""},
        {"filename": "x.png", "subfolder": "../../etc"},
        {"filename": "", "subfolder": ""},
    ],
)
def test_view_of_an_unknown_or_crafted_name_is_404(api, worker, params):
    assert api.get("/comfy/view", params).status_code == HTTPStatus.NOT_FOUND


def test_history_paging_and_bad_numbers(api, worker_and_token):
    _worker, token = worker_and_token
    wapi = worker_client(token)
    for n in range(3):
        prompt(api, prompt_id=f"p{n}")
        run(wapi, Task.objects.get(client_prompt_id=f"p{n}"), [("3", png_bytes())])
    assert list(api.get("/comfy/history").json()) == ["p0", "p1", "p2"]
    assert list(api.get("/comfy/history?max_items=2").json()) == ["p1", "p2"]
    assert list(api.get("/comfy/history?max_items=1&offset=1").json()) == ["p1"]
    answer = api.get("/comfy/history?max_items=abc")
    assert answer.status_code == HTTPStatus.BAD_REQUEST and "max_items" in answer.json()["fields"]


def test_queue_lists_the_users_tasks_and_deletes_pending_ones(api, other_user, worker, base):
    prompt(api, prompt_id="a", client_id="c")
    prompt(api, prompt_id="b", client_id="c")
    bob = APIClient()
    bob.force_authenticate(other_user)
    prompt(bob, prompt_id="theirs")
    queue = api.get(f"{base}/queue").json()
    assert queue["queue_running"] == []
    assert [item[1] for item in queue["queue_pending"]] == ["a", "b"]
    assert len(queue["queue_pending"][0]) == 5
    assert api.get(f"{base}/prompt").json() == {"exec_info": {"queue_remaining": 2}}

    answer = api.post(f"{base}/queue", {"delete": ["a", "theirs", "unknown"]}, format="json")
    assert answer.status_code == HTTPStatus.OK and answer.content == b""
    assert Task.objects.get(client_prompt_id="a").status == "cancelled"
    assert Task.objects.get(client_prompt_id="theirs").status == "queued"
    assert api.get(f"{base}/history/a").json() == {}  # deleted before it ran: no trace, as in ComfyUI
    api.post(f"{base}/queue", {"clear": True}, format="json")
    assert Task.objects.get(client_prompt_id="b").status == "cancelled"
    assert Task.objects.get(client_prompt_id="theirs").status == "queued"


def test_interrupt_cancels_running_prompts_only(api, worker_and_token):
    _worker, token = worker_and_token
    prompt(api, prompt_id="running")
    wapi = worker_client(token)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    started = wapi.post(
        f"/api/v1/worker/tasks/{job['task_id']}/start", {"lease_token": job["lease_token"]}, format="json"
    )
    assert started.status_code == HTTPStatus.OK, started.json()
    prompt(api, prompt_id="pending")
    assert api.post("/comfy/interrupt", {"prompt_id": "pending"}, format="json").status_code == 200
    assert Task.objects.get(client_prompt_id="pending").status == "queued"
    assert api.post("/comfy/interrupt").status_code == HTTPStatus.OK
    running = Task.objects.get(client_prompt_id="running")
    assert running.status == "cancelled"
    status = api.get("/comfy/history/running").json()["running"]["status"]
    assert status["status_str"] == "error" and status["messages"][-1][0] == "execution_interrupted"


def test_a_failed_task_is_an_error_entry(api, worker_and_token):
    _worker, token = worker_and_token
    prompt(api, prompt_id="bad")
    wapi = worker_client(token)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    wapi.post(
        f"/api/v1/worker/tasks/{job['task_id']}/fail",
        {"lease_token": job["lease_token"], "code": "execution_error", "message": "boom", "retryable": False},
        format="json",
    )
    status = api.get("/comfy/history/bad").json()["bad"]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    kind, data = status["messages"][-1]
    assert kind == "execution_error" and data["exception_message"] == "boom"


def test_anonymous_clients_share_one_space_only_when_allowed(settings, api, worker):
    anon = APIClient()
    assert prompt(anon).status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    prompt(api, prompt_id="alices")
    assert prompt(anon, prompt_id="anon-1").status_code == HTTPStatus.OK
    assert (
        prompt(APIClient(), prompt_id="anon-1").json()["number"]
        == Task.objects.get(client_prompt_id="anon-1").pk
    )
    assert [i[1] for i in anon.get("/comfy/queue").json()["queue_pending"]] == ["anon-1"]
    assert Task.objects.get(client_prompt_id="anon-1").owner is None


def test_token_auth_works_as_on_the_rest_api(user, worker):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")
    assert prompt(client).status_code == HTTPStatus.OK


def test_farm_description_routes(api, worker):
    info = api.get("/comfy/object_info").json()
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output_node"] is False
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [["sim-v1-5.safetensors"], {}]
    assert list(api.get("/comfy/object_info/KSampler").json()) == ["KSampler"]
    assert api.get("/comfy/models").json() == ["checkpoints"]
    assert api.get("/comfy/models/checkpoints").json() == ["sim-v1-5.safetensors"]
    assert api.get("/comfy/models/loras").status_code == HTTPStatus.NOT_FOUND
    assert api.get("/comfy/embeddings").json() == []
    stats = api.get("/comfy/system_stats").json()
    assert stats["system"]["comfyui_version"] == "0.3.64" and len(stats["devices"]) == 1
    assert api.get("/comfy/features").json()["max_upload_size"] > 0


def test_the_rest_submit_and_the_front_door_share_tasks(api, user, worker):
    task = services.task_submit_workflow(owner=user, workflow=copy.deepcopy(NOISE))
    assert [i[1] for i in api.get("/comfy/queue").json()["queue_pending"]] == [str(task.public_id)]


def test_history_reads_a_fixed_number_of_queries(api, worker_and_token, django_assert_max_num_queries):
    _worker, token = worker_and_token
    wapi = worker_client(token)
    for n in range(4):
        prompt(api, prompt_id=f"p{n}")
        run(wapi, Task.objects.get(client_prompt_id=f"p{n}"), [("3", png_bytes())])
    # the finished tasks, their images
    with django_assert_max_num_queries(2):
        assert len(api.get("/comfy/history").json()) == 4


def test_huge_graphs_and_bodies_are_refused_without_a_trace(api, worker, settings):
    many = {str(i): {"class_type": "SaveImage", "inputs": {}} for i in range(10_000)}
    answer = api.post("/comfy/prompt", {"prompt": many}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert (
        answer.json()["error"]["type"] == "invalid_prompt"
        and "at most 2000" in answer.json()["error"]["message"]
    )
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    blob = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x" * 200_000}}}
    answer = api.post("/comfy/prompt", {"prompt": blob}, format="json")
    assert answer.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert not Task.objects.exists()
