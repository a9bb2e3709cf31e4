"""What placement (generation.placement) needs from the database, read before a lease's short transaction:
the live workers (what they run, have warm, hold, and how fast they are), a window of the queue, and the
users' recent usage and weights. The lease path (generation.services.leasing) and the ETAs (generation.eta)
read it through `snapshot`.

What changes only at register or with learning (checkpoints, runnable templates, learned speeds, switch
costs) is kept per process for STATIC_SECONDS; what changes with every lease (held work, warm models, the
queue) is read each time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db.models import QuerySet

from generation import api_workflows, dispatch, placement, workflows
from generation.models import Task, UserShare, WorkflowTemplate
from generation.placement import Job, Node
from workers_app.models import Worker, WorkerSpeed

WINDOW = placement.WINDOW
OWNERS_SECONDS = 1.0  # the users with queued tasks, re-read at most this often per process
LIVE_SECONDS = 1.0  # the live workers, likewise
STATIC_SECONDS = 5.0
NAMED_WORKERS_MOST = 32  # a snapshot of more workers reads every held task rather than naming them all

JOB_FIELDS = (
    "id",
    "owner_id",
    "checkpoint",
    "priority",
    "width",
    "height",
    "steps",
    "batch_size",
    "template_id",
    "requirements_key",
    "shape",
)


@dataclass(frozen=True)
class WorkerStatic:
    checkpoints: frozenset[str]
    templates: frozenset[int]
    speeds: dict[str, float]
    default_seconds_per_unit: float
    switch_seconds: float
    cold_seconds: float
    node_classes: frozenset[str] = frozenset()
    models: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    runs: dict[str, bool] = field(default_factory=dict, compare=False)  # requirement key -> runnable here

    @functools.cached_property
    def costs(self) -> Node:
        """A node with this worker's capabilities and learned costs (id, warm model and free time unset): for
        the run time of its held work, without a node per worker and lease."""
        return Node(
            id=0,
            checkpoints=self.checkpoints,
            seconds_per_unit=self.speeds,
            default_seconds_per_unit=self.default_seconds_per_unit,
            switch_seconds=self.switch_seconds,
            cold_seconds=self.cold_seconds,
            templates=self.templates,
        )

    def node(self, pk: int, *, warm: str, free_at: float, workflows: frozenset[str] | None) -> Node:
        return Node(
            id=pk,
            checkpoints=self.checkpoints,
            warm=warm,
            free_at=free_at,
            seconds_per_unit=self.speeds,
            default_seconds_per_unit=self.default_seconds_per_unit,
            switch_seconds=self.switch_seconds,
            cold_seconds=self.cold_seconds,
            templates=self.templates,
            workflows=workflows,
        )

    def can_run_workflow(self, key: str, needs: api_workflows.Requirements) -> bool:
        """Whether this worker has what a whole workflow needs (remembered per requirement key, which names
        the needs' content)."""
        if key not in self.runs:
            self.runs[key] = api_workflows.missing_in(needs, self.node_classes, self.models) is None
        return self.runs[key]


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statics: dict[tuple[int, datetime | None, datetime | None], WorkerStatic] = field(default_factory=dict)
    statics_at: float = -1e9
    owners: list[int | None] = field(default_factory=list)
    owners_at: float = -1e9
    announced: dict[int, float] = field(default_factory=dict)  # user -> when work of theirs was queued
    live: list[LiveWorker] = field(default_factory=list)
    live_at: float = -1e9


_cache = _Cache()


def clear_cache() -> None:
    """Forget what this process cached (tests; a worker's register makes its key new anyway)."""
    global _cache
    _cache = _Cache()


def worker_statics(workers: Iterable[LiveWorker | Worker]) -> dict[int, WorkerStatic]:
    """Each worker's checkpoints, runnable templates and learned costs, by id (cached STATIC_SECONDS)."""
    workers = list(workers)
    cache = _cache
    with cache.lock:
        fresh = time.monotonic() - cache.statics_at < STATIC_SECONDS
        if not fresh or any(_static_key(w) not in cache.statics for w in workers):
            cache.statics = _load_statics()
            cache.statics_at = time.monotonic()
        statics = cache.statics
    empty = WorkerStatic(frozenset(), frozenset(), {}, placement.DEFAULT_SECONDS_PER_UNIT, 0.0, 0.0)
    return {w.pk: statics.get(_static_key(w), empty) for w in workers}


def _static_key(worker: LiveWorker | Worker) -> tuple[int, datetime | None, datetime | None]:
    """A new register or a changed inventory (workers_app.services) makes the worker's key new."""
    return (worker.pk, worker.registered_at, worker.inventory_at)


def _load_statics() -> dict[tuple[int, datetime | None, datetime | None], WorkerStatic]:
    templates = [(t.pk, workflows.node_classes(t.workflow)) for t in WorkflowTemplate.objects.order_by()]
    speeds: dict[int, dict[str, float]] = defaultdict(dict)
    for worker_id, checkpoint, shape, rate in WorkerSpeed.objects.values_list(
        "worker_id", "checkpoint", "shape", "seconds_per_unit"
    ):
        speeds[worker_id][placement.speed_key(checkpoint, shape)] = rate
    every = [rate for rates in speeds.values() for rate in rates.values()]
    farm_default = sum(every) / len(every) if every else placement.DEFAULT_SECONDS_PER_UNIT
    registered = list(
        Worker.objects.exclude(registered_at=None)
        .order_by()
        .only("capabilities", "registered_at", "inventory_at", "switch_seconds")
    )
    switches = [w.switch_seconds for w in registered if w.switch_seconds is not None]
    farm_switch = sum(switches) / len(switches) if switches else None
    statics = {}
    for worker in registered:
        nodes = worker.node_classes
        known_switch = worker.switch_seconds if worker.switch_seconds is not None else farm_switch
        mine = speeds.get(worker.pk, {})
        statics[_static_key(worker)] = WorkerStatic(
            checkpoints=frozenset(worker.checkpoints),
            templates=frozenset(pk for pk, needs in templates if needs <= nodes),
            speeds=mine,
            default_seconds_per_unit=sum(mine.values()) / len(mine) if mine else farm_default,
            switch_seconds=placement.DEFAULT_SWITCH_SECONDS if known_switch is None else known_switch,
            cold_seconds=0.0 if known_switch is None else known_switch,
            node_classes=frozenset(nodes),
            models=api_workflows.capabilities_models(worker.capabilities),
        )
    return statics


def job_of(row: tuple, queued_at: float) -> Job:
    pk, owner, checkpoint, priority, width, height, steps, batch, template, requirements, shape = row
    return Job(
        id=pk,
        user=owner,
        checkpoint=checkpoint,
        priority=priority,
        work=placement.work_units(width, height, steps, batch),
        queued_at=queued_at,
        template=template,
        requirements=requirements,
        shape=shape,
    )


def queue_window(queued: QuerySet[Task], *, size: int = WINDOW) -> list[Job]:
    """The head of `queued` by priority and age, plus the first tasks of the users the head does not show
    (fair share must see them: a single task behind a flood of 10,000)."""
    rows = list(queued.order_by("-priority", "id").values_list(*JOB_FIELDS, "created_at")[:size])
    seen = {row[1] for row in rows}
    others = [owner for owner in queued_owners() if owner not in seen]
    if others:
        more = queued.filter(owner_id__in=[o for o in others if o is not None])
        if None in others:
            more = more | queued.filter(owner_id=None)
        rows += more.order_by("-priority", "id").values_list(*JOB_FIELDS, "created_at")[:size]
    unique = {row[0]: row for row in rows}
    return [job_of(row[:-1], row[-1].timestamp()) for row in unique.values()]


def queued_owners() -> list[int | None]:
    """The users with queued tasks (None: anonymous), read at most every OWNERS_SECONDS per process, with
    those whose work was queued since (the `work` events: `owner_queued`), so that a user's first task is in
    the next lease's window, not a second later."""
    cache = _cache
    now = time.monotonic()
    with cache.lock:
        fresh = now - cache.owners_at < OWNERS_SECONDS
        owners = cache.owners
    if not fresh:
        read_at = time.monotonic()
        owners = list(
            Task.objects.filter(status=Task.Status.QUEUED)
            .order_by()
            .values_list("owner_id", flat=True)
            .distinct()
        )
        with cache.lock:
            cache.owners, cache.owners_at = owners, read_at
    with cache.lock:
        # An owner announced just before the read began may be missing from it (the read's snapshot can
        # predate the commit): keep announcements a little longer than the read they could have missed.
        cache.announced = {o: at for o, at in cache.announced.items() if now - at < 2 * OWNERS_SECONDS}
        extra = [o for o in cache.announced if o not in owners]
    return owners + extra if extra else owners


def owner_queued(owner: int | None) -> None:
    """Work of `owner` was queued (in this process or another: the `work` event)."""
    if owner is None:
        return
    cache = _cache
    with cache.lock:
        cache.announced[owner] = time.monotonic()


dispatch.subscribe("work", lambda data: owner_queued(data.get("owner")))


@dataclass
class Farm:
    """The farm as placement sees it at `now` (epoch seconds)."""

    now: float
    nodes: dict[int, Node]  # every live worker, or those that compete with the asker (`snapshot`)
    usage: dict[int | None, float]
    weights: dict[int | None, float]
    served_at: dict[int | None, float]  # when each user last had a task running (now while one runs)
    held: dict[int, list[tuple[Job, float]]]  # worker id -> its held jobs with their expected end, in order
    live: int = 0  # live workers, in `nodes` or not
    job_seconds: float = 2.0  # the DEFAULT job's seconds on the farm's average worker: a fair-share turn


class LiveWorker(NamedTuple):
    """What placement reads of a live worker's row (a Worker has the same attributes)."""

    pk: int
    registered_at: datetime | None
    warm_checkpoint: str
    inventory_at: datetime | None = None


def live_workers(now: datetime) -> list[LiveWorker]:
    """Workers that take tasks now: idle (not draining) and beating; re-read at most every LIVE_SECONDS per
    process (who is live changes with registers and sweeps, a warm checkpoint with completions: the work a
    worker holds, read on every lease, says what it will have warm next)."""
    cache = _cache
    with cache.lock:
        if time.monotonic() - cache.live_at < LIVE_SECONDS:
            return cache.live
    alive_since = now - timedelta(seconds=settings.T2I["WORKER_OFFLINE_AFTER"])
    rows = (
        Worker.objects.filter(status=Worker.Status.IDLE, last_heartbeat__gte=alive_since)
        .order_by()
        .values_list("pk", "registered_at", "warm_checkpoint", "inventory_at")
    )
    live = [LiveWorker(*row) for row in rows]
    with cache.lock:
        cache.live, cache.live_at = live, time.monotonic()
    return live


def snapshot(
    *,
    now: datetime,
    workers: list[LiveWorker | Worker],
    workflow_needs: Mapping[str, api_workflows.Requirements] | None = None,
    asker: int | None = None,
    defer_to_idle: bool = True,
) -> Farm:
    """The live `workers` with their held work (running work counts what is left of it), and the usage and
    weights of every user with held work (`add_users` adds others). `workflow_needs`, the queued whole
    workflows' needs by requirement key, says which of them each worker can run (None: any).

    With `asker` (a lease), `nodes` holds only the workers `placement.plan` lets compete: the asker and the
    NEIGHBOURS others that free soonest (busy ones only unless `defer_to_idle`), picked as plan picks them;
    the usage counts every worker's held work all the same."""
    stamp = now.timestamp()
    statics = worker_statics(workers)
    free = {w.pk: stamp for w in workers}
    warm = {w.pk: w.warm_checkpoint for w in workers}
    held_rows = Task.objects.filter(status__in=Task.ACTIVE_STATUSES)
    if len(workers) <= NAMED_WORKERS_MOST:
        held_rows = held_rows.filter(worker_id__in=list(free))
    # Else every held task, those of workers not in `workers` skipped below: cheaper than naming hundreds of
    # workers in the query (held tasks are at most the live workers' prefetch depth, plus a few of workers
    # that just went away and are not yet reaped).
    held_rows = held_rows.order_by("worker_id", "leased_at", "id").values_list(
        "worker_id", "worker__warm_checkpoint", *JOB_FIELDS, "started_at"
    )
    running_seconds: dict[int | None, float] = defaultdict(float)
    held: dict[int, list[tuple[Job, float]]] = defaultdict(list)
    for row in held_rows:
        worker_id = row[0]
        if worker_id not in free:
            continue
        if worker_id not in held:
            # What it has loaded now (the checkpoint of its last completed task): the live list is cached and
            # may predate a completion, which would charge its running task a switch it does not make.
            warm[worker_id] = row[1]
        job = job_of(row[2:-1], stamp)  # held: when it was queued no longer matters
        seconds = statics[worker_id].costs.run_seconds(job, warm[worker_id])
        if row[-1] is not None:
            seconds = max(0.0, seconds - (stamp - row[-1].timestamp()))
        free[worker_id] += seconds
        warm[worker_id] = job.checkpoint or warm[worker_id]
        running_seconds[job.user] += seconds
        held[worker_id].append((job, free[worker_id]))
    keep = set(free)
    if asker is not None:
        keep = {asker, *placement.competitors(asker, free, now=stamp, defer_to_idle=defer_to_idle)}
    nodes = {}
    for pk in (pk for pk in free if pk in keep):  # in the workers' order: plan breaks ties by it
        static = statics[pk]
        runs = None
        if workflow_needs is not None:
            runs = frozenset(k for k, needs in workflow_needs.items() if static.can_run_workflow(k, needs))
        nodes[pk] = static.node(pk, warm=warm[pk], free_at=free[pk], workflows=runs)
    rates = [static.default_seconds_per_unit for static in statics.values()] or [
        placement.DEFAULT_SECONDS_PER_UNIT
    ]
    return Farm(
        now=stamp,
        nodes=nodes,
        usage=dict(running_seconds),
        weights={},
        served_at=dict.fromkeys(running_seconds, stamp),
        held=dict(held),
        live=len(workers),
        job_seconds=placement.work_units(512, 512, 20, 1) * sum(rates) / len(rates),
    )


def add_users(farm: Farm, owners: Iterable[int | None]) -> None:
    """Add the recent usage (decayed) and the weights of `owners` and of every user with held work."""
    users = {o for o in owners if o is not None} | {u for u in farm.usage if u is not None}
    if not users:
        return
    rows = UserShare.objects.filter(user_id__in=users).values_list(
        "user_id", "weight", "usage_seconds", "usage_at"
    )
    for user_id, weight, used, used_at in rows:
        elapsed = farm.now - used_at.timestamp() if used_at else 0.0
        farm.usage[user_id] = farm.usage.get(user_id, 0.0) + placement.decayed(used, elapsed)
        farm.weights[user_id] = weight
        if used_at is not None:
            farm.served_at.setdefault(user_id, used_at.timestamp())


def ordered(farm: Farm, jobs: Iterable[Job]) -> list[Job]:
    return placement.order_jobs(
        jobs,
        now=farm.now,
        usage=farm.usage,
        weights=farm.weights,
        job_seconds=farm.job_seconds,
        served_at=farm.served_at,
    )
