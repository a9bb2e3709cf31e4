"""LeaseCall: the lease request on a helper thread; an abandoned call hands its task on exactly once."""

from __future__ import annotations

import threading

import pytest

from tests.daemon.fakes import make_lease, wait_until
from workers_app.daemon.lease_call import LeaseCall
from workers_app.daemon.scheduler import SchedulerUnavailable


class Gated:
    """A lease call that stays open until ``answer()``."""

    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.gate = threading.Event()

    def __call__(self):
        self.gate.wait(5)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def answer(self) -> None:
        self.gate.set()


def test_the_answer_is_taken_after_wait():
    ask = Gated(make_lease(1))
    call = LeaseCall(ask, long_poll=True)
    assert call.in_flight and not call.wait(0.01)
    ask.answer()
    assert call.wait(5) and not call.in_flight
    assert call.result().task_id == make_lease(1).task_id


def test_the_error_is_raised_by_result():
    ask = Gated(SchedulerUnavailable("down"))
    ask.answer()
    call = LeaseCall(ask, long_poll=False)
    assert call.wait(5)
    with pytest.raises(SchedulerUnavailable):
        call.result()


def test_a_task_that_arrives_after_abandon_goes_to_the_handler_once():
    ask = Gated(make_lease(1))
    call = LeaseCall(ask, long_poll=True)
    late: list[str] = []
    call.abandon(lambda lease: late.append(lease.task_id))
    assert late == []
    ask.answer()
    assert call.join(5) and late == [make_lease(1).task_id]


def test_a_task_already_in_when_abandoned_goes_to_the_handler_at_once():
    ask = Gated(make_lease(1))
    ask.answer()
    call = LeaseCall(ask, long_poll=True)
    assert wait_until(lambda: not call.in_flight)
    late: list[str] = []
    call.abandon(lambda lease: late.append(lease.task_id))
    assert late == [make_lease(1).task_id]
    assert call.join(5) and len(late) == 1


@pytest.mark.parametrize("outcome", [None, SchedulerUnavailable("register_required")])
def test_an_abandoned_call_without_a_task_calls_no_handler(outcome):
    ask = Gated(outcome)
    call = LeaseCall(ask, long_poll=True)
    late: list = []
    call.abandon(late.append)
    ask.answer()
    assert call.join(5) and late == []
