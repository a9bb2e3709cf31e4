"""The chaos run's schedule (bench/chaos.py `plan`), without running it: every scheduled fault fires at a
number of finished tasks and leaves work to submit after it, so no run can end before its faults."""

import pytest

from bench.chaos import Params, plan

SMALL = {
    "worker_kill_at": 0.05,
    "scheduler_restart_at": 0.15,
    "db_outage_at": 0.35,
    "simulator_kill_at": 0.55,
}


@pytest.mark.parametrize(("tasks", "workers"), [(40, 3), (14, 3), (1000, 8)])
def test_every_scheduled_fault_has_tasks_left_to_submit_after_it(tasks, workers):
    phases = plan(Params(tasks=tasks, workers=workers, **SMALL))

    assert [phase.kind for phase in phases] == [
        "worker SIGKILL",
        "scheduler restart",
        "database outage",
        "simulator SIGKILL",
    ]
    triggers = [phase.trigger for phase in phases]
    assert triggers == sorted(triggers) and triggers[0] >= 1
    assert all(phase.trigger < phase.gate < tasks for phase in phases)


def test_the_default_run_schedules_three_faults_by_phase():
    phases = plan(Params())

    assert [(phase.kind, phase.trigger) for phase in phases] == [
        ("scheduler restart", 250),
        ("database outage", 500),
        ("simulator SIGKILL", 650),
    ]


def test_too_few_tasks_for_the_scheduled_faults_are_refused():
    with pytest.raises(ValueError, match="too few"):
        plan(Params(tasks=10, workers=3, **SMALL))
    assert (
        plan(
            Params(tasks=10, workers=3, scheduler_restart_at=None, db_outage_at=None, simulator_kill_at=None)
        )
        == []
    )
