"""``InventoryWatch``: keeps the scheduler's copy of what this worker's ComfyUI has (checkpoints, node
classes, the model lists of loader inputs) true after register.

It reads ``/object_info`` again when ComfyUI may have restarted (its socket reconnected, or it was
unreachable and came back), every ``interval`` seconds, and at once when a prompt was refused for a model
the scheduler believed was here; it sends the result (``POST inventory``) only when it differs from what it
last sent, or when told to (the scheduler dropped that model from its copy and must hear the truth).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .comfyui import ComfyUIError
from .scheduler import SchedulerError

logger = logging.getLogger(__name__)

RETRY_AFTER = 30.0  # seconds: a failed refresh is tried again this soon (or at the interval, if shorter)


class _Comfy(Protocol):
    def capabilities(self) -> dict[str, Any]: ...


class _Scheduler(Protocol):
    def inventory(self, capabilities: dict[str, Any]) -> bool: ...


class InventoryWatch:
    def __init__(
        self,
        comfy: _Comfy,
        scheduler: _Scheduler,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.comfy = comfy
        self.scheduler = scheduler
        self.interval = interval  # 0: only on restarts and refused models
        self.clock = clock
        self.sent: dict[str, Any] | None = None  # what the scheduler holds, as far as this daemon knows
        self._due_at = float("inf")
        self._restarted = False
        self._lock = threading.Lock()  # one refresh at a time (the loop thread and task threads)

    def registered(self, capabilities: dict[str, Any]) -> None:
        """Register sent `capabilities`: they are what the scheduler holds now."""
        self.sent = capabilities
        self._restarted = False
        self._schedule(self.interval)

    def comfy_restarted(self) -> None:
        """ComfyUI may have restarted (with other files or custom nodes): refresh on the next `due` check."""
        self._restarted = True

    def due(self) -> bool:
        return self.sent is not None and (self._restarted or self.clock() >= self._due_at)

    def refresh(self, *, force: bool = False, why: str = "") -> bool:
        """Read ComfyUI's inventory; send it when it changed (or `force`). True when it was sent."""
        with self._lock:
            why = why or ("ComfyUI reconnected" if self._restarted else "timer")
            self._restarted = False
            try:
                capabilities = self.comfy.capabilities()
            except ComfyUIError as exc:
                logger.warning("could not read ComfyUI's inventory (%s); trying again later", exc.message)
                self._schedule(min(self.interval or RETRY_AFTER, RETRY_AFTER))
                return False
            if capabilities == self.sent and not force:
                logger.debug("inventory unchanged (%s)", why)
                self._schedule(self.interval)
                return False
            try:
                changed = self.scheduler.inventory(capabilities)
            except SchedulerError as exc:
                logger.warning("could not send the inventory (%s); trying again later", exc.message)
                self._schedule(min(self.interval or RETRY_AFTER, RETRY_AFTER))
                return False
            self.sent = capabilities
            self._schedule(self.interval)
            logger.info(
                "inventory sent (%s): %d checkpoint(s), %d node class(es)%s",
                why,
                len(capabilities.get("checkpoints") or ()),
                len(capabilities.get("node_classes") or ()),
                "" if changed else "; the scheduler had it already",
            )
            return True

    def _schedule(self, seconds: float) -> None:
        self._due_at = self.clock() + seconds if seconds > 0 else float("inf")
