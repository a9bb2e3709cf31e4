"""How a lease ends from the worker's side: completed with its images, failed, or handed back."""

import logging
import uuid
from dataclasses import dataclass

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import DatabaseError, transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from generation import storage_space
from generation.exceptions import InvalidInput, LeaseLost, TooLarge
from generation.images import THUMBNAIL_EXTENSION, VerifiedImage, verify_image
from generation.models import Image, Task, TaskAttempt
from generation.serializers import landed_task_json
from generation.services.completion_slots import Slot, slot_release
from generation.services.learning import attempt_learn
from generation.services.leasing import TaskLease, task_lease_next
from generation.services.transitions import (
    LEASE_LOST,
    after_finish,
    close_lease,
    farm_setting,
    fenced,
    task_changed,
    worker_count_outcome,
)
from workers_app.models import Worker

logger = logging.getLogger(__name__)

Status = Task.Status
Outcome = TaskAttempt.Outcome


@dataclass(frozen=True)
class Completion:
    """A completed task with its images (newest first, the model's order) and, when asked for, the worker's
    next lease."""

    task: Task
    images: list[Image]
    next: TaskLease | None = None
    landed: bool = True  # False for a retry of a completion that had already landed


def task_complete(
    *,
    worker: Worker,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    files: list,
    comfyui_prompt_id: str = "",
    node_ids: list[str] | None = None,
    slot: Slot | None = None,
) -> Completion:
    """Verify and store the images and their thumbnails, then mark the task completed, in that order.

    Files are verified with Pillow (what follows an image's end dropped) and written before the
    transaction; rows are inserted and the status flips inside it, fenced by the lease token. If the fence
    fails, the written files are removed again; so are they when the storage fills up (InsufficientStorage,
    a 507 the daemon retries), and storage below T2I_MEDIA_MIN_FREE_BYTES refuses before writing.
    A retry of a completion that already landed for this same lease returns the task unchanged. A task whose
    start report has not landed (the daemon does not hold its completion back for it) is marked started now.
    The completion's `slot` (services.completion_slot), when it holds one, is counted off as it lands.
    """
    try:
        attempt = TaskAttempt.objects.select_related("task__template", "task__owner").get(
            lease_token=lease_token,
            worker=worker,
            task__public_id=task_id,
            task__lease_token=lease_token,
            task__status__in=Task.ACTIVE_STATUSES,
        )
    except TaskAttempt.DoesNotExist:
        return _landed_before(worker=worker, task_id=task_id, lease_token=lease_token)
    task = attempt.task
    verified = _verify_batch(task, files)
    try:
        return _store_and_finish(
            task,
            attempt,
            verified,
            worker=worker,
            comfyui_prompt_id=comfyui_prompt_id,
            node_ids=_node_ids(node_ids, len(verified)),
            slot=slot,
        )
    finally:
        for image in verified:
            image.close()


def _store_and_finish(
    task: Task,
    attempt: TaskAttempt,
    verified: list[VerifiedImage],
    *,
    worker: Worker,
    comfyui_prompt_id: str,
    node_ids: list[str],
    slot: Slot | None,
) -> Completion:
    storage_space.storage_assert_room(sum(image.size + len(image.thumbnail) for image in verified))
    now = timezone.now()
    done = {
        "status": Status.COMPLETED,
        "finished_at": now,
        "lease_token": None,
        "lease_expires_at": None,
        "error_code": "",
        "error_message": "",
    }
    images: list[Image] = []
    try:
        for index, image in enumerate(verified):
            name, thumbnail = _store(task, attempt.number, index, image)
            images.append(
                Image(
                    task=task,
                    attempt=attempt,
                    index=index,
                    node_id=node_ids[index],
                    file=name,
                    thumbnail=thumbnail,
                    width=image.width,
                    height=image.height,
                    size_bytes=image.size,
                    sha256=image.sha256,
                )
            )
        thumbnails_later = any(not image.thumbnail for image in images)
        with transaction.atomic():
            exact = _flip(task, attempt, worker=worker, done=done, now=now, prompt_id=comfyui_prompt_id)
            Image.objects.bulk_create(images)
            # Counted off as it lands, unless an image still needs its thumbnail (decoded after the commit).
            freed = slot is not None and slot.held and slot.worker_id == worker.pk and not thumbnails_later
            worker_count_outcome(
                worker.pk,
                completed=1,
                warm_checkpoint=task.checkpoint,
                also=slot_release() if freed else None,
            )
            # Its streams send the task as it lands without reading it again, when the rows in hand are exact.
            landed = _landed(task, attempt, images, worker) if exact else None
            task_changed(task.public_id, task.owner_id, state=landed, final=True)
        if freed:
            slot.held = False
    except BaseException as exc:
        for image in images:
            default_storage.delete(image.file.name)
            if image.thumbnail:
                default_storage.delete(image.thumbnail.name)
        if storage_space.is_disk_full(exc):
            raise storage_space.disk_full() from exc
        raise
    _learn(worker=worker, task=task, attempt=attempt, started=attempt.started_at or now, finished=now)
    logger.info("task completed", extra={"task": task.public_id, "worker": worker.name})
    if task.callback_url or thumbnails_later:
        after_finish(task)
    return Completion(task=task, images=images[::-1])


