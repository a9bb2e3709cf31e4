"""Every state change of a task. The REST API, the seed endpoints, the admin, the web pages and the
background jobs all call these functions: one rule, one place.

Leases are fenced by their token: each transition is a conditional UPDATE that names the token and the
states it may leave, and checks the row count, so a stale worker can never change a task.
"""

import logging
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from generation import dispatch, lease_sql, rows, workflows
from generation.exceptions import Conflict, Forbidden, InvalidInput, LeaseLost, NoCapableWorker, NotFound
from generation.images import THUMBNAIL_EXTENSION, VerifiedImage, verify_image
from generation.models import SEED_MAX, Image, Task, TaskAttempt, WorkflowTemplate
from workers_app.models import Worker

logger = logging.getLogger(__name__)

Status = Task.Status
Outcome = TaskAttempt.Outcome


def farm_setting(name: str):
    return settings.T2I[name]


# --- Submit ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInput:
    """What a person or program asks for. Unset fields take the template's or the farm's defaults."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    seed: int | None = None
    batch_size: int = 1
    checkpoint: str = ""
    template: str = ""
    priority: int = 0
    callback_url: str = ""


def task_submit(*, owner: AbstractBaseUser | None, data: TaskInput, callback_url: str = "") -> Task:
    """Validate `data` against the farm's limits and the workers' capabilities, then queue a task."""
    _validate_input(data)
    template = _template_for(data.template)
    checkpoint, warning = _choose_checkpoint(template, data.checkpoint)
    seed = data.seed if data.seed is not None else secrets.randbelow(SEED_MAX + 1)
    with transaction.atomic():
        task = Task.objects.create(
            owner=owner if owner is not None and owner.is_authenticated else None,
            prompt=data.prompt,
            negative_prompt=data.negative_prompt,
            width=data.width,
            height=data.height,
            steps=data.steps,
            cfg=data.cfg,
            sampler=data.sampler,
            scheduler=data.scheduler,
            seed=seed,
            batch_size=data.batch_size,
            checkpoint=checkpoint,
            template=template,
            priority=data.priority,
            max_attempts=farm_setting("MAX_ATTEMPTS"),
            warning=warning,
            callback_url=callback_url or data.callback_url,
        )
        dispatch.announce_work()
    logger.info("task queued", extra={"task": task.public_id})
    return task


def _validate_input(data: TaskInput) -> None:
    errors: dict[str, list[str]] = {}
    lo, hi, step = farm_setting("SIZE_MIN"), farm_setting("SIZE_MAX"), farm_setting("SIZE_MULTIPLE")
    for field in ("width", "height"):
        value = getattr(data, field)
        if not lo <= value <= hi or value % step:
            errors[field] = [f"Must be a multiple of {step} from {lo} to {hi}."]
    if not data.prompt.strip():
        errors["prompt"] = ["Must not be empty."]
    for field in ("prompt", "negative_prompt"):
        text = getattr(data, field)
        if len(text) > farm_setting("PROMPT_MAX_LENGTH"):
            errors[field] = [f"At most {farm_setting('PROMPT_MAX_LENGTH')} characters."]
        elif any(ord(c) < 32 and c not in "\t\n\r" for c in text) or "\x7f" in text:
            errors[field] = ["Control characters are not allowed."]
    if not 1 <= data.steps <= farm_setting("STEPS_MAX"):
        errors["steps"] = [f"Must be from 1 to {farm_setting('STEPS_MAX')}."]
    if not 0 <= data.cfg <= 100:
        errors["cfg"] = ["Must be from 0 to 100."]
    if not 1 <= data.batch_size <= farm_setting("BATCH_MAX"):
        errors["batch_size"] = [f"Must be from 1 to {farm_setting('BATCH_MAX')}."]
    if data.seed is not None and not 0 <= data.seed <= SEED_MAX:
        errors["seed"] = [f"Must be from 0 to {SEED_MAX}."]
    if not -1000 <= data.priority <= 1000:
        errors["priority"] = ["Must be from -1000 to 1000."]
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


def _choose_checkpoint(template: WorkflowTemplate, requested: str) -> tuple[str, str]:
    """The checkpoint to run (empty when the template binds none) and a warning for the submitter.

    A task that no registered worker could ever run (a checkpoint or a node class of the template nobody
    has) is refused; while no worker has registered yet, tasks simply queue; one that only offline workers
    can run is accepted with a warning.
    """
    workers = list(Worker.objects.exclude(registered_at=None).only("status", "capabilities"))
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
    available = sorted({c for w in workers for c in w.checkpoints if needed <= w.node_classes})
    raise NoCapableWorker(
        f"No registered worker can run checkpoint {checkpoint!r} with template {template.name!r}.",
        fields={"checkpoint": [f"Not available. Available checkpoints: {', '.join(available) or 'none'}."]},
    )


# --- Leasing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    task: Task
    attempt: TaskAttempt
    workflow: dict
    filename_prefix: str


def task_lease_next(*, worker: Worker, prefetch: bool = False, now: datetime | None = None) -> Lease | None:
    """Hand the best queued task this worker can run to it, or return None.

    Highest priority first, then oldest, in one written statement (generation.lease_sql). PostgreSQL: the
    candidate row is locked with SKIP LOCKED so concurrent workers pass over each other's picks. SQLite
    ignores row locks, but our transactions are BEGIN IMMEDIATE, so only one writer at a time runs this
    block; the conditional UPDATE re-checks the status either way.
    """
    from workers_app.services import worker_assert_can_lease

    now = now or timezone.now()
    if maybe_reap(now):
        worker.refresh_from_db(fields=["status"])  # the sweep may just have found this worker silent
    if not worker_assert_can_lease(worker=worker):
        return None
    template_ids = _templates_runnable_by(worker)
    if not template_ids:
        return None
    if prefetch and not _prefetch_allowed(worker, template_ids):
        return None
    expires = now + timedelta(seconds=farm_setting("LEASE_SECONDS"))
    token = uuid.uuid4()
    with transaction.atomic():
        claimed = lease_sql.lease_claim(
            worker_id=worker.pk,
            template_ids=template_ids,
            checkpoints=worker.checkpoints,
            token=token,
            now=now,
            expires=expires,
        )
    if claimed is None:
        return None
    columns, attempt_id, workflow, bindings = claimed
    task = rows.instance(connection, Task, columns)
    task.worker, task.lease_token, task.lease_expires_at, task.leased_at = worker, token, expires, now
    attempt = TaskAttempt(
        pk=attempt_id,
        task=task,
        worker=worker,
        number=task.lease_count,
        lease_token=token,
        lease_expires_at=expires,
        leased_at=now,
    )
    attempt._state.adding, attempt._state.db = False, connection.alias
    if worker.status == Worker.Status.IDLE:
        worker.status = Worker.Status.BUSY
    prefix = f"t2i/{task.public_id}_a{attempt.number}"
    logger.info("task leased", extra={"task": task.public_id, "worker": worker.name})
    values = _workflow_values(task, prefix)
    return Lease(
        task=task,
        attempt=attempt,
        workflow=workflows.build_workflow(workflow, bindings, values),
        filename_prefix=prefix,
    )


def task_workflow(task: Task, filename_prefix: str) -> dict:
    """The task's ComfyUI workflow: its template with every bound field filled in."""
    values = _workflow_values(task, filename_prefix)
    return workflows.build_workflow(task.template.workflow, task.template.bindings, values)


