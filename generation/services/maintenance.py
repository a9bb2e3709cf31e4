"""Leases that outlived their worker: requeued, or failed with `worker_lost` after the last attempt."""

from datetime import datetime

from django.utils import timezone

from generation.exceptions import LeaseLost
from generation.models import Task, TaskAttempt
from generation.services.transitions import close_lease

Outcome = TaskAttempt.Outcome


def tasks_reap_expired(*, now: datetime | None = None) -> int:
    """Requeue (or fail with `worker_lost` after max attempts) every task whose lease has expired."""
    now = now or timezone.now()
    expired = Task.objects.filter(status__in=Task.ACTIVE_STATUSES, lease_expires_at__lt=now)
    count = 0
    for task in list(expired[:1000]):
        try:
            close_lease(
                task,
                task.lease_token,
                outcome=Outcome.EXPIRED,
                worker_id=task.worker_id,
                code="worker_lost",
                message="The worker stopped renewing its lease.",
                now=now,
            )
            count += 1
        except LeaseLost:
            continue  # finished or renewed meanwhile
    return count


def tasks_requeue_for_worker(*, worker_id: int, reason: str) -> int:
    """End every lease a worker holds (it went offline or restarted) as if it had expired."""
    count = 0
    for task in Task.objects.filter(worker_id=worker_id, status__in=Task.ACTIVE_STATUSES):
        try:
            close_lease(
                task,
                task.lease_token,
                outcome=Outcome.EXPIRED,
                worker_id=worker_id,
                code="worker_lost",
                message=reason,
            )
            count += 1
        except LeaseLost:
            continue
    return count
