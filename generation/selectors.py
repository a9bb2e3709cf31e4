"""Reads with rules in them: who may see or change a task, what the farm can run."""

from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Count, Prefetch, Q, QuerySet, prefetch_related_objects
from django.utils import timezone

from generation.exceptions import NotFound
from generation.models import Image, InputImage, Task, TaskAttempt, TaskPreview
from workers_app.models import Worker


def task_visible_to(task: Task, user) -> bool:
    """Staff see everything; users their own tasks; an anonymous task (submitted without an account: a
    deleted account takes its tasks with it) whoever has its id, a random UUID that only its submitter was
    given. Nothing lists other people's tasks or anonymous ones (tasks_for, the gallery)."""
    if user.is_authenticated and user.is_staff:
        return True
    if task.owner_id is None:
        return True
    return user.is_authenticated and task.owner_id == user.pk


def task_cancellable_by(task: Task, user) -> bool:
    """Whoever may see a task may cancel it, except that an anonymous task may be cancelled by whoever has
    its id only while anonymous submission is on (staff always)."""
    if task.owner_id is None and not (user.is_authenticated and user.is_staff):
        return settings.T2I["ALLOW_ANONYMOUS_SUBMIT"]
    return task_visible_to(task, user)


def task_get(*, public_id) -> Task:
    try:
        return Task.objects.select_related("template", "worker", "owner").get(public_id=public_id)
    except (Task.DoesNotExist, ValueError, TypeError, ValidationError):
        raise NotFound("No such task.")


def task_preview_for(user, public_id) -> TaskPreview:
    """The newest latent preview of a task `user` may see; NotFound when there is none (yet, or any more)."""
    try:
        preview = TaskPreview.objects.select_related("task").filter(task__public_id=public_id).first()
    except (ValueError, TypeError, ValidationError):
        preview = None
    if preview is None or not task_visible_to(preview.task, user):
        raise NotFound("No preview of this task.")
    return preview


def task_for(user, public_id) -> Task:
    """The task with this id if `user` may see it; NotFound otherwise (no hint that it exists)."""
    task = task_get(public_id=public_id)
    if not task_visible_to(task, user):
        raise NotFound("No such task.")
    return task


def task_status_for(user, public_id, *, with_attempts: bool = True) -> Task:
    """The task with this id, with its images (newest first) and, if asked, its attempts (with their
    workers) prefetched, if `user` may see it; NotFound otherwise."""
    try:
        task = Task.objects.select_related("template", "worker", "owner").get(public_id=public_id)
    except (Task.DoesNotExist, ValueError, TypeError, ValidationError):
        raise NotFound("No such task.")
    if not task_visible_to(task, user):
        raise NotFound("No such task.")
    # Reads that cannot find anything are skipped (an empty queryset runs no query): a task never leased has
    # no attempt, and images are stored in the transaction that completes a task, which stays completed.
    leased = task.lease_count > 0
    images = Image.objects.all() if task.status == Task.Status.COMPLETED else Image.objects.none()
    related = [Prefetch("images", queryset=images)]
    if with_attempts:
        attempts = TaskAttempt.objects.select_related("worker") if leased else TaskAttempt.objects.none()
        related.append(Prefetch("attempt_set", queryset=attempts))
    prefetch_related_objects([task], *related)
    return task


def task_as_submitted(task: Task) -> Task:
    """The task a submit just queued, as `task_status_for` would read it back: a new task has no images and
    no attempts yet, so nothing is read (its owner and template are the ones the submit used)."""
    prefetch_related_objects(
        [task],
        Prefetch("images", queryset=Image.objects.none()),
        Prefetch("attempt_set", queryset=TaskAttempt.objects.none()),
    )
    return task


def task_queue_position(task: Task) -> int | None:
    """1-based position among queued tasks (the order leasing uses), or None when not queued."""
    if task.status != Task.Status.QUEUED:
        return None
    # Two range counts on task_claim_idx read only the entries ahead of the task; one OR count filtered
    # every queued row.
    queued = Task.objects.filter(status=Task.Status.QUEUED)
    higher = queued.filter(priority__gt=task.priority).count()
    return higher + queued.filter(priority=task.priority, id__lt=task.pk).count() + 1


def tasks_for(user, *, mine: bool = False, status: str | None = None) -> QuerySet[Task]:
    # A whole workflow can be megabytes: lists never show it.
    qs = (
        Task.objects.select_related("template", "worker", "owner")
        .prefetch_related("images")
        .defer("workflow", "requirements")
    )
    if not (user.is_authenticated and user.is_staff) or mine:
        qs = qs.filter(owner=user) if user.is_authenticated else qs.none()
    if status:
        qs = qs.filter(status=status)
    return qs


def tasks_to_follow(user, *, finished_since=None, most: int = 100) -> list[Task]:
    """The user's unfinished tasks and those that finished after `finished_since` (an event stream's first
    events), newest first, at most `most`."""
    qs = tasks_for(user, mine=True).prefetch_related(
        Prefetch("attempt_set", queryset=TaskAttempt.objects.select_related("worker"))
    )
    followed = ~Q(status__in=Task.FINISHED_STATUSES)
    if finished_since is not None:
        followed |= Q(finished_at__gt=finished_since)
    return list(qs.filter(followed).order_by("-id")[:most])


def workers_recently_seen() -> QuerySet[Worker]:
    """Registered workers heard from within T2I_WORKER_CHOICES_HOURS: the only ones whose capabilities people
    are offered (the generate form's lists, the checkpoints API, the names in a refusal). A worker silent for
    longer, or gone for good, no longer decides what everyone sees."""
    since = timezone.now() - timedelta(hours=settings.T2I["WORKER_CHOICES_HOURS"])
    return Worker.objects.exclude(registered_at=None).filter(last_heartbeat__gte=since)


def checkpoints_available() -> list[dict]:
    """Checkpoints some online or recently seen worker has, with how many online workers have each."""
    online, seen = Counter(), set()
    for worker in workers_recently_seen().only("status", "capabilities"):
        for name in worker.checkpoints:
            seen.add(name)
            if worker.is_online:
                online[name] += 1
    default = settings.T2I["DEFAULT_CHECKPOINT"]
    return [{"name": n, "online_workers": online[n], "default": n == default} for n in sorted(seen)]


def uploads_for(user, *, kind: str | None = None) -> QuerySet[InputImage]:
    """A signed-in user's uploads (POST /comfy/upload/image), newest first, each with how many tasks used it
    (`task_count`) and how many of those have not finished (`unfinished_count`: while it is not 0 the
    upload cannot be deleted). Nobody else's, and none for an anonymous visitor."""
    if not user.is_authenticated:
        return InputImage.objects.none()
    uploads = InputImage.objects.filter(owner=user)  # input_image_owner_idx
    if kind:
        uploads = uploads.filter(kind=kind)
    return uploads.annotate(
        task_count=Count("tasks"),
        unfinished_count=Count("tasks", filter=Q(tasks__status__in=Task.UNFINISHED_STATUSES)),
    ).order_by("-id")


def upload_for(user, public_id) -> InputImage:
    """The user's upload with this public id; NotFound for another's, an unknown or malformed id alike."""
    try:
        return uploads_for(user).get(public_id=public_id)
    except (InputImage.DoesNotExist, ValueError, TypeError, ValidationError):
        raise NotFound("No such upload.")
