"""Reports: a task's start and progress reports, in order, on a thread of their own."""

from __future__ import annotations

import threading

from tests.daemon.fakes import wait_until
from workers_app.daemon.reports import Reports


class Scheduler:
    """Records what was sent; `answer` holds each send until the test sets it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []
        self.answer = threading.Event()

    def send(self, kind: str, args: tuple) -> None:
        self.sent.append((kind, args))
        self.answer.wait(5)


def test_reports_go_out_in_order_and_a_newer_progress_replaces_one_not_sent():
    scheduler = Scheduler()
    reports = Reports(scheduler.send)
    reports.put("start", "p1")
    assert wait_until(lambda: scheduler.sent == [("start", ("p1",))])  # on its way, not answered yet
    for value in (1, 2, 3):
        reports.put("progress", value, 4)
    scheduler.answer.set()
    assert wait_until(lambda: len(scheduler.sent) == 2)
    reports.close()
    assert reports.join(5)
    assert scheduler.sent == [("start", ("p1",)), ("progress", (3, 4))]


def test_a_start_is_never_replaced_by_progress():
    scheduler = Scheduler()
    reports = Reports(scheduler.send)
    reports.put("progress", 1, 4)  # on its way: holds the thread
    assert wait_until(lambda: len(scheduler.sent) == 1)
    reports.put("start", "p1")
    reports.put("progress", 2, 4)
    scheduler.answer.set()
    assert wait_until(lambda: len(scheduler.sent) == 3)
    assert [kind for kind, _ in scheduler.sent] == ["progress", "start", "progress"]
    reports.close()


def test_close_drops_what_was_not_sent_and_ends_the_thread():
    scheduler = Scheduler()
    reports = Reports(scheduler.send)
    reports.put("start", "p1")
    assert wait_until(lambda: len(scheduler.sent) == 1)
    reports.put("progress", 1, 4)
    reports.close()  # the final report is on its way
    reports.put("progress", 2, 4)
    scheduler.answer.set()  # the start being sent finishes on its own
    assert reports.join(5)
    assert scheduler.sent == [("start", ("p1",))]


def test_no_thread_until_there_is_something_to_report():
    reports = Reports(Scheduler().send)
    reports.close()
    assert reports.join(0)