def _workflow_values(task: Task, filename_prefix: str) -> dict:
    values = {
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt,
        "width": task.width,
        "height": task.height,
        "seed": int(task.seed),
        "steps": task.steps,
        "cfg": task.cfg,
        "sampler": task.sampler,
        "scheduler": task.scheduler,
        "batch_size": task.batch_size,
        "filename_prefix": filename_prefix,
    }
    if task.checkpoint:
        values["checkpoint"] = task.checkpoint
    return values


def _templates_runnable_by(worker: Worker) -> list[int]:
    """Ids of the templates whose every node class this worker reported."""
    nodes = worker.node_classes
    return [
        pk for pk, workflow in lease_sql.template_workflows() if workflows.node_classes(workflow) <= nodes
    ]


def _prefetch_allowed(worker: Worker, template_ids: list[int]) -> bool:
    """Prefetch only up to the worker's registered depth, and only when more tasks wait than there are
    other idle workers to take them.

    A worker that holds nothing is not prefetching, whatever its request said: its task finished while
    it was long-polling with `prefetch: true`. Holding it back for idle others would let every such
    worker defer to the others, and a new task would wait until one of those long-polls timed out."""
    held = lease_sql.count_active_of(worker.pk)
    if held == 0:
        return True
    if held >= max(1, worker.prefetch):
        return False
    alive_since = timezone.now() - timedelta(seconds=farm_setting("WORKER_OFFLINE_AFTER"))
    idle_others = lease_sql.count_idle_others(worker.pk, alive_since)
    return lease_sql.count_runnable(template_ids, worker.checkpoints, idle_others + 1) > idle_others


