"""Pure ComfyUI message handling: a per-prompt state machine fed with decoded WebSocket messages.

No sockets, no HTTP, no threads: ``ComfyUIClient`` feeds it from its reader thread (under its own lock) and
tests replay recorded traces through it (ComfyUI protocol fact sheet, sections 4, 5 and 13).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
# Keys of execution_error payloads that are never kept: huge, and they carry the prompt text (protocol 13.3).
_DROPPED_ERROR_KEYS = frozenset({"current_inputs", "current_outputs", "traceback"})
MAX_MESSAGE_CHARS = 2000


class OutcomeStatus(StrEnum):
    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    LOST = "lost"


@dataclass(frozen=True)
class ImageRef:
    """One output file as ComfyUI names it; ``as_params()`` gives the ``/view`` query."""

    filename: str
    subfolder: str = ""
    type: str = "output"
    node_id: str = field(default="", compare=False)  # the node whose output it is (uploaded with it)

    def as_params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


@dataclass(frozen=True)
class PromptOutcome:
    """How a prompt ended, as far as the client can tell. Never holds inputs or tracebacks."""

    status: OutcomeStatus
    prompt_id: str
    images: tuple[ImageRef, ...] = ()
    node_id: str | None = None
    node_type: str | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    source: str = "history"  # "history", "websocket" or "poll"
    # The socket dropped while the prompt ran: frames (socket images included) may be missing.
    socket_gap: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is OutcomeStatus.SUCCESS


@dataclass
class PromptState:
    """What the socket told us about one prompt so far."""

    prompt_id: str
    tracked: bool = False
    started: bool = False
    node: str | None = None
    progress: tuple[float, float] | None = None
    progress_seq: int = 0
    images: list[ImageRef] = field(default_factory=list)
    terminal: str | None = None
    terminal_data: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # `executing` null after the terminal event: history is written
    last_event_at: float = 0.0
    socket_gap: bool = False  # the socket dropped before the prompt finished: frames may be missing
    seq: int = 0  # bumped when something a waiter acts on changes (start, progress, image, end)

    def ws_outcome(self) -> PromptOutcome | None:
        """The outcome from socket events alone (fallback when history stays empty)."""
        if self.terminal == "execution_success":
            return PromptOutcome(
                OutcomeStatus.SUCCESS, self.prompt_id, tuple(self.images), source="websocket"
            )
        if self.terminal == "execution_error":
            return error_outcome(self.prompt_id, self.terminal_data, source="websocket")
        if self.terminal == "execution_interrupted":
            return interrupted_outcome(self.prompt_id, self.terminal_data, source="websocket")
        return None


class PromptTracker:
    """Routes decoded ``{"type", "data"}`` messages to per-prompt states.

    Events for prompt ids nobody tracks yet are buffered (bounded), so a prompt whose events arrive before
    the ``POST /prompt`` answer is still followed (protocol 13.5). ``running`` is the prompt the server is
    believed to run; it resolves the bare ``executing {"node"}`` sent after a reconnect (protocol 4.7).
    ``changed`` collects the ids whose ``seq`` moved, so a reader wakes only the waiters that care (most
    messages, e.g. ``progress_state``, change nothing a waiter acts on).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_untracked: int = 64) -> None:
        self._clock = clock
        self._max_untracked = max_untracked
        self._states: OrderedDict[str, PromptState] = OrderedDict()
        self.running: str | None = None
        self.queue_remaining: int | None = None
        self.orphan_node: str | None = None  # a bare `executing` we could not attribute
        self.connected = False
        self.generation = 0  # bumped on every (re)connect: events may have been missed before it
        self.changed: set[str] = set()

    # -- bookkeeping --------------------------------------------------------------------------------
    def track(self, prompt_id: str) -> PromptState:
        state = self._state(prompt_id)
        state.tracked = True
        if not state.last_event_at:
            state.last_event_at = self._clock()
        return state

    def forget(self, prompt_id: str) -> None:
        self._states.pop(prompt_id, None)
        if self.running == prompt_id:
            self.running = None

    def get(self, prompt_id: str) -> PromptState | None:
        return self._states.get(prompt_id)

    def mark_started(self, prompt_id: str) -> None:
        """Record that a poll of ``/queue`` showed the prompt running."""
        state = self._state(prompt_id)
        state.started = True
        self.running = prompt_id

    def on_connect(self) -> None:
        self.connected = True
        self.generation += 1

    def on_disconnect(self) -> None:
        self.connected = False
        for state in self._states.values():
            if state.tracked and not state.finished:
                state.socket_gap = True

    def image_source(self, prompt_id: str | None, node_id: str | None) -> tuple[str, str] | None:
        """(prompt id, node id) of a binary image frame: what a type 4 frame names, else the prompt running
        and its node (a type 1 frame names neither; it comes while its node executes)."""
        prompt_id = prompt_id or self.running
        state = self._states.get(prompt_id) if prompt_id else None
        if state is None:
            return None
        node_id = node_id or state.node
        return (state.prompt_id, node_id) if node_id else None

    # -- message handling ---------------------------------------------------------------------------
    def feed(self, msg: dict[str, Any]) -> str | None:
        """Apply one decoded text message; return the prompt id it concerned, if any."""
        kind = msg.get("type")
        data = msg.get("data")
        if not isinstance(data, dict):
            return None
        if kind == "status":
            self._on_status(data)
            return None
        if kind == "executing":
            return self._on_executing(data)
        prompt_id = data.get("prompt_id")
        if not isinstance(prompt_id, str):
            return None
        handler = _HANDLERS.get(str(kind))
        if handler is None:
            return None
        state = self._touch(prompt_id)
        handler(self, state, data)
        return prompt_id

    def _on_status(self, data: dict[str, Any]) -> None:
        exec_info = (data.get("status") or {}).get("exec_info") or {}
        remaining = exec_info.get("queue_remaining")
        if isinstance(remaining, int):
            self.queue_remaining = remaining
            if remaining == 0:
                self.running = None

    def _on_executing(self, data: dict[str, Any]) -> str | None:
        node = data.get("node")
        prompt_id = data.get("prompt_id")
        if prompt_id is None:
            # After a reconnect the server sends `executing {"node"}` without a prompt id (protocol 4.7).
            prompt_id = self.running
            if prompt_id is None:
                self.orphan_node = node
                return None
        state = self._touch(prompt_id)
        if node is None:
            state.finished = True
            self._bump(state)
            if self.running == prompt_id:
                self.running = None
        else:
            self._set_started(state)
            state.node = str(node)
            self.running = prompt_id
        return prompt_id

    def _on_start(self, state: PromptState, data: dict[str, Any]) -> None:
        self._set_started(state)
        self.running = state.prompt_id
        self.orphan_node = None

    def _on_running_event(self, state: PromptState, data: dict[str, Any]) -> None:
        self._set_started(state)

    def _on_progress(self, state: PromptState, data: dict[str, Any]) -> None:
        value, maximum = data.get("value"), data.get("max")
        if isinstance(value, int | float) and isinstance(maximum, int | float) and maximum > 0:
            state.progress = (float(value), float(maximum))
            state.progress_seq += 1
            self._bump(state)
        self._set_started(state)

    def _on_executed(self, state: PromptState, data: dict[str, Any]) -> None:
        for ref in images_from_output(data.get("output"), node_id=str(data.get("node") or "")):
            if ref not in state.images:
                state.images.append(ref)
                self._bump(state)

    def _on_terminal(self, state: PromptState, data: dict[str, Any]) -> None:
        state.started = True
        state.terminal_data = sanitize_error(data)
        self._bump(state)
        if self.running == state.prompt_id:
            self.running = None

    def _set_started(self, state: PromptState) -> None:
        if not state.started:
            state.started = True
            self._bump(state)

    def _bump(self, state: PromptState) -> None:
        state.seq += 1
        self.changed.add(state.prompt_id)

    def _state(self, prompt_id: str) -> PromptState:
        state = self._states.get(prompt_id)
        if state is None:
            state = self._states[prompt_id] = PromptState(prompt_id)
            self._evict_untracked()
        return state

    def _touch(self, prompt_id: str) -> PromptState:
        state = self._state(prompt_id)
        state.last_event_at = self._clock()
        return state

    def _evict_untracked(self) -> None:
        untracked = [pid for pid, s in self._states.items() if not s.tracked]
        for pid in untracked[: max(0, len(untracked) - self._max_untracked)]:
            del self._states[pid]


