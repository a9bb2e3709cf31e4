"""Reads of the ComfyUI front door: a client's space (the signed-in user's tasks, or the shared anonymous
space) and its prompts by the ids the client knows."""

from __future__ import annotations

import contextlib
import uuid

from django.db.models import Q, QuerySet

from generation.models import Image, Task, TaskPreview


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


def history_entry(user, prompt_id: str) -> Task | None:
    """The finished task that GET /history/{prompt_id} shows, if any."""
    tasks = by_prompt_id(user, prompt_id) & in_history(user)
    return tasks.prefetch_related("images").first()


def history(user, *, max_items: int, offset: int | None) -> list[Task]:
    """Finished tasks, oldest first: the newest `max_items`, or `max_items` from `offset` (ComfyUI 3.4)."""
    finished = in_history(user).prefetch_related("images")
    if offset is None:
        return list(finished.order_by("-finished_at", "-id")[:max_items])[::-1]
    return list(finished.order_by("finished_at", "id")[offset : offset + max_items])


def queue(user) -> tuple[list[Task], list[Task]]:
    """(running, pending), each in the order they run."""
    unfinished = space(user).exclude(status__in=Task.FINISHED_STATUSES).order_by("-priority", "id")
    running = [t for t in unfinished if t.is_active]
    pending = [t for t in unfinished if t.status == Task.Status.QUEUED]
    return running, pending


def image_named(user, subfolder: str, filename: str) -> Image | None:
    """An image of the client's space by the name its history gave (generation.comfy_shapes.image_ref)."""
    if not filename or "/" in filename or "\\" in filename:
        return None
    name = f"{subfolder}/{filename}" if subfolder else filename
    owner = Q(task__owner=user) if user.is_authenticated else Q(task__owner=None)
    return Image.objects.filter(owner, file=name, task__template=None).select_related("task").first()


def preview_after(task_id: str, after: int = 0) -> TaskPreview | None:
    """A task's newest latent preview (by its public id), if its seq is past `after` (what a socket sent)."""
    return TaskPreview.objects.filter(task__public_id=task_id, seq__gt=after).first()
