"""run_task with in-memory fakes of ComfyUI and the scheduler: every failure class and its report."""

from __future__ import annotations

import logging
import threading

import pytest

from tests.daemon.fakes import FakeComfy, FakeScheduler, make_lease, wait_until
from workers_app.daemon.comfyui import ComfyUIError
from workers_app.daemon.prompt_tracker import ImageRef, OutcomeStatus, PromptOutcome
from workers_app.daemon.runner import RunnerSettings, StopReason, TaskControl, TaskResult, run_task
from workers_app.daemon.scheduler import LeaseLost, SchedulerError, SchedulerUnavailable


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def rsettings(sleeps):
    return RunnerSettings(sleep=sleeps.append, progress_interval=0.0)


def run(comfy, scheduler, rsettings, lease=None, control=None):
    lease = lease or make_lease()
    return run_task(lease, comfy=comfy, scheduler=scheduler, control=control, settings=rsettings)


def run_until(reported, comfy, scheduler, rsettings, lease=None):
    """Run a task whose prompt (in a FakeComfy without auto_finish) ends once `reported()` holds: start and
    progress reports go out on their own thread while ComfyUI runs, and those not sent when the prompt has
    ended are dropped."""
    results = []
    thread = threading.Thread(target=lambda: results.append(run(comfy, scheduler, rsettings, lease)))
    thread.start()
    assert wait_until(reported)
    comfy.finish("p1")
    thread.join(5)
    return results[0]


def reported(sched, name, *values):
    """The last report `name` sent carried `values` (progress: value, max), or any when none are given."""

    def check():
        calls = sched.calls_of(name)
        return bool(calls) and (not values or (calls[-1]["value"], calls[-1]["max"]) == values)

    return check


def error_outcome(pid: str, exception_type: str, message: str) -> PromptOutcome:
    return PromptOutcome(
        OutcomeStatus.ERROR, pid, node_id="3", node_type="KSampler", exception_type=exception_type,
        exception_message=message,
    )  # fmt: skip


def test_success_reports_start_progress_and_uploads_every_image(rsettings, caplog):
    caplog.set_level(logging.INFO, logger="workers_app.daemon")
    comfy = FakeComfy(auto_finish=False, progress=((1, 4), (2, 4), (3, 4), (4, 4)))
    comfy.outcome_for = lambda pid: PromptOutcome(
        OutcomeStatus.SUCCESS,
        pid,
        (ImageRef("a_00001_.png", "t2i", node_id="9"), ImageRef("a_00002_.png", "t2i", node_id="12")),
    )
    sched = FakeScheduler()
    assert run_until(reported(sched, "progress", 4, 4), comfy, sched, rsettings) is TaskResult.COMPLETED
    names = sched.names()
    assert names[0] == "start" and names[-1] == "complete" and set(names[1:-1]) == {"progress"}
    steps = [c["value"] for c in sched.calls_of("progress")]
    assert (
        steps == sorted(set(steps)) and steps[-1] == 4
    )  # in order; one not yet sent gives way to a newer one
    assert sched.calls_of("start")[0]["prompt_id"] == "p1"
    (complete,) = sched.calls_of("complete")
    assert [(name, node) for name, _, node in complete["images"]] == [
        ("a_00001_.png", "9"),
        ("a_00002_.png", "12"),
    ]
    assert all(content.startswith(b"\x89PNG") for _, content, _ in complete["images"])
    assert comfy.viewed == ["a_00001_.png", "a_00002_.png"]
    text = caplog.text
    for line in (
        "leased",
        "started",
        "progress 25%",
        "progress 50%",
        "progress 75%",
        "progress 100%",
        "completed in",
    ):
        assert line in text
    assert make_lease().task_id in text


def test_progress_is_throttled(sleeps):
    comfy = FakeComfy(auto_finish=False, progress=tuple((v, 100) for v in range(1, 101)))
    sched = FakeScheduler()
    run_until(
        reported(sched, "start"), comfy, sched, RunnerSettings(sleep=sleeps.append, progress_interval=60)
    )
    # The start report counts as the first one, so within the interval no step is reported (not even the
    # last: the completion shows 100 %).
    assert sched.calls_of("progress") == []
    assert "start" in sched.names() and "complete" in sched.names()


