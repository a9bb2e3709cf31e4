"""Inventory that stays true: POST inventory, a prompt refused for a model the worker lacks, and the tasks no
online worker can run (services as plain functions, the API through its URL)."""

from http import HTTPStatus

import pytest
from django.urls import reverse

from generation import inventory, services, unrunnable
from generation.models import Task, TaskAttempt
from tests.comfy.workflows import SD15
from tests.conftest import CHECKPOINT, capabilities, make_worker, submit_task, worker_client
from workers_app import services as worker_services
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

INVENTORY = "/api/v1/worker/inventory"
LEASE = "/api/v1/worker/lease"
SIM = "sim-v1-5.safetensors"  # the checkpoint SD15 names


def with_models(files=(SIM,), **kwargs) -> dict:
    caps = capabilities(checkpoints=files, **kwargs)
    caps["model_inputs"] = {"CheckpointLoaderSimple": {"ckpt_name": list(files)}}
    return caps


def submit_sd15(user) -> Task:
    return services.task_submit_workflow(owner=user, workflow=SD15)


def test_inventory_stores_a_change_and_keeps_the_leases(user):
    worker, token = make_worker("gpu-1", with_models())
    task = submit_sd15(user)
    assert services.task_lease_next(worker=worker).task.pk == task.pk
    client = worker_client(token)
    answer = client.post(INVENTORY, {"capabilities": with_models([SIM, "new.safetensors"])}, format="json")
    assert answer.status_code == HTTPStatus.OK and answer.json() == {"changed": True, "object_info": None}
    worker.refresh_from_db()
    assert worker.checkpoints == ["new.safetensors", SIM]
    assert worker.capabilities["model_inputs"]["CheckpointLoaderSimple"]["ckpt_name"] == [
        "new.safetensors",
        SIM,
    ]
    task.refresh_from_db()
    assert task.status == Task.Status.LEASED and task.worker_id == worker.pk  # register would requeue it
    again = client.post(INVENTORY, {"capabilities": with_models([SIM, "new.safetensors"])}, format="json")
    assert again.json() == {"changed": False, "object_info": None}


def test_inventory_is_validated_and_bounded_as_register(worker, wapi):
    before = Worker.objects.get(pk=worker.pk).capabilities
    too_many = capabilities(checkpoints=[f"m{i}.safetensors" for i in range(1001)])
    answer = wapi.post(INVENTORY, {"capabilities": too_many}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "capabilities.checkpoints" in answer.json()["fields"]
    bad = wapi.post(INVENTORY, {"capabilities": {"model_inputs": {"X": {"ckpt_name": "a"}}}}, format="json")
    assert bad.status_code == HTTPStatus.BAD_REQUEST
    assert [*bad.json()["fields"]] == ["capabilities.model_inputs.X.ckpt_name"]
    assert wapi.post(INVENTORY, {}, format="json").status_code == HTTPStatus.BAD_REQUEST
    assert Worker.objects.get(pk=worker.pk).capabilities == before


def test_inventory_from_an_offline_worker_asks_it_to_register(worker, wapi):
    Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.OFFLINE)
    answer = wapi.post(INVENTORY, {"capabilities": capabilities()}, format="json")
    assert answer.status_code == HTTPStatus.CONFLICT and answer.json()["error"] == "register_required"


def test_a_removed_model_stops_attracting_tasks(user):
    worker, _ = make_worker("gpu-1", with_models())
    submit_sd15(user)
    assert worker_services.worker_update_inventory(
        worker=worker, capabilities=with_models(["other.safetensors"])
    )
    assert services.task_lease_next(worker=worker) is None
    assert worker_services.worker_update_inventory(worker=worker, capabilities=with_models())
    assert services.task_lease_next(worker=worker) is not None


def fail_missing(worker, lease, value=SIM, where=("CheckpointLoaderSimple", "ckpt_name")):
    return services.task_fail_model_missing(
        worker=worker,
        task_id=lease.task.public_id,
        lease_token=lease.attempt.lease_token,
        message="Value not in list",
        class_type=where[0],
        input_name=where[1],
        value=value,
    )


def test_a_missing_model_requeues_the_task_for_others_without_counting_it(user):
    stale, _ = make_worker("stale", with_models())
    other, _ = make_worker("other", with_models())
    task = submit_sd15(user)
    lease = services.task_lease_next(worker=stale)
    assert lease.task.pk == task.pk
    fail_missing(stale, lease)
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED and task.attempts == 0 and task.error_code == "model_missing"
    stale.refresh_from_db()
    assert SIM not in stale.checkpoints
    assert stale.capabilities["model_inputs"]["CheckpointLoaderSimple"]["ckpt_name"] == []
    assert services.task_lease_next(worker=stale) is None  # not handed back while it lacks the model
    assert services.task_lease_next(worker=other).task.pk == task.pk
    attempt = TaskAttempt.objects.get(task=task, worker=stale)
    assert attempt.outcome == TaskAttempt.Outcome.FAILED and attempt.error_code == "model_missing"


def test_the_worker_gets_the_task_again_once_it_reports_the_model(user):
    worker, _ = make_worker("gpu-1", with_models())
    task = submit_sd15(user)
    fail_missing(worker, services.task_lease_next(worker=worker))
    assert services.task_lease_next(worker=worker) is None
    worker_services.worker_update_inventory(worker=worker, capabilities=with_models())
    assert services.task_lease_next(worker=worker).task.pk == task.pk


