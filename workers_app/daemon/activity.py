"""``WorkerActivity``: what the runner tells the worker's own HTTP surface, in one thread-safe object.

The runner reports each step of a task (leased, queued in ComfyUI, started, progress, images fetched,
uploaded, finished); this object keeps a bounded record of the tasks run recently, feeds the daemon's
metrics and hands fetched images to the local image cache, when there is one. Nothing here can fail the
task: the record is memory only, and the cache copies on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from .image_cache import ImageCache
from .metrics import WorkerMetrics

logger = logging.getLogger(__name__)

KEEP_TASKS = 200  # finished tasks remembered (the running ones are always kept)
ACTIVE_STATES = frozenset({"leased", "queued", "running", "uploading"})
# The original design's words for a task's state (as the scheduler's GET /status/{id} says them). Handed back
# (released) or lost, the farm holds the task again.
SEED_STATUS = {
    "leased": "pending",
    "queued": "pending",
    "running": "running",
    "uploading": "running",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "released": "pending",
    "lost": "pending",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class TaskRecord:
    """The worker's own view of one task (its latest attempt here)."""

    task_id: str
    attempt: int = 1
    prompt_id: str | None = None
    state: str = "leased"  # leased, queued, running, uploading, then a TaskResult value
    progress: float = 0.0  # 0..1 of the node that reports steps
    leased_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    images: list[str] = field(default_factory=list)
    error_code: str | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def percent(self) -> int:
        return round(100 * self.progress)

    def as_json(self) -> dict[str, Any]:
        """The record, ``progress`` in percent (0..100), and ``status`` in the original design's words."""
        return {**asdict(self), "progress": self.percent, "status": SEED_STATUS.get(self.state, "pending")}


class WorkerActivity:
    """Recent tasks (bounded), metrics and the image cache of one daemon. Thread-safe."""

    def __init__(self, *, keep: int = KEEP_TASKS, cache: ImageCache | None = None) -> None:
        self.keep = keep
        self.cache = cache
        self.metrics = WorkerMetrics(tasks_in_hand=lambda: len(self.active()))
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    # -- what the runner reports ------------------------------------------------------------------------
    def leased(self, task_id: str, attempt: int) -> None:
        with self._lock:
            self._records.pop(task_id, None)
            self._records[task_id] = TaskRecord(task_id, attempt=attempt)
            self._trim()

    def queued(self, task_id: str, prompt_id: str) -> None:
        self._update(task_id, prompt_id=prompt_id, state="queued")

    def started(self, task_id: str) -> None:
        with self._lock:
            record = self._records.get(task_id)
            if record is not None and record.state in ("leased", "queued"):
                record.state = "running"
                record.started_at = _now()

    def progress(self, task_id: str, value: float, maximum: float) -> None:
        if maximum > 0:
            self._update(task_id, progress=max(0.0, min(1.0, value / maximum)))

    def images_fetched(self, task_id: str, images: Sequence[tuple[str, bytes]], *, round_trip: float) -> None:
        """Every image is in hand: note the names, time the round trip, queue the local copies."""
        self._update(task_id, images=[name for name, _ in images], state="uploading", progress=1.0)
        self.metrics.comfyui_round_trip.observe(round_trip)
        if self.cache is not None:
            try:
                self.cache.store_later(images)
            except Exception:  # the local copy is a convenience: the task goes on regardless
                logger.exception("task %s: could not queue the local image copies", task_id)

    def uploaded(self, seconds: float) -> None:
        self.metrics.upload.observe(seconds)

    def failed(self, task_id: str, code: str, message: str) -> None:
        self._update(task_id, error_code=code, error=" ".join(message.split())[:500])

    def finished(self, task_id: str, result: str) -> None:
        self._update(task_id, state=result, finished_at=_now())
        with self._lock:
            self._trim()
        self.metrics.tasks.labels(result=result).inc()

    # -- what the surface reads -------------------------------------------------------------------------
    def find(self, key: str) -> TaskRecord | None:
        """A copy of the record whose task id or ComfyUI prompt id is ``key``."""
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = next((r for r in self._records.values() if r.prompt_id == key), None)
            return _copy(record) if record is not None else None

    def active(self) -> list[TaskRecord]:
        """Copies of the tasks in hand, oldest lease first."""
        with self._lock:
            return [_copy(r) for r in self._records.values() if r.active]

    def doing(self) -> str:
        """One line: ``idle``, or what runs and what waits in ComfyUI's queue."""
        active = self.active()
        if not active:
            return "idle"
        running = [r for r in active if r.state in ("running", "uploading")]
        parts = [
            f"{'uploading' if r.state == 'uploading' else 'running'} task {r.task_id} at {r.percent}%"
            for r in running
        ]
        waiting = len(active) - len(running)
        if waiting:
            parts.append(f"{waiting} more task(s) queued")
        return "; ".join(parts)

    # -- helpers ----------------------------------------------------------------------------------------
    def _update(self, task_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._records.get(task_id)
            if record is None:
                return
            for name, value in changes.items():
                setattr(record, name, value)

    def _trim(self) -> None:
        """Forget the oldest finished records beyond ``keep`` (the caller holds the lock)."""
        finished = [task_id for task_id, r in self._records.items() if not r.active]
        for task_id in finished[: max(0, len(finished) - self.keep)]:
            del self._records[task_id]


def _copy(record: TaskRecord) -> TaskRecord:
    return TaskRecord(**asdict(record))