def test_progress_is_reported_once_the_interval_has_passed(sleeps):
    """With no interval every step passes the throttle; while the start report is on its way they queue
    behind it, each replacing the one before (a slow scheduler never builds a backlog)."""
    answer, stepped = threading.Event(), threading.Event()

    class SlowStart(FakeScheduler):
        def start(self, *args, **kwargs) -> bool:
            answer.wait(5)
            return super().start(*args, **kwargs)

    class Steps(FakeComfy):
        def wait(self, prompt_id, *, on_progress=None, **kwargs):
            def step(value, maximum):
                on_progress(value, maximum)
                if value == maximum:
                    stepped.set()

            return super().wait(prompt_id, on_progress=step, **kwargs)

    comfy = Steps(auto_finish=False, progress=tuple((v, 100) for v in range(1, 101)))
    sched = SlowStart()
    results = []
    settings = RunnerSettings(sleep=sleeps.append, progress_interval=0)
    thread = threading.Thread(target=lambda: results.append(run(comfy, sched, settings)))
    thread.start()
    assert stepped.wait(5)
    answer.set()
    assert wait_until(reported(sched, "progress", 100, 100))
    comfy.finish("p1")
    thread.join(5)
    assert results == [TaskResult.COMPLETED]
    assert sched.names() == ["start", "progress", "complete"]


def test_upload_is_retried_on_transient_failure(rsettings, sleeps):
    sched = FakeScheduler()
    sched.errors["complete"] = [SchedulerUnavailable("down"), SchedulerUnavailable("502")]
    assert run(FakeComfy(), sched, rsettings) is TaskResult.COMPLETED
    assert len(sched.calls_of("complete")) == 3
    assert sleeps == [0.5, 1.0]
    assert "fail" not in sched.names()


def test_upload_that_keeps_failing_is_reported_as_upload_failed(rsettings, sleeps):
    sched = FakeScheduler()
    sched.errors["complete"] = [SchedulerUnavailable("down")] * 5
    assert run(FakeComfy(), sched, rsettings) is TaskResult.FAILED
    assert len(sched.calls_of("complete")) == 5
    (fail,) = sched.calls_of("fail")
    assert (fail["code"], fail["retryable"]) == ("upload_failed", True)
    assert sleeps[:4] == [0.5, 1.0, 2.0, 4.0]


def test_images_refused_by_the_scheduler_fail_without_retry(rsettings):
    sched = FakeScheduler()
    sched.errors["complete"] = [SchedulerError("bad size", code="invalid", status=400)]
    assert run(FakeComfy(), sched, rsettings) is TaskResult.FAILED
    assert len(sched.calls_of("complete")) == 1
    assert sched.calls_of("fail")[0]["code"] == "upload_failed"


def test_view_is_retried_and_completion_is_never_reported_without_the_images(rsettings):
    comfy = FakeComfy()
    comfy.view_errors = [
        ComfyUIError("reset", retryable=True, code="unreachable"),
        ComfyUIError("gone", retryable=False, code="not_found"),
    ]
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    assert len(comfy.viewed) == 2
    assert "complete" not in sched.names()
    (fail,) = sched.calls_of("fail")
    assert (fail["code"], fail["retryable"]) == ("comfyui_lost", True)


def test_success_without_any_saved_image_is_a_workflow_error(rsettings):
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: PromptOutcome(OutcomeStatus.SUCCESS, pid, ())
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    assert "complete" not in sched.names()
    assert sched.calls_of("fail")[0]["code"] == "workflow_invalid"


def test_lease_lost_on_complete_stops_quietly(rsettings):
    sched = FakeScheduler()
    sched.errors["complete"] = [LeaseLost("stale", code="lease_lost", status=409)]
    assert (
        run_until(reported(sched, "start"), FakeComfy(auto_finish=False), sched, rsettings) is TaskResult.LOST
    )
    assert sched.names() == ["start", "complete"]


def test_lease_lost_on_progress_cancels_the_prompt_and_reports_nothing(rsettings):
    comfy = FakeComfy(auto_finish=False, progress=((1, 10),))
    sched = FakeScheduler()
    sched.errors["progress"] = [LeaseLost("stale", code="lease_lost", status=409)]
    assert run(comfy, sched, rsettings) is TaskResult.LOST
    assert comfy.cancelled == ["p1"]
    assert sched.names() == ["start", "progress"]