def test_a_second_missing_model_on_the_same_worker_counts(user):
    """A daemon whose refreshed inventory keeps naming a model its ComfyUI refuses gets one free requeue per
    task, not an endless loop."""
    worker, _ = make_worker("gpu-1", with_models())
    task = submit_sd15(user)
    fail_missing(worker, services.task_lease_next(worker=worker))
    worker_services.worker_update_inventory(worker=worker, capabilities=with_models())
    fail_missing(worker, services.task_lease_next(worker=worker))
    task.refresh_from_db()
    assert task.attempts == 1 and task.status == Task.Status.QUEUED


def test_a_template_task_missing_its_checkpoint_is_requeued_free(user, worker):
    task = submit_task(user)
    assert task.checkpoint == CHECKPOINT
    fail_missing(worker, services.task_lease_next(worker=worker), value=CHECKPOINT)
    task.refresh_from_db()
    assert task.attempts == 0 and task.status == Task.Status.QUEUED
    assert services.task_lease_next(worker=worker) is None


def test_a_template_task_missing_a_model_the_lease_does_not_check_counts(user, worker):
    """Dropping a LoRA from the lists cannot keep a template task away (templates are matched by node classes
    and checkpoint): an ordinary retryable failure, bounded by the task's attempts."""
    task = submit_task(user)
    fail_missing(
        worker, services.task_lease_next(worker=worker), "x.safetensors", ("LoraLoader", "lora_name")
    )
    task.refresh_from_db()
    assert task.attempts == 1 and task.status == Task.Status.QUEUED


def test_the_fail_api_routes_model_missing(user):
    worker, token = make_worker("gpu-1", with_models())
    task = submit_sd15(user)
    lease = worker_client(token).post(LEASE, {}, format="json").json()
    details = {"node_id": "4", "node_type": "CheckpointLoaderSimple", "input": "ckpt_name", "value": SIM}
    answer = worker_client(token).post(
        f"/api/v1/worker/tasks/{task.public_id}/fail",
        {
            "lease_token": lease["lease_token"],
            "code": "model_missing",
            "message": "not in list",
            "retryable": True,
            "details": details,
        },
        format="json",
    )
    assert answer.status_code == HTTPStatus.OK and answer.json()["attempts"] == 0
    worker.refresh_from_db()
    assert SIM not in worker.checkpoints


def test_without_model_drops_the_file_from_every_checkpoint_list():
    caps = with_models([SIM, "b.safetensors"])
    caps["model_inputs"]["ImageOnlyCheckpointLoader"] = {"ckpt_name": [SIM]}
    caps["model_inputs"]["LoraLoader"] = {"lora_name": [SIM]}
    out = inventory.without_model(caps, "CheckpointLoaderSimple", "ckpt_name", SIM)
    assert out["checkpoints"] == ["b.safetensors"]
    assert out["model_inputs"]["ImageOnlyCheckpointLoader"]["ckpt_name"] == []
    assert out["model_inputs"]["LoraLoader"]["lora_name"] == [SIM]  # another folder
    assert caps["checkpoints"] == [SIM, "b.safetensors"]  # the input is not changed


def test_unrunnable_lists_queued_tasks_no_online_worker_can_run_with_why(user):
    make_worker("gpu-1", with_models(["other.safetensors"]))
    make_worker("gpu-2", with_models(nodes=["SaveImage"]))
    offline, _ = make_worker("gpu-3", with_models())
    Worker.objects.filter(pk=offline.pk).update(status=Worker.Status.OFFLINE)
    stuck = submit_sd15(user)
    fine = submit_task(user)
    rows = unrunnable.queued_unrunnable()
    assert [row.task.pk for row in rows] == [stuck.pk]
    reasons = dict(rows[0].reasons)
    assert reasons["gpu-1"] == f"no ckpt_name {SIM!r}"
    assert reasons["gpu-2"].startswith("no node class")
    assert "gpu-3" not in reasons and fine.pk not in [row.task.pk for row in rows]


def test_unrunnable_says_when_no_worker_is_online(user):
    worker, _ = make_worker("gpu-1", with_models())
    task = submit_sd15(user)
    Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.OFFLINE)
    rows = unrunnable.queued_unrunnable()
    assert [(row.task.pk, row.reasons) for row in rows] == [(task.pk, [("", "no worker is online")])]


def test_admin_shows_what_a_worker_has_and_the_unrunnable_tasks(admin_client, user):
    caps = with_models(["other.safetensors"])
    caps["model_inputs"]["LoraLoader"] = {"lora_name": ["fox.safetensors"]}
    worker, _ = make_worker("gpu-1", with_models())
    task = submit_sd15(user)
    worker_services.worker_update_inventory(worker=worker, capabilities=caps)  # the model went away
    page = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk]))
    html = page.content.decode()
    assert page.status_code == HTTPStatus.OK
    assert "LoraLoader.lora_name" in html and "fox.safetensors" in html and "Node classes" in html
    listing = admin_client.get(reverse("admin:workers_app_worker_unrunnable"))
    html = listing.content.decode()
    assert listing.status_code == HTTPStatus.OK
    assert str(task.public_id)[:8] in html and f"no ckpt_name &#x27;{SIM}&#x27;" in html
