"""The fenced transitions shared by completion, cancel and the reaper: ending a lease, and the worker's
counters.

Leases are fenced by their token: each transition is a conditional UPDATE that names the token and the states
it may leave, and checks the row count, so a stale worker can never change a task.
"""

import logging
import uuid
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from generation import dispatch, hooks
from generation.exceptions import LeaseLost
from generation.models import Task, TaskAttempt
from workers_app.models import Worker

logger = logging.getLogger(__name__)

Status = Task.Status
Outcome = TaskAttempt.Outcome
LEASE_LOST = "This lease is no longer yours (expired, cancelled, finished or never issued)."


def farm_setting(name: str):
    return settings.T2I[name]


def task_changed(
    public_id: uuid.UUID, owner_id: int | None = None, *, state: dict | None = None, final: bool = False
) -> None:
    """Tell the task's event streams (generation.streams), in every process, that it changed: call inside
    the transaction that changed it. The event carries ids, and a stream reads the task itself; or also
    `state`, the task's JSON as this transaction leaves it (serializers.landed_task_json), when it fits the
    channel, and the streams send that without a read. `final`: the task finished (completed, failed,
    cancelled), which streams send at once; they gather other changes for streams.READ_SECONDS first."""
    data: dict = {"id": str(public_id), "owner": owner_id}
    if final:
        data["final"] = True
    if state is not None and dispatch.fits("task", {**data, "state": state}):
        data["state"] = state
    dispatch.publish("task", data)


def fenced(*, task_id: uuid.UUID, lease_token: uuid.UUID, worker_id: int):
    """The task this live lease names, as a queryset: update it and check that one row changed."""
    return Task.objects.filter(
        public_id=task_id, lease_token=lease_token, worker_id=worker_id, status__in=Task.ACTIVE_STATUSES
    )


def lease_completed(*, task_id: uuid.UUID, lease_token: uuid.UUID, worker_id: int) -> bool:
    """This worker's lease `lease_token` of the task ended with its completion: a start or progress report
    that arrives after it (the daemon does not hold its completion back for them) has nothing left to do."""
    return TaskAttempt.objects.filter(
        task__public_id=task_id, lease_token=lease_token, worker_id=worker_id, outcome=Outcome.COMPLETED
    ).exists()


def close_lease(
    task: Task,
    lease_token: uuid.UUID,
    *,
    outcome: str,
    worker_id: int | None,
    code: str = "",
    message: str = "",
    retry: bool = True,
    counted: bool = True,
    now: datetime | None = None,
) -> Task:
    """End the lease `lease_token` of `task` with `outcome` and move the task on (LeaseLost if stale).

    The task goes back to the queue when the worker handed it back, when the attempt is not `counted`
    against the task, or when retrying can help and attempts remain; otherwise it fails."""
    now = now or timezone.now()
    message = storable(message[:2000])
    if outcome == Outcome.RELEASED or not counted:
        requeue, attempts_delta = True, -1
    else:
        requeue, attempts_delta = retry and task.attempts < task.max_attempts, 0
    fields = {
        "lease_token": None,
        "lease_expires_at": None,
        "attempts": F("attempts") + attempts_delta,
        "error_code": code,
        "error_message": message,
    }
    if requeue:
        fields |= {"status": Status.QUEUED, "worker": None, "progress_value": 0, "progress_max": 0}
    else:
        fields |= {"status": Status.FAILED, "finished_at": now}
    with transaction.atomic():
        live = Task.objects.filter(pk=task.pk, lease_token=lease_token, status__in=Task.ACTIVE_STATUSES)
        if not live.update(**fields):
            raise LeaseLost(LEASE_LOST)
        TaskAttempt.objects.filter(lease_token=lease_token, outcome=Outcome.ACTIVE).update(
            outcome=outcome, finished_at=now, error_code=code, error_message=message
        )
        if worker_id is not None and outcome == Outcome.FAILED:
            worker_count_outcome(worker_id, failed=1)
        task_changed(task.public_id, task.owner_id, final=not requeue)
        if requeue:
            dispatch.announce_work(checkpoint=task.checkpoint, owner=task.owner_id)
    task.refresh_from_db()
    logger.log(
        logging.INFO if requeue else logging.WARNING,
        "task %s after %s: %s %s",
        "requeued" if requeue else "failed",
        outcome,
        code,
        message[:200],
        extra={"task": task.public_id},
    )
    if not requeue:
        after_finish(task)
    return task


def storable(text: str) -> str:
    """Text every database keeps as it is: no NUL (PostgreSQL refuses it), no unpaired surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def worker_count_outcome(
    worker_id: int,
    *,
    completed: int = 0,
    failed: int = 0,
    warm_checkpoint: str | None = None,
    also: dict | None = None,
) -> None:
    """Add to the worker's counters of completed and failed attempts; a completion also records the
    checkpoint it leaves loaded (placement's warm set) and counts off its completion slot (`also`), in the
    same UPDATE."""
    changes = dict(also or {})
    if completed:
        changes["tasks_completed"] = F("tasks_completed") + completed
    if failed:
        changes["tasks_failed"] = F("tasks_failed") + failed
    if warm_checkpoint is not None:
        changes["warm_checkpoint"] = warm_checkpoint
    if changes:
        Worker.objects.filter(pk=worker_id).update(**changes)


def after_finish(task: Task) -> None:
    """Work that follows a finished task (thumbnails, webhooks) runs after the commit."""
    transaction.on_commit(lambda: hooks.task_finished(task.pk))
