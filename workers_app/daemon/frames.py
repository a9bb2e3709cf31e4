"""``FrameRelay``: a task's ComfyUI socket frames, relayed to the scheduler for the ComfyUI front door.

The scheduler hands them to the socket of the client that submitted the prompt (generation.comfy_ws). The
frames go out in batches on a thread of their own, so following ComfyUI never waits for the scheduler: a batch
holds whatever came while the previous one was being sent. Progress is coalesced: a progress frame not yet
sent gives way to a newer one, and progress alone goes out at most ``PROGRESS_PER_SECOND`` times a second.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from .prompt_tracker import sanitize_error
from .reports import Outbox
from .socket_images import SocketImage

# The frames a ComfyUI client follows a prompt by (protocol section 4) that the scheduler relays; the rest
# stay on the worker. The prompt's end (`executed`, `execution_success`, `executing` with node null) reaches
# the client from the scheduler once the images are stored (docs/worker-api.md): sending it would cost a
# request beside the completion, for nothing.
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
PROGRESS_PER_SECOND = 10
MAX_PENDING = 200
# A latent preview a sampler sent, for a task that asked for previews (its `preview_method`):
# `["t2i_preview", {"node", "format", "image": base64}]`. At most PREVIEWS_PER_SECOND are taken (ComfyUI sends
# one per step), only the newest pending one is sent; the scheduler keeps it for the client's socket (as
# ComfyUI's binary frame) and the task page.
PREVIEW = "t2i_preview"
PREVIEWS_PER_SECOND = 4
MAX_PREVIEW_BYTES = 512 * 1024  # the scheduler's limits (generation.services.frames)
PREVIEW_FORMATS = frozenset({"png", "jpeg"})
PACED = frozenset({"progress", PREVIEW})


class FrameRelay(Outbox):
    """Thread-safe; ``put`` is called on the ComfyUI socket's thread and never blocks."""

    max_pending = MAX_PENDING  # a scheduler that does not answer never makes the worker hold more
    replaced = frozenset({PREVIEW})

    def __init__(
        self,
        send: Callable[[list[list[Any]]], None],
        *,
        name: str = "frames",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(name=name)
        self._send = send
        self._clock = clock
        self._sleep = sleep
        self._progress_sent_at = float("-inf")
        self._preview_at = float("-inf")

    def put(self, message: dict[str, Any]) -> None:
        kind, data = message.get("type"), message.get("data")
        if kind not in RELAYED or not isinstance(data, dict):
            return
        if kind == "executing" and data.get("node") is None:
            return
        if kind == "execution_error":
            data = sanitize_error(data)
        self._put(kind, [kind, data])

    def put_preview(self, node_id: str, image: SocketImage) -> None:
        """A preview image; one the scheduler would refuse (size, format), or sooner than PREVIEWS_PER_SECOND
        allows after the last one taken, is dropped."""
        now = self._clock()
        if image.format not in PREVIEW_FORMATS or len(image.data) > MAX_PREVIEW_BYTES:
            return
        if now - self._preview_at < 1 / PREVIEWS_PER_SECOND:
            return
        self._preview_at = now
        encoded = base64.b64encode(image.data).decode("ascii")
        self._put(PREVIEW, [PREVIEW, {"node": node_id, "format": image.format, "image": encoded}])

    def _drain(self) -> None:
        while True:
            with self._lock:
                only_paced = bool(self._pending) and all(kind in PACED for kind, _ in self._pending)
                wait = self._progress_sent_at + 1 / PROGRESS_PER_SECOND - self._clock()
            if only_paced and wait > 0:
                self._sleep(wait)  # progress and previews alone: at most PROGRESS_PER_SECOND batches a second
            more, batch = self._take(lambda pending: (pending, []))
            if not more:
                return
            if any(kind in PACED for kind, _ in batch):
                self._progress_sent_at = self._clock()
            self._send(batch)