# --- Transitions of a leased task -----------------------------------------------------------------------


def _active_task(*, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID) -> Task:
    """The task this lease names, or LeaseLost when the token is stale or another worker's."""
    task = Task.objects.filter(
        public_id=task_id, lease_token=lease_token, worker=worker, status__in=Task.ACTIVE_STATUSES
    ).first()
    if task is None:
        raise LeaseLost("This lease is no longer yours (expired, cancelled, finished or never issued).")
    return task


def _fenced(task: Task, lease_token: uuid.UUID):
    return Task.objects.filter(pk=task.pk, lease_token=lease_token, status__in=Task.ACTIVE_STATUSES)


def task_start(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, comfyui_prompt_id: str = ""
) -> None:
    """ComfyUI began executing the task."""
    with transaction.atomic():
        # One fenced UPDATE both checks the lease and moves the task (as task_report_progress does).
        if not lease_sql.task_mark_started(
            task_id=task_id,
            lease_token=lease_token,
            worker_id=worker.pk,
            now=timezone.now(),
            comfyui_prompt_id=comfyui_prompt_id[:64],
        ):
            raise LeaseLost("This lease is no longer yours (expired, cancelled, finished or never issued).")
    logger.info("task started", extra={"task": task_id, "worker": worker.name})


def task_report_progress(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, value: float, maximum: float
) -> None:
    """Record sampling progress; the first report also marks the task running."""
    if maximum <= 0 or not 0 <= value <= maximum:
        raise InvalidInput(
            "Progress must satisfy 0 <= value <= max and max > 0.",
            fields={"max" if maximum <= 0 else "value": ["Out of range."]},
        )
    if not lease_sql.task_mark_progress(
        task_id=task_id,
        lease_token=lease_token,
        worker_id=worker.pk,
        now=timezone.now(),
        value=value,
        maximum=maximum,
    ):
        raise LeaseLost("This lease is no longer yours.")


def task_complete(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, files: list, comfyui_prompt_id: str = ""
) -> Task:
    """Verify and store the images and their thumbnails, then mark the task completed, in that order.

    Files are verified with Pillow and written before the transaction; rows are inserted and the status
    flips inside it, fenced by the lease token. If the fence fails, the written files are removed again.
    A retry of a completion that already landed for this same lease returns the task unchanged.
    """
    return _complete(
        worker=worker,
        task_id=task_id,
        lease_token=lease_token,
        files=files,
        comfyui_prompt_id=comfyui_prompt_id,
    )[0]


def task_complete_and_lease(
    *,
    worker: Worker,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    files: list,
    comfyui_prompt_id: str = "",
    prefetch: bool = False,
) -> tuple[Task, Lease | None]:
    """`task_complete`, then the worker's next lease as `task_lease_next(prefetch=...)` gives it: one
    round trip per task for a busy worker instead of two.

    The lease runs after the completion has committed, in its own transaction, so a failed lease never
    undoes a completion. A retried completion leases nothing: the answer that went missing may have carried
    a lease already (that one expires and is requeued like any unanswered lease).
    """
    task, landed = _complete(
        worker=worker,
        task_id=task_id,
        lease_token=lease_token,
        files=files,
        comfyui_prompt_id=comfyui_prompt_id,
    )
    if not landed:
        return task, None
    try:
        return task, task_lease_next(worker=worker, prefetch=prefetch)
    except DatabaseError:
        logger.warning("lease after a completion failed", exc_info=True, extra={"worker": worker.name})
        return task, None


