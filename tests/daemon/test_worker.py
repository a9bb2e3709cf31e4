"""WorkerLoop with in-memory fakes: prefetch, heartbeats (cancel/lost), start-up, shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from tests.daemon.fakes import FakeComfy, FakeScheduler, make_lease, wait_until
from workers_app.daemon import worker as worker_module
from workers_app.daemon.comfyui import ComfyUIError
from workers_app.daemon.runner import RunnerSettings, TaskControl
from workers_app.daemon.scheduler import (
    AuthError,
    ProtocolUnsupported,
    RegisterRequired,
    SchedulerUnavailable,
)
from workers_app.daemon.worker import WorkerLoop, WorkerLoopConfig
from workers_app.management.commands.runworker import stop_on_signals


def make_worker(comfy: FakeComfy, sched: FakeScheduler, **overrides) -> WorkerLoop:
    settings = {
        "grace": 0.2,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "lease_wait": 0,
        "prefetch_lease_wait": 0,
        "prefetch_lead": 0,  # the task behind the running one is asked for at once (its own tests set it)
        "interrupt_wait": 2,
        "abandoned_lease_wait": 0.05,
        **overrides,
    }
    config = WorkerLoopConfig(
        scheduler_url="http://scheduler.test",
        token="tok",
        comfyui_url="http://comfy.test",
        name="w1",
        **settings,
    )
    return WorkerLoop(
        config, comfy=comfy, scheduler=sched, runner_settings=RunnerSettings(sleep=lambda s: None)
    )


@contextmanager
def running(worker: WorkerLoop):
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    try:
        yield codes
    finally:
        worker.request_stop()
        thread.join(10)
        assert not thread.is_alive()


def test_prefetch_submits_the_next_task_while_one_runs():
    comfy = FakeComfy(auto_finish=False)
    sched = FakeScheduler([make_lease(1), make_lease(2)])
    worker = make_worker(comfy, sched)
    with running(worker) as codes:
        assert wait_until(lambda: len(comfy.submitted) == 2)
        assert comfy.started == ["p1"]  # the second waits in ComfyUI's own queue
        leases = sched.calls_of("lease")
        assert leases[0]["prefetch"] is False and leases[1]["prefetch"] is True
        assert sched.calls_of("register")[0]["prefetch"] == 2
        comfy.finish("p1")
        assert wait_until(lambda: comfy.started == ["p1", "p2"])
        assert wait_until(lambda: len(sched.calls_of("complete")) == 1)  # else p2's report may overtake it
        comfy.finish("p2")
        assert wait_until(lambda: len(sched.calls_of("complete")) == 2)
    assert codes == [0]
    assert [c["task_id"] for c in sched.calls_of("complete")] == [
        make_lease(1).task_id,
        make_lease(2).task_id,
    ]
    assert sched.names()[-1] == "offline" and comfy.closed


def test_never_holds_more_than_prefetch_tasks():
    comfy = FakeComfy(auto_finish=False)
    sched = FakeScheduler([make_lease(n) for n in range(1, 5)])
    with running(make_worker(comfy, sched, prefetch=2)):
        assert wait_until(lambda: len(comfy.submitted) == 2)
        assert not wait_until(lambda: len(comfy.submitted) > 2, timeout=0.3)
        comfy.finish("p1")
        assert wait_until(lambda: len(comfy.submitted) == 3)
        assert not wait_until(lambda: len(comfy.submitted) > 3, timeout=0.3)


def test_a_completion_brings_the_next_task_without_a_lease_call():
    comfy = FakeComfy()
    sched = FakeScheduler([make_lease(n) for n in range(1, 4)])
    with running(make_worker(comfy, sched, prefetch=1)):
        assert wait_until(lambda: len(sched.calls_of("complete")) == 3)
        assert wait_until(lambda: sched.names().count("lease") == 2)  # (else the stop may come first)
    assert [p for p, _ in comfy.submitted] == ["p1", "p2", "p3"]
    assert [c["lease_next"] for c in sched.calls_of("complete")] == [False, False, False]  # nothing else held
    assert sched.names().count("lease") == 2  # the first task, and after the third (nothing was left)


def test_a_lease_carried_while_stopping_is_handed_back():
    comfy = FakeComfy()
    sched = FakeScheduler([make_lease(1), make_lease(2)])
    worker = make_worker(comfy, sched, prefetch=1)
    complete = sched.complete

    def complete_then_stop(*args, **kwargs):
        answer = complete(*args, **kwargs)
        worker.request_stop()  # arrives while the answer, carrying task 2, is on its way
        return answer

    sched.complete = complete_then_stop
    with running(worker):
        assert wait_until(lambda: sched.calls_of("release"))
    assert sched.calls_of("release") == [{"task_id": make_lease(2).task_id, "reason": "shutdown"}]
    assert [p for p, _ in comfy.submitted] == ["p1"]


def test_a_full_worker_leases_again_as_soon_as_a_slot_frees(monkeypatch):
    """The loop wakes when a prompt reaches ComfyUI or a task ends, not on its next poll: with a poll
    this slow, the deadlines below would pass (and ComfyUI's queue would run dry between jobs)."""
    monkeypatch.setattr(worker_module, "SLICE", 5.0)
    comfy = FakeComfy(auto_finish=False)
    sched = FakeScheduler([make_lease(n) for n in range(1, 4)])
    with running(make_worker(comfy, sched, prefetch=2)):
        assert wait_until(lambda: len(comfy.submitted) == 2, timeout=2)
        comfy.finish("p1")
        assert wait_until(lambda: len(comfy.submitted) == 3, timeout=2)
        comfy.finish("p2")
        comfy.finish("p3")
        assert wait_until(lambda: len(sched.calls_of("complete")) == 3)


def test_heartbeat_carries_leases_and_cancel_interrupts_the_running_task():
    comfy = FakeComfy(auto_finish=False)
    lease = make_lease(1)
    sched = FakeScheduler([lease])
    with running(make_worker(comfy, sched)):
        assert wait_until(lambda: comfy.started == ["p1"])
        assert wait_until(
            lambda: [(lease.task_id, lease.lease_token)] in [c["leases"] for c in sched.calls_of("heartbeat")]
        )
        sched.cancel_ids.add(lease.task_id)
        assert wait_until(lambda: comfy.cancelled == ["p1"])
        assert wait_until(lambda: not comfy.queue)
    assert not {"complete", "fail", "release"} & set(sched.names())


def test_heartbeat_lost_drops_the_task_without_reporting():
    comfy = FakeComfy(auto_finish=False)
    lease = make_lease(1)
    sched = FakeScheduler([lease])
    sched.lost_ids.add(lease.task_id)
    with running(make_worker(comfy, sched)):
        assert wait_until(lambda: comfy.cancelled == ["p1"])
    assert not {"complete", "fail", "release"} & set(sched.names())


def test_a_heartbeat_that_finds_the_lease_closed_by_its_completion_does_not_call_it_lost(caplog):
    """The race behind `lease lost (heartbeat)` followed by `completed` for one task: the beat listed the
    task, its completion landed, and then the scheduler read the beat and answered `lost`."""
    caplog.set_level(logging.DEBUG, logger="workers_app.daemon")
    lease = make_lease(1)

    class CompletionBeforeTheBeat(FakeScheduler):
        def complete(self, task_id: str, *args, **kwargs) -> dict:
            answer = super().complete(task_id, *args, **kwargs)
            self.lost_ids.add(task_id)  # the completion closed the lease...
            worker.heartbeat()  # ...before the scheduler read a beat that still lists it
            return answer

    sched = CompletionBeforeTheBeat([lease], heartbeat_interval=60)
    worker = make_worker(FakeComfy(), sched, once=True)
    assert worker.run() == 0
    assert [call["leases"] for call in sched.calls_of("heartbeat")] == [[(lease.task_id, lease.lease_token)]]
    assert len(sched.calls_of("complete")) == 1
    assert "lease lost" not in caplog.text and "dropped" not in caplog.text
    assert f"task {lease.task_id} completed" in caplog.text
    assert "heartbeat found the lease closed by its final report" in caplog.text


def test_sigterm_releases_the_prefetched_task_and_after_the_grace_the_running_one():
    comfy = FakeComfy(auto_finish=False)  # p1 never finishes by itself
    sched = FakeScheduler([make_lease(1), make_lease(2)])
    worker = make_worker(comfy, sched, grace=0.3)

    def send_sigterm_when_busy():
        if wait_until(lambda: comfy.started == ["p1"] and len(comfy.submitted) == 2):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm_when_busy, daemon=True).start()
    with stop_on_signals(worker):
        code = worker.run()
    assert code == 0 and worker.stop_requested
    releases = sched.calls_of("release")
    assert [r["task_id"] for r in releases] == [make_lease(2).task_id, make_lease(1).task_id]
    assert {r["reason"] for r in releases} == {"shutdown"}
    assert comfy.cancelled == ["p2", "p1"]  # dequeued the prefetched one first, interrupted the other later
    assert sched.names()[-1] == "offline"
    assert not {"complete", "fail"} & set(sched.names())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_shutdown_lets_the_running_task_finish_within_the_grace():
    comfy = FakeComfy(auto_finish=False)
    sched = FakeScheduler([make_lease(1)])
    worker = make_worker(comfy, sched, grace=5)
    with running(worker) as codes:
        assert wait_until(lambda: comfy.started == ["p1"])
        worker.request_stop()
        threading.Timer(0.1, comfy.finish, args=("p1",)).start()
    assert codes == [0]
    assert sched.calls_of("complete") and not sched.calls_of("release")


