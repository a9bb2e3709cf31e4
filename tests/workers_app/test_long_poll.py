"""Lease long polls (workers_app.long_poll, workers_app.waiting): woken one per task, as liveness, bounded.

Each wait runs on a thread of its own through the test client, as a daemon's request would; the tests use
committed data (transactional tests) because those threads have their own database connections.
"""

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from generation.models import Task, TaskAttempt
from tests.conftest import CHECKPOINT, capabilities, make_worker, submit_task, worker_client
from workers_app import apis as worker_apis
from workers_app import services as worker_services
from workers_app import waiting
from workers_app.daemon.scheduler import server_wait
from workers_app.models import Worker

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = "/api/v1/worker/lease"


@pytest.fixture(autouse=True)
def _no_fallback_looks(monkeypatch):
    """The keeper's fallback look at the queue would wake a waiter of its own now and then (it has its own
    test): the counts below are those of the event wake-ups."""
    monkeypatch.setattr(waiting, "FALLBACK_DEAF", 3600.0)
    monkeypatch.setattr(waiting, "FALLBACK_WHILE_LISTENING", 3600.0)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def open_wait(pool: ThreadPoolExecutor, token: str, wait: float, **body) -> Future:
    """POST lease with `wait` on a thread of its own; the future holds the response."""

    def call():
        try:
            return worker_client(token).post(LEASE, {"wait": wait, **body}, format="json")
        finally:
            connection.close()

    return pool.submit(call)


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def waiting_workers() -> list[int]:
    return sorted(w.worker_id for w in waiting.room._waiters)


@pytest.fixture
def count_attempts(monkeypatch) -> list[int]:
    """Worker ids of every lease attempt the API makes (first attempts and attempts after a wake-up)."""
    seen: list[int] = []
    real = worker_services.worker_lease_next

    def counting(*, worker, **kwargs):
        seen.append(worker.pk)
        return real(worker=worker, **kwargs)

    monkeypatch.setattr(worker_services, "worker_lease_next", counting)
    return seen


def test_a_waiting_lease_is_answered_as_soon_as_a_task_is_queued(pool):
    worker, token = make_worker()
    asked = time.monotonic()
    answer = open_wait(pool, token, wait=20)
    eventually(lambda: waiting_workers() == [worker.pk])
    task = submit_task()
    response = answer.result(timeout=5)
    assert response.status_code == 200
    assert response.json()["task_id"] == str(task.public_id)
    assert time.monotonic() - asked < 5  # woken, not timed out (the wait was 20 s)
    assert response["T2I-Protocol"] == "3"
    assert waiting_workers() == []
    # How long it waited for work, which the daemon leaves out of what getting a task costs.
    assert 0 < server_wait(response["Server-Timing"]) < time.monotonic() - asked


def test_the_wait_an_answer_names_ends_at_its_wake_up(pool, monkeypatch):
    """The attempt the wake-up makes is the work of getting a task, not part of the wait."""
    worker, token = make_worker()
    real = worker_services.worker_lease_next
    attempts = []

    def slow_after_the_wake(*, worker, **kwargs):
        attempts.append(worker.pk)
        if len(attempts) > 1:
            time.sleep(0.5)
        return real(worker=worker, **kwargs)

    monkeypatch.setattr(worker_services, "worker_lease_next", slow_after_the_wake)
    asked = time.monotonic()
    answer = open_wait(pool, token, wait=20)
    eventually(lambda: waiting_workers() == [worker.pk])
    submit_task()
    response = answer.result(timeout=5)
    assert response.status_code == 200 and len(attempts) == 2
    assert 0 < server_wait(response["Server-Timing"]) < time.monotonic() - asked - 0.5


def test_a_lease_answered_at_once_tells_no_wait_and_the_seconds_expected():
    _, token = make_worker()
    task = submit_task()
    response = worker_client(token).post(LEASE, {"wait": 20}, format="json")
    assert response.status_code == 200 and "Server-Timing" not in response
    expected = TaskAttempt.objects.get(task=task).expected_seconds
    assert expected is not None and response.json()["expected_seconds"] == pytest.approx(expected)


def test_one_task_wakes_one_waiter_not_all(pool, count_attempts):
    workers = [make_worker(f"gpu-{i}") for i in range(5)]
    answers = [open_wait(pool, token, wait=3) for _, token in workers]
    eventually(lambda: len(waiting_workers()) == 5)
    first_attempts = len(count_attempts)
    assert first_attempts == 5
    submit_task()
    done = next(a for a in _as_completed(answers) if a.result().status_code == 200)
    assert done.result().status_code == 200
    time.sleep(0.3)
    assert len(count_attempts) == first_attempts + 1  # only the woken waiter looked again
    assert len(waiting_workers()) == 4
    assert sorted(a.result(timeout=10).status_code for a in answers) == [200, 204, 204, 204, 204]
    assert len(count_attempts) == first_attempts + 1  # the others timed out without a query


