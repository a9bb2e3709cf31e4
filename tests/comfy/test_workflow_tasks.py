"""Whole-workflow tasks through the REST submit, leasing and completion."""

import copy
import uuid
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from generation import services
from generation.models import Image, Task
from generation.services import workflow_submit
from tests.comfy.workflows import NOISE, SD15, sd15_with, two_outputs
from tests.conftest import capabilities, make_worker, png_bytes, worker_client

pytestmark = pytest.mark.django_db

TASKS = "/api/v1/tasks/"


def test_rest_submit_queues_a_workflow_task(api, user, worker):
    # Only staff may jump the queue, whole workflows included.
    refused = api.post(TASKS, {"workflow": SD15, "priority": 3}, format="json")
    assert refused.status_code == HTTPStatus.FORBIDDEN and refused.json()["fields"].keys() == {"priority"}
    assert not Task.objects.exists()
    user.is_staff = True
    user.save()
    answer = api.post(TASKS, {"workflow": SD15, "priority": 3}, format="json")
    assert answer.status_code == HTTPStatus.CREATED, answer.json()
    body = answer.json()
    assert body["template"] is None and body["status"] == "queued"
    task = Task.objects.get(public_id=body["id"])
    assert task.workflow == SD15 and task.priority == 3
    assert task.prompt == "a red fox" and task.seed == 42 and (task.width, task.height) == (64, 64)
    assert task.requirements["models"] == [["CheckpointLoaderSimple", "ckpt_name", "sim-v1-5.safetensors"]]
    assert len(task.requirements_key) == 64