def test_comfyui_down_at_start_up_is_retried_with_backoff(caplog):
    caplog.set_level(logging.INFO, logger="workers_app.daemon")
    comfy = FakeComfy()
    comfy.health_errors = [ComfyUIError("refused", retryable=True, code="unreachable")] * 3
    sched = FakeScheduler()
    with running(make_worker(comfy, sched)):
        assert wait_until(lambda: sched.calls_of("register"))
    assert not comfy.health_errors
    assert (
        caplog.text.count("ComfyUI not available") == 3
        and "ComfyUI at http://comfy.test is up" in caplog.text
    )


def test_register_required_registers_again():
    comfy = FakeComfy()
    sched = FakeScheduler()
    sched.errors["lease"] = [RegisterRequired("again", code="register_required", status=409)]
    with running(make_worker(comfy, sched)):
        assert wait_until(lambda: len(sched.calls_of("register")) == 2)


def test_scheduler_outage_is_retried():
    comfy = FakeComfy()
    sched = FakeScheduler([make_lease(1)])
    sched.errors["lease"] = [SchedulerUnavailable("down")] * 3
    with running(make_worker(comfy, sched)):
        assert wait_until(lambda: sched.calls_of("complete"))
    assert len(sched.calls_of("lease")) >= 4


def test_bad_token_stops_with_exit_code_1():
    sched = FakeScheduler()
    sched.errors["register"] = [AuthError("401", code="authentication_failed", status=401)]
    worker = make_worker(FakeComfy(), sched)
    assert worker.run() == 1
    assert "token" in worker.fatal_error and "offline" not in sched.names()


