"""What people do to tasks: submit, cancel, retry, reprioritise; templates; deleting images."""

import logging
import secrets
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from generation import callback_targets, dispatch, limits, workflows
from generation.exceptions import Conflict, Forbidden, InvalidInput, NoCapableWorker
from generation.models import (
    SEED_MAX,
    TASK_INPUT_FIELDS,
    Image,
    PreviewMethod,
    Task,
    TaskAttempt,
    WorkflowTemplate,
)
from generation.services.inputs import task_inputs_hold
from generation.services.queue_rules import check_priority, check_queued_cap
from generation.services.transitions import farm_setting, task_changed
from generation.services.workflow_submit import task_submit_workflow
from workers_app.models import Worker

logger = logging.getLogger(__name__)

Status = Task.Status


def task_submit(*, owner: AbstractBaseUser | None, data: Mapping[str, Any]) -> Task:
    """Check `data` (task fields by name, TASK_INPUT_FIELDS; `template` by name) against the farm's limits and
    the workers' capabilities, then queue a task. Fields left out take the model's defaults. With `workflow`
    (a whole API-format workflow), only `priority` and `callback_url` may go with it."""
    if data.get("workflow") is not None:
        return _submit_workflow(owner, data)
    fields = {name: data[name] for name in TASK_INPUT_FIELDS if name in data}
    seed = fields.pop("seed", None)
    task = Task(owner=owner if owner is not None and owner.is_authenticated else None, **fields)
    task.seed = seed  # None: chosen below, once the rest is valid
    _validate(task)
    check_priority(task.priority, owner)
    task.template = _template_for(data.get("template") or "")
    workers = list(
        Worker.objects.exclude(registered_at=None).only("status", "capabilities", "last_heartbeat")
    )
    _check_worker_options(task, [w for w in workers if w.is_online])
    task.checkpoint, task.warning = _choose_checkpoint(task.template, task.checkpoint, workers)
    if task.seed is None:
        task.seed = secrets.randbelow(SEED_MAX + 1)
    task.max_attempts = farm_setting("MAX_ATTEMPTS")
    with transaction.atomic():
        check_queued_cap(task.owner_id)
        task.save()
        task_changed(task.public_id, task.owner_id)
        dispatch.announce_work(checkpoint=task.checkpoint, owner=task.owner_id)
    logger.info("task queued", extra={"task": task.public_id})
    return task


WORKFLOW_OPTIONS = ("priority", "callback_url")


def _submit_workflow(owner: AbstractBaseUser | None, data: Mapping[str, Any]) -> Task:
    mixed = sorted(
        name
        for name in (*TASK_INPUT_FIELDS, "template")
        if data.get(name) not in (None, "") and name not in WORKFLOW_OPTIONS
    )
    if mixed:
        raise InvalidInput(
            "Send a workflow or a template with its fields, not both.",
            fields={name: ["Not allowed with workflow."] for name in mixed},
        )
    options = {name: data[name] for name in WORKFLOW_OPTIONS if name in data}
    return task_submit_workflow(owner=owner, workflow=data["workflow"], **options)


def _validate(task: Task) -> None:
    """The farm's limits (generation.limits), every field checked, all errors reported at once."""
    errors: dict[str, list[str]] = {}
    for field, limit in limits.numbers().items():
        if not limit.allows(getattr(task, field)):
            errors[field] = [limit.message]
    if not task.prompt.strip():
        errors["prompt"] = ["Must not be empty."]
    for field, limit in limits.lengths().items():
        text = getattr(task, field)
        if not limit.allows(len(text)):
            errors[field] = [limit.message]
        elif any(ord(c) < 32 and c not in "\t\n\r" for c in text) or "\x7f" in text:
            errors[field] = ["Control characters are not allowed."]
    if task.seed is not None and not 0 <= task.seed <= SEED_MAX:
        errors["seed"] = [f"Must be from 0 to {SEED_MAX}."]
    if task.preview_method not in PreviewMethod.values:
        errors["preview_method"] = [f"Must be one of {', '.join(v for v in PreviewMethod.values if v)}."]
    if task.callback_url:
        try:
            callback_targets.check_url(task.callback_url)
        except callback_targets.Refused as exc:
            errors["callback_url"] = [str(exc)]
    if errors:
        raise InvalidInput("Some fields are not valid.", fields=errors)