def _flip(task: Task, attempt: TaskAttempt, *, worker: Worker, done: dict, now, prompt_id: str) -> bool:
    """Mark the task and its attempt completed, fenced by the lease (LeaseLost when it is not live), and
    `task` and `attempt` in memory as the rows are now. True when that is exact: the rows held what the
    caller read (no start or progress report landed since), and each UPDATE wrote what is known; False
    when a report landed meanwhile: the UPDATEs keep its started_at and progress_max (and the memory may
    miss them). One UPDATE per row; two in that race."""
    lease = fenced(task_id=task.public_id, lease_token=attempt.lease_token, worker_id=worker.pk)
    known = {"started_at": task.started_at or now, "progress_value": task.progress_max}
    as_read = lease.filter(started_at=task.started_at, progress_max=task.progress_max)
    exact = bool(as_read.update(**done, **known))
    if not exact and not lease.update(
        **done, progress_value=F("progress_max"), started_at=Coalesce("started_at", now)
    ):
        raise LeaseLost("This lease is no longer yours.")
    ended = {
        "outcome": Outcome.COMPLETED,
        "finished_at": now,
        "comfyui_prompt_id": prompt_id[:64] or attempt.comfyui_prompt_id,
    }
    row = TaskAttempt.objects.filter(pk=attempt.pk)
    started = attempt.started_at or now
    exact = exact and bool(row.filter(started_at=attempt.started_at).update(**ended, started_at=started))
    if not exact:
        row.update(**ended, started_at=Coalesce("started_at", now))
    for name, value in (done | known).items():
        setattr(task, name, value)
    for name, value in (ended | {"started_at": started}).items():
        setattr(attempt, name, value)
    return exact


def _landed(task: Task, attempt: TaskAttempt, images: list[Image], worker: Worker) -> dict | None:
    """The task's JSON as the completion leaves it, from the rows in hand; None when it has earlier
    attempts (not in hand: its streams read the task)."""
    if attempt.number > 1:
        return None
    task.worker = attempt.worker = worker
    return landed_task_json(task, images[::-1], [attempt])


def _learn(*, worker: Worker, task: Task, attempt: TaskAttempt, started, finished) -> None:
    """Fold the landed attempt into the learned costs, in a transaction of their own after the completion's
    commit: the task's event streams hear of the completion without waiting for them, and a failure here (the
    database gone for a moment) costs the estimates one sample, never the completion. Before the next lease
    of the same request, whose plan reads them."""
    try:
        attempt_learn(worker=worker, task=task, attempt=attempt, started=started, finished=finished)
    except DatabaseError:
        logger.warning("learning from a completion failed", exc_info=True, extra={"task": task.public_id})


def _landed_before(*, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID) -> Completion:
    """A retry of this worker's own completion of this lease (its answer went missing); else LeaseLost."""
    done = Task.objects.filter(
        public_id=task_id,
        status=Status.COMPLETED,
        attempt_set__lease_token=lease_token,
        attempt_set__worker=worker,
        attempt_set__outcome=Outcome.COMPLETED,
    ).first()
    if done is None:
        raise LeaseLost(LEASE_LOST)
    return Completion(task=done, images=list(done.images.all()), landed=False)


