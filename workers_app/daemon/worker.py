"""The worker loop: start-up, ``step()``, heartbeats, prefetch and a clean shutdown.

Drive it from a thread in tests: ``worker = WorkerLoop(config); t = Thread(target=worker.run); ...;
worker.request_stop(); t.join()``. Signal handlers (installed by ``manage.py runworker``) only call
``request_stop()``, which only sets a boolean.

Lease requests run on a helper thread (``LeaseCall``) while the loop waits in SLICE steps, so a stop request
ends even a 20 s idle long poll at once; a task that call still brings is released. Protocol 2: while the
worker holds no task and a lease request that asked to wait is open, the scheduler counts the open wait as
its heartbeat, and the heartbeat thread skips its beat.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .activity import WorkerActivity
from .comfyui import ComfyUIClient, ComfyUIError
from .image_cache import CacheFolderError, ImageCache
from .inventory import InventoryWatch
from .lease_call import LeaseCall
from .runner import MODEL_MISSING, RunnerSettings, StopReason, TaskControl, TaskResult, run_task
from .scheduler import (
    AuthError,
    LeasedTask,
    ProtocolUnsupported,
    RegisterRequired,
    SchedulerClient,
    SchedulerError,
    WorkerDisabled,
)
from .surface import Health, SurfaceConfig, WorkerSurface

logger = logging.getLogger(__name__)

SLICE = 0.1  # seconds: how often sleeps re-check the stop flag
PROBE_TIMEOUT = 2.0  # seconds: the surface's /healthz probes of the scheduler and ComfyUI
EMPTY_ANSWER_PAUSE = 1.0  # seconds: the longest pause after an empty lease answer that came at once
MIN_PREFETCH_LEAD = 0.25  # seconds: the shortest lead of a just-in-time prefetch (WorkerLoopConfig)
PREFETCH_MARGIN = 4  # the lead is this many times what a prefetch lease answer took lately (its median)
PREFETCH_SAMPLES = 9  # answers that median is taken over


@dataclass
class WorkerLoopConfig:
    scheduler_url: str  # one base URL, or several separated by commas (failover: SchedulerClient)
    token: str = field(repr=False)
    comfyui_url: str = "http://127.0.0.1:8188"
    name: str = field(default_factory=socket.gethostname)
    prefetch: int = 2  # tasks held at once: one running in ComfyUI, the others queued behind it
    grace: float = 30.0  # on shutdown: how long the running task may take to finish
    once: bool = False  # one lease attempt; run that task to the end, then exit
    lease_wait: float = 20.0  # long-poll when idle (a stop request does not wait for its end)
    prefetch_lease_wait: float = 3.0  # shorter long-poll while a task runs, so an idle worker re-asks soon
    # Ask for the task behind the running one only when that one is expected to end within the lead (its
    # sampler's pace), or has run that long with no pace known. Until then the queue keeps it, so a task
    # that arrives meanwhile can still go first (fair share, priority). The lead is what getting a task
    # takes here (PREFETCH_MARGIN x the recent prefetch answers' median, failures included), at least
    # MIN_PREFETCH_LEAD and at most this: a busy scheduler makes the daemon ask early again; 0: at once.
    prefetch_lead: float = 30.0
    abandoned_lease_wait: float = 0.5  # on shutdown: how long a lease request left open may take to answer
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    interrupt_wait: float = 10.0  # after the grace: how long an interrupted task gets to notice
    task_timeout: float | None = 3600.0
    inventory_interval: float = 300.0  # seconds between re-reads of ComfyUI's inventory (0: only on events)
    surface: SurfaceConfig | None = None  # the worker's own HTTP server (runworker --port); off when None


def prefetch_lead(answers: Iterable[float], *, most: float) -> float:
    """What getting a task takes here, with a margin: PREFETCH_MARGIN x the median of the recent prefetch
    answers (`most` while none is known), within MIN_PREFETCH_LEAD and `most`; 0 when `most` is (just-in-time
    prefetch off)."""
    if most <= 0:
        return 0.0
    took = sorted(answers)
    median = took[len(took) // 2] if took else most
    return min(most, max(MIN_PREFETCH_LEAD, PREFETCH_MARGIN * median))


class Backoff:
    """Capped exponential delays: 1, 2, 4, ... ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class WorkerLoop:
    """One daemon: takes tasks from the scheduler and runs them on one ComfyUI."""

    def __init__(
        self,
        config: WorkerLoopConfig,
        *,
        comfy: ComfyUIClient | None = None,
        scheduler: SchedulerClient | None = None,
        runner_settings: RunnerSettings | None = None,
    ) -> None:
        self.config = config
        self.comfy = comfy or ComfyUIClient(config.comfyui_url)
        self.scheduler = scheduler or SchedulerClient(config.scheduler_url, config.token)
        self.runner_settings = runner_settings or RunnerSettings(task_timeout=config.task_timeout)
        self.stop_requested = False  # only ever set to True (signal handlers, request_stop)
        self.fatal_error: str | None = None
        self.heartbeat_interval = 5.0
        self.capacity = 1 if config.once else max(1, config.prefetch)
        self._tasks: dict[str, tuple[TaskControl, threading.Thread]] = {}
        self._lock = threading.Lock()
        # Set by task threads when a prompt reaches ComfyUI or a task ends: a full loop wakes at once
        # instead of on its next SLICE, so the next prompt is queued in ComfyUI before the GPU runs dry.
        self._changed = threading.Event()
        self._need_register = True
        self._registered = False
        self._comfy_ok = False
        # The checkpoint of the last task that completed here, reported with leases and heartbeats for
        # placement; None while unknown (just started), "" once ComfyUI came back from being unreachable
        # (a restart unloads every model).
        self.warm_checkpoint: str | None = None
        self._comfy_backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._scheduler_backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._heartbeat_stop = threading.Event()
        self._prefetch_answers: deque[float] = deque(maxlen=PREFETCH_SAMPLES)  # seconds each took
        self._heartbeat_thread: threading.Thread | None = None
        self._lease_call: LeaseCall | None = None  # the lease request the loop waits for
        self._abandoned: LeaseCall | None = None  # one it stopped waiting for (stop request)
        # What the runner reports about each task: the surface's record, metrics and image cache.
        self.activity = WorkerActivity()
        self.surface: WorkerSurface | None = None
        self.inventory = InventoryWatch(self.comfy, self.scheduler, interval=config.inventory_interval)
        self._connections_seen: int | None = None  # ComfyUI socket connections at the last look

    def request_stop(self) -> None:
        """Ask the loop to stop. Safe from a signal handler: it only sets a boolean."""
        self.stop_requested = True

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start up, loop until stopped, shut down. Returns the process exit code."""
        logger.info(
            "worker %s: scheduler %s, ComfyUI %s, prefetch %d",
            self.config.name,
            self.config.scheduler_url,
            self.config.comfyui_url,
            self.capacity,
        )
        if self.config.surface is not None and not self._open_surface(self.config.surface):
            logger.error("worker stopped: %s", self.fatal_error)
            return 1
        self.comfy.connect()
        try:
            if self._start_up():
                self._start_heartbeat()
                self._loop()
        finally:
            self.shutdown()
        if self.fatal_error:
            logger.error("worker stopped: %s", self.fatal_error)
            return 1
        return 0

    def _loop(self) -> None:
        while not self.stop_requested and not self.fatal_error:
            self._guarded(self.step)
            if self.config.once:
                self._join_tasks(deadline=None)
                break

    def _guarded(self, turn: Callable[[], bool]) -> bool:
        """Run one turn; an unexpected error is logged and waited out, never fatal."""
        try:
            return turn()
        except Exception:
            logger.exception("unexpected error in the worker loop")
            self._sleep(self._scheduler_backoff.next())
            return False

    def step(self) -> bool:
        """One turn of the loop: lease a task and start it if there is room. True when work was found."""
        self._changed.clear()  # before looking: a change from now on ends the wait below at once
        self._reap()
        if self.stop_requested or self.fatal_error:
            return False
        if (self._need_register and not self._register()) or (
            not self._comfy_ok and not self._check_comfyui()
        ):
            return False
        self._watch_inventory()
        active = self.active_tasks()
        full = len(active) >= self.capacity
        if full or any(not c.submitted for c in active) or not self._prefetch_due(active):
            # Full, the previous task is not in ComfyUI's queue yet (keeps order), or the running one has
            # long to go: wait for a change.
            self._changed.wait(SLICE)
            return False
        lease = self._lease(prefetch=bool(active))
        if lease is None:
            return False
        if self.stop_requested:
            self._release_unstarted(lease)
            return True
        self._launch(lease)
        return True

    @property
    def prefetch_lead(self) -> float:
        """Seconds before the running task's end to ask for the next (prefetch_lead below)."""
        return prefetch_lead(self._prefetch_answers, most=self.config.prefetch_lead)

    def _prefetch_due(self, active: list[TaskControl], now: float | None = None) -> bool:
        """Whether to ask for a task now: always with nothing held or another task already queued behind
        the running one; else when the running one is expected to end within the prefetch lead, or
        has been held that long with no pace to go by."""
        lead = self.prefetch_lead
        if lead <= 0 or len(active) != 1:
            return True
        control = active[0]
        now = time.monotonic() if now is None else now
        left = control.time_left(now)
        if left is not None:
            return left <= lead
        return now - (control.started_at or control.leased_at) >= lead

    def _lease(self, *, prefetch: bool) -> LeasedTask | None:
        wait = self.config.prefetch_lease_wait if prefetch else self.config.lease_wait
        asked_at = time.monotonic()
        ask = functools.partial(
            self.scheduler.lease, wait=wait, prefetch=prefetch, warm_checkpoint=self.warm_checkpoint
        )
        self._lease_call = call = LeaseCall(ask, long_poll=wait > 0)
        try:
            if not self._await(call):
                return None
            lease = call.result()
        except RegisterRequired:
            self._need_register = True
            return None
        except SchedulerError as exc:
            if prefetch and exc.retryable:  # a timeout or an overloaded scheduler: ask earlier next time
                self._prefetch_answers.append(time.monotonic() - asked_at)
            self._scheduler_trouble(exc)
            return None
        finally:
            self._lease_call = None
        self._scheduler_backoff.reset()
        held = time.monotonic() - asked_at
        if prefetch and lease is not None:  # what getting it cost: not the time it waited for work
            self._prefetch_answers.append(max(0.0, held - lease.waited))
        if lease is None and held < EMPTY_ANSWER_PAUSE:
            # Answered at once with nothing: a scheduler that does not long-poll must not make this loop
            # spin. One that held the request asks again at once, also when it ended the wait before `wait`
            # (it spreads the ends of long waits): a pause then would be a window in which no request is
            # open and a submitted task waits for this worker.
            self._sleep(min(EMPTY_ANSWER_PAUSE, wait - held))
        return lease

    def _await(self, call: LeaseCall) -> bool:
        """Wait for the lease answer; on a stop request (or a fatal error) abandon the call and return False:
        a task it still brings is released, never run."""
        while not call.wait(SLICE):
            if self.stop_requested or self.fatal_error:
                call.abandon(self._release_unstarted)
                self._abandoned = call
                return False
        return True

    def _launch(self, lease: LeasedTask, *, replacing: TaskControl | None = None) -> None:
        """Run the lease on a thread of its own; `replacing` hands it that finished task's slot."""
        control = TaskControl(lease)
        control.on_change = self._changed.set
        control.on_stop = self.comfy.wake  # a stop request is acted on at once, not on the next tick
        control.lease_next = functools.partial(self._lease_next_flag, control)
        thread = threading.Thread(
            target=self._run_one, args=(control,), name=f"task-{lease.task_id[:8]}", daemon=True
        )
        with self._lock:  # one step: step() and _reap() see the thread alive, never a free slot between
            if replacing is not None:
                self._forget(replacing)
            self._tasks[lease.task_id] = (control, thread)
            thread.start()

    def _lease_next_flag(self, control: TaskControl) -> bool | None:
        """At `control`'s completion: the prefetch flag for the lease its answer may carry, or None when
        this worker should lease nothing then (stopping, one-shot, re-registering, ComfyUI in doubt, a
        task ahead not yet in ComfyUI's queue, whose place the carried one must not take, or a long task
        just started, behind which the next is asked for just in time)."""
        if self.stop_requested or self.fatal_error or self.config.once:
            return None
        if self._need_register or not self._comfy_ok:
            return None
        others = [c for c in self.active_tasks() if c is not control]
        if any(not c.submitted for c in others):
            return None
        if len(others) == 1 and not self._short(control):
            return None  # the loop asks for it just in time, when the task now running nears its end
        return bool(others)

    def _short(self, control: TaskControl) -> bool:
        """Whether ``control``'s run (ComfyUI's start to now) took at most the prefetch lead: then the next
        one will be due about as soon as it starts, and a completion may as well carry it."""
        lead = self.prefetch_lead
        return lead <= 0 or (control.started_at is not None and time.monotonic() - control.started_at <= lead)

    def _run_one(self, control: TaskControl) -> None:
        try:
            result = run_task(
                control.lease,
                comfy=self.comfy,
                scheduler=self.scheduler,
                control=control,
                settings=self.runner_settings,
                activity=self.activity,
            )
        except Exception:
            logger.exception("task %s: runner crashed", control.task_id)
            result = TaskResult.FAILED
        if result == TaskResult.COMPLETED:
            self.warm_checkpoint = control.lease.checkpoint
        if control.failure_code in ("comfyui_unavailable", "comfyui_lost"):
            self._comfy_ok = False  # check ComfyUI's health before the next lease
        if control.failure_code == MODEL_MISSING:
            # The scheduler dropped that model from its copy of this worker's inventory; tell it the truth.
            self.inventory.refresh(force=True, why="a prompt named a model ComfyUI lacks")
        logger.debug("task %s: thread done (%s)", control.task_id, result)
        carried = control.next_lease
        if carried is not None and not (self.stop_requested or self.fatal_error):
            self._launch(carried, replacing=control)  # the completion brought the next task
        else:
            if carried is not None:
                self._release_unstarted(carried)
            with self._lock:  # the slot is free now, not when this thread has ended (see step())
                self._forget(control)
        self._changed.set()

    def _forget(self, control: TaskControl) -> None:
        """Drop a finished task from the table (the caller holds the lock)."""
        if self._tasks.get(control.task_id, (None,))[0] is control:
            del self._tasks[control.task_id]

    def _reap(self) -> None:
        with self._lock:
            for task_id, (_control, thread) in list(self._tasks.items()):
                if not thread.is_alive():
                    del self._tasks[task_id]

    def active_tasks(self) -> list[TaskControl]:
        with self._lock:
            return [control for control, thread in self._tasks.values() if thread.is_alive()]

    # -- start-up, registration, health ---------------------------------------------------------------
    def _start_up(self) -> bool:
        """Wait for ComfyUI, read its capabilities, register. False when stopped first."""
        while not self.stop_requested and not self.fatal_error:
            if self._guarded(self._check_comfyui) and self._guarded(self._register):
                return True
        return False

    def _check_comfyui(self) -> bool:
        try:
            self.comfy.system_stats()
        except ComfyUIError as exc:
            delay = self._comfy_backoff.next()
            logger.warning("ComfyUI not available: %s; retrying in %.0fs", exc.message, delay)
            self._sleep(delay)
            return False
        if not self._comfy_ok:
            logger.info("ComfyUI at %s is up", self.config.comfyui_url)
            if self._registered:
                self.warm_checkpoint = ""  # it was unreachable: assume it restarted with nothing loaded
                self.inventory.comfy_restarted()  # and perhaps with other models or custom nodes
        self._comfy_ok = True
        self._comfy_backoff.reset()
        return True

    def _register(self) -> bool:
        try:
            capabilities = self.comfy.capabilities()
        except ComfyUIError as exc:
            self._comfy_ok = False
            logger.warning("could not read ComfyUI capabilities (%s)", exc.message)
            self._sleep(self._comfy_backoff.next())
            return False
        try:
            registration = self.scheduler.register(
                name=self.config.name, prefetch=self.capacity, capabilities=capabilities
            )
        except SchedulerError as exc:
            self._scheduler_trouble(exc)
            return False
        self._need_register = False
        self._registered = True
        self._scheduler_backoff.reset()
        self.heartbeat_interval = registration.heartbeat_interval
        self.inventory.registered(capabilities, object_info=registration.object_info)
        logger.info(
            "registered as %s (worker %s, %d checkpoint(s), heartbeat every %gs, scheduler protocol %s)",
            registration.name,
            registration.worker_id,
            len(capabilities.get("checkpoints") or []),
            self.heartbeat_interval,
            self.scheduler.server_protocol or "1 (no version header)",
        )
        return True

    def _watch_inventory(self) -> None:
        """Refresh the inventory when it is due, or when ComfyUI's socket connected again since the last look
        (ComfyUI may have restarted with other files)."""
        connections = getattr(self.comfy, "connections", 0)
        if self._connections_seen and connections != self._connections_seen:  # not its first connect
            self.inventory.comfy_restarted()
        self._connections_seen = connections
        if self.inventory.due():
            self.inventory.refresh()

    def _scheduler_trouble(self, exc: SchedulerError) -> None:
        if isinstance(exc, AuthError):
            self.fatal_error = f"the scheduler refused the worker token ({exc.message})"
            return
        if isinstance(exc, ProtocolUnsupported):
            self.fatal_error = exc.message
            return
        if isinstance(exc, RegisterRequired):
            self._need_register = True
            return
        delay = self._scheduler_backoff.next()
        if isinstance(exc, WorkerDisabled):
            delay = self.config.backoff_max
            logger.warning("this worker is disabled by an operator; asking again in %.0fs", delay)
        else:
            logger.warning("scheduler problem (%s); retrying in %.0fs", exc.message, delay)
        self._sleep(delay)

    # -- heartbeats ---------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._heartbeat_stop.clear()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self.heartbeat_interval):
            if not self.waiting_counts_as_heartbeat():
                self.heartbeat()

    def waiting_counts_as_heartbeat(self) -> bool:
        """Protocol 2: the scheduler counts an open lease wait as this worker's heartbeat. With no task held
        there is no lease to renew and no cancel to hear, so a beat would only repeat it."""
        call = self._lease_call
        return (
            call is not None
            and call.long_poll
            and call.in_flight
            and not self.active_tasks()
            and (self.scheduler.server_protocol or 1) >= 2
        )

    def heartbeat(self) -> None:
        """Renew every lease held; act on ``cancel`` and ``lost``."""
        controls = {c.task_id: c for c in self.active_tasks()}
        try:
            reply = self.scheduler.heartbeat(
                [(c.task_id, c.lease.lease_token) for c in controls.values()],
                warm_checkpoint=self.warm_checkpoint,
            )
        except RegisterRequired:
            logger.warning("scheduler asks this worker to register again")
            self._need_register = True
            return
        except AuthError as exc:
            self.fatal_error = f"the scheduler refused the worker token ({exc.message})"
            return
        except ProtocolUnsupported as exc:
            self.fatal_error = exc.message
            return
        except SchedulerError as exc:
            logger.warning("heartbeat failed (%s)", exc.message)
            return
        for task_id in reply.cancel:
            if task_id in controls:
                logger.info("task %s: cancel requested by the scheduler", task_id)
                controls[task_id].request_stop(StopReason.CANCEL)
        for task_id in reply.lost:
            control = controls.get(task_id)
            if control is None:
                continue
            if control.final_claimed:
                # Its completion (or failure, or release) is under way or has landed: that closed the
                # lease between the snapshot above and the scheduler reading this beat. The final report's
                # own answer says how the task ended.
                logger.debug("task %s: heartbeat found the lease closed by its final report", task_id)
                continue
            logger.info("task %s: lease lost (heartbeat)", task_id)
            control.request_stop(StopReason.LOST)

    # -- shutdown -----------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Release tasks not started, let the running one finish within the grace, hand back the rest."""
        active = self.active_tasks()
        if active:
            logger.info("stopping with %d task(s) in hand; grace %.0fs", len(active), self.config.grace)
        for control in active:
            if not control.started:
                control.request_stop(StopReason.RELEASE)  # prefetched: dequeue it from ComfyUI, hand it back
        self._join_tasks(deadline=time.monotonic() + self.config.grace, until_stop=False)
        for control in self.active_tasks():
            logger.warning("task %s: grace period over; interrupting and releasing it", control.task_id)
            control.request_stop(StopReason.RELEASE)
        self._join_tasks(deadline=time.monotonic() + self.config.interrupt_wait, until_stop=False)
        for control in self.active_tasks():
            self._force_release(control)
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        self._go_offline()
        self._settle_abandoned_lease()
        self.comfy.close()
        self._close_surface()

    # -- the worker's own HTTP surface ----------------------------------------------------------------------
    def _open_surface(self, config: SurfaceConfig) -> bool:
        """Take the images folder and listen; on failure set fatal_error (the daemon exits 1 before it
        registers: an operator who asked for the surface learns at once that it is not there)."""
        cache = ImageCache(
            config.images_dir, max_age=config.images_max_age, max_bytes=config.images_max_bytes
        )
        surface = WorkerSurface(
            config,
            token=self.config.token,
            activity=self.activity,
            health=self.health,
            cache=cache,
            name=self.config.name,
        )
        try:
            cache.open()
            surface.start()
        except CacheFolderError as exc:
            self.fatal_error = f"--images-dir: {exc}"
        except OSError as exc:
            self.fatal_error = f"cannot listen on {config.listen}:{config.port} ({exc.strerror or exc})"
        if self.fatal_error:
            cache.close()
            return False
        self.activity.cache = cache
        self.surface = surface
        logger.info(
            "worker surface on %s%s, images in %s",
            surface.url,
            " (token required)" if surface.require_token else "",
            config.images_dir,
        )
        return True

    def _close_surface(self) -> None:
        surface, self.surface = self.surface, None
        if surface is not None:
            surface.stop()
            if surface.cache is not None:
                surface.cache.close()

    def health(self) -> Health:
        """Probe the scheduler and ComfyUI now; say what this worker is doing (the surface's /healthz)."""
        try:
            self.comfy.system_stats(timeout=PROBE_TIMEOUT)
            comfyui_error = None
        except ComfyUIError as exc:
            comfyui_error = exc.message
        if self.stop_requested or self.fatal_error:
            phase = "stopping"
        elif not self._registered:
            phase = "starting"
        else:
            phase = "working"
        return Health(
            scheduler_error=self.scheduler.probe(timeout=PROBE_TIMEOUT),
            comfyui_error=comfyui_error,
            phase=phase,
            doing=self.activity.doing(),
        )

    def _force_release(self, control: TaskControl) -> None:
        if not control.claim_final():
            return
        if control.prompt_id:
            try:
                self.comfy.cancel(control.prompt_id)
            except ComfyUIError as exc:
                logger.warning("task %s: could not cancel it in ComfyUI (%s)", control.task_id, exc.message)
        self._release(control.lease, "shutdown")

    def _release_unstarted(self, lease: LeasedTask) -> None:
        self._release(lease, "shutdown")

    def _release(self, lease: LeasedTask, reason: str) -> None:
        try:
            self.scheduler.release(lease.task_id, lease.lease_token, reason=reason)
            logger.info("task %s released (%s)", lease.task_id, reason)
        except SchedulerError as exc:
            logger.warning("task %s: release failed (%s); the lease will expire", lease.task_id, exc.message)

    def _settle_abandoned_lease(self) -> None:
        """After ``offline`` the scheduler requeues what this worker holds and leases it nothing more: give
        a lease request left open a moment to answer, so that a task it brings is released before exit."""
        call = self._abandoned
        if call is None or call.join(self.config.abandoned_lease_wait):
            return
        logger.info("leaving a lease request open: a task it still brings is released, or its lease expires")

    def _go_offline(self) -> None:
        if self.fatal_error or not self._registered:
            return
        try:
            self.scheduler.offline()
            logger.info("worker %s offline", self.config.name)
        except SchedulerError as exc:
            logger.warning("could not tell the scheduler we are going offline (%s)", exc.message)

    # -- helpers ------------------------------------------------------------------------------------------
    def _join_tasks(self, *, deadline: float | None, until_stop: bool = True) -> None:
        """Wait for task threads until they end, ``deadline`` passes, or (``until_stop``) a stop request."""
        while self.active_tasks():
            if deadline is not None and time.monotonic() >= deadline:
                return
            if until_stop and self.stop_requested:
                return
            time.sleep(SLICE / 2)

    def _sleep(self, seconds: float) -> bool:
        """Sleep in short slices; False as soon as a stop is requested."""
        end = time.monotonic() + seconds
        while not self.stop_requested:
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(SLICE, left))
        return False