def _template_for(name: str) -> WorkflowTemplate:
    name = name or farm_setting("DEFAULT_TEMPLATE")
    try:
        return WorkflowTemplate.objects.get(name=name)
    except WorkflowTemplate.DoesNotExist:
        known = list(WorkflowTemplate.objects.values_list("name", flat=True))
        raise InvalidInput(
            f"Unknown template {name!r}.",
            fields={"template": [f"Unknown template {name!r}. Available: {', '.join(known) or 'none'}."]},
            code="unknown_template",
        )


# Input fields that name one of a ComfyUI's options, and the capability in which workers report them.
WORKER_OPTIONS = {"sampler": "samplers", "scheduler": "schedulers"}


def _check_worker_options(task: Task, online: list[Worker]) -> None:
    """The sampler and the scheduler, where the template uses them, must be ones that online workers
    report. Anything goes while none reports any (none online, or workers that do not report them)."""
    errors: dict[str, list[str]] = {}
    for field, capability in WORKER_OPTIONS.items():
        known = {name for w in online for name in w.capabilities.get(capability) or ()}
        value = getattr(task, field)
        if known and task.template.binds(field) and value not in known:
            errors[field] = [f"Unknown {field} {value!r}. Online workers have: {', '.join(sorted(known))}."]
    if errors:
        raise InvalidInput("No online worker has this sampler or scheduler.", fields=errors)


def _choose_checkpoint(template: WorkflowTemplate, requested: str, workers: list[Worker]) -> tuple[str, str]:
    """The checkpoint to run (empty when the template binds none) and a warning for the submitter.

    A task that no registered worker (`workers`) could ever run (a checkpoint or a node class of the
    template nobody has) is refused; while no worker has registered yet, tasks simply queue; one that only
    offline workers can run is accepted with a warning.
    """
    online = [w for w in workers if w.is_online]
    checkpoint = ""
    if template.binds("checkpoint"):
        checkpoint = requested or farm_setting("DEFAULT_CHECKPOINT")
        if not checkpoint:
            counts = Counter(c for w in (online or workers) for c in w.checkpoints)
            if not counts:
                return "", ""  # nothing registered yet; the template's own checkpoint stays in the workflow
            checkpoint = counts.most_common(1)[0][0]
    if not workers:
        return checkpoint, ""
    needed = template.node_classes

    def capable(w: Worker) -> bool:
        return needed <= w.node_classes and (not checkpoint or checkpoint in w.checkpoints)

    if any(capable(w) for w in online):
        return checkpoint, ""
    if any(capable(w) for w in workers):
        return checkpoint, "Only offline workers can run this task; it waits until one of them is back."
    if not checkpoint:
        raise NoCapableWorker(
            f"No registered worker has every node class that template {template.name!r} uses.",
            fields={"template": [f"No registered worker has all of: {', '.join(sorted(needed))}."]},
        )
    # Named from workers seen within WORKER_CHOICES_HOURS only, as selectors.workers_recently_seen does.
    since = timezone.now() - timedelta(hours=farm_setting("WORKER_CHOICES_HOURS"))
    recent = [w for w in workers if w.last_heartbeat and w.last_heartbeat >= since]
    available = sorted({c for w in recent for c in w.checkpoints if needed <= w.node_classes})
    raise NoCapableWorker(
        f"No registered worker can run checkpoint {checkpoint!r} with template {template.name!r}.",
        fields={"checkpoint": [f"Not available. Available checkpoints: {', '.join(available) or 'none'}."]},
    )


