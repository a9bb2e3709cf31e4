"""Learned costs: the EWMA fit on synthetic histories, and what a completed attempt teaches the database."""

import random

import pytest

from generation import placement, services
from generation.models import TaskAttempt, UserShare
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
