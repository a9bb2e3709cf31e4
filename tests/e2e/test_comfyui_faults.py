"""ComfyUI misbehaving under a live farm: dropped sockets, late history, node errors, a restart mid-job."""

import pytest

from generation.models import Image, Task, TaskAttempt
from tests.e2e.helpers import (
    all_finished,
    assert_completed_once,
    outcomes,
    recorded_logs,
    sha256_of,
    wait_until,
)

pytestmark = pytest.mark.e2e

Outcome = TaskAttempt.Outcome


def _prompt_of(task: Task) -> str:
    return (
        TaskAttempt.objects.filter(task=task)
        .order_by("number")
        .values_list("comfyui_prompt_id", flat=True)[0]
    )


def test_websocket_dropped_mid_job_the_task_still_completes(farm):
    simulator = farm.simulator(job_time=0.6, ws_drop_rate=1.0)  # every prompt loses every socket halfway
    worker = farm.worker(simulator, prefetch=1)
    farm.wait_registered(worker)
    with recorded_logs("workers_app.simulator", "workers_app.daemon") as logs:
        tasks = farm.submit_many(2)
        wait_until(lambda: all_finished(tasks), timeout=40, what="the tasks to finish")

    for task in tasks:
        image = assert_completed_once(task, farm.media_root, attempts=[Outcome.COMPLETED])
        [saved] = farm.comfyui_outputs(task)
        assert sha256_of(saved) == image.sha256
    # The fault really cut the first task's socket mid-run (the simulator says how many it dropped for
    # which prompt), and the worker noticed and fell back to polling.
    dropped = {r.args[1]: r.args[0] for r in logs if r.msg.startswith("[comfyui-simulator] fault: drop")}
    assert dropped.get(_prompt_of(tasks[0]), 0) >= 1, dropped
    assert any("falling back to polling" in r.getMessage() for r in logs), [r.getMessage() for r in logs]


def test_history_written_late_after_execution_success_the_task_still_gets_its_image(farm):
    # ComfyUI announces success, then takes 2.5 s to write the history entry the images are read from.
    simulator = farm.simulator(job_time=0.2, history_delay=2.5)
    worker = farm.worker(simulator)
    farm.wait_registered(worker)
    task = farm.submit()

    wait_until(lambda: all_finished([task]), timeout=30, what="the task to finish")

    image = assert_completed_once(task, farm.media_root, attempts=[Outcome.COMPLETED])
    [saved] = farm.comfyui_outputs(task)
    assert sha256_of(saved) == image.sha256
    prompt_id = _prompt_of(task)
    assert simulator.call(lambda sim: sim.history[prompt_id]["status"]["status_str"]) == "success"


def test_node_errors_fail_the_task_and_only_out_of_memory_is_retried(farm):
    simulator = farm.simulator(error_rate=1.0, error_kind="exception")
    worker = farm.worker(simulator)
    farm.wait_registered(worker)

    broken = farm.submit()
    wait_until(lambda: all_finished([broken]), timeout=30, what="the failing task to finish")
    broken.refresh_from_db()
    assert broken.status == Task.Status.FAILED
    assert broken.error_code == "execution_error"
    assert "KSampler" in broken.error_message and "Simulated node failure" in broken.error_message
    assert outcomes(broken) == [Outcome.FAILED]  # not retried: the same graph would fail the same way
    assert broken.attempts == 1 and not Image.objects.filter(task=broken).exists()

    simulator.set_faults(error_kind="oom")
    oom = farm.submit()
    wait_until(lambda: all_finished([oom]), timeout=40, what="the out-of-memory task to finish")
    oom.refresh_from_db()
    assert oom.status == Task.Status.FAILED and oom.error_code == "execution_error"
    assert "out of memory" in oom.error_message
    assert outcomes(oom) == [Outcome.FAILED] * oom.max_attempts == [Outcome.FAILED] * 3
    assert oom.attempts == 3 and not Image.objects.filter(task=oom).exists()
    assert worker.refresh().tasks_failed == 1 + 3


def test_comfyui_restart_mid_job_the_task_is_retried_and_completes_once(farm):
    simulator = farm.simulator(job_time=4.0)
    worker = farm.worker(simulator, prefetch=1)
    farm.wait_registered(worker)
    task = farm.submit()
    wait_until(
        lambda: Task.objects.filter(pk=task.pk, status=Task.Status.RUNNING).exists(),
        timeout=20,
        what="the task to run in ComfyUI",
    )

    simulator.restart(downtime=0.5)  # queue and history gone, connections refused for half a second
    simulator.set_faults(job_time=0.2)

    wait_until(lambda: all_finished([task]), timeout=40, what="the task to finish")
    assert_completed_once(task, farm.media_root, attempts=[Outcome.FAILED, Outcome.COMPLETED])
    lost = TaskAttempt.objects.get(task=task, number=1)
    assert lost.error_code == "comfyui_lost"
    task.refresh_from_db()
    assert task.attempts == 2  # the lost run counted against max_attempts
