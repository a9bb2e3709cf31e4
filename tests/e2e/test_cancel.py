"""Cancelling through the REST API reaches ComfyUI: a queued prompt is deleted, a running one interrupted."""

import pytest

from generation.models import Image, Task, TaskAttempt
from tests.e2e.helpers import all_finished, assert_completed_once, outcomes, wait_until
from workers_app.models import Worker

pytestmark = pytest.mark.e2e

Outcome = TaskAttempt.Outcome


def _prompts(sim, task: Task, where: str) -> list[str]:
    """Ids of `task`'s prompts in the simulator's pending queue, running set or history (by their
    SaveImage prefix, `t2i/<task uuid>_a<attempt>`: only the scheduler's start call names the prompt)."""
    items = {
        "pending": sim.queue,
        "running": list(sim.currently_running.values()),
        "history": [entry["prompt"] for entry in sim.history.values()],
    }[where]
    prefix = f"t2i/{task.public_id}_a"
    return [item[1] for item in items if item[2]["9"]["inputs"]["filename_prefix"].startswith(prefix)]


def test_cancel_dequeues_a_prefetched_prompt_and_interrupts_the_running_one(farm):
    simulator = farm.simulator(job_time=0.2, step_time=0.5)  # KSampler: 0.5 s per step
    worker = farm.worker(simulator, prefetch=2)
    farm.wait_registered(worker)

    def comfyui(task: Task, where: str) -> list[str]:
        return simulator.call(lambda sim: _prompts(sim, task, where))

    running = farm.submit(steps=30)  # 15 s of sampling: it is still running when cancelled
    wait_until(
        lambda: Task.objects.filter(pk=running.pk, status=Task.Status.RUNNING).exists(),
        what="the first task to run",
    )
    queued = farm.submit()  # prefetched: leased, and waiting in ComfyUI's own queue
    wait_until(lambda: comfyui(queued, "pending"), what="the second task to wait in ComfyUI's queue")
    running_prompt = TaskAttempt.objects.get(task=running).comfyui_prompt_id
    assert comfyui(running, "running") == [running_prompt]

    # 1. The queued one: the worker removes it from ComfyUI's queue (POST /queue delete); nothing else stops.
    assert farm.cancel(queued)["status"] == Task.Status.CANCELLED
    wait_until(lambda: not comfyui(queued, "pending"), what="ComfyUI's queue to lose the cancelled prompt")
    assert not comfyui(queued, "running") and not comfyui(queued, "history")  # it never ran
    assert comfyui(running, "running") == [running_prompt]

    # 2. The running one: the worker interrupts it (POST /interrupt) and ComfyUI records the interruption.
    assert farm.cancel(running)["status"] == Task.Status.CANCELLED
    history = wait_until(
        lambda: simulator.call(lambda sim: sim.history.get(running_prompt)),
        what="the interrupted prompt's history",
    )
    assert [m[0] for m in history["status"]["messages"]][-1] == "execution_interrupted"
    wait_until(lambda: not worker.daemon.active_tasks(), what="the worker to drop both tasks")
    wait_until(lambda: worker.refresh().status == Worker.Status.IDLE, what="the worker to be idle")

    # 3. The worker takes the next task and completes it.
    simulator.set_faults(step_time=None)
    following = farm.submit()
    wait_until(lambda: all_finished([following]), timeout=30, what="the next task to finish")
    assert_completed_once(following, farm.media_root, attempts=[Outcome.COMPLETED])
    assert TaskAttempt.objects.get(task=following).worker_id == worker.row.pk

    for task in (queued, running):
        task.refresh_from_db()
        assert task.status == Task.Status.CANCELLED
        assert outcomes(task) == [Outcome.CANCELLED]
        assert not Image.objects.filter(task=task).exists()
    assert worker.refresh().status == Worker.Status.IDLE