def _complete(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, files: list, comfyui_prompt_id: str
) -> tuple[Task, bool]:
    """task_complete's work; the flag is False for a retry of a completion that had already landed."""
    found = lease_sql.completing_attempt(task_id=task_id, lease_token=lease_token, worker_id=worker.pk)
    if found is None:
        # Only this worker's own completed attempt makes it a retry: a stale lease stays refused.
        done = Task.objects.filter(
            public_id=task_id,
            status=Status.COMPLETED,
            attempt_set__lease_token=lease_token,
            attempt_set__worker=worker,
            attempt_set__outcome=Outcome.COMPLETED,
        ).first()
        if done is not None:
            return done, False
        raise LeaseLost("This lease is no longer yours (expired, cancelled, finished or never issued).")
    attempt_pk, attempt_number, prompt_id, columns = found
    task = rows.instance(connection, Task, columns)
    verified = _verify_batch(task, files)
    now = timezone.now()
    images: list[Image] = []
    try:
        for index, image in enumerate(verified):
            name, thumbnail = _store(task, attempt_number, index, image)
            images.append(
                Image(
                    task=task,
                    attempt_id=attempt_pk,
                    index=index,
                    file=name,
                    thumbnail=thumbnail,
                    width=image.width,
                    height=image.height,
                    size_bytes=image.size,
                    sha256=image.sha256,
                    created_at=now,
                )
            )
        with transaction.atomic():
            if not lease_sql.task_mark_completed(task_pk=task.pk, lease_token=lease_token, now=now):
                raise LeaseLost("This lease is no longer yours.")
            for image in images:
                image.pk = lease_sql.image_insert(image=image)
                image._state.adding, image._state.db = False, connection.alias
            lease_sql.attempt_mark_completed(
                attempt_pk=attempt_pk, now=now, comfyui_prompt_id=comfyui_prompt_id[:64] or prompt_id
            )
            refresh_worker_status(worker.pk, completed=1)
    except BaseException:
        for image in images:
            default_storage.delete(image.file.name)
            if image.thumbnail:
                default_storage.delete(image.thumbnail.name)
        raise
    task.status, task.finished_at, task.lease_token, task.lease_expires_at = Status.COMPLETED, now, None, None
    task.progress_value, task.error_code, task.error_message = task.progress_max, "", ""
    _prefetched(task, "images", sorted(images, key=lambda image: -image.pk))  # the model's order
    logger.info("task completed", extra={"task": task.public_id, "worker": worker.name})
    if task.callback_url or any(not image.thumbnail for image in images):
        _after_finish(task)
    return task, True


def _prefetched(instance, related_name: str, objects: list) -> None:
    """Give `instance.<related_name>.all()` these objects without a query, as prefetch_related would."""
    queryset = getattr(instance, related_name).all()
    queryset._result_cache, queryset._prefetch_done = objects, True
    instance._prefetched_objects_cache = {related_name: queryset}


def _verify_batch(task: Task, files: list) -> list[VerifiedImage]:
    if len(files) != task.batch_size:
        raise InvalidInput(
            f"Expected {task.batch_size} image(s), got {len(files)}.",
            fields={"images": [f"Expected {task.batch_size} image(s), got {len(files)}."]},
        )
    return [
        verify_image(
            f,
            width=task.width,
            height=task.height,
            max_bytes=farm_setting("MAX_IMAGE_BYTES"),
            field="images",
            thumbnail=True,
        )
        for f in files
    ]


def _store(task: Task, attempt_number: int, index: int, image: VerifiedImage) -> tuple[str, str]:
    """Write an image and its thumbnail (when one was made); returns their storage names."""
    day = timezone.now()
    stem = f"images/{day:%Y/%m/%d}/{task.public_id}_a{attempt_number}_{index}"
    name = default_storage.save(f"{stem}.{image.extension}", ContentFile(image.data))
    if not image.thumbnail:
        return name, ""
    try:
        return name, default_storage.save(f"{stem}.{THUMBNAIL_EXTENSION}", ContentFile(image.thumbnail))
    except BaseException:
        default_storage.delete(name)
        raise