def test_cancel_from_start_reply_interrupts_and_drops(rsettings):
    comfy = FakeComfy(auto_finish=False)
    sched = FakeScheduler()
    sched.start_cancel = True
    assert run(comfy, sched, rsettings) is TaskResult.CANCELLED
    assert comfy.cancelled == ["p1"]
    assert sched.names() == ["start"]


def test_cancel_while_pending_in_comfyui_dequeues_it_and_reports_nothing(rsettings):
    comfy = FakeComfy(auto_finish=False)
    comfy.submit({})  # p1 runs ahead, so ours (p2) waits in ComfyUI's queue
    lease = make_lease()
    control = TaskControl(lease)
    sched = FakeScheduler()
    results = []
    thread = threading.Thread(target=lambda: results.append(run(comfy, sched, rsettings, lease, control)))
    thread.start()
    assert wait_until(lambda: control.prompt_id == "p2")
    control.request_stop(StopReason.CANCEL)
    thread.join(5)
    assert results == [TaskResult.CANCELLED]
    assert comfy.cancelled == ["p2"] and comfy.started == []
    assert sched.names() == []


def test_cancel_before_submission_never_reaches_comfyui(rsettings):
    comfy = FakeComfy()
    control = TaskControl(make_lease())
    control.request_stop(StopReason.CANCEL)
    assert run(comfy, FakeScheduler(), rsettings, control=control) is TaskResult.CANCELLED
    assert comfy.submitted == []


def test_workflow_invalid_is_not_retryable(rsettings):
    comfy = FakeComfy()
    comfy.submit_errors = [
        ComfyUIError("KSampler (node 3) input 'steps': too big", retryable=False, code="workflow_invalid",
                     details={"node_id": "3", "node_type": "KSampler", "input": "steps"})
    ]  # fmt: skip
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    (fail,) = sched.calls_of("fail")
    assert (fail["code"], fail["retryable"]) == ("workflow_invalid", False)
    assert fail["details"]["input"] == "steps"


@pytest.mark.parametrize(
    "exception_type,message,retryable",
    [
        ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("Exception", "Allocation on device 0 would exceed allowed memory. (out of memory)", True),
        ("Exception", "**** ERROR: Saving image outside the output folder is not allowed.", False),
        ("ValueError", "bad value", False),
    ],
)
def test_execution_error_is_retryable_only_for_out_of_memory(rsettings, exception_type, message, retryable):
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: error_outcome(pid, exception_type, message)
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    (fail,) = sched.calls_of("fail")
    assert (fail["code"], fail["retryable"]) == ("execution_error", retryable)
    assert fail["details"]["node_type"] == "KSampler" and fail["details"]["exception_type"] == exception_type


def test_lost_prompt_is_retryable(rsettings):
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: PromptOutcome(OutcomeStatus.LOST, pid, exception_message="gone")
    sched = FakeScheduler()
    control = TaskControl(make_lease())
    assert run(comfy, sched, rsettings, control=control) is TaskResult.FAILED
    assert (sched.calls_of("fail")[0]["code"], sched.calls_of("fail")[0]["retryable"]) == (
        "comfyui_lost",
        True,
    )
    assert control.failure_code == "comfyui_lost"


def test_interrupt_that_we_did_not_ask_for_is_reported_not_retried(rsettings):
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: PromptOutcome(
        OutcomeStatus.INTERRUPTED, pid, node_id="11", node_type="Blur"
    )
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    assert (sched.calls_of("fail")[0]["code"], sched.calls_of("fail")[0]["retryable"]) == (
        "execution_error",
        False,
    )


def test_comfyui_down_at_submit_hands_the_task_back(rsettings):
    comfy = FakeComfy()
    comfy.submit_errors = [ComfyUIError("refused", retryable=True, code="unreachable")]
    sched = FakeScheduler()
    control = TaskControl(make_lease())
    assert run(comfy, sched, rsettings, control=control) is TaskResult.RELEASED
    assert sched.calls_of("release")[0]["reason"] == "comfyui_unavailable"
    assert control.failure_code == "comfyui_unavailable"


def test_wait_timeout_cancels_and_fails_retryable(rsettings):
    comfy = FakeComfy()
    comfy.wait_error = ComfyUIError("slow", retryable=True, code="wait_timeout")
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    assert comfy.cancelled == ["p1"]
    assert (sched.calls_of("fail")[0]["code"], sched.calls_of("fail")[0]["retryable"]) == (
        "execution_error",
        True,
    )