def _as_completed(futures: list[Future]):
    from concurrent.futures import as_completed

    return as_completed(futures, timeout=5)


def test_a_wake_the_waiter_cannot_use_is_handed_on(pool):
    """The longest-waiting worker is woken first; it is draining, so it leases nothing and hands the wake on
    to the next waiter, which takes the task."""
    draining, draining_token = make_worker("draining")
    _, ready_token = make_worker("ready")
    Worker.objects.filter(pk=draining.pk).update(status=Worker.Status.DRAINING)
    first = open_wait(pool, draining_token, wait=3)
    eventually(lambda: waiting_workers() == [draining.pk])
    second = open_wait(pool, ready_token, wait=3)
    eventually(lambda: len(waiting_workers()) == 2)
    task = submit_task()
    response = second.result(timeout=2)
    assert response.status_code == 200, response.content
    assert response.json()["task_id"] == str(task.public_id)
    assert first.result(timeout=5).status_code == 204


def test_a_wake_goes_to_a_waiter_with_the_tasks_checkpoint(pool, count_attempts):
    other, other_token = make_worker("other", caps=capabilities(checkpoints=("other.safetensors",)))
    _, right_token = make_worker("right")
    first = open_wait(pool, other_token, wait=3)
    eventually(lambda: waiting_workers() == [other.pk])
    second = open_wait(pool, right_token, wait=3)
    eventually(lambda: len(waiting_workers()) == 2)
    task = submit_task(checkpoint=CHECKPOINT)
    assert second.result(timeout=2).json()["task_id"] == str(task.public_id)
    assert count_attempts.count(other.pk) == 1  # its first attempt only: never woken for this task
    assert first.result(timeout=5).status_code == 204


def test_a_worker_may_not_wait_more_often_at_once_than_its_prefetch_depth(pool):
    worker, token = make_worker()
    Worker.objects.filter(pk=worker.pk).update(prefetch=1)
    first = open_wait(pool, token, wait=2)
    eventually(lambda: waiting_workers() == [worker.pk])
    second = open_wait(pool, token, wait=2).result(timeout=5)
    assert second.status_code == 429
    assert second.json()["error"] == "too_many_waits"
    assert first.result(timeout=5).status_code == 204


def test_an_open_wait_is_the_workers_heartbeat(pool, settings):
    settings.T2I = {**settings.T2I, "HEARTBEAT_INTERVAL": 0.5}
    worker, token = make_worker()
    stale = timezone.now() - timedelta(seconds=10)
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat=stale)
    answer = open_wait(pool, token, wait=4)
    eventually(lambda: Worker.objects.get(pk=worker.pk).last_heartbeat > stale + timedelta(seconds=9))
    beat = Worker.objects.get(pk=worker.pk).last_heartbeat
    eventually(lambda: Worker.objects.get(pk=worker.pk).last_heartbeat > beat)  # renewed while open
    assert answer.result(timeout=10).status_code == 204


def test_a_worker_that_goes_offline_while_waiting_is_answered_at_once(pool):
    """A daemon that stops sends `offline` while its idle wait is open: that wait ends now with 409
    register_required (its task, had it got one, is requeued by the offline call), not after 20 s."""
    worker, token = make_worker()
    answer = open_wait(pool, token, wait=20)
    eventually(lambda: waiting_workers() == [worker.pk])
    asked = time.monotonic()
    assert worker_client(token).post("/api/v1/worker/offline", {}, format="json").status_code == 200
    response = answer.result(timeout=5)
    assert response.status_code == 409
    assert response.json()["error"] == "register_required"
    assert time.monotonic() - asked < 3


def test_liveness_refresh_never_revives_an_offline_or_disabled_worker():
    live, _ = make_worker("live")
    offline, _ = make_worker("offline")
    disabled, _ = make_worker("disabled")
    Worker.objects.filter(pk=offline.pk).update(status=Worker.Status.OFFLINE)
    Worker.objects.filter(pk=disabled.pk).update(status=Worker.Status.DISABLED)
    old = timezone.now() - timedelta(seconds=60)
    Worker.objects.update(last_heartbeat=old)
    assert waiting.refresh_liveness([live.pk, offline.pk, disabled.pk]) == 1
    assert Worker.objects.get(pk=offline.pk).last_heartbeat == old
    assert Worker.objects.get(pk=live.pk).last_heartbeat > old


