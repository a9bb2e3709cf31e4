"""Learned costs: the EWMA fit on synthetic histories, and what a completed attempt teaches the database."""

import random
from unittest import mock

import pytest
from django.db import DatabaseError

from generation import dispatch, placement, services, workflows
from generation.models import Task, TaskAttempt, UserShare
from tests.conftest import CHECKPOINT, submit_task
from tests.generation.test_leasing import lease, upload
from workers_app.models import WorkerSpeed


def fit(history: list[float]) -> float:
    estimate = None
    for samples, observed in enumerate(history):
        estimate = placement.ewma(estimate, observed, samples)
    return estimate


def test_ewma_finds_the_mean_of_noisy_runs_and_forgets_slowly():
    rng = random.Random(7)
    assert fit([2.0 * rng.uniform(0.9, 1.1) for _ in range(200)]) == pytest.approx(2.0, rel=0.05)
    # the first samples are a plain mean: no overweight of the first one
    assert fit([1.0, 3.0]) == pytest.approx(2.0)
    # a GPU that got twice as slow: half-way there after about seven runs, nearly there after forty
    history = [1.0] * 50
    assert fit(history + [2.0] * 7) == pytest.approx(1.5, abs=0.05)
    assert fit(history + [2.0] * 40) > 1.95


def test_decayed_usage_halves_every_half_life():
    assert placement.decayed(100.0, placement.USAGE_HALF_LIFE) == pytest.approx(50.0)
    assert placement.decayed(100.0, -5) == 100.0


def run_one(worker, clock, seconds: float, *, switched: bool = False, owner=None):
    submit_task(owner=owner, checkpoint=CHECKPOINT)
    held = lease(worker)
    TaskAttempt.objects.filter(pk=held.attempt.pk).update(switched=switched)
    services.task_start(worker=worker, task_id=held.task.public_id, lease_token=held.attempt.lease_token)
    clock.advance(seconds)
    services.task_complete(
        worker=worker, task_id=held.task.public_id, lease_token=held.attempt.lease_token, files=[upload()]
    )


@pytest.mark.django_db
def test_a_completion_teaches_speed_switch_cost_usage_and_the_warm_model(worker, user, clock):
    work = placement.work_units(64, 64, 20, 1)
    run_one(worker, clock, 2.0, owner=user)
    run_one(worker, clock, 4.0, owner=user)
    speed = WorkerSpeed.objects.get(worker=worker, checkpoint=CHECKPOINT)
    assert speed.samples == 2 and speed.seconds_per_unit == pytest.approx(3.0 / work)
    run_one(worker, clock, 3.0 + 5.0, switched=True)  # 3 s of work and a 5 s switch
    worker.refresh_from_db()
    assert worker.switch_seconds == pytest.approx(5.0) and worker.switch_samples == 1
    assert WorkerSpeed.objects.get(pk=speed.pk).samples == 2  # a switched run does not blur the speed
    assert worker.warm_checkpoint == CHECKPOINT
    share = UserShare.objects.get(user=user)
    assert share.usage_seconds == pytest.approx(2.0 * 0.5 ** (4 / placement.USAGE_HALF_LIFE) + 4.0)


@pytest.mark.django_db(transaction=True)
def test_the_task_event_goes_out_before_the_completion_learns(worker, user, clock, monkeypatch):
    """The learned costs are written after the completion commits: its event streams do not wait for them."""
    learned_at_event = []
    monkeypatch.setitem(
        dispatch._subscribers,
        "task",
        [lambda data: learned_at_event.append(WorkerSpeed.objects.filter(worker=worker).exists())],
    )
    run_one(worker, clock, 2.0, owner=user)
    assert learned_at_event[-1] is False  # the completion's event: committed, the speed not yet learned
    assert WorkerSpeed.objects.filter(worker=worker).exists()  # learned before task_complete returned


@pytest.mark.django_db
def test_a_completion_that_cannot_learn_still_lands(worker, user, clock):
    with mock.patch("generation.services.completion.attempt_learn", side_effect=DatabaseError("gone")):
        run_one(worker, clock, 2.0, owner=user)
    task = Task.objects.get()
    assert task.status == Task.Status.COMPLETED and task.images.count() == 1
    assert not WorkerSpeed.objects.exists() and not UserShare.objects.filter(usage_seconds__gt=0).exists()


def noise_workflow(*, width: int = 64, seed: int = 7, blur: bool = False) -> dict:
    workflow = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 64, "batch_size": 2, "color": 1},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": seed, "strength": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    if blur:
        workflow["4"] = {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 3}}
        workflow["3"]["inputs"]["images"] = ["4", 0]
    return workflow


def test_a_workflows_shape_is_its_graph_without_its_values():
    shape = workflows.workflow_shape
    assert shape(noise_workflow()) == shape(noise_workflow(width=512, seed=99))
    assert shape(noise_workflow()) != shape(noise_workflow(blur=True))
    relinked = noise_workflow()
    relinked["3"]["inputs"]["images"] = ["1", 0]
    assert shape(relinked) != shape(noise_workflow())


@pytest.mark.django_db
def test_a_workflow_task_learns_its_shapes_speed_and_is_estimated_by_it(worker, user, clock):
    task = services.task_submit_workflow(owner=user, workflow=noise_workflow())
    assert (task.width, task.height, task.batch_size, task.shape) == (
        64, 64, 2, workflows.workflow_shape(noise_workflow()),
    )  # fmt: skip
    held = lease(worker)
    services.task_start(worker=worker, task_id=held.task.public_id, lease_token=held.attempt.lease_token)
    clock.advance(6.0)
    services.task_complete(
        worker=worker,
        task_id=held.task.public_id,
        lease_token=held.attempt.lease_token,
        files=[upload(), upload()],
    )
    work = placement.work_units(64, 64, task.steps, 2)
    learned = WorkerSpeed.objects.get(worker=worker, shape=task.shape)
    assert learned.seconds_per_unit == pytest.approx(6.0 / work)
    node = placement.Node(
        id=worker.pk,
        seconds_per_unit={
            task.checkpoint: 1.0,  # what the checkpoint's other tasks taught
            placement.speed_key(task.checkpoint, task.shape): learned.seconds_per_unit,
        },
    )
    same_shape = placement.Job(1, None, task.checkpoint, 0, work * 2, 0.0, None, "key", task.shape)
    assert node.run_seconds(same_shape, warm=task.checkpoint) == pytest.approx(12.0)  # twice the work
    other_shape = same_shape._replace(shape="another")
    assert node.run_seconds(other_shape, warm=task.checkpoint) == pytest.approx(work * 2 * 1.0)


@pytest.mark.django_db
def test_the_summary_takes_steps_and_batch_from_the_workflow(user):
    workflow = noise_workflow()
    workflow["5"] = {"class_type": "KSampler", "inputs": {"steps": 8, "seed": 1}}
    task = services.task_submit_workflow(owner=user, workflow=workflow)
    assert (task.steps, task.batch_size) == (8, 2)