def test_shutdown_release_after_success_still_delivers(rsettings):
    comfy = FakeComfy(auto_finish=False)
    lease = make_lease()
    control = TaskControl(lease)
    sched = FakeScheduler()
    comfy.outcome_for = lambda pid: FakeComfy.success(pid)

    def wait_then_release(pid, **kwargs):
        control.request_stop(StopReason.RELEASE)  # arrives after ComfyUI already finished
        return FakeComfy.success(pid)

    comfy.wait = wait_then_release
    assert run(comfy, sched, rsettings, lease, control) is TaskResult.COMPLETED
    assert "release" not in sched.names()


def test_unexpected_errors_are_caught_and_reported_as_internal(rsettings):
    comfy = FakeComfy()
    comfy.wait = lambda pid, **kw: 1 / 0
    sched = FakeScheduler()
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    (fail,) = sched.calls_of("fail")
    assert fail["code"] == "internal" and "ZeroDivisionError" in fail["message"]


def test_a_failure_report_is_retried_while_the_scheduler_is_down(rsettings, sleeps):
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: error_outcome(pid, "ValueError", "bad")
    sched = FakeScheduler()
    sched.errors["fail"] = [SchedulerUnavailable("down")]
    assert run(comfy, sched, rsettings) is TaskResult.FAILED
    assert len(sched.calls_of("fail")) == 2 and sleeps == [0.5]


def test_neither_following_comfyui_nor_the_completion_waits_for_a_report_on_its_way(rsettings, caplog):
    caplog.set_level(logging.INFO, logger="workers_app.daemon")
    on_its_way, answer = threading.Event(), threading.Event()

    class SlowStart(FakeScheduler):
        def start(self, *args, **kwargs) -> bool:
            on_its_way.set()
            answer.wait(5)
            super().start(*args, **kwargs)
            raise LeaseLost("finished meanwhile", code="lease_lost", status=409)  # as an older scheduler says

    sched = SlowStart()
    control = TaskControl(make_lease())
    comfy = FakeComfy(auto_finish=False, progress=((1, 2),))
    results = []
    thread = threading.Thread(target=lambda: results.append(run(comfy, sched, rsettings, control=control)))
    thread.start()
    assert on_its_way.wait(5)
    comfy.finish("p1")  # the prompt ends while the start report is on its way
    thread.join(5)
    assert results == [TaskResult.COMPLETED]
    assert sched.names() == ["complete"]  # and the progress report queued behind the start was dropped
    answer.set()
    assert wait_until(lambda: not any(t.name.startswith("reports-") for t in threading.enumerate()))
    assert sched.names() == ["complete", "start"]
    assert control.stop_reason is None and "lost" not in caplog.text


INPUTS = [{"sha256": "ab" * 32, "name": f"{'ab' * 32}.png", "subfolder": "t2i_inputs"}]


def test_inputs_are_fetched_and_uploaded_before_the_prompt(rsettings):
    comfy, sched = FakeComfy(), FakeScheduler()
    assert run(comfy, sched, rsettings, make_lease(inputs=INPUTS)) is TaskResult.COMPLETED
    assert sched.calls_of("input_image") == [
        {"task_id": make_lease().task_id, "lease_token": "lease-token-1", "sha256": "ab" * 32}
    ]
    assert comfy.uploaded == [("t2i_inputs", f"{'ab' * 32}.png", f"bytes of {'ab' * 32}".encode(), 0)]


def test_a_lost_lease_while_fetching_inputs_drops_the_task(rsettings):
    comfy, sched = FakeComfy(), FakeScheduler()
    sched.errors["input_image"] = [LeaseLost("gone", code="lease_lost", status=409)]
    assert run(comfy, sched, rsettings, make_lease(inputs=INPUTS)) is TaskResult.LOST
    assert comfy.submitted == [] and not sched.calls_of("fail")


def test_comfyui_down_while_uploading_an_input_hands_the_task_back(rsettings):
    comfy, sched = FakeComfy(), FakeScheduler()
    comfy.upload_errors = [ComfyUIError("down", retryable=True, code="unreachable")]
    assert run(comfy, sched, rsettings, make_lease(inputs=INPUTS)) is TaskResult.RELEASED
    assert comfy.submitted == [] and sched.calls_of("release")