def test_a_worker_disabled_while_waiting_gets_403_when_woken(pool):
    worker, token = make_worker()
    answer = open_wait(pool, token, wait=5)
    eventually(lambda: waiting_workers() == [worker.pk])
    Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DISABLED)
    submit_task()
    response = answer.result(timeout=3)
    assert response.status_code == 403
    assert response.json()["error"] == "worker_disabled"
    assert Task.objects.get().status == Task.Status.QUEUED


def test_a_lost_wake_up_is_made_good_by_the_keeper(pool, monkeypatch):
    """Work queued without an event reaching this process (another process on a shared SQLite file) is
    found by the keeper's fallback look within its period."""
    monkeypatch.setattr(waiting, "FALLBACK_DEAF", 0.5)
    worker, token = make_worker()
    answer = open_wait(pool, token, wait=10)
    eventually(lambda: waiting_workers() == [worker.pk])
    monkeypatch.setattr(waiting.room, "wake", _only_fallback_wakes(waiting.room.wake))
    task = submit_task()
    response = answer.result(timeout=5)
    assert response.status_code == 200
    assert response.json()["task_id"] == str(task.public_id)


def test_work_queued_while_the_first_attempt_looks_is_leased_without_waiting(pool, monkeypatch):
    """The task is queued and announced after the first attempt read the queue but before the wait entered
    the room: its wake found no waiter, and the wait looks again at once instead of waiting for the keeper
    (here never)."""
    _, token = make_worker()
    queued = []
    first_attempt = worker_apis.lease_once

    def queued_meanwhile(request, worker):
        found = first_attempt(request, worker)
        queued.append(submit_task())
        return found

    monkeypatch.setattr(worker_apis, "lease_once", queued_meanwhile)
    response = open_wait(pool, token, wait=3).result(timeout=10)
    assert response.status_code == 200
    assert response.json()["task_id"] == str(queued[0].public_id)


def _only_fallback_wakes(wake):
    def filtered(event=None, count=1):
        return wake(event, count) if (event or {}).get("fallback") else 0

    return filtered


@pytest.mark.parametrize("header", ["4", "two", ""])
def test_an_unknown_protocol_version_is_refused_with_its_own_code(header):
    _, token = make_worker()
    client = worker_client(token)
    response = client.post(LEASE, {}, format="json", HTTP_T2I_PROTOCOL=header)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "protocol_unsupported"
    assert "T2I-Protocol" in body["fields"]


@pytest.mark.parametrize("header", [None, "1", "2", "3"])
def test_every_protocol_version_served_is_served_and_answers_name_the_schedulers(header):
    _, token = make_worker()
    extra = {} if header is None else {"HTTP_T2I_PROTOCOL": header}
    response = worker_client(token).post("/api/v1/worker/heartbeat", {}, format="json", **extra)
    assert response.status_code == 200
    assert response["T2I-Protocol"] == "3"


def test_threads_stay_out_of_the_waiting_room():
    """Nothing is left behind by a finished wait: no waiter, no thread."""
    before = threading.active_count()
    _, token = make_worker()
    assert worker_client(token).post(LEASE, {"wait": 0.2}, format="json").status_code == 204
    assert waiting_workers() == []
    assert threading.active_count() <= before + 2  # at most the keeper and the event listener, started once


@pytest.mark.parametrize(
    ("path", "shared"),
    [
        ("/api/v1/worker/lease", True),
        ("/task", True),
        ("/api/v1/worker/heartbeat", True),
        ("/api/v1/worker/tasks/3f2504e0-4f89-11d3-9a0c-0305e82c3301/progress", True),
        ("/api/v1/worker/tasks/3f2504e0-4f89-11d3-9a0c-0305e82c3301/start", True),
        ("/api/v1/worker/tasks/3f2504e0-4f89-11d3-9a0c-0305e82c3301/complete", False),  # files: own thread
        ("/api/v1/worker/register", False),
        ("/api/v1/tasks/", False),
        ("/api/v1/worker/leasex", False),
        ("/api/v1/tasks/events", True),
        ("/api/v1/tasks/3f2504e0-4f89-11d3-9a0c-0305e82c3301/events", True),
        ("/api/v1/tasks/3f2504e0-4f89-11d3-9a0c-0305e82c3301/", False),
    ],
)
def test_which_paths_share_the_processs_thread(path, shared):
    from t2i_project.asgi import on_shared_thread

    assert on_shared_thread(path) is shared
