"""The waiting room: this process's open lease waits, woken one per announced task.

A worker's `POST lease` that finds nothing waits here as a coroutine: no thread, no database connection, no
query. A `work` event (generation.dispatch) wakes one waiter per queued task, chosen by `pick`; a waiter that
wakes and finds nothing it can run hands the wake on while queued work remains. A keeper thread does, for all
waiters of the process at once, what each would otherwise poll for:
- liveness: an open wait counts as the worker's heartbeat; one UPDATE refreshes every waiting worker's
  `last_heartbeat` when its wait opens and every heartbeat interval while it stays open;
- the fallback: when this process cannot hear other processes' events (SQLite shared by several processes, or
  the listener reconnecting), or now and then anyway, it wakes one waiter if work is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from generation import dispatch
from generation.exceptions import TooManyWaits
from generation.models import Task
from workers_app.models import Worker

logger = logging.getLogger(__name__)

# Seconds between the keeper's rounds, and between its fallback looks at the queue when this process hears
# events from every other one (then the look only covers a lost wake-up) and when it does not.
KEEPER_TICK = 1.0
FALLBACK_WHILE_LISTENING = 10.0
FALLBACK_DEAF = 1.0
MAX_HANDS_ON = 16  # a wake handed on by waiters that could not use it, at most this many times


@dataclass(eq=False)
class Waiter:
    """One open lease wait."""

    worker_id: int
    checkpoints: frozenset[str]
    loop: asyncio.AbstractEventLoop
    warm: str = ""  # the checkpoint its worker has loaded, as stored when the wait opened
    future: asyncio.Future = field(init=False)
    event: dict[str, Any] | None = None  # the wake it got, set under the room's lock
    refreshed: float = 0.0  # monotonic time its worker's last_heartbeat was last written for this wait
    tried: set[int] = field(default_factory=set)  # wakes it already used

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()

    def can_take(self, event: dict[str, Any]) -> bool:
        checkpoint = event.get("checkpoint")
        return not checkpoint or not self.checkpoints or checkpoint in self.checkpoints


def pick(waiters: Iterable[Waiter], event: dict[str, Any]) -> Waiter | None:
    """Which waiter a wake goes to, among those that can take the event's task and have not tried this wake
    yet: the one of the event's `worker` when it names one (placement chose it: generation.services.leasing
    wakes a worker another stood back for), else the longest-waiting one with the task's checkpoint warm,
    else the longest-waiting one."""
    wake_id = event.get("wake_id")
    free = [w for w in waiters if w.event is None and wake_id not in w.tried and w.can_take(event)]
    if "worker" in event and not event.get("fallback"):
        return next((w for w in free if w.worker_id == event["worker"]), None)
    checkpoint = event.get("checkpoint")
    if checkpoint:
        warm = next((w for w in free if w.warm == checkpoint), None)
        if warm is not None:
            return warm
    return free[0] if free else None


class WaitingRoom:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[Waiter] = []  # oldest first
        self._wake_ids = itertools.count(1)
        self._keeper: threading.Thread | None = None
        self.announced = 0  # `work` events heard so far (a wait's first attempt may have looked before one)

    def __len__(self) -> int:
        return len(self._waiters)

    def enter(self, waiter: Waiter, *, limit: int, announced: int | None = None) -> None:
        """Add an open wait; a worker may hold at most `limit` (its prefetch depth) open at once. `announced`,
        `self.announced` as it was before the caller last looked at the queue: work announced since then
        found no waiter to wake and that look may have missed it, so the waiter is woken at once to look
        again (else it would wait for the keeper's fallback look)."""
        with self._lock:
            self._assert_room(waiter.worker_id, limit)
            self._waiters.append(waiter)
            missed = announced is not None and announced != self.announced
            if missed:
                waiter.event = {"fallback": True}  # its own look: nothing to hand on
        self._ensure_keeper()
        if missed:
            self._notify(waiter)

    def announce(self, event: dict[str, Any], count: int) -> int:
        """Work was queued: count it (see `enter`) and wake up to `count` waiters for it."""
        with self._lock:
            self.announced += 1
        return self.wake(event, count)

    def assert_room(self, worker_id: int, *, limit: int) -> None:
        """TooManyWaits when the worker already holds `limit` open waits: the lease view refuses the request
        before its long poll would (enter checks again)."""
        with self._lock:
            self._assert_room(worker_id, limit)

    def _assert_room(self, worker_id: int, limit: int) -> None:
        if sum(1 for w in self._waiters if w.worker_id == worker_id) >= max(1, limit):
            raise TooManyWaits(
                f"This worker already has {limit} lease request(s) waiting; at most its prefetch depth."
            )

    def leave(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def rearm(self, waiter: Waiter) -> None:
        """A woken waiter that got nothing waits again, behind the others."""
        with self._lock:
            if waiter.event is not None:
                waiter.tried.add(waiter.event.get("wake_id", 0))
            waiter.event = None
            waiter.future = waiter.loop.create_future()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._waiters.append(waiter)

    def wake(self, event: dict[str, Any] | None = None, count: int = 1) -> int:
        """Wake up to `count` waiters for `event`; returns how many were woken."""
        woken = 0
        for _ in range(count):
            with self._lock:
                one = dict(event or {})
                one.setdefault("wake_id", next(self._wake_ids))
                waiter = pick(self._waiters, one)
                if waiter is None:
                    break
                waiter.event = one
            woken += self._notify(waiter)
        return woken

    def wake_worker(self, worker_id: int) -> int:
        """Wake every open wait of this worker (it went offline or was disabled: they end saying so)."""
        with self._lock:
            mine = [w for w in self._waiters if w.worker_id == worker_id and w.event is None]
            for waiter in mine:
                waiter.event = {"worker": worker_id, "fallback": True}  # nothing to hand on
        return sum(self._notify(waiter) for waiter in mine)

    def _notify(self, waiter: Waiter) -> bool:
        """Resolve the woken waiter's future on its own event loop; False when that loop is gone (the
        request ended), and the waiter leaves."""
        try:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
        except RuntimeError:
            self.leave(waiter)
            return False
        return True

    def worker_ids_to_refresh(self, now: float, every: float) -> list[int]:
        with self._lock:
            due = [w for w in self._waiters if now - w.refreshed >= every]
            for waiter in due:
                waiter.refreshed = now
            return sorted({w.worker_id for w in due})

    def _ensure_keeper(self) -> None:
        if self._keeper is None:
            with self._lock:
                if self._keeper is None:
                    self._keeper = threading.Thread(target=self._keep, name="t2i-waiting-room", daemon=True)
                    self._keeper.start()
        dispatch.ensure_listener()

    def _keep(self) -> None:
        last_look = time.monotonic()
        while True:
            time.sleep(KEEPER_TICK)
            if not self._waiters:
                continue
            try:
                refresh_liveness(self.worker_ids_to_refresh(time.monotonic(), heartbeat_interval()))
                every = FALLBACK_WHILE_LISTENING if dispatch.listening() else FALLBACK_DEAF
                if time.monotonic() - last_look >= every:
                    last_look = time.monotonic()
                    if work_queued():
                        self.wake({"fallback": True})
            except Exception as exc:  # the database restarting, or gone in tests: try again next round
                logger.warning("waiting room: %s", str(exc).strip()[:200])
            finally:
                connection.close()  # back to the pool until the next round


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(True)


def heartbeat_interval() -> float:
    return float(settings.T2I["HEARTBEAT_INTERVAL"])


def refresh_liveness(worker_ids: list[int]) -> int:
    """An open wait is a heartbeat: mark these workers alive, unless offline or disabled meanwhile."""
    if not worker_ids:
        return 0
    return (
        Worker.objects.filter(pk__in=worker_ids)
        .exclude(status__in=[Worker.Status.OFFLINE, Worker.Status.DISABLED])
        .update(last_heartbeat=timezone.now())
    )


def work_queued() -> bool:
    return Task.objects.filter(status=Task.Status.QUEUED).exists()


room = WaitingRoom()


def _on_work(data: dict[str, Any]) -> None:
    count = data.get("count", 1)
    room.announce(
        {k: v for k, v in data.items() if k != "count"}, count=count if isinstance(count, int) else 1
    )


dispatch.subscribe("work", _on_work)
dispatch.subscribe("reconnected", lambda data: room.wake({"fallback": True}))
dispatch.subscribe("worker", lambda data: room.wake_worker(data.get("id")))


async def wait(waiter: Waiter, timeout: float) -> bool:
    """Wait until `waiter` is woken (True) or `timeout` passes (False)."""
    if timeout > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
    return waiter.event is not None


def hand_on(event: dict[str, Any]) -> bool:
    """A waiter woke for `event` but leased nothing: pass the wake to another waiter that may use it."""
    event = dict(event)
    hands = event.get("hands", 0)
    if event.get("fallback") or hands >= MAX_HANDS_ON:
        return False
    event["hands"] = hands + 1
    return room.wake(event) > 0