@pytest.mark.parametrize(
    ("workflow", "says"),
    [
        ([1, 2], "API format"),
        ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "NoSuchNode does not exist"),
        ({"1": NOISE["1"]}, "Prompt has no outputs"),
        (sd15_with("nope.safetensors"), "'nope.safetensors' not in"),
    ],
)
def test_rest_submit_refuses_a_workflow_naming_the_field(api, worker, workflow, says):
    answer = api.post(TASKS, {"workflow": workflow}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    body = answer.json()
    assert body["error"] == "workflow_invalid"
    assert says in " ".join(body["fields"]["workflow"])
    assert not Task.objects.exists()


def test_a_workflow_does_not_mix_with_template_fields(api, worker):
    answer = api.post(TASKS, {"workflow": NOISE, "prompt": "x", "template": "noise-test"}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert set(answer.json()["fields"]) == {"prompt", "template"}
    assert not Task.objects.exists()


def test_no_single_worker_with_everything_is_refused(api):
    make_worker("nodes-only", capabilities(checkpoints=[]))
    make_worker("ckpt-only", capabilities(nodes=["CheckpointLoaderSimple", "SaveImage"]))
    answer = api.post(TASKS, {"workflow": SD15}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "No single worker" in answer.json()["detail"]


def test_a_workflow_task_goes_only_to_a_worker_with_its_model(api):
    _without, without_token = make_worker("without", capabilities(checkpoints=["other.safetensors"]))
    _with_it, with_token = make_worker("with", capabilities())
    assert api.post(TASKS, {"workflow": SD15}, format="json").status_code == HTTPStatus.CREATED
    assert worker_client(without_token).post("/api/v1/worker/lease", {}, format="json").status_code == 204
    leased = worker_client(with_token).post("/api/v1/worker/lease", {}, format="json")
    assert leased.status_code == HTTPStatus.OK
    workflow = leased.json()["workflow"]
    prefix = leased.json()["filename_prefix"]
    assert workflow["9"]["inputs"]["filename_prefix"] == f"{prefix}_n9"
    assert {k: v for k, v in workflow.items() if k != "9"} == {k: v for k, v in SD15.items() if k != "9"}


def test_completion_stores_every_image_with_its_node_id(api, worker_and_token):
    _worker, token = worker_and_token
    task = services.task_submit_workflow(owner=None, workflow=two_outputs())
    wapi = worker_client(token)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    files = [
        SimpleUploadedFile("a.png", png_bytes(64, 64), "image/png"),
        SimpleUploadedFile("b.png", png_bytes(32, 48), "image/png"),
    ]
    original = png_bytes(32, 48)
    answer = wapi.post(
        f"/api/v1/worker/tasks/{task.public_id}/complete",
        {"lease_token": job["lease_token"], "images": files, "node_ids": ["3", "10"]},
        format="multipart",
    )
    assert answer.status_code == HTTPStatus.OK, answer.json()
    images = list(Image.objects.filter(task=task).order_by("index"))
    assert [(i.node_id, i.width, i.height) for i in images] == [("3", 64, 64), ("10", 32, 48)]
    assert images[1].file.read() == original  # the bytes as ComfyUI wrote them
    assert Task.objects.get(pk=task.pk).status == "completed"


def test_node_ids_must_match_the_images(worker_and_token):
    _worker, token = worker_and_token
    task = services.task_submit_workflow(owner=None, workflow=copy.deepcopy(NOISE))
    wapi = worker_client(token)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    answer = wapi.post(
        f"/api/v1/worker/tasks/{task.public_id}/complete",
        {
            "lease_token": job["lease_token"],
            "images": [SimpleUploadedFile("a.png", png_bytes(), "image/png")],
            "node_ids": ["3", "4"],
        },
        format="multipart",
    )
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "node_ids" in answer.json()["fields"]
    assert not Image.objects.exists()


def test_a_concurrent_submit_of_the_same_client_prompt_id_returns_the_winner(user, worker, monkeypatch):

    first, created = services.comfy_prompt_submit(owner=user, workflow=NOISE, client_prompt_id="p")
    assert created
    lookups = iter([None])  # the loser's first look finds nothing: the winner had not committed yet
    real = workflow_submit._task_named
    monkeypatch.setattr(workflow_submit, "_task_named", lambda o, p: next(lookups, None) or real(o, p))
    again, created = services.comfy_prompt_submit(owner=user, workflow=NOISE, client_prompt_id="p")
    assert not created and again.pk == first.pk
    assert Task.objects.count() == 1


def test_a_front_door_lease_asks_for_frames_and_the_frames_route_checks_the_lease(user, worker_and_token):
    _worker, token = worker_and_token
    services.comfy_prompt_submit(owner=user, workflow=NOISE, client_prompt_id="p", client_id="c")
    wapi = worker_client(token)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    assert job["relay_frames"] is True
    url = f"/api/v1/worker/tasks/{job['task_id']}/frames"
    frames = [["executing", {"node": "1", "prompt_id": "w"}], ["status", {}]]
    answer = wapi.post(url, {"lease_token": job["lease_token"], "frames": frames}, format="json")
    assert answer.status_code == HTTPStatus.OK and answer.json() == {"relayed": 1}
    stale = wapi.post(url, {"lease_token": str(uuid.uuid4()), "frames": frames}, format="json")
    assert stale.status_code == HTTPStatus.CONFLICT and stale.json()["error"] == "lease_lost"
    bad = wapi.post(url, {"lease_token": job["lease_token"], "frames": [["x"]]}, format="json")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and "frames.0" in bad.json()["fields"]


def test_a_rest_lease_asks_for_no_frames(worker_and_token):
    _worker, token = worker_and_token
    services.task_submit_workflow(owner=None, workflow=copy.deepcopy(NOISE))
    job = worker_client(token).post("/api/v1/worker/lease", {}, format="json").json()
    assert job["relay_frames"] is False


def test_register_stores_output_nodes_and_model_inputs(worker_and_token):
    worker, token = worker_and_token
    caps = {
        **capabilities(),
        "output_nodes": ["SaveImage", "PreviewImage"],
        "model_inputs": {"LoraLoader": {"lora_name": ["b.safetensors", "a.safetensors"]}},
    }
    answer = worker_client(token).post("/api/v1/worker/register", {"capabilities": caps}, format="json")
    assert answer.status_code == HTTPStatus.OK, answer.json()
    worker.refresh_from_db()
    assert worker.capabilities["output_nodes"] == ["PreviewImage", "SaveImage"]
    assert worker.capabilities["model_inputs"] == {
        "LoraLoader": {"lora_name": ["a.safetensors", "b.safetensors"]}
    }
    bad = {**caps, "model_inputs": {"LoraLoader": {"lora_name": "a.safetensors"}}}
    answer = worker_client(token).post("/api/v1/worker/register", {"capabilities": bad}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
