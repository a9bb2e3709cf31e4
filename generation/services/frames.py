"""ComfyUI socket frames a worker relays for a task that a front-door client follows (generation.comfy_ws):
checked against the lease, given the client's prompt id, and published on the event channel in pieces that
fit it."""

import base64
import binascii
import json
import logging
import uuid
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from generation import dispatch
from generation.exceptions import InvalidInput, LeaseLost
from generation.models import PREVIEWING, Task, TaskPreview
from generation.services.transitions import LEASE_LOST, fenced, lease_completed
from workers_app.models import Worker

logger = logging.getLogger(__name__)

# The frames a client gets from the worker; the task's end (executed with the farm's image names, the
# terminal frame, executing null) comes from the scheduler once the images are stored (comfy_ws).
RELAYED = frozenset(
    {
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "execution_error",
        "execution_interrupted",
    }
)
# A latent preview from the worker, `["t2i_preview", {"node", "format", "image": base64}]`: stored as the
# task's TaskPreview, relayed as `["t2i_preview", {"node"}]` (the channel carries ids, not images; comfy_ws
# reads the image and sends ComfyUI's binary frame).
PREVIEW = "t2i_preview"
PREVIEW_FORMATS = frozenset({"png", "jpeg"})
MAX_PREVIEW_BYTES = 512 * 1024
EVENT = "comfy_frames"
EVENT_BUDGET = dispatch.MAX_PAYLOAD_BYTES - 600  # room for the envelope


def task_relay_frames(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, frames: list[list[Any]]
) -> int:
    """Publish the frames of this live lease to its client's socket; how many were sent on."""
    row = (
        fenced(task_id=task_id, lease_token=lease_token, worker_id=worker.pk)
        .values("id", "owner_id", "client_id", "client_prompt_id", "preview_method")
        .first()
    )
    if row is None:
        if lease_completed(task_id=task_id, lease_token=lease_token, worker_id=worker.pk):
            return 0
        raise LeaseLost(LEASE_LOST)
    previews = [data for kind, data in frames if kind == PREVIEW]
    node_id = None
    if previews and row["preview_method"] in PREVIEWING:
        node_id = task_preview_store(task_pk=row["id"], data=previews[-1])  # only the newest counts
    if not row["client_id"]:
        return 0  # no socket follows it: the task page reads the preview (GET tasks/{id}/preview)
    prompt_id = row["client_prompt_id"] or str(task_id)
    kept = [[kind, {**data, "prompt_id": prompt_id}] for kind, data in frames if _relayed(kind, data)]
    if node_id is not None:
        kept.append([PREVIEW, {"node": node_id, "prompt_id": prompt_id, "task": str(task_id)}])
    envelope = {"task": str(task_id), "owner": row["owner_id"], "client_id": row["client_id"]}
    sent = 0
    for chunk in _chunks(kept):
        dispatch.publish(EVENT, {**envelope, "frames": chunk})
        sent += len(chunk)
    return sent


def task_preview_store(*, task_pk: int, data: dict[str, Any]) -> str:
    """Keep a preview as the task's newest (checked: format, base64, size); its node id."""
    node_id, image_format, encoded = data.get("node"), data.get("format"), data.get("image")
    errors: dict[str, list[str]] = {}
    if not isinstance(node_id, str) or not 0 < len(node_id) <= 64:
        errors["frames.node"] = ["A node id of 1 to 64 characters."]
    if image_format not in PREVIEW_FORMATS:
        errors["frames.format"] = [f"One of {', '.join(sorted(PREVIEW_FORMATS))}."]
    image = b""
    if not isinstance(encoded, str) or len(encoded) > MAX_PREVIEW_BYTES * 4 // 3 + 4:
        errors["frames.image"] = [f"Base64 of at most {MAX_PREVIEW_BYTES} bytes."]
    else:
        try:
            image = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            errors["frames.image"] = ["Not base64."]
    if errors:
        raise InvalidInput("The preview frame is not valid.", fields=errors)
    fields = {"node_id": node_id, "image_format": image_format, "data": image, "updated_at": timezone.now()}
    with transaction.atomic():
        if not TaskPreview.objects.filter(task_id=task_pk).update(seq=F("seq") + 1, **fields):
            TaskPreview.objects.create(task_id=task_pk, **fields)
    return node_id


def task_previews_delete_ended() -> int:
    """Delete the previews of tasks that are no longer running (a requeued task's too: its next attempt
    sends new ones); how many."""
    deleted, _ = TaskPreview.objects.exclude(task__status__in=Task.ACTIVE_STATUSES).delete()
    return deleted


def _relayed(kind: str, data: dict[str, Any]) -> bool:
    """`executing` with node null ends the prompt on the worker's ComfyUI; the client's ends after the images
    are stored (comfy_ws), so the worker's is not relayed."""
    return kind in RELAYED and not (kind == "executing" and data.get("node") is None)


def _chunks(frames: list[list[Any]]) -> list[list[list[Any]]]:
    """Frames in groups whose JSON fits one event; a frame too large for any is dropped (and logged)."""
    chunks: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    size = 0
    for frame in frames:
        length = len(json.dumps(frame, separators=(",", ":"), default=str).encode()) + 1
        if length > EVENT_BUDGET:
            logger.info("a %s frame of %d bytes was not relayed", frame[0], length)
            continue
        if current and size + length > EVENT_BUDGET:
            chunks.append(current)
            current, size = [], 0
        current.append(frame)
        size += length
    if current:
        chunks.append(current)
    return chunks