def _terminal_handler(kind: str) -> Callable[[PromptTracker, PromptState, dict[str, Any]], None]:
    def handle(tracker: PromptTracker, state: PromptState, data: dict[str, Any]) -> None:
        state.terminal = kind
        tracker._on_terminal(state, data)

    return handle


_HANDLERS: dict[str, Callable[[PromptTracker, PromptState, dict[str, Any]], None]] = {
    "execution_start": PromptTracker._on_start,
    "execution_cached": PromptTracker._on_running_event,
    "progress_state": PromptTracker._on_running_event,
    "progress": PromptTracker._on_progress,
    "executed": PromptTracker._on_executed,
    **{kind: _terminal_handler(kind) for kind in TERMINAL_EVENTS},
}


# -- pure helpers shared with the HTTP side -----------------------------------------------------------
def sanitize_error(data: dict[str, Any]) -> dict[str, Any]:
    """Drop inputs, outputs and tracebacks; clip the message."""
    clean = {k: v for k, v in data.items() if k not in _DROPPED_ERROR_KEYS}
    message = clean.get("exception_message")
    if isinstance(message, str) and len(message) > MAX_MESSAGE_CHARS:
        clean["exception_message"] = message[:MAX_MESSAGE_CHARS] + "…"
    return clean


def images_from_output(output: Any, *, node_id: str = "") -> list[ImageRef]:
    """Image refs of one node's UI output (``{"images": [{filename, subfolder, type}]}``)."""
    if not isinstance(output, dict):
        return []
    refs = []
    for item in output.get("images") or []:
        if isinstance(item, dict) and isinstance(item.get("filename"), str):
            refs.append(
                ImageRef(
                    item["filename"],
                    str(item.get("subfolder") or ""),
                    str(item.get("type") or "output"),
                    node_id,
                )
            )
    return refs


