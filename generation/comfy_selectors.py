"""Reads of the ComfyUI front door: a client's space (the signed-in user's tasks, or the shared anonymous
space) and its prompts by the ids the client knows."""

from __future__ import annotations

import contextlib
import uuid

from django.db.models import Prefetch, Q, QuerySet

from generation.models import Image, Task, TaskPreview

# What the front door's answers read of a task and its images (generation.comfy_shapes: history entries, queue
# items, the socket's end frames), not the whole rows: a task's other columns (its prompt texts, requirements,
# lease) cost their transfer and conversion on every history read and every end of a prompt.
ENTRY_FIELDS = (
    "id",
    "public_id",
    "status",
    "client_prompt_id",
    "client_id",
    "workflow",
    "created_at",
    "started_at",
    "finished_at",
    "error_code",
    "error_message",
)
IMAGE_FIELDS = ("task_id", "index", "node_id", "file")


def space(user) -> QuerySet[Task]:
    """The whole-workflow tasks a front-door client sees: its user's, or, anonymous, the tasks nobody owns."""
    owner = Q(owner=user) if user.is_authenticated else Q(owner=None)
    return Task.objects.filter(owner, template=None)


def by_prompt_id(user, prompt_id: str) -> QuerySet[Task]:
    """The task a client names by its own prompt id, or by the farm's task id."""
    named = Q(client_prompt_id=prompt_id)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        named |= Q(public_id=uuid.UUID(prompt_id))
    return space(user).filter(named)


def in_history(user) -> QuerySet[Task]:
    """The finished tasks of the client's space its ComfyUI history shows: all but those a POST /history
    took out (generation.services.comfy_history)."""
    return space(user).filter(status__in=Task.FINISHED_STATUSES, comfy_history_hidden_at=None)


def with_images(tasks: QuerySet[Task]) -> QuerySet[Task]:
    """`tasks` as history entries read them: ENTRY_FIELDS, and their images' IMAGE_FIELDS (one more query)."""
    return tasks.only(*ENTRY_FIELDS).prefetch_related(images())


def images() -> Prefetch:
    """A task's images as the front door names them (comfy_shapes sorts them by index)."""
    return Prefetch("images", queryset=Image.objects.only(*IMAGE_FIELDS).order_by())


def history_entry(user, prompt_id: str) -> Task | None:
    """The finished task that GET /history/{prompt_id} shows, if any."""
    return with_images(by_prompt_id(user, prompt_id) & in_history(user)).first()


def history(user, *, max_items: int, offset: int | None) -> list[Task]:
    """Finished tasks, oldest first: the newest `max_items`, or `max_items` from `offset` (ComfyUI 3.4)."""
    finished = with_images(in_history(user))
    if offset is None:
        return list(finished.order_by("-finished_at", "-id")[:max_items])[::-1]
    return list(finished.order_by("finished_at", "id")[offset : offset + max_items])


def unfinished(user) -> QuerySet[Task]:
    """The client's queued and running prompts (by status, so that the status indexes can find them among a
    long history)."""
    return space(user).filter(status__in=Task.UNFINISHED_STATUSES)


def queue(user) -> tuple[list[Task], list[Task]]:
    """(running, pending), each in the order they run."""
    tasks = unfinished(user).only(*ENTRY_FIELDS).order_by("-priority", "id")
    running = [t for t in tasks if t.is_active]
    pending = [t for t in tasks if t.status == Task.Status.QUEUED]
    return running, pending


def queue_remaining(user) -> int:
    """ComfyUI's `queue_remaining`: how many of the client's prompts are queued or running (a count, not the
    rows: a `status` frame needs no more)."""
    return unfinished(user).count()


def task_entry(user, task_id: str) -> Task | None:
    """A task of the client's space by the farm's id, as an end frame reads it (ENTRY_FIELDS, without its
    images)."""
    return space(user).filter(public_id=task_id).only(*ENTRY_FIELDS).first()


def landed_entry(user, task_id: str) -> tuple[Task | None, list[Image]]:
    """A task of the client's space that a completion just landed, and its images, in one query where it
    has images (each row brings the task's ENTRY_FIELDS along), else in one more (task_entry)."""
    task_fields = [f"task__{name}" for name in ENTRY_FIELDS]
    found = list(
        Image.objects.filter(_image_owner(user), task__public_id=task_id, task__template=None)
        .select_related("task")
        .only(*IMAGE_FIELDS, *task_fields)
        .order_by()
    )
    if found:
        return found[0].task, found
    return task_entry(user, task_id), []


def image_named(user, subfolder: str, filename: str) -> Image | None:
    """An image of the client's space by the name its history gave (generation.comfy_shapes.image_ref)."""
    if not filename or "/" in filename or "\\" in filename:
        return None
    name = f"{subfolder}/{filename}" if subfolder else filename
    return Image.objects.filter(_image_owner(user), file=name, task__template=None).only("file").first()


def _image_owner(user) -> Q:
    return Q(task__owner=user) if user.is_authenticated else Q(task__owner=None)


def preview_after(task_id: str, after: int = 0) -> TaskPreview | None:
    """A task's newest latent preview (by its public id), if its seq is past `after` (what a socket sent)."""
    return TaskPreview.objects.filter(task__public_id=task_id, seq__gt=after).first()
