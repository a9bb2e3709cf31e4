"""`manage.py runworker` as a real OS process, stopped by signals: nothing is lost, nothing runs twice."""

import signal
import time
from datetime import timedelta

import pytest

from generation.models import Task, TaskAttempt
from tests.e2e.conftest import WORKER_OFFLINE_AFTER
from tests.e2e.helpers import all_finished, assert_completed_once, wait_until
from workers_app.models import Worker

pytestmark = pytest.mark.e2e

Outcome = TaskAttempt.Outcome
GRACE = 20.0


def _held_by(worker: Worker, status: str) -> list[Task]:
    return list(Task.objects.filter(worker=worker, status=status))


def test_sigterm_finishes_the_running_task_hands_back_the_prefetched_one_and_exits_0(farm):
    simulator = farm.simulator(job_time=2.0)
    process = farm.worker_process(simulator, grace=GRACE, prefetch=2)
    farm.wait_registered(process)
    tasks = farm.submit_many(3)
    # One task runs in ComfyUI, the next waits in ComfyUI's queue (prefetched), the third in the scheduler.
    wait_until(
        lambda: (
            len(_held_by(process.row, Task.Status.RUNNING)) == 1
            and len(_held_by(process.row, Task.Status.LEASED)) == 1
            and simulator.call(lambda sim: len(sim.queue)) == 1
        ),
        what="a running and a prefetched task",
    )
    [running] = _held_by(process.row, Task.Status.RUNNING)
    [prefetched] = _held_by(process.row, Task.Status.LEASED)

    signalled_at = time.monotonic()
    process.send(signal.SIGTERM)
    assert process.wait(timeout=GRACE + 15) == 0, process.log()
    assert time.monotonic() - signalled_at < GRACE

    # The running task finished on this worker within the grace; the prefetched one was handed back
    # (removed from ComfyUI's queue, its attempt not counted); the worker said it was going offline.
    assert_completed_once(running, farm.media_root, attempts=[Outcome.COMPLETED])
    assert TaskAttempt.objects.get(task=running).worker_id == process.row.pk
    prefetched.refresh_from_db()
    assert prefetched.status == Task.Status.QUEUED and prefetched.attempts == 0
    assert list(TaskAttempt.objects.filter(task=prefetched).values_list("outcome", flat=True)) == [
        Outcome.RELEASED
    ]
    assert simulator.call(lambda sim: (len(sim.queue), len(sim.currently_running))) == (0, 0)
    assert process.refresh().status == Worker.Status.OFFLINE
    assert "offline" in process.log()

    # Nothing is lost: another worker completes the rest, each exactly once.
    farm.worker(farm.simulator(job_time=0.1))
    wait_until(lambda: all_finished(tasks), timeout=30, what="the remaining tasks to finish")
    assert_completed_once(prefetched, farm.media_root, attempts=[Outcome.RELEASED, Outcome.COMPLETED])
    for task in tasks:
        assert_completed_once(task, farm.media_root)


def test_sigkill_mid_task_another_worker_completes_it_once_after_the_lease_expires(farm):
    victim = farm.worker_process(farm.simulator(job_time=5.0), prefetch=1)
    farm.wait_registered(victim)
    task = farm.submit()
    wait_until(
        lambda: Task.objects.filter(pk=task.pk, status=Task.Status.RUNNING, worker=victim.row).exists(),
        what="the task to run on the doomed worker",
    )
    rescuer = farm.worker(farm.simulator(job_time=0.1))  # idle, asking for work the whole time
    farm.wait_registered(rescuer)

    victim.send(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL

    wait_until(lambda: all_finished([task]), timeout=30, what="the task to be completed by the rescuer")
    assert_completed_once(task, farm.media_root, attempts=[Outcome.EXPIRED, Outcome.COMPLETED])
    lost, done = TaskAttempt.objects.filter(task=task).order_by("number")
    assert (lost.worker_id, done.worker_id) == (victim.row.pk, rescuer.row.pk)
    assert lost.error_code == "worker_lost"
    # Handed out again only once the dead worker was found silent for too long, not while it could still
    # have been alive; and that worker is now offline.
    victim.refresh()
    assert victim.row.status == Worker.Status.OFFLINE
    assert done.leased_at - victim.row.last_heartbeat >= timedelta(seconds=WORKER_OFFLINE_AFTER)
    task.refresh_from_db()
    assert task.attempts == 2
