"""``run_task``: one leased task from submission to its report. Failures end here, never in the loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from .activity import WorkerActivity
from .comfyui import ComfyUIError, missing_model
from .frames import FrameRelay
from .prompt_tracker import ImageRef, OutcomeStatus, PromptOutcome
from .reports import Reports
from .scheduler import (
    LeasedTask,
    LeaseLost,
    RegisterRequired,
    SchedulerClient,
    SchedulerError,
    SchedulerUnavailable,
)
from .socket_images import SocketImage, socket_image_nodes

logger = logging.getLogger(__name__)

MODEL_MISSING = "model_missing"  # the failure code of a prompt refused for a model this ComfyUI lacks
# `extra_data.preview_method` values that make ComfyUI send latent previews (the others: "none", "default").
PREVIEW_METHODS = frozenset({"auto", "latent2rgb", "taesd"})
MAX_SOCKET_IMAGE_BYTES = 512 * 1024 * 1024  # a task's images sent on the socket, held until uploaded

# Words in exception types/messages of failures that another attempt (or another GPU) can fix.
_RETRYABLE_MARKERS = ("outofmemory", "out of memory", "oom", "allocation on device", "cuda error")


class TaskResult(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the user cancelled it: dropped, nothing reported
    LOST = "lost"  # the lease is no longer ours: dropped, nothing reported
    RELEASED = "released"  # handed back (shutdown, or ComfyUI down before it was submitted)


class StopReason(StrEnum):
    RELEASE = "release"  # shutdown: hand the lease back unless the images are already there
    CANCEL = "cancel"  # the user cancelled it
    LOST = "lost"  # heartbeat said the lease is gone, or the scheduler answered lease_lost


_STOP_PRIORITY = {StopReason.RELEASE: 1, StopReason.CANCEL: 2, StopReason.LOST: 3}


class TaskControl:
    """What the loop and the task's thread share about one lease. Thread-safe."""

    def __init__(self, lease: LeasedTask) -> None:
        self.lease = lease
        self.prompt_id: str | None = None
        self.started = False  # ComfyUI started executing it
        self.started_at: float | None = None  # when (time.monotonic)
        self.submitted = False  # sent to ComfyUI (or given up before that)
        self.failure_code: str | None = None
        self.leased_at = time.monotonic()
        # The sampler now counting: (value, when) of its first progress report, its max, and the end its
        # pace foresees (time.monotonic; None until two reports of one sampler).
        self._pace_origin: tuple[float, float] | None = None
        self._pace_max = 0.0
        self._expected_end: float | None = None
        # Set by WorkerLoop._launch: the loop's wake-up, and what wakes the wait for ComfyUI.
        self.on_change: Callable[[], None] | None = None
        self.on_stop: Callable[[], None] | None = None
        # Set by WorkerLoop._launch: at completion, None (lease nothing) or the prefetch flag for the next
        # lease, which the completion's answer carries (one round trip per task); the loop takes it here.
        self.lease_next: Callable[[], bool | None] | None = None
        self.next_lease: LeasedTask | None = None
        self._stop: StopReason | None = None
        self._final = False
        self._lock = threading.Lock()

    @property
    def task_id(self) -> str:
        return self.lease.task_id

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop

    def request_stop(self, reason: StopReason) -> None:
        """Ask the task to stop; a stronger reason (lost > cancel > release) overrides a weaker one."""
        with self._lock:
            if self._stop is None or _STOP_PRIORITY[reason] > _STOP_PRIORITY[self._stop]:
                self._stop = reason
        if self.on_stop is not None:
            self.on_stop()

    def should_stop(self) -> bool:
        return self._stop is not None

    def note_start(self, now: float | None = None) -> None:
        """ComfyUI began executing the prompt."""
        self.started_at = time.monotonic() if now is None else now
        self.started = True

    def note_progress(self, value: float, maximum: float, now: float | None = None) -> None:
        """A progress report of ComfyUI's: the pace of the sampler counting so far foresees its end."""
        now = time.monotonic() if now is None else now
        with self._lock:
            origin = self._pace_origin
            if origin is None or value < origin[0] or maximum != self._pace_max:  # another node counting
                self._pace_origin, self._pace_max, self._expected_end = (value, now), maximum, None
                return
            done, elapsed = value - origin[0], now - origin[1]
            if done > 0 and elapsed > 0:
                self._expected_end = now + (maximum - value) * elapsed / done

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds until the sampler counting now ends, as its pace foresees (nodes after it, decoding and
        saving, are not in it); before two reports of one sampler (a model load has none), until the end
        the scheduler expects from ComfyUI's start (`expected_seconds`); None when neither is known."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._expected_end is not None:
                return max(0.0, self._expected_end - now)
        expected = self.lease.expected_seconds
        if expected is None or self.started_at is None:
            return None
        return max(0.0, self.started_at + expected - now)

    def mark_submitted(self) -> None:
        """The prompt is in ComfyUI's queue (or was given up): the loop may lease the next task now."""
        self.submitted = True
        if self.on_change is not None:
            self.on_change()

    @property
    def final_claimed(self) -> bool:
        """Someone took the final report (it is being sent, or was): the lease ends with it."""
        return self._final

    def claim_final(self) -> bool:
        """True exactly once: whoever gets it sends the task's final report (complete/fail/release)."""
        with self._lock:
            if self._final:
                return False
            self._final = True
            return True