def test_once_runs_one_task_then_exits():
    comfy = FakeComfy()
    sched = FakeScheduler([make_lease(1), make_lease(2)])
    assert make_worker(comfy, sched, once=True).run() == 0
    assert len(sched.calls_of("complete")) == 1 and len(sched.calls_of("lease")) == 1
    assert sched.calls_of("register")[0]["prefetch"] == 1


def test_a_task_leased_while_stopping_is_released_at_once():
    comfy = FakeComfy()
    worker = None

    class StopDuringLease(FakeScheduler):
        def lease(self, **kwargs):
            worker.request_stop()
            return super().lease(**kwargs)

    sched = StopDuringLease([make_lease(1)])
    worker = make_worker(comfy, sched)
    assert worker.run() == 0
    assert [r["task_id"] for r in sched.calls_of("release")] == [make_lease(1).task_id]
    assert comfy.submitted == []


def test_worker_config_repr_hides_the_token():
    assert "tok" not in repr(WorkerLoopConfig(scheduler_url="http://s", token="tok"))


# -- the idle long poll (protocol 2) ----------------------------------------------------------------------
def test_the_idle_long_poll_is_20_seconds_and_3_while_a_task_runs():
    config = WorkerLoopConfig(scheduler_url="http://s", token="t")
    assert (config.lease_wait, config.prefetch_lease_wait) == (20.0, 3.0)