def task_complete_and_lease(
    *,
    worker: Worker,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    files: list,
    comfyui_prompt_id: str = "",
    node_ids: list[str] | None = None,
    prefetch: bool = False,
    slot: Slot | None = None,
) -> Completion:
    """`task_complete`, then the worker's next lease as `task_lease_next(prefetch=...)` gives it: one
    round trip per task for a busy worker instead of two.

    The lease runs after the completion has committed, in its own transaction, so a failed lease never
    undoes a completion. A retried completion leases nothing: the answer that went missing may have carried
    a lease already (that one expires and is requeued like any unanswered lease).
    """
    done = task_complete(
        worker=worker,
        task_id=task_id,
        lease_token=lease_token,
        files=files,
        comfyui_prompt_id=comfyui_prompt_id,
        node_ids=node_ids,
        slot=slot,
    )
    if not done.landed:
        return done
    try:
        following = task_lease_next(worker=worker, prefetch=prefetch)
    except DatabaseError:
        logger.warning("lease after a completion failed", exc_info=True, extra={"worker": worker.name})
        return done
    return Completion(task=done.task, images=done.images, next=following)


# A whole workflow may save any number of images (several SaveImage nodes, batches).
MAX_WORKFLOW_IMAGES = 256


def _node_ids(node_ids: list[str] | None, count: int) -> list[str]:
    """The node id of each image, in upload order (empty when the worker sent none)."""
    if not node_ids:
        return [""] * count
    if len(node_ids) != count:
        raise InvalidInput(
            f"Expected {count} node id(s), got {len(node_ids)}.",
            fields={"node_ids": ["One node id per image, in the same order."]},
        )
    return node_ids


def _verify_batch(task: Task, files: list) -> list[VerifiedImage]:
    """Each upload checked and copied up to its image's end; the caller closes them. A whole workflow's
    images may be any number up to MAX_WORKFLOW_IMAGES, of any size; a template's are its batch, at its
    size."""
    if task.workflow is not None:
        if len(files) > MAX_WORKFLOW_IMAGES:
            raise InvalidInput(
                f"At most {MAX_WORKFLOW_IMAGES} images.", fields={"images": ["Too many images."]}
            )
        width = height = None
    else:
        if len(files) != task.batch_size:
            raise InvalidInput(
                f"Expected {task.batch_size} image(s), got {len(files)}.",
                fields={"images": [f"Expected {task.batch_size} image(s), got {len(files)}."]},
            )
        width, height = task.width, task.height
    total, cap = sum(getattr(f, "size", 0) or 0 for f in files), farm_setting("MAX_TASK_UPLOAD_BYTES")
    if total > cap:
        raise TooLarge(
            f"The images add up to {total} bytes; a task's may add up to {cap}.",
            fields={"images": [f"More than {cap} bytes together."]},
        )
    verified: list[VerifiedImage] = []
    try:
        for f in files:
            verified.append(
                verify_image(
                    f,
                    width=width,
                    height=height,
                    max_bytes=farm_setting("MAX_IMAGE_BYTES"),
                    field="images",
                    thumbnail=True,
                )
            )
    except BaseException:
        for image in verified:
            image.close()
        raise
    return verified


def _store(task: Task, attempt_number: int, index: int, image: VerifiedImage) -> tuple[str, str]:
    """Write an image and its thumbnail (when one was made); returns their storage names. A write that fails
    half-way (a full disk) leaves no part of the file behind."""
    day = timezone.now()
    stem = f"images/{day:%Y/%m/%d}/{task.public_id}_a{attempt_number}_{index}"
    name = _save_whole(f"{stem}.{image.extension}", File(image.file))
    if not image.thumbnail:
        return name, ""
    try:
        return name, _save_whole(f"{stem}.{THUMBNAIL_EXTENSION}", ContentFile(image.thumbnail))
    except BaseException:
        default_storage.delete(name)
        raise


def _save_whole(wanted: str, content: File) -> str:
    """default_storage.save, removing the partly written file when writing fails (FileSystemStorage leaves
    it). The name is this lease's own (task, attempt, index), so no one else writes it meanwhile."""
    name = default_storage.get_available_name(wanted)
    try:
        return default_storage.save(name, content)
    except BaseException:
        if default_storage.exists(name):
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
    return close_lease(
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
    return close_lease(task, lease_token, outcome=Outcome.RELEASED, worker_id=worker.pk)


def _active_task(*, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID) -> Task:
    """The task this lease names, or LeaseLost when the token is stale or another worker's."""
    task = fenced(task_id=task_id, lease_token=lease_token, worker_id=worker.pk).first()
    if task is None:
        raise LeaseLost(LEASE_LOST)
    return task