class ComfyUI(Protocol):
    def submit(self, workflow: dict[str, Any], **kwargs: Any) -> str: ...
    def wait(self, prompt_id: str, **kwargs: Any) -> PromptOutcome: ...
    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes: ...
    def upload_image(self, data: bytes, name: str, subfolder: str = "") -> str: ...
    def cancel(self, prompt_id: str) -> None: ...
    def wake(self) -> None: ...


@dataclass(frozen=True)
class RunnerSettings:
    # At most one progress report a second: the task page and API clients read it about once a second, and
    # every report is a request and a row update on the scheduler. The last step is not special: the
    # completion, moments later, shows 100 % anyway (a forced last report cost a visible share of a farm's
    # CPU: bench/README.md).
    progress_interval: float = 1.0
    view_attempts: int = 4
    upload_attempts: int = 5
    report_attempts: int = 3
    retry_delay: float = 0.5  # doubled after each failed attempt
    retry_max_delay: float = 8.0
    task_timeout: float | None = 3600.0
    sleep: Callable[[float], None] = time.sleep


def is_retryable_execution_error(outcome: PromptOutcome) -> bool:
    """Out-of-memory style failures may pass on another try; anything else would fail the same way."""
    text = f"{outcome.exception_type or ''} {outcome.exception_message or ''}".lower()
    return any(marker in text for marker in _RETRYABLE_MARKERS)


def run_task(
    lease: LeasedTask,
    *,
    comfy: ComfyUI,
    scheduler: SchedulerClient,
    control: TaskControl | None = None,
    settings: RunnerSettings | None = None,
    activity: WorkerActivity | None = None,
) -> TaskResult:
    """Run one leased task to its end and report it; catches everything so the loop never dies.
    ``activity`` (the worker's own record of its tasks, metrics and image cache) hears every step."""
    activity = activity or WorkerActivity()
    run = _TaskRun(
        lease, comfy, scheduler, control or TaskControl(lease), settings or RunnerSettings(), activity
    )
    result = TaskResult.FAILED
    try:
        result = run.execute()
    except Exception as exc:
        logger.exception("task %s: unexpected error", lease.task_id)
        result = run.fail("internal", f"worker error: {type(exc).__name__}: {exc}", retryable=True)
    finally:
        run.reports.close()
        if run.frames is not None:
            run.frames.close()
        run.control.mark_submitted()
        activity.finished(lease.task_id, str(result))
    return result