def test_a_stop_during_an_idle_wait_ends_the_worker_without_waiting_for_the_answer():
    sched = FakeScheduler()
    sched.lease_gate.clear()  # the scheduler holds the request open, as a long poll does
    worker = make_worker(FakeComfy(), sched, lease_wait=20)
    with running(worker) as codes:
        assert wait_until(lambda: sched.open_leases == 1)
    assert codes == [0] and sched.open_leases == 1  # ended (and went offline) with the request still open
    assert sched.calls_of("lease") == [{"wait": 20, "prefetch": False, "warm_checkpoint": None}]
    assert sched.names()[-1] == "offline"
    sched.lease_gate.set()


def test_a_task_the_abandoned_wait_brings_after_the_stop_is_released():
    comfy = FakeComfy()
    sched = FakeScheduler([make_lease(1)])
    sched.lease_gate.clear()
    with running(make_worker(comfy, sched, lease_wait=20)) as codes:
        assert wait_until(lambda: sched.open_leases == 1)
    assert codes == [0] and "release" not in sched.names()
    sched.lease_gate.set()  # the answer comes after the worker ended, and it carries task 1
    assert wait_until(lambda: sched.calls_of("release"))
    assert sched.calls_of("release") == [{"task_id": make_lease(1).task_id, "reason": "shutdown"}]
    assert comfy.submitted == [] and not sched.calls_of("start")


def test_a_task_the_abandoned_wait_brings_during_shutdown_is_released_before_exit():
    class AnswersAtOffline(FakeScheduler):
        def offline(self) -> None:
            super().offline()
            self.lease_gate.set()  # the wait ends with a task leased just before the worker went offline

        def release(self, task_id: str, lease_token: str, *, reason: str = "shutdown") -> None:
            time.sleep(0.1)  # a slow answer: the worker must wait for it before it ends
            super().release(task_id, lease_token, reason=reason)

    comfy = FakeComfy()
    sched = AnswersAtOffline([make_lease(1)])
    sched.lease_gate.clear()
    worker = make_worker(comfy, sched, lease_wait=20, abandoned_lease_wait=5)

    def stop_during_the_wait() -> None:
        if wait_until(lambda: sched.open_leases == 1):
            worker.request_stop()

    threading.Thread(target=stop_during_the_wait, daemon=True).start()
    assert worker.run() == 0
    assert sched.names()[-2:] == ["offline", "release"]  # as run() returns: released before the exit
    assert comfy.submitted == []


def test_no_heartbeat_while_idle_with_a_lease_request_open():
    sched = FakeScheduler(heartbeat_interval=0.01)
    sched.lease_gate.clear()
    worker = make_worker(FakeComfy(), sched, lease_wait=20)
    with running(worker):
        assert wait_until(lambda: sched.open_leases == 1)
        assert wait_until(worker.waiting_counts_as_heartbeat)
        beats = len(sched.calls_of("heartbeat"))
        time.sleep(0.2)  # twenty heartbeat intervals
        assert len(sched.calls_of("heartbeat")) <= beats + 1  # (one may have been on its way)
        sched.lease_gate.set()  # nothing to do: between requests the worker beats again
        assert wait_until(lambda: len(sched.calls_of("heartbeat")) >= beats + 3)


