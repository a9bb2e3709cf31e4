"""When a task should be done: placement's plan of the whole queue (generation.placement.finish_estimates:
the lease path played forward for the head of the queue, then a list schedule and the farm's total speed)
on the live workers, from their learned speeds, counting the work they hold (running and prefetched), with
each user's wait stretched by the share of the farm that other users' recent arrivals take before them
(placement.arrival_shares).

The task page, the REST task answer and the seed's /status show it. One estimate covers every queued and
active task, so a process computes it at most every ETA_SECONDS and answers from it meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, Q, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from generation import farm_snapshot, placement
from generation.models import Task

ETA_SECONDS = 2.0
QUEUE_MOST = 20_000  # queued tasks planned; those beyond get no ETA


@dataclass(frozen=True)
class Estimate:
    at: float  # epoch seconds it was made
    done_at: dict[int, float]  # task pk -> epoch seconds it should be done
    order: list[placement.Job]  # the queue in placement's order
    capable: set[int]  # queued task pks that some live worker can run


_lock = threading.Lock()
_last: Estimate | None = None
_made: float = -1e9


def clear_cache() -> None:
    global _last, _made
    with _lock:
        _last, _made = None, -1e9


def estimate() -> Estimate:
    """The farm's current estimate, recomputed when older than ETA_SECONDS."""
    global _last, _made
    with _lock:
        if _last is not None and time.monotonic() - _made < ETA_SECONDS:
            return _last
    now = timezone.now()
    workers = farm_snapshot.live_workers(now)
    farm = farm_snapshot.snapshot(now=now, workers=workers)
    rows = (
        Task.objects.filter(status=Task.Status.QUEUED)
        .order_by("-priority", "id")
        .values_list(*farm_snapshot.JOB_FIELDS, "created_at")[:QUEUE_MOST]
    )
    jobs = [farm_snapshot.job_of(row[:-1], row[-1].timestamp()) for row in rows]
    farm_snapshot.add_users(farm, {job.user for job in jobs})
    order = farm_snapshot.ordered(farm, jobs)
    nodes = list(farm.nodes.values())
    ahead = placement.arrival_shares(recent_arrivals(now), nodes, usage=farm.usage, weights=farm.weights)
    done_at = placement.finish_estimates(nodes, order, now=farm.now, ahead=ahead)
    for held in farm.held.values():
        done_at.update((job.id, end) for job, end in held)
    capable = {job.id for job in jobs if any(node.can_run(job) for node in nodes)}
    fresh = Estimate(at=farm.now, done_at=done_at, order=order, capable=capable)
    with _lock:
        _last, _made = fresh, time.monotonic()
    return fresh


def recent_arrivals(now: datetime) -> dict[int | None, float]:
    """Each user's work (placement.work_units) submitted in the last placement.ARRIVAL_WINDOW seconds."""
    since = now - timedelta(seconds=placement.ARRIVAL_WINDOW)
    # A task submitted since then is queued, held, or finished since then: rows the claim and finished
    # indexes reach, rather than a scan of the whole history for created_at.
    unfinished = Q(status__in=[Task.Status.QUEUED, *Task.ACTIVE_STATUSES])
    lately = Q(status__in=Task.FINISHED_STATUSES, finished_at__gte=since)
    rows = (
        Task.objects.filter(unfinished | lately, created_at__gte=since)
        .order_by()
        .values("owner_id")
        .annotate(work=Sum(F("width") * F("height") * Greatest(F("steps"), 1) * Greatest(F("batch_size"), 1)))
        .values_list("owner_id", "work")
    )
    return {owner: float(work or 0) for owner, work in rows}


def seconds_left(task: Task) -> float | None:
    """Seconds until `task` should be done; None when it is finished or no live worker can run it."""
    if task.is_finished:
        return None
    current = estimate()
    done_at = current.done_at.get(task.pk)
    if done_at is None:
        return None
    return max(0.0, done_at - timezone.now().timestamp())


def why_waiting(task: Task) -> str:
    """Why a queued task still waits, for the admin: nobody can run it, higher priorities, fair share, or
    its place in line."""
    if task.status != Task.Status.QUEUED:
        return ""
    current = estimate()
    if task.pk not in current.capable:
        return "No capable worker is online (none that is live has its checkpoint and node classes)."
    ahead = []
    for job in current.order:
        if job.id == task.pk:
            break
        ahead.append(job)
    higher = sum(1 for job in ahead if job.priority > task.priority)
    if higher:
        return f"Behind {higher} task(s) of higher priority."
    others = sum(1 for job in ahead if job.user != task.owner_id)
    if others:
        return (
            f"Fair share: {others} task(s) of users who used less GPU time lately (for their weight) go"
            f" first; {len(ahead) - others} of its owner's own before it."
        )
    if ahead:
        return f"Behind {len(ahead)} older task(s) of its owner."
    return "Next in line: placement keeps it for the worker that should finish it first, which frees soon."
