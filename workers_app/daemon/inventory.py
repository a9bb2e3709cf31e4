"""``InventoryWatch``: keeps the scheduler's copy of what this worker's ComfyUI has (checkpoints, node
classes, the model lists of loader inputs) true after register.

It reads ``/object_info`` again when ComfyUI may have restarted (its socket reconnected, or it was
unreachable and came back), every ``interval`` seconds, and at once when a prompt was refused for a model
the scheduler believed was here; it sends the result (``POST inventory``) only when it differs from what it
last sent, or when told to (the scheduler dropped that model from its copy and must hear the truth).

The capabilities name the whole ``/object_info`` by its SHA-256 (``object_info_sha256``); when register's or
inventory's answer says ``"send"`` (the scheduler does not store that body yet, e.g. the first worker of a
farm with this install), it sends the body once (``POST object_info/<sha256>``), and again after a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .comfyui import ComfyUIError
from .scheduler import InventoryReply, SchedulerError

logger = logging.getLogger(__name__)

RETRY_AFTER = 30.0  # seconds: a failed refresh is tried again this soon (or at the interval, if shorter)


class _Comfy(Protocol):
    def capabilities(self) -> dict[str, Any]: ...

    def object_info_body(self, sha256: str) -> bytes | None: ...


class _Scheduler(Protocol):
    def inventory(self, capabilities: dict[str, Any]) -> InventoryReply: ...

    def object_info(self, sha256: str, body: bytes) -> bool: ...


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
        self._spec_due_at = float("inf")  # a failed object_info send is tried again then
        self._lock = threading.Lock()  # one refresh at a time (the loop thread and task threads)

    def registered(self, capabilities: dict[str, Any], *, object_info: str | None = None) -> None:
        """Register sent `capabilities`: they are what the scheduler holds now. `object_info` is its answer
        about their /object_info ("send": it lacks the body)."""
        with self._lock:
            self.sent = capabilities
            self._restarted = False
            self._schedule(self.interval)
            self._spec_due_at = float("inf")
            if object_info == "send":
                self._send_spec(capabilities)

    def comfy_restarted(self) -> None:
        """ComfyUI may have restarted (with other files or custom nodes): refresh on the next `due` check."""
        self._restarted = True

    def due(self) -> bool:
        now = self.clock()
        return self.sent is not None and (self._restarted or now >= self._due_at or now >= self._spec_due_at)

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
            spec_owed = self._spec_due_at < float("inf")
            if capabilities == self.sent and not force and not spec_owed:
                logger.debug("inventory unchanged (%s)", why)
                self._schedule(self.interval)
                return False
            try:
                reply = self.scheduler.inventory(capabilities)
            except SchedulerError as exc:
                logger.warning("could not send the inventory (%s); trying again later", exc.message)
                self._schedule(min(self.interval or RETRY_AFTER, RETRY_AFTER))
                return False
            changed = reply.changed
            self.sent = capabilities
            self._schedule(self.interval)
            self._spec_due_at = float("inf")
            if reply.object_info == "send":
                self._send_spec(capabilities)
            logger.info(
                "inventory sent (%s): %d checkpoint(s), %d node class(es)%s",
                why,
                len(capabilities.get("checkpoints") or ()),
                len(capabilities.get("node_classes") or ()),
                "" if changed else "; the scheduler had it already",
            )
            return True

    def _send_spec(self, capabilities: dict[str, Any]) -> None:
        """Send the /object_info body that `capabilities` name; on failure, try again within RETRY_AFTER
        (a `due` refresh reads it again and asks the scheduler once more)."""
        digest = capabilities.get("object_info_sha256") or ""
        body = self.comfy.object_info_body(digest) if digest else None
        if body is None:
            return  # read again meanwhile: the next refresh sends what ComfyUI has now
        try:
            stored = self.scheduler.object_info(digest, body)
        except SchedulerError as exc:
            logger.warning("could not send /object_info (%s); trying again later", exc.message)
            self._spec_due_at = self.clock() + RETRY_AFTER
            return
        logger.info(
            "/object_info %s sent (%d bytes)%s",
            digest[:12],
            len(body),
            "" if stored else "; it had it already",
        )

    def _schedule(self, seconds: float) -> None:
        self._due_at = self.clock() + seconds if seconds > 0 else float("inf")
