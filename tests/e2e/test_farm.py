"""The whole farm working normally: many tasks over several workers, and checkpoint-aware leasing."""

import pytest

from generation.models import Task, TaskAttempt
from tests.e2e.helpers import all_finished, assert_completed_once, sha256_of, statuses, wait_until
from workers_app.models import Worker

pytestmark = pytest.mark.e2e


def test_three_workers_complete_thirty_tasks_exactly_once(farm):
    workers = [farm.worker(farm.simulator(job_time=0.1)) for _ in range(3)]
    farm.wait_registered(*workers)
    tasks = farm.submit_many(30)

    wait_until(lambda: all_finished(tasks), timeout=60, what="30 tasks to finish")

    assert set(statuses(tasks).values()) == {Task.Status.COMPLETED}
    for task in tasks:
        image = assert_completed_once(task, farm.media_root, attempts=[TaskAttempt.Outcome.COMPLETED])
        # The stored file is, byte for byte, the PNG that ComfyUI saved for this task.
        [saved] = farm.comfyui_outputs(task)
        assert sha256_of(saved) == image.sha256
    per_worker = {w.name: w.refresh().tasks_completed for w in workers}
    assert sum(per_worker.values()) == 30 and all(per_worker.values()), per_worker
    wait_until(
        lambda: all(w.refresh().status == Worker.Status.IDLE for w in workers), timeout=5, what="idle workers"
    )
    assert all(not w.daemon.active_tasks() for w in workers)
    # Protocol 3: the daemons' reports went on their worker sockets (a refused or failed socket is closed
    # and the calls go over HTTP).
    assert all(w.daemon.scheduler.socket_open for w in workers)


def test_tasks_only_go_to_workers_that_have_their_checkpoint(farm):
    has_a = farm.worker(farm.simulator(checkpoints=("model-a.safetensors",)), name="has-a")
    has_b = farm.worker(farm.simulator(checkpoints=("model-b.safetensors",)), name="has-b")
    farm.wait_registered(has_a, has_b)
    # B's tasks first: the worker with only A is idle and asking for work the whole time they wait.
    b_tasks = farm.submit_many(6, checkpoint="model-b.safetensors")
    a_tasks = farm.submit_many(2, checkpoint="model-a.safetensors")

    wait_until(lambda: all_finished(b_tasks + a_tasks), timeout=40, what="the tasks to finish")

    for tasks, worker in ((b_tasks, has_b), (a_tasks, has_a)):
        for task in tasks:
            assert_completed_once(task, farm.media_root, attempts=[TaskAttempt.Outcome.COMPLETED])
        leased_to = set(TaskAttempt.objects.filter(task__in=tasks).values_list("worker__name", flat=True))
        assert leased_to == {worker.name}
    assert has_a.refresh().tasks_completed == 2 and has_b.refresh().tasks_completed == 6
