"""ComfyUI socket frames a worker relays for a task that a front-door client follows (generation.comfy_ws):
checked against the lease, given the client's prompt id, and published on the event channel in pieces that
fit it."""

import json
import logging
import uuid
from typing import Any

from generation import dispatch
from generation.exceptions import LeaseLost
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
EVENT = "comfy_frames"
EVENT_BUDGET = dispatch.MAX_PAYLOAD_BYTES - 600  # room for the envelope


def task_relay_frames(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, frames: list[list[Any]]
) -> int:
    """Publish the frames of this live lease to its client's socket; how many were sent on."""
    row = (
        fenced(task_id=task_id, lease_token=lease_token, worker_id=worker.pk)
        .values("owner_id", "client_id", "client_prompt_id")
        .first()
    )
    if row is None:
        if lease_completed(task_id=task_id, lease_token=lease_token, worker_id=worker.pk):
            return 0
        raise LeaseLost(LEASE_LOST)
    if not row["client_id"]:
        return 0
    prompt_id = row["client_prompt_id"] or str(task_id)
    kept = [[kind, {**data, "prompt_id": prompt_id}] for kind, data in frames if _relayed(kind, data)]
    envelope = {"task": str(task_id), "owner": row["owner_id"], "client_id": row["client_id"]}
    sent = 0
    for chunk in _chunks(kept):
        dispatch.publish(EVENT, {**envelope, "frames": chunk})
        sent += len(chunk)
    return sent


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