class _TaskRun:
    def __init__(
        self,
        lease: LeasedTask,
        comfy: ComfyUI,
        scheduler: SchedulerClient,
        control: TaskControl,
        settings: RunnerSettings,
        activity: WorkerActivity,
    ) -> None:
        self.lease = lease
        self.activity = activity
        self.comfy = comfy
        self.scheduler = scheduler
        self.control = control
        self.settings = settings
        self.task_id = lease.task_id
        # Start and progress reports go out on a thread of their own: nothing here waits for them.
        self.reports = Reports(self._send_report, name=f"reports-{lease.task_id[:8]}")
        # Latent previews, when the task asked for them: its front-door client socket and its page show them.
        self.previews = lease.preview_method in PREVIEW_METHODS
        # The socket frames of a task a ComfyUI front-door client follows, and its previews, relayed as they
        # come.
        self.frames = (
            FrameRelay(self._send_frames, name=f"frames-{lease.task_id[:8]}")
            if lease.relay_frames or self.previews
            else None
        )
        # Images that nodes such as SaveImageWebsocket send only on ComfyUI's socket; the task's outputs.
        self.socket_nodes = socket_image_nodes(lease.workflow)
        self.socket_images: list[tuple[str, SocketImage]] = []
        self.socket_bytes = 0
        self.start_queued = False
        self.last_progress_at = 0.0
        self.last_quarter = 0
        self.last_value = -1.0
        self.submitted_at = 0.0

    # -- the steps ----------------------------------------------------------------------------------
    def execute(self) -> TaskResult:
        logger.info("task %s leased (attempt %d)", self.task_id, self.lease.attempt)
        self.activity.leased(self.task_id, self.lease.attempt)
        if self.control.should_stop():
            return self._stopped(None)
        if self.lease.inputs:
            stopped = self._send_inputs()
            if stopped is not None:
                return stopped
        options: dict[str, Any] = {}
        if self.frames is not None and self.lease.relay_frames:
            options["on_frame"] = self.frames.put
        if self.socket_nodes or self.previews:
            options["on_image"] = self._on_image
        if self.lease.preview_method:
            options["extra_data"] = {"preview_method": self.lease.preview_method}
        try:
            prompt_id = self.comfy.submit(self.lease.workflow, **options)
        except ComfyUIError as exc:
            return self._submit_failed(exc)
        self.submitted_at = time.monotonic()
        self.control.prompt_id = prompt_id
        self.activity.queued(self.task_id, prompt_id)
        self.control.mark_submitted()
        logger.debug("task %s submitted as ComfyUI prompt %s", self.task_id, prompt_id)
        outcome = self._wait(prompt_id)
        if outcome is None:
            return self.control_result()
        if self.control.should_stop() and not (outcome.ok and self.control.stop_reason is StopReason.RELEASE):
            return self._stopped(outcome)
        return self._finish(outcome)

    def _send_inputs(self) -> TaskResult | None:
        """Fetch each uploaded image the workflow loads from the scheduler and put it on ComfyUI under the
        name the lease gave it; None when all are there, else how the task ended."""
        for item in self.lease.inputs:
            try:
                data = self.scheduler.input_image(self.task_id, self.lease.lease_token, item["sha256"])
            except (LeaseLost, RegisterRequired):
                logger.info("task %s: lease lost before its inputs were fetched, dropped", self.task_id)
                self.control.request_stop(StopReason.LOST)
                return TaskResult.LOST
            except SchedulerError as exc:
                return self.fail("internal", f"could not fetch an input image: {exc.message}", retryable=True)
            try:
                self.comfy.upload_image(data, item["name"], item["subfolder"])
            except ComfyUIError as exc:
                return self._submit_failed(exc)
            logger.debug("task %s: input %s uploaded to ComfyUI", self.task_id, item["name"])
        return None

    def _submit_failed(self, exc: ComfyUIError) -> TaskResult:
        model = missing_model(exc.details) if exc.code == "workflow_invalid" else None
        if model is not None:
            # This ComfyUI lacks a model the scheduler believed it has: another worker may have it. The
            # scheduler requeues the task; the worker loop refreshes its inventory (failure_code).
            self.control.failure_code = MODEL_MISSING
            return self.fail(MODEL_MISSING, exc.message, retryable=True, details=model)
        if exc.code == "workflow_invalid":
            return self.fail("workflow_invalid", exc.message, retryable=False, details=exc.details)
        if exc.retryable:
            logger.warning(
                "task %s: ComfyUI unavailable (%s); handing the task back", self.task_id, exc.message
            )
            self.control.failure_code = "comfyui_unavailable"
            return self.release("comfyui_unavailable")
        return self.fail("internal", f"ComfyUI refused the request: {exc.message}", retryable=True)

    def _wait(self, prompt_id: str) -> PromptOutcome | None:
        try:
            return self.comfy.wait(
                prompt_id,
                on_start=self._on_start,
                on_progress=self._on_progress,
                should_cancel=self.control.should_stop,
                timeout=self.settings.task_timeout,
            )
        except ComfyUIError as exc:
            self._cancel_prompt(prompt_id)
            if exc.code == "wait_timeout":
                self.fail(
                    "execution_error",
                    f"ComfyUI did not finish within {self.settings.task_timeout}s",
                    retryable=True,
                    details={"prompt_id": prompt_id},
                )
            else:
                self.fail("comfyui_lost", exc.message, retryable=True, details={"prompt_id": prompt_id})
            return None

    def control_result(self) -> TaskResult:
        return TaskResult.LOST if self.control.stop_reason is StopReason.LOST else TaskResult.FAILED

    def _finish(self, outcome: PromptOutcome) -> TaskResult:
        if outcome.status is OutcomeStatus.SUCCESS:
            return self._deliver(outcome)
        details = {k: v for k, v in _outcome_details(outcome).items() if v is not None}
        if outcome.status is OutcomeStatus.ERROR:
            message = f"{outcome.node_type or 'node'} (node {outcome.node_id}): {outcome.exception_message}"
            retryable = is_retryable_execution_error(outcome)
            return self.fail("execution_error", message, retryable=retryable, details=details)
        if outcome.status is OutcomeStatus.INTERRUPTED:
            # Not our cancel: someone interrupted it on the ComfyUI box. Protocol 11: no automatic retry.
            return self.fail(
                "execution_error",
                "interrupted in ComfyUI",
                retryable=False,
                details={**details, "exception_type": "interrupted"},
            )
        self.control.failure_code = "comfyui_lost"
        return self.fail(
            "comfyui_lost", outcome.exception_message or "prompt lost", retryable=True, details=details
        )

    def _stopped(self, outcome: PromptOutcome | None) -> TaskResult:
        reason = self.control.stop_reason
        if reason is StopReason.RELEASE:
            return self.release("shutdown")
        if reason is StopReason.CANCEL:
            logger.info("task %s cancelled", self.task_id)
            return TaskResult.CANCELLED
        logger.info("task %s: lease lost, dropped", self.task_id)
        return TaskResult.LOST

    # -- success: fetch every image, then upload them -------------------------------------------------
    def _deliver(self, outcome: PromptOutcome) -> TaskResult:
        if self.socket_nodes and outcome.socket_gap:
            return self.fail(
                "comfyui_lost",
                "the ComfyUI socket dropped while the workflow sent its images on it",
                retryable=True,
                details={"prompt_id": outcome.prompt_id},
            )
        if self.socket_bytes > MAX_SOCKET_IMAGE_BYTES:
            return self.fail(
                "workflow_invalid",
                f"the workflow sent more than {MAX_SOCKET_IMAGE_BYTES} bytes of images on the socket",
                retryable=False,
                details={"prompt_id": outcome.prompt_id},
            )
        if not outcome.images and not self.socket_images:
            return self.fail(
                "workflow_invalid",
                "ComfyUI finished but the workflow saved no image",
                retryable=False,
                details={"prompt_id": outcome.prompt_id},
            )
        try:
            images = [(ref.filename, self._fetch(ref), ref.node_id) for ref in outcome.images]
        except ComfyUIError as exc:
            return self.fail(
                "comfyui_lost",
                f"could not fetch an image from ComfyUI: {exc.message}",
                retryable=True,
                details={"prompt_id": outcome.prompt_id},
            )
        images += [
            (f"socket_{node_id}_{index:05}.{image.extension}", image.data, node_id)
            for index, (node_id, image) in enumerate(self.socket_images, start=1)
        ]
        round_trip = time.monotonic() - self.submitted_at
        named = [(name, data) for name, data, _ in images]
        self.activity.images_fetched(self.task_id, named, round_trip=round_trip)
        return self._upload(images, outcome.prompt_id)

    def _fetch(self, ref: ImageRef) -> bytes:
        delay = self.settings.retry_delay
        for attempt in range(1, self.settings.view_attempts + 1):
            try:
                return self.comfy.view(ref.filename, ref.subfolder, ref.type)
            except ComfyUIError as exc:
                if not exc.retryable or attempt == self.settings.view_attempts:
                    raise
                logger.debug(
                    "task %s: /view %s failed (%s), retrying", self.task_id, ref.filename, exc.message
                )
                delay = self._pause(delay)
        raise AssertionError("unreachable")

    def _upload(self, images: list[tuple[str, bytes, str]], prompt_id: str) -> TaskResult:
        if not self._claim_final():
            return self.control_result()
        delay = self.settings.retry_delay
        began = time.monotonic()
        for attempt in range(1, self.settings.upload_attempts + 1):
            if self.control.stop_reason in (StopReason.CANCEL, StopReason.LOST):
                return self._stopped(None)
            lease_next = self.control.lease_next() if self.control.lease_next is not None else None
            try:
                answer = self.scheduler.complete(
                    self.task_id, self.lease.lease_token, images, prompt_id=prompt_id, lease_next=lease_next
                )
            except (LeaseLost, RegisterRequired):
                logger.info("task %s: lease lost while uploading, dropped", self.task_id)
                return TaskResult.LOST
            except SchedulerUnavailable as exc:
                logger.warning("task %s: upload attempt %d failed (%s)", self.task_id, attempt, exc.message)
                if attempt < self.settings.upload_attempts:
                    delay = self._pause(delay)
                continue
            except SchedulerError as exc:
                return self._report_fail(
                    "upload_failed", f"scheduler refused the images: {exc.message}", False, {}
                )
            self.activity.uploaded(time.monotonic() - began)
            seconds = time.monotonic() - self.control.leased_at
            logger.info("task %s completed in %.1fs (%d image(s))", self.task_id, seconds, len(images))
            self._take_carried(answer)
            return TaskResult.COMPLETED
        return self._report_fail(
            "upload_failed", "could not upload the images", True, {"prompt_id": prompt_id}
        )

    def _take_carried(self, answer: Any) -> None:
        try:
            self.control.next_lease = LeasedTask.carried(answer) if isinstance(answer, dict) else None
        except SchedulerError as exc:  # its lease expires on the scheduler and the task is requeued
            logger.warning("task %s: unusable carried lease (%s)", self.task_id, exc.message)

    # -- images from ComfyUI's socket (its thread) -----------------------------------------------------------
    def _on_image(self, node_id: str, image: SocketImage) -> None:
        if node_id in self.socket_nodes:
            self.socket_bytes += len(image.data)
            if self.socket_bytes <= MAX_SOCKET_IMAGE_BYTES:
                self.socket_images.append((node_id, image))
        elif self.previews and self.frames is not None:
            self.frames.put_preview(node_id, image)

    # -- callbacks from ComfyUIClient.wait (task thread) ------------------------------------------------
    def _on_start(self) -> None:
        self.control.note_start()
        self.activity.started(self.task_id)
        self._queue_start()

    def _queue_start(self) -> None:
        if self.start_queued:
            return
        self.start_queued = True
        self.last_progress_at = time.monotonic()  # counts as a report: step 1, moments later, waits its turn
        logger.info("task %s started (ComfyUI prompt %s)", self.task_id, self.control.prompt_id)
        self.reports.put("start", self.control.prompt_id or "")

    def _on_progress(self, value: float, maximum: float) -> None:
        self.control.note_progress(value, maximum)
        self._log_quarter(value, maximum)
        self.activity.progress(self.task_id, value, maximum)
        now = time.monotonic()
        if now - self.last_progress_at < self.settings.progress_interval:
            return
        self.last_progress_at = now
        self._queue_start()
        self.reports.put("progress", value, maximum)

    # -- start and progress reports (their own thread: Reports) -------------------------------------------
    def _send_report(self, kind: str, args: tuple[Any, ...]) -> None:
        report = self.scheduler.start if kind == "start" else self.scheduler.progress
        try:
            cancelled = report(self.task_id, self.lease.lease_token, *args)
        except (LeaseLost, RegisterRequired):
            if not self.control.final_claimed:  # else the final report's answer says how the task ended
                self.control.request_stop(StopReason.LOST)
            return
        except SchedulerError as exc:  # a completion marks the task started anyway
            log = logger.warning if kind == "start" else logger.debug
            log("task %s: %s report failed (%s)", self.task_id, kind, exc.message)
            return
        if cancelled:
            self.control.request_stop(StopReason.CANCEL)

    def _send_frames(self, frames: list[list[Any]]) -> None:
        try:
            self.scheduler.frames(self.task_id, self.lease.lease_token, frames)
        except SchedulerError as exc:  # frames are a courtesy to the client: the task goes on regardless
            logger.debug("task %s: frames not relayed (%s)", self.task_id, exc.message)

    def _log_quarter(self, value: float, maximum: float) -> None:
        if value < self.last_value:  # a new node started counting
            self.last_quarter = 0
        self.last_value = value
        quarter = int(4 * value / maximum) if maximum else 0
        if quarter > self.last_quarter:
            self.last_quarter = quarter
            logger.info("task %s progress %d%%", self.task_id, min(quarter, 4) * 25)

    # -- reports ----------------------------------------------------------------------------------------
    def fail(
        self, code: str, message: str, *, retryable: bool, details: dict[str, Any] | None = None
    ) -> TaskResult:
        if not self._claim_final():
            return self.control_result()
        return self._report_fail(code, message, retryable, details or {})

    def _report_fail(self, code: str, message: str, retryable: bool, details: dict[str, Any]) -> TaskResult:
        self.control.failure_code = self.control.failure_code or code
        self.activity.failed(self.task_id, code, message)
        one_line = " ".join(message.split())[:300]
        logger.warning("task %s failed: %s: %s (retryable=%s)", self.task_id, code, one_line, retryable)
        sent = self._with_retries(
            lambda: self.scheduler.fail(
                self.task_id,
                self.lease.lease_token,
                code=code,
                message=message,
                retryable=retryable,
                details=details,
            )
        )
        return TaskResult.FAILED if sent is not False else TaskResult.LOST

    def release(self, reason: str) -> TaskResult:
        if not self._claim_final():
            return self.control_result()
        sent = self._with_retries(
            lambda: self.scheduler.release(self.task_id, self.lease.lease_token, reason=reason)
        )
        logger.info("task %s released (%s)", self.task_id, reason)
        return TaskResult.RELEASED if sent is not False else TaskResult.LOST

    def _claim_final(self) -> bool:
        """Take the final report (see TaskControl.claim_final); start and progress reports not sent yet are
        dropped: the final report supersedes them."""
        if not self.control.claim_final():
            return False
        self.reports.close()
        return True

    def _with_retries(self, call: Callable[[], Any]) -> bool | None:
        """True when sent, False when the lease is gone, None when the scheduler stayed unreachable."""
        delay = self.settings.retry_delay
        for attempt in range(1, self.settings.report_attempts + 1):
            try:
                call()
                return True
            except (LeaseLost, RegisterRequired):
                logger.info("task %s: lease already gone, nothing to report", self.task_id)
                return False
            except SchedulerUnavailable as exc:
                logger.warning("task %s: report attempt %d failed (%s)", self.task_id, attempt, exc.message)
                if attempt < self.settings.report_attempts:
                    delay = self._pause(delay)
            except SchedulerError as exc:
                logger.error("task %s: scheduler rejected the report (%s)", self.task_id, exc.message)
                return None
        logger.error("task %s: scheduler unreachable; the lease will expire and be requeued", self.task_id)
        return None

    def _cancel_prompt(self, prompt_id: str) -> None:
        try:
            self.comfy.cancel(prompt_id)
        except ComfyUIError as exc:
            logger.debug("task %s: cancel in ComfyUI failed (%s)", self.task_id, exc.message)

    def _pause(self, delay: float) -> float:
        self.settings.sleep(delay)
        return min(delay * 2, self.settings.retry_max_delay)


def _outcome_details(outcome: PromptOutcome) -> dict[str, Any]:
    return {
        "prompt_id": outcome.prompt_id,
        "node_id": outcome.node_id,
        "node_type": outcome.node_type,
        "exception_type": outcome.exception_type,
        "exception_message": outcome.exception_message,
    }
