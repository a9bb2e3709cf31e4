"""The worker daemon: ComfyUI client, scheduler client, task runner and loop (HTTP only, no database)."""

from .comfyui import ComfyUIClient, ComfyUIError
from .prompt_tracker import ImageRef, OutcomeStatus, PromptOutcome, PromptTracker
from .runner import RunnerSettings, StopReason, TaskControl, TaskResult, run_task
from .scheduler import (
    AuthError,
    LeasedTask,
    LeaseLost,
    ProtocolUnsupported,
    RegisterRequired,
    SchedulerClient,
    SchedulerError,
    SchedulerUnavailable,
    WorkerDisabled,
)
from .worker import WorkerLoop, WorkerLoopConfig

__all__ = [
    "AuthError",
    "ComfyUIClient",
    "ComfyUIError",
    "ImageRef",
    "LeaseLost",
    "LeasedTask",
    "OutcomeStatus",
    "PromptOutcome",
    "PromptTracker",
    "ProtocolUnsupported",
    "RegisterRequired",
    "RunnerSettings",
    "SchedulerClient",
    "SchedulerError",
    "SchedulerUnavailable",
    "StopReason",
    "TaskControl",
    "TaskResult",
    "WorkerDisabled",
    "WorkerLoop",
    "WorkerLoopConfig",
    "run_task",
]