def test_heartbeats_go_on_during_a_lease_request_while_holding_a_task():
    comfy = FakeComfy(auto_finish=False)
    lease = make_lease(1)
    sched = FakeScheduler([lease])
    worker = make_worker(comfy, sched, prefetch_lease_wait=20)
    with running(worker):
        assert wait_until(lambda: comfy.started == ["p1"])
        sched.lease_gate.clear()
        assert wait_until(lambda: sched.open_leases == 1)  # the prefetch request, open
        beats = len(sched.calls_of("heartbeat"))
        assert wait_until(lambda: len(sched.calls_of("heartbeat")) >= beats + 3)
        assert sched.calls_of("heartbeat")[-1]["leases"] == [(lease.task_id, lease.lease_token)]
        assert not worker.waiting_counts_as_heartbeat()
    sched.lease_gate.set()


def test_heartbeats_go_on_when_no_lease_request_is_open():
    sched = FakeScheduler()
    sched.errors["lease"] = [SchedulerUnavailable("down")] * 1000  # each ends at once; backoff between
    with running(make_worker(FakeComfy(), sched, backoff_initial=0.2, backoff_max=0.2)):
        assert wait_until(lambda: len(sched.calls_of("heartbeat")) >= 3)


@pytest.mark.parametrize(
    "protocol,wait",
    [
        (None, 20),  # no T2I-Protocol header: the scheduler does not count the wait as a heartbeat
        (2, 0),  # a request that asks not to wait never enters the scheduler's waiting room
    ],
)
def test_heartbeats_go_on_during_a_lease_request_the_scheduler_does_not_count(protocol, wait):
    sched = FakeScheduler()
    sched.server_protocol = protocol
    sched.lease_gate.clear()
    worker = make_worker(FakeComfy(), sched, lease_wait=wait)
    with running(worker):
        assert wait_until(lambda: sched.open_leases == 1)
        beats = len(sched.calls_of("heartbeat"))
        assert wait_until(lambda: len(sched.calls_of("heartbeat")) >= beats + 3)
        assert sched.open_leases == 1
    sched.lease_gate.set()


# -- the protocol version ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["register", "lease", "heartbeat"])
def test_a_scheduler_refusing_the_protocol_stops_the_worker(call):
    words = "scheduler speaks protocol 3; this daemon needs 2 — upgrade this worker first"
    sched = FakeScheduler()
    sched.errors[call] = [ProtocolUnsupported(words, code="protocol_unsupported", status=400)]
    worker = make_worker(FakeComfy(), sched, backoff_initial=0.2, backoff_max=0.2)
    assert worker.run() == 1
    assert worker.fatal_error == words
    assert len(sched.calls_of("register")) == 1 and "offline" not in sched.names()


@pytest.mark.parametrize(
    "version,words", [(2, "scheduler protocol 2)"), (None, "scheduler protocol 1 (no version header)")]
)
def test_register_logs_the_scheduler_protocol_once(caplog, version, words):
    caplog.set_level(logging.INFO, logger="workers_app.daemon")
    sched = FakeScheduler()
    sched.server_protocol = version
    assert make_worker(FakeComfy(), sched, once=True).run() == 0
    assert caplog.text.count("scheduler protocol") == 1 and words in caplog.text


