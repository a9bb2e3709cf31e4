"""What the chaos run (bench/chaos.py) found, pinned down as small tests."""

import threading
import time

import pytest
from django.db import connection, transaction

from generation import services, workflows
from generation.models import Task, WorkflowTemplate
from tests.conftest import make_worker
from workers_app.models import Worker


def _waiting_lock_requests() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0]


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_two_leases_end_at_once_is_idle_afterwards():
    """Found on PostgreSQL with 8 workers: two of a worker's leases ending in concurrent transactions
    (complete + complete, or complete + reap) each saw the other task still active, and the worker stayed
    `busy` with nothing leased. Busy is now shown from the leases (Worker.state), so it cannot stay behind;
    the two counter updates, one waiting for the other's row lock, both count."""
    template = WorkflowTemplate.objects.create(
        name="race", workflow=workflows.NOISE_TEST_WORKFLOW, bindings=workflows.NOISE_TEST_BINDINGS
    )
    tasks = [Task.objects.create(prompt=f"p{n}", seed=n, template=template) for n in range(2)]
    worker, _ = make_worker()
    assert services.task_lease_next(worker=worker) and services.task_lease_next(worker=worker)
    assert Worker.objects.get(pk=worker.pk).state == Worker.Status.BUSY
    first_holds_worker, errors = threading.Event(), []

    def end_lease(task: Task, *, hold: bool) -> None:
        """What complete and fail do: the task row leaves the active states, then the worker's counters."""
        try:
            with transaction.atomic():
                Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETED, lease_token=None)
                services.worker_count_outcome(worker.pk, completed=1)
                if hold:  # keep the worker row locked until the other transaction waits for it
                    first_holds_worker.set()
                    _wait_until(_waiting_lock_requests)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=end_lease, args=(tasks[0],), kwargs={"hold": True})
    first.start()
    assert first_holds_worker.wait(10)
    second = threading.Thread(target=end_lease, args=(tasks[1],), kwargs={"hold": False})
    second.start()
    first.join(15)
    second.join(15)

    assert not errors, errors
    worker = Worker.objects.with_state().get(pk=worker.pk)
    assert worker.tasks_completed == 2
    assert worker.status == Worker.Status.IDLE and worker.state == Worker.Status.IDLE