def images_from_outputs(outputs: Any) -> tuple[ImageRef, ...]:
    """All saved images of a history entry; previews (type ``temp``) only when nothing was saved."""
    refs: list[ImageRef] = []
    if isinstance(outputs, dict):
        for node_id, output in outputs.items():
            refs.extend(ref for ref in images_from_output(output, node_id=str(node_id)) if ref not in refs)
    saved = tuple(ref for ref in refs if ref.type == "output")
    return saved or tuple(refs)


def error_outcome(prompt_id: str, data: dict[str, Any], *, source: str) -> PromptOutcome:
    data = sanitize_error(data)
    return PromptOutcome(
        OutcomeStatus.ERROR,
        prompt_id,
        node_id=_str_or_none(data.get("node_id")),
        node_type=_str_or_none(data.get("node_type")),
        exception_type=_str_or_none(data.get("exception_type")),
        exception_message=_str_or_none(data.get("exception_message")),
        source=source,
    )


def interrupted_outcome(prompt_id: str, data: dict[str, Any], *, source: str) -> PromptOutcome:
    return PromptOutcome(
        OutcomeStatus.INTERRUPTED,
        prompt_id,
        node_id=_str_or_none(data.get("node_id")),
        node_type=_str_or_none(data.get("node_type")),
        source=source,
    )


def outcome_from_history(prompt_id: str, entry: dict[str, Any]) -> PromptOutcome:
    """Read a finished prompt's ``GET /history/{id}`` entry (protocol 3.4)."""
    status = entry.get("status") or {}
    for message in status.get("messages") or []:
        if not (isinstance(message, list | tuple) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        kind, data = message
        if kind == "execution_error":
            return error_outcome(prompt_id, data, source="history")
        if kind == "execution_interrupted":
            return interrupted_outcome(prompt_id, data, source="history")
    if status.get("status_str", "success") == "success":
        return PromptOutcome(OutcomeStatus.SUCCESS, prompt_id, images_from_outputs(entry.get("outputs")))
    return PromptOutcome(
        OutcomeStatus.ERROR,
        prompt_id,
        exception_message=f"ComfyUI reported status {status.get('status_str')!r} without an error message",
    )


def queue_position(queue: dict[str, Any], prompt_id: str) -> str | None:
    """``"running"``, ``"pending"`` or None for a prompt in a ``GET /queue`` answer (items are lists)."""
    for where in ("running", "pending"):
        for item in queue.get(f"queue_{where}") or []:
            if isinstance(item, list | tuple) and len(item) > 1 and item[1] == prompt_id:
                return where
    return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
