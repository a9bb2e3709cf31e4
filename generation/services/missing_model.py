"""A task whose prompt a worker's ComfyUI refused because a model file is not in its list
(`value_not_in_list` on a model input): the worker's inventory was stale, not the task wrong."""

import logging
import uuid

from django.db import transaction
from django.utils import timezone

from generation import inventory, workflows
from generation.exceptions import LeaseLost
from generation.models import Task, TaskAttempt
from generation.services.transitions import LEASE_LOST, Outcome, close_lease, fenced
from workers_app.models import Worker

logger = logging.getLogger(__name__)

MODEL_MISSING = "model_missing"  # the failure code a daemon reports (docs/worker-api.md)


def task_fail_model_missing(
    *,
    worker: Worker,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    message: str,
    class_type: str,
    input_name: str,
    value: str,
) -> Task:
    """The worker lacks the model `value` of input (class_type, input_name): drop it from the worker's
    stored inventory at once (its daemon sends the whole refreshed one soon after), so the lease path does
    not hand the task back to it while it lacks the model, and requeue the task without counting the
    attempt against it.

    Counted as an ordinary retryable failure instead when dropping the file does not keep the task from
    this worker (a template task that names no checkpoint, a list the worker never reported) or when this
    worker already failed this task for a missing model once: a free requeue must not come round again."""
    with transaction.atomic():
        # Lock order: the task row, then the worker row (as every path that touches both).
        lease = fenced(task_id=task_id, lease_token=lease_token, worker_id=worker.pk)
        task = lease.select_for_update().first()
        if task is None:
            raise LeaseLost(LEASE_LOST)
        row = Worker.objects.select_for_update().filter(pk=worker.pk)
        stored = row.values_list("capabilities", flat=True).first() or {}
        capabilities = inventory.without_model(stored, class_type, input_name, value)
        now = timezone.now()
        Worker.objects.filter(pk=worker.pk).update(capabilities=capabilities, inventory_at=now)
        worker.capabilities, worker.inventory_at = capabilities, now
        again = TaskAttempt.objects.filter(task=task, worker=worker, error_code=MODEL_MISSING).exists()
        kept_away = _why_not(task, capabilities) is not None
        free = kept_away and not again
        task = close_lease(
            task,
            lease_token,
            outcome=Outcome.FAILED,
            code=MODEL_MISSING,
            message=message,
            retry=True,
            counted=not free,
            worker_id=worker.pk,
        )
    logger.info(
        "worker lacks %s %r: task %s (%s)",
        input_name,
        value,
        "requeued for other workers" if free else "counted as a failed attempt",
        task.public_id,
        extra={"worker": worker.name, "task": task.public_id},
    )
    return task


def _why_not(task: Task, capabilities: dict) -> str | None:
    template_classes = None if task.template_id is None else workflows.node_classes(task.template.workflow)
    return inventory.why_not(
        capabilities,
        template_classes=template_classes,
        checkpoint=task.checkpoint,
        requirements=task.requirements,
    )
