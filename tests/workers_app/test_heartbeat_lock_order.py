"""worker_heartbeat takes its row locks in the order every other service does: task rows, then the worker.

Found by the end-to-end tests on PostgreSQL: a heartbeat that updated the worker row first deadlocked with
the completion of one of its tasks (task row, then worker row), and one of the two requests failed.
"""

import threading

import pytest
from django.db import connection, transaction

from generation import services, workflows
from generation.models import Task, WorkflowTemplate
from tests.conftest import make_worker
from tests.e2e.helpers import wait_until
from workers_app import services as worker_services

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _waiting_lock_requests() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0]


def test_heartbeat_does_not_deadlock_with_a_completion_of_its_task():
    template = WorkflowTemplate.objects.create(
        name="lock-order", workflow=workflows.NOISE_TEST_WORKFLOW, bindings=workflows.NOISE_TEST_BINDINGS
    )
    task = Task.objects.create(prompt="p", seed=1, template=template)
    worker, _token = make_worker()
    lease = services.task_lease_next(worker=worker)
    assert lease is not None and lease.task.pk == task.pk
    task_locked, errors = threading.Event(), []

    def finish_like_task_complete() -> None:
        """Holds the task row, waits until the heartbeat queues behind a lock, then updates the worker."""
        try:
            with transaction.atomic():
                Task.objects.filter(pk=task.pk).update(progress_value=1)
                task_locked.set()
                wait_until(_waiting_lock_requests, timeout=10, what="the heartbeat to wait for a lock")
                services.worker_count_outcome(worker.pk, completed=1)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=finish_like_task_complete)
    thread.start()
    assert task_locked.wait(10)
    result = worker_services.worker_heartbeat(
        worker=worker, leases=[(task.public_id, lease.attempt.lease_token)]
    )
    thread.join(15)

    assert not errors, errors
    assert result.renewed == [task.public_id]
    worker.refresh_from_db()
    assert worker.tasks_completed == 1 and worker.last_heartbeat is not None