def task_fail(
    *,
    worker: Worker,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    code: str,
    message: str,
    retryable: bool,
) -> Task:
    """The worker could not finish: requeue when retrying can help and attempts remain, else fail."""
    task = _active_task(worker=worker, task_id=task_id, lease_token=lease_token)
    return _close_lease(
        task,
        lease_token,
        outcome=Outcome.FAILED,
        code=code,
        message=message,
        retry=retryable,
        worker_id=worker.pk,
    )


def task_release(*, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID) -> Task:
    """The worker hands the lease back unused (shutdown, prefetched but not started): requeue at once."""
    task = _active_task(worker=worker, task_id=task_id, lease_token=lease_token)
    return _close_lease(task, lease_token, outcome=Outcome.RELEASED, worker_id=worker.pk)


def _close_lease(
    task: Task,
    lease_token: uuid.UUID,
    *,
    outcome: str,
    worker_id: int | None,
    code: str = "",
    message: str = "",
    retry: bool = True,
    now: datetime | None = None,
) -> Task:
    """End the lease `lease_token` of `task` with `outcome` and move the task on (LeaseLost if stale)."""
    now = now or timezone.now()
    message = _storable(message[:2000])
    if outcome == Outcome.RELEASED:
        requeue, attempts_delta = True, -1
    else:
        requeue, attempts_delta = retry and task.attempts < task.max_attempts, 0
    with transaction.atomic():
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
        if not _fenced(task, lease_token).update(**fields):
            raise LeaseLost("This lease is no longer yours.")
        TaskAttempt.objects.filter(lease_token=lease_token, outcome=Outcome.ACTIVE).update(
            outcome=outcome, finished_at=now, error_code=code, error_message=message
        )
        if worker_id is not None:
            refresh_worker_status(worker_id, failed=int(outcome == Outcome.FAILED))
        if requeue:
            dispatch.announce_work()
    task.refresh_from_db()
    level = logging.INFO if requeue else logging.WARNING
    logger.log(
        level,
        "task %s after %s: %s %s",
        "requeued" if requeue else "failed",
        outcome,
        code,
        message[:200],
        extra={"task": task.public_id},
    )
    if not requeue:
        _after_finish(task)
    return task