# -- empty lease answers ----------------------------------------------------------------------------------
class FakeClock:
    """Stands in for the worker module's `time`: sleeping only moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    "held,pause",
    [
        (16.5, None),  # a 20 s wait the scheduler ended early (it spreads the ends of long waits)
        (20.0, None),  # a whole wait
        (0.01, 1.0),  # answered at once: a scheduler that does not long-poll
    ],
)
def test_an_empty_lease_answer_pauses_the_loop_only_when_it_came_at_once(monkeypatch, held, pause):
    clock = FakeClock()
    monkeypatch.setattr(worker_module, "time", clock)

    class Holds(FakeScheduler):
        def lease(self, **kwargs):
            clock.now += held
            return super().lease(**kwargs)

    worker = make_worker(FakeComfy(), Holds(), lease_wait=20)
    pauses: list[float] = []
    monkeypatch.setattr(worker, "_sleep", lambda seconds: pauses.append(seconds) or True)
    assert worker.step() is False  # registers, asks, gets nothing
    assert pauses == ([] if pause is None else [pytest.approx(pause)])


def test_leases_report_the_checkpoint_of_the_last_completed_task():
    comfy = FakeComfy()
    sched = FakeScheduler([make_lease(1, checkpoint="sdxl.safetensors")])
    warm = lambda: [call["warm_checkpoint"] for call in sched.calls_of("lease")]  # noqa: E731
    with running(make_worker(comfy, sched)):
        assert wait_until(lambda: "sdxl.safetensors" in warm())
    assert warm()[0] is None  # unknown at start, then its last task's once that completed
    first_warm = warm().index("sdxl.safetensors")
    assert len(sched.calls_of("complete")) == 1 and all(w is None for w in warm()[:first_warm])


def test_comfyui_coming_back_clears_the_warm_checkpoint():
    worker = make_worker(FakeComfy(), FakeScheduler())
    worker.warm_checkpoint, worker._registered, worker._comfy_ok = "sdxl.safetensors", True, False
    assert worker._check_comfyui()
    assert worker.warm_checkpoint == ""  # it was unreachable: a restart unloads every model
    worker.warm_checkpoint = "sd15.safetensors"
    assert worker._check_comfyui() and worker.warm_checkpoint == "sd15.safetensors"  # was up all along


# -- the task behind the running one is asked for just in time (prefetch_lead) ---------------------------
def test_the_pace_of_the_sampler_foresees_its_end():
    control = TaskControl(make_lease(1))
    control.note_start(now=100.0)
    assert control.time_left(now=100.0) is None
    control.note_progress(1, 20, now=101.0)
    assert control.time_left(now=101.0) is None  # one report: no pace yet
    control.note_progress(5, 20, now=103.0)  # 4 steps in 2 s: 15 to go, 7.5 s
    assert control.time_left(now=103.0) == pytest.approx(7.5)
    assert control.time_left(now=111.0) == 0.0
    control.note_progress(1, 10, now=112.0)  # the next sampler begins: no pace until it has one
    assert control.time_left(now=112.0) is None


@pytest.mark.parametrize(
    "reports,now,due",
    [
        ([], 100.5, False),  # started half a second ago, no pace yet
        ([], 102.5, True),  # no pace after the lead: ask (a prompt without a sampler)
        ([(1, 20, 100.5), (3, 20, 101.5)], 101.5, False),  # 8.5 s to go
        ([(1, 20, 100.5), (17, 20, 108.5)], 108.5, True),  # 1.5 s to go
    ],
)
def test_the_next_task_is_asked_for_when_the_running_one_ends_within_the_lead(reports, now, due):
    worker = make_worker(FakeComfy(), FakeScheduler(), prefetch_lead=2.0)
    control = TaskControl(make_lease(1))
    control.note_start(now=100.0)
    for value, maximum, at in reports:
        control.note_progress(value, maximum, now=at)
    assert worker._prefetch_due([control], now=now) is due
    assert worker._prefetch_due([], now=now) is True  # nothing held: always
    assert worker._prefetch_due([control, TaskControl(make_lease(2))], now=now) is True  # one queued already


def test_until_the_sampler_has_a_pace_the_end_is_the_one_the_scheduler_expects():
    control = TaskControl(make_lease(1, expected_seconds=6.0))
    assert control.time_left(now=100.0) is None  # not started in ComfyUI yet
    control.note_start(now=100.0)
    assert control.time_left(now=101.0) == pytest.approx(5.0)  # a model load: no sampler reports yet
    control.note_progress(1, 20, now=103.0)
    control.note_progress(11, 20, now=104.0)  # the sampler's pace: 10 steps a second, 0.9 s to go
    assert control.time_left(now=104.0) == pytest.approx(0.9)
    control.note_progress(1, 10, now=104.5)  # another sampler, no pace yet: the expected end again
    assert control.time_left(now=104.5) == pytest.approx(1.5)
    assert control.time_left(now=107.0) == 0.0  # later than expected: due


@pytest.mark.parametrize("now,due", [(100.5, False), (102.5, False), (106.5, False), (108.5, True)])
def test_a_model_switch_does_not_make_the_next_task_due_early(now, due):
    """A switch has no sampler pace; the lease's expected seconds (switch included) say when it ends."""
    worker = make_worker(FakeComfy(), FakeScheduler(), prefetch_lead=2.0)
    control = TaskControl(make_lease(1, expected_seconds=10.0))
    control.note_start(now=100.0)
    assert worker._prefetch_due([control], now=now) is due


