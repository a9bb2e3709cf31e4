"""The worker daemon: ComfyUI client, scheduler client, task runner and loop (HTTP only, no database)."""

from .comfyui import ComfyUIClient, ComfyUIError
from .prompt_tracker import ImageRef, OutcomeStatus, PromptOutcome, PromptTracker
from .runner import RunnerSettings, StopReason, TaskControl, TaskResult, run_task
from .scheduler import (
    AuthError,
    Lease,
    LeaseLost,
    RegisterRequired,
    SchedulerClient,
    SchedulerError,
    SchedulerUnavailable,
    WorkerDisabled,
)
from .worker import Worker, WorkerConfig

__all__ = [
    "AuthError",
    "ComfyUIClient",
    "ComfyUIError",
    "ImageRef",
    "Lease",
    "LeaseLost",
    "OutcomeStatus",
    "PromptOutcome",
    "PromptTracker",
    "RegisterRequired",
    "RunnerSettings",
    "SchedulerClient",
    "SchedulerError",
    "SchedulerUnavailable",
    "StopReason",
    "TaskControl",
    "TaskResult",
    "Worker",
    "WorkerConfig",
    "WorkerDisabled",
    "run_task",
]