def _storable(text: str) -> str:
    """Text every database keeps as it is: no NUL (PostgreSQL refuses it), no unpaired surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


# refresh_worker_status's statements, written out: the ORM version (Case/When around an Exists subquery) took
# about 2 ms of CPU to compile on every complete, fail and cancel, ten times what running it takes. Only
# table names are formatted in (from the models); every value is a parameter.
_LOCK_WORKER_SQL = f"SELECT id FROM {Worker._meta.db_table} WHERE id = %s FOR UPDATE"  # noqa: S608
_REFRESH_WORKER_SQL = (
    f"UPDATE {Worker._meta.db_table} SET "  # noqa: S608
    f"status = CASE WHEN status IN (%s, %s) THEN (CASE WHEN EXISTS (SELECT 1 FROM {Task._meta.db_table} t "
    f"WHERE t.worker_id = %s AND t.status IN (%s, %s)) THEN %s ELSE %s END) ELSE status END, "
    f"tasks_completed = tasks_completed + %s, tasks_failed = tasks_failed + %s WHERE id = %s"
)


def refresh_worker_status(worker_id: int, *, completed: int = 0, failed: int = 0) -> None:
    """A live worker is busy while it holds a lease and idle otherwise (operator states are kept).

    Adds `completed`/`failed` to its counters in the same UPDATE. The worker row is locked first, so that the
    UPDATE (a new statement, a new snapshot on PostgreSQL) sees a concurrent transition of another of its
    leases once that commits; otherwise each of two leases ending at once sees the other one still active
    and the worker stays busy with nothing leased.
    """
    idle, busy = Worker.Status.IDLE.value, Worker.Status.BUSY.value
    leased, running = Status.LEASED.value, Status.RUNNING.value
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if connection.features.has_select_for_update:  # SQLite: one writer at a time anyway
            cursor.execute(_LOCK_WORKER_SQL, [worker_id])
        params = [idle, busy, worker_id, leased, running, busy, idle, completed, failed, worker_id]
        cursor.execute(_REFRESH_WORKER_SQL, params)


def _after_finish(task: Task) -> None:
    """Hook for work that follows a finished task (thumbnails, webhooks); runs after the commit."""
    from generation import hooks

    transaction.on_commit(lambda: hooks.task_finished(task.pk))


# --- Cancel, retry, priority ----------------------------------------------------------------------------


def task_cancel(*, task: Task) -> Task:
    """Cancel a queued or leased/running task. The worker learns of it from its next heartbeat or report."""
    now = timezone.now()
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if locked.is_finished:
            raise Conflict(f"The task is already {locked.status}.", code="task_finished")
        token, worker_id = locked.lease_token, locked.worker_id
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
            TaskAttempt.objects.filter(lease_token=token, outcome=Outcome.ACTIVE).update(
                outcome=Outcome.CANCELLED, finished_at=now
            )
            refresh_worker_status(worker_id)
    task.refresh_from_db()
    logger.info("task cancelled", extra={"task": task.public_id})
    return task


def task_retry(*, task: Task) -> Task:
    """Put a failed or cancelled task back in the queue with a fresh set of attempts."""
    with transaction.atomic():
        updated = Task.objects.filter(pk=task.pk, status__in=[Status.FAILED, Status.CANCELLED]).update(
            status=Status.QUEUED,
            attempts=0,
            worker=None,
            finished_at=None,
            progress_value=0,
            progress_max=0,
            error_code="",
            error_message="",
        )
        if not updated:
            raise Conflict("Only failed or cancelled tasks can be retried.", code="not_retryable")
        dispatch.announce_work()
    task.refresh_from_db()
    return task


def task_set_priority(*, task: Task, priority: int) -> Task:
    if not -1000 <= priority <= 1000:
        raise InvalidInput("Priority must be from -1000 to 1000.", fields={"priority": ["Out of range."]})
    Task.objects.filter(pk=task.pk).update(priority=priority)
    task.refresh_from_db()
    return task


# --- Reaping --------------------------------------------------------------------------------------------


def tasks_reap_expired(*, now: datetime | None = None) -> int:
    """Requeue (or fail with `worker_lost` after max attempts) every task whose lease has expired."""
    now = now or timezone.now()
    expired = Task.objects.filter(status__in=Task.ACTIVE_STATUSES, lease_expires_at__lt=now).values_list(
        "pk", "lease_token"
    )
    count = 0
    for pk, token in list(expired[:1000]):
        task = Task.objects.get(pk=pk)
        try:
            _close_lease(
                task,
                token,
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
            _close_lease(
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


_reap_lock = threading.Lock()
_last_reap = 0.0


def maybe_reap(now: datetime) -> bool:
    """Reap lazily on the lease path (at most every REAP_EVERY seconds per process), so correctness never
    depends on the background job runner being up. True when the sweep ran."""
    global _last_reap
    if time.monotonic() - _last_reap < farm_setting("REAP_EVERY") or not _reap_lock.acquire(blocking=False):
        return False
    try:
        _last_reap = time.monotonic()
        from workers_app.services import workers_mark_offline

        workers_mark_offline(now=now)
        tasks_reap_expired(now=now)
        return True
    finally:
        _reap_lock.release()


# --- Reads used by several callers ----------------------------------------------------------------------


def task_queue_position(task: Task) -> int | None:
    """1-based position among queued tasks (the order leasing uses), or None when not queued."""
    if task.status != Status.QUEUED:
        return None
    # Two range counts on task_claim_idx read only the entries ahead of the task; one OR count filtered
    # every queued row.
    queued = Task.objects.filter(status=Status.QUEUED)
    higher = queued.filter(priority__gt=task.priority).count()
    return higher + queued.filter(priority=task.priority, id__lt=task.pk).count() + 1


def task_get(*, public_id) -> Task:
    try:
        return Task.objects.select_related("template", "worker", "owner").get(public_id=public_id)
    except (Task.DoesNotExist, ValueError, TypeError, ValidationError):
        raise NotFound("No such task.")


# --- Templates ------------------------------------------------------------------------------------------


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


# --- Images ---------------------------------------------------------------------------------------------


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