def task_cancel(*, task: Task) -> Task:
    """Cancel a queued or leased/running task. The worker learns of it from its next heartbeat or report."""
    now = timezone.now()
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if locked.is_finished:
            raise Conflict(f"The task is already {locked.status}.", code="task_finished")
        token = locked.lease_token
        updated = Task.objects.filter(pk=task.pk, status=locked.status, lease_token=token).update(
            status=Status.CANCELLED,
            finished_at=now,
            lease_token=None,
            lease_expires_at=None,
            error_code="cancelled",
            error_message="Cancelled by request.",
        )
        if not updated:
            raise Conflict("The task changed while cancelling; try again.", code="task_changed")
        if token is not None:
            TaskAttempt.objects.filter(lease_token=token, outcome=TaskAttempt.Outcome.ACTIVE).update(
                outcome=TaskAttempt.Outcome.CANCELLED, finished_at=now
            )
        task_changed(task.public_id, task.owner_id, final=True)
    task.refresh_from_db()
    logger.info("task cancelled", extra={"task": task.public_id})
    return task


def tasks_cancel(*, tasks: list[Task]) -> int:
    """Cancel each of these tasks that has not finished (one may finish meanwhile); how many were."""
    cancelled = 0
    for task in tasks:
        try:
            task_cancel(task=task)
        except Conflict:
            continue
        cancelled += 1
    return cancelled


def task_retry(*, task: Task) -> Task:
    """Put a failed or cancelled task back in the queue with a fresh set of attempts. It runs again, so a
    front-door client that took it out of its ComfyUI history sees its new end there. A workflow task whose
    uploads were deleted since cannot run again (InputsDeleted, 409)."""
    with transaction.atomic():
        task_inputs_hold(task)
        updated = Task.objects.filter(pk=task.pk, status__in=Task.RETRYABLE_STATUSES).update(
            status=Status.QUEUED,
            attempts=0,
            worker=None,
            finished_at=None,
            progress_value=0,
            progress_max=0,
            error_code="",
            error_message="",
            comfy_history_hidden_at=None,
        )
        if not updated:
            raise Conflict("Only failed or cancelled tasks can be retried.", code="not_retryable")
        task_changed(task.public_id, task.owner_id)
        dispatch.announce_work(checkpoint=task.checkpoint, owner=task.owner_id)
    task.refresh_from_db()
    return task


def task_set_priority(*, task: Task, priority: int) -> Task:
    if not -1000 <= priority <= 1000:
        raise InvalidInput("Priority must be from -1000 to 1000.", fields={"priority": ["Out of range."]})
    Task.objects.filter(pk=task.pk).update(priority=priority)
    task.refresh_from_db()
    return task


def template_create(*, name: str, workflow, bindings, description: str = "") -> WorkflowTemplate:
    """Validate and save a workflow template (shape, bindings pointing at real inputs, an output node)."""
    errors = workflows.validate_template(workflow, bindings)
    if WorkflowTemplate.objects.filter(name=name).exists():
        errors["name"] = [f"A template named {name!r} exists."]
    if errors:
        raise InvalidInput("The template is not valid.", fields=errors)
    return WorkflowTemplate.objects.create(
        name=name, description=description, workflow=workflow, bindings=bindings
    )


def image_deletable_by(image: Image, user) -> bool:
    """The owner of the image's task or staff; nobody for an anonymous task but staff."""
    if not user.is_authenticated:
        return False
    return user.is_staff or (image.task.owner_id is not None and image.task.owner_id == user.pk)


def image_delete(*, image: Image, by) -> None:
    """Delete an image: the row, then (after the commit) its file and its thumbnail."""
    if not image_deletable_by(image, by):
        raise Forbidden("Only the owner or staff can delete this image.")
    names = [name for name in (image.file.name, image.thumbnail.name) if name]
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).delete()
        transaction.on_commit(lambda: [default_storage.delete(name) for name in names])
    logger.info("image deleted", extra={"task": image.task.public_id, "image": image.pk, "by": by.pk})