def test_a_running_task_without_pace_gets_the_next_one_asked_for_after_the_lead():
    comfy = FakeComfy(auto_finish=False)
    sched = FakeScheduler([make_lease(1), make_lease(2)])
    with running(make_worker(comfy, sched, prefetch_lead=0.5)):
        assert wait_until(lambda: comfy.started == ["p1"])
        started = time.monotonic()
        assert wait_until(lambda: len(sched.calls_of("lease")) >= 2, timeout=5)
        assert time.monotonic() - started >= 0.3  # not at once
        assert sched.calls_of("lease")[1]["prefetch"] is True
        assert wait_until(lambda: len(comfy.submitted) == 2)
        comfy.finish("p1")
        comfy.finish("p2")
        assert wait_until(lambda: len(sched.calls_of("complete")) == 2)


@pytest.mark.parametrize("ran,flag", [(0.5, True), (5.0, None)])
def test_a_completion_carries_the_next_lease_only_after_a_short_task(ran, flag):
    worker = make_worker(FakeComfy(), FakeScheduler(), prefetch_lead=2.0)
    worker._need_register, worker._comfy_ok = False, True  # registered, ComfyUI answering
    done, running_next = TaskControl(make_lease(1)), TaskControl(make_lease(2))
    done.note_start(now=time.monotonic() - ran)
    running_next.mark_submitted()
    worker._tasks = {"1": (done, threading.current_thread()), "2": (running_next, threading.current_thread())}
    assert worker._lease_next_flag(done) is flag  # after a long one, the loop asks just in time
    worker._tasks = {"1": (done, threading.current_thread())}
    assert worker._lease_next_flag(done) is False  # nothing else held: the idle GPU's next task, at once


@pytest.mark.parametrize(
    "answers,most,lead",
    [
        ([], 2.0, 2.0),  # nothing measured yet: the most
        ([0.02, 0.03, 0.05], 2.0, 0.25),  # a fast scheduler: the shortest lead
        ([0.3, 0.25, 9.0], 2.0, 1.2),  # four times the median (a long poll's 9 s is not it)
        ([1.0, 1.5, 2.0], 2.0, 2.0),  # a slow scheduler: never more than the most
        ([1.0, 1.5, 18.0], 30.0, 6.0),  # an overloaded one (a timed-out call counts): asks well ahead
        ([0.3], 0.0, 0.0),  # off
    ],
)
def test_the_prefetch_lead_is_what_getting_a_task_takes_here_with_a_margin(answers, most, lead):
    worker = make_worker(FakeComfy(), FakeScheduler(), prefetch_lead=most)
    worker._prefetch_answers.extend(answers)
    assert worker.prefetch_lead == pytest.approx(lead)


def test_the_time_a_prefetch_lease_waited_for_work_is_not_counted_in_the_lead():
    sched = FakeScheduler([replace(make_lease(1), waited=0.25), make_lease(2)])
    worker = make_worker(FakeComfy(), sched, prefetch_lead=30.0)
    for _ in range(2):  # each answer comes after 0.3 s
        sched.lease_gate.clear()
        threading.Timer(0.3, sched.lease_gate.set).start()
        assert worker._lease(prefetch=True) is not None
    waited, answered = worker._prefetch_answers
    assert 0.0 < waited < 0.25  # of its 0.3 s, 0.25 s were a wait for work (the scheduler's Server-Timing)
    assert answered >= 0.3
