"""Which queued task a worker should run next: plain functions over plain data, no database.

The lease path (generation.services.leasing), the ETA (generation.eta) and the scheduling benchmark
(bench.scheduling) all call these, so the rule is one place. Times are seconds on any one clock (`now`).

1. `order_jobs`: the order in which tasks deserve a GPU. Priorities are strict between levels. Within a level,
   users interleave by weighted fair queuing: the user with the fewest recent GPU-seconds per unit of weight,
   less AGING_CREDIT per second they have waited unserved (since their next task was queued or their last
   task ran, whichever is later), has the next turn, charged that task's expected seconds. So a user with
   1,000 queued tasks delays another's single task by about one job at most, and a user who used much lately
   still gets a turn: the credit grows while they wait, so the wait is bounded (no starvation).
2. `plan`: earliest-finish list scheduling of that order onto the workers: each task, in order, goes to the
   capable worker that would finish it first (its queue, its learned speed for the checkpoint, a model switch
   when the checkpoint is not the one it will have warm). The asking worker gets the first task the plan gives
   it: its warm model's tasks when others would pay a switch, and nothing when a faster worker that frees
   sooner would finish that task first (that worker takes it when it asks). Only the NEIGHBOURS workers that
   free soonest compete in the plan, which keeps a choice to a few milliseconds on a farm of 500.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

# Seconds per unit of work (pixels x steps x batch) when nothing is learned: 512 x 512 x 20 in 2 s.
DEFAULT_SECONDS_PER_UNIT = 2.0 / (512 * 512 * 20)
DEFAULT_SWITCH_SECONDS = 4.0
AGING_CREDIT = 5.0  # GPU-seconds of usage forgiven per second a user has waited unserved
NEIGHBOURS = 32  # other workers (those that free soonest) that compete with the asker in a plan
# Another worker takes a job from the asker only when it finishes it sooner by this share of the asker's run
# time, at most DEFER_MARGIN_MAX seconds: more than the noise of learned speeds on short jobs.
DEFER_MARGIN, DEFER_MARGIN_MAX = 0.2, 0.25
# Queued tasks a plan looks at from the head of the queue (and as many from users it does not show): two per
# worker that competes in the plan (the asker and its NEIGHBOURS), so that each can find its warm model's
# work, at least WINDOW.
WINDOW = 48
EXACT_BUDGET = 20_000  # node comparisons an ETA estimate spends list-scheduling the head of the queue
ARRIVAL_WINDOW = 120.0  # seconds of recent submissions an ETA reads the users' arrival rates from

# Why a task went to its worker (TaskAttempt.placement) and why one still waits.
WARM = "warm model"
FASTEST = "fastest finish"
FAIR = "fair share"
FIFO = "first in line"


def window_size(live_workers: int) -> int:
    return max(WINDOW, 2 * min(live_workers, NEIGHBOURS + 1))


def work_units(width: int, height: int, steps: int, batch: int) -> float:
    """The work of a template task: pixels x steps x batch."""
    return float(width * height * max(1, steps) * max(1, batch))


def speed_key(checkpoint: str, shape: str = "") -> str:
    """Where a learned speed sits in Node.seconds_per_unit: by checkpoint, and for a whole workflow by
    checkpoint and shape (a workflow of a shape not seen yet goes by its checkpoint's speed)."""
    return f"{checkpoint}\n{shape}" if shape else checkpoint


class Job(NamedTuple):
    """A queued task as placement sees it (a named tuple: a lease builds hundreds, at a quarter of a frozen
    dataclass's cost)."""

    id: int
    user: int | None
    checkpoint: str
    priority: int
    work: float
    queued_at: float
    template: int | None = 0  # None: a whole-workflow task, runnable by its requirements
    requirements: str = ""  # a whole-workflow task's requirement key
    shape: str = ""  # a whole-workflow task's graph (workflows.workflow_shape): its speeds are learned apart


@dataclass
class Node:
    """A worker as placement sees it: what it can run, what it has warm, when it frees, how fast it is."""

    id: int
    checkpoints: frozenset[str] = frozenset()  # empty: any
    warm: str = ""  # the checkpoint it will have loaded once its held work is done
    free_at: float = 0.0  # when its held (running and prefetched) work should be done
    seconds_per_unit: Mapping[str, float] = field(default_factory=dict)  # learned, by speed_key
    default_seconds_per_unit: float = DEFAULT_SECONDS_PER_UNIT
    switch_seconds: float = (
        DEFAULT_SWITCH_SECONDS  # from one checkpoint to another: learned, else the default
    )
    # A load when the worker's loaded model is unknown (it never ran, or its ComfyUI restarted): the learned
    # switch cost once the worker or the farm has one, else none assumed, so a new worker is not shut out
    # of work by a default it never had a chance to disprove.
    cold_seconds: float = 0.0
    templates: frozenset[int] | None = None  # the templates whose node classes it has; None: any
    workflows: frozenset[str] | None = None  # the requirement keys of whole workflows it can run; None: any

    def can_run(self, job: Job) -> bool:
        if job.template is None:
            return self.workflows is None or job.requirements in self.workflows
        if self.templates is not None and job.template not in self.templates:
            return False
        return not job.checkpoint or not self.checkpoints or job.checkpoint in self.checkpoints

    def run_seconds(self, job: Job, warm: str | None = None) -> float:
        """Expected seconds for `job` here, with a model switch when it is not the warm checkpoint."""
        warm = self.warm if warm is None else warm
        rates = self.seconds_per_unit
        spu = (job.shape and rates.get(speed_key(job.checkpoint, job.shape))) or rates.get(
            job.checkpoint, self.default_seconds_per_unit
        )
        switch = 0.0
        if job.checkpoint and job.checkpoint != warm:
            switch = self.switch_seconds if warm else self.cold_seconds
        return job.work * spu + switch


@dataclass(frozen=True)
class Choice:
    """The plan's answer for the asking worker: the job ids it should try, best first, and why."""

    job_ids: list[int]
    reason: str
    planned: dict[int, int] = field(default_factory=dict)  # job id -> node id, for the jobs looked at


def order_jobs(
    jobs: Iterable[Job],
    *,
    now: float,
    usage: Mapping[int | None, float] | None = None,
    weights: Mapping[int | None, float] | None = None,
    job_seconds: float = 2.0,
    served_at: Mapping[int | None, float] | None = None,
    aging: float = AGING_CREDIT,
) -> list[Job]:
    """Jobs in the order they deserve a GPU (see the module docstring). `usage` is each user's recent
    GPU-seconds (running work included), `weights` their share weight (1 when absent); `job_seconds` is the
    DEFAULT job's seconds on an average worker, what a turn is charged per DEFAULT job of work; `served_at`
    when each user last had a task running (now while one runs), from which their wait unserved counts."""
    usage = usage or {}
    weights = weights or {}
    by_level: dict[int, list[Job]] = defaultdict(list)
    for job in jobs:
        by_level[job.priority].append(job)
    ordered: list[Job] = []
    for level in sorted(by_level, reverse=True):
        level_jobs = sorted(by_level[level], key=lambda j: (j.queued_at, j.id))
        ordered += _fair_interleave(
            level_jobs, usage, weights, job_seconds, now=now, aging=aging, served_at=served_at or {}
        )
    return ordered


def _fair_interleave(
    jobs: list[Job],
    usage: Mapping[int | None, float],
    weights: Mapping[int | None, float],
    job_seconds: float,
    *,
    now: float,
    aging: float,
    served_at: Mapping[int | None, float],
) -> list[Job]:
    """Weighted fair queuing: each turn to the user with the least usage per weight less the aging credit of
    their next task; a turn costs the job's expected seconds (its work against the DEFAULT job) divided by the
    user's weight."""
    queues: dict[int | None, list[Job]] = defaultdict(list)
    for job in jobs:  # already oldest first
        queues[job.user].append(job)
    heap = []
    for user, queue in queues.items():
        weight = max(1e-6, weights.get(user, 1.0))
        virtual = usage.get(user, 0.0) / weight
        credit = aging * (now - max(queue[0].queued_at, served_at.get(user, -1e18)))
        heapq.heappush(heap, (virtual - credit, virtual, queue[0].id, user))
    unit = job_seconds / work_units(512, 512, 20, 1)
    position = dict.fromkeys(queues, 0)
    out: list[Job] = []
    while heap:
        _, virtual, _, user = heapq.heappop(heap)
        queue = queues[user]
        job = queue[position[user]]
        out.append(job)
        position[user] += 1
        if position[user] < len(queue):
            nxt = queue[position[user]]
            virtual += job.work * unit / max(1e-6, weights.get(user, 1.0))
            credit = aging * (now - max(nxt.queued_at, served_at.get(user, -1e18)))
            heapq.heappush(heap, (virtual - credit, virtual, nxt.id, user))
    return out


def plan(
    asker: Node,
    nodes: Sequence[Node],
    ordered: Sequence[Job],
    *,
    now: float,
    want: int = 2,
    defer_to_idle: bool = True,
) -> Choice:
    """Earliest-finish list scheduling of `ordered` onto the asker and the NEIGHBOURS other `nodes` that free
    soonest, until the asker has `want` jobs or the jobs run out. Ties go to the asker: it is here now.

    A job the plan gives to another worker waits for it: the lease path wakes that worker when it is idle,
    and a worker that stops asking stops beating and drops out of the live set (WORKER_OFFLINE_AFTER).
    `defer_to_idle=False` (where that wake cannot reach other processes) leaves idle workers out: the asker
    competes only with workers that will ask when their work is done."""
    by_id = {n.id: n for n in nodes}
    chosen = competitors(asker.id, {n.id: n.free_at for n in nodes}, now=now, defer_to_idle=defer_to_idle)
    others = [by_id[pk] for pk in chosen]
    free = {n.id: max(now, n.free_at) for n in others}
    warm = {n.id: n.warm for n in others}
    return _plan(asker, max(now, asker.free_at), asker.warm, others, free, warm, ordered, want)


def competitors(
    asker: int, free_at: Mapping[int, float], *, now: float, defer_to_idle: bool = True
) -> list[int]:
    """The workers that compete with `asker` in a plan, soonest free first: the NEIGHBOURS others that free
    soonest (`free_at`: when each frees; equals in its order), only busy ones unless `defer_to_idle`."""
    others = (pk for pk, at in free_at.items() if pk != asker and (defer_to_idle or at > now))
    return sorted(others, key=free_at.__getitem__)[:NEIGHBOURS]


def _plan(
    asker: Node,
    my_free: float,
    my_warm: str,
    others: Sequence[Node],
    free: dict[int, float],
    warm: dict[int, str],
    ordered: Sequence[Job],
    want: int,
) -> Choice:
    """`plan` from when each node frees and what it has warm (`free` and `warm` are the others', and are
    changed: the jobs planned onto them)."""
    mine: list[int] = []
    reason = ""
    planned: dict[int, int] = {}
    for index, job in enumerate(ordered):
        if len(mine) >= want:
            break
        mine_at = my_free + asker.run_seconds(job, my_warm) if asker.can_run(job) else None
        best: Node | None = None
        # Another worker takes the job from the asker only when it finishes it clearly sooner: it may have to
        # be woken first, and learned speeds are noisy.
        best_at = (
            None if mine_at is None else mine_at - min(DEFER_MARGIN * (mine_at - my_free), DEFER_MARGIN_MAX)
        )
        for node in others:
            node_free = free[node.id]
            if (best_at is not None and node_free >= best_at) or not node.can_run(job):
                continue  # cannot finish before the best so far even with no work at all
            at = node_free + node.run_seconds(job, warm[node.id])
            if best_at is None or at < best_at:
                best, best_at = node, at
        if best is None and mine_at is None:
            continue  # nobody here can run it
        if best is None:
            planned[job.id] = asker.id
            if not mine:
                reason = _why(job, my_warm, head=index == 0)
            mine.append(job.id)
            my_free, my_warm = mine_at, job.checkpoint or my_warm
        else:
            planned[job.id] = best.id
            free[best.id], warm[best.id] = best_at, job.checkpoint or warm[best.id]
    return Choice(job_ids=mine, reason=reason, planned=planned)


def _why(job: Job, warm: str, *, head: bool) -> str:
    if head:
        return FAIR  # the first in line: its owner's turn
    return WARM if job.checkpoint and job.checkpoint == warm else FASTEST


def finish_estimates(
    nodes: Sequence[Node],
    ordered: Sequence[Job],
    *,
    now: float,
    budget: int = EXACT_BUDGET,
    ahead: Mapping[int | None, float] | None = None,
) -> dict[int, float]:
    """When each job of `ordered` should be done if the farm follows the plan (the ETAs: generation.eta).

    The head of the queue is placed as the lease path places it (`simulate_leases`): each node, as it frees,
    asks and gets what `plan` gives it from the head of what is left, so the estimate makes the switches and
    the stand-backs placement makes, not those of an ideal schedule; about `budget` node comparisons. The
    rest flow through the farm's total speed after that, in order (a fluid estimate: switches are few once
    placement groups them). Jobs that no node can run get none.

    `ahead`: per user, the share of the farm's capacity that work still to come will take before theirs
    (`arrival_shares`); each of their jobs' wait is stretched by 1 / (1 - share)."""
    done, free, warm, rest = simulate_leases(nodes, ordered, now=now, budget=budget)
    rest = _list_schedule(nodes, rest, free, warm, done, most=max(64, budget // max(1, len(nodes))))
    if rest and nodes:
        rates = {n.id: 1.0 / max(1e-12, n.default_seconds_per_unit) for n in nodes}  # units per second
        total = sum(rates.values())
        clock = sum(free[n] * rate for n, rate in rates.items()) / total  # when the farm's capacity is free
        for job in rest:
            done[job.id] = clock + job.work * len(nodes) / total  # starts as capacity frees; an average node
            clock += job.work / total
    if ahead:
        for job in ordered:
            share = ahead.get(job.user, 0.0)
            if share > 0 and job.id in done:
                done[job.id] = now + (done[job.id] - now) / (1.0 - share)
    return done


def simulate_leases(
    nodes: Sequence[Node], ordered: Sequence[Job], *, now: float, budget: int = EXACT_BUDGET
) -> tuple[dict[int, float], dict[int, float], dict[int, str], list[Job]]:
    """The lease path played forward: the node that frees first asks, `plan` (want=1) over the head of the
    jobs left that it can run (as many as a lease's window) gives it a job or nothing (another node frees in
    time to finish them sooner: the asker asks again at the next event, when a node frees). Stops when
    about `budget` node comparisons are spent. Returns each placed job's finish, when each node frees after
    them, what each has warm then, and the jobs not placed, in order (less those found that no node can
    run)."""
    free = {n.id: max(now, n.free_at) for n in nodes}
    warm = {n.id: n.warm for n in nodes}
    asks = [(at, n.id) for n, at in zip(nodes, free.values(), strict=True)]
    heapq.heapify(asks)
    by_id = {n.id: n for n in nodes}
    left = list(ordered)
    size = window_size(len(nodes))
    runnable: set[int] = set()
    done: dict[int, float] = {}
    waiting: list[int] = []  # nodes that stood back with no later event to ask again at
    stood: set[int] = set()  # nodes that stood back since the last job was placed
    spent = 0
    while left and asks and spent < budget and len(stood) < len(nodes):
        at, asker_id = heapq.heappop(asks)
        asker = by_id[asker_id]
        window = _head_for(asker, left, size, nodes, runnable)
        others = [by_id[pk] for pk in competitors(asker_id, free, now=at)]
        their_free = {n.id: max(at, free[n.id]) for n in others}
        choice = _plan(asker, max(at, free[asker_id]), warm[asker_id], others, their_free,
                       {n.id: warm[n.id] for n in others}, window, 1)  # fmt: skip
        spent += max(1, len(choice.planned)) * (len(others) + 1) + len(nodes) + len(window)
        if not choice.job_ids:
            stood.add(asker_id)  # it stands back: it asks again at the next event (a node freeing later)
            later = [t for t, _ in asks if t > at]
            if later:
                heapq.heappush(asks, (min(later), asker_id))
            else:
                waiting.append(asker_id)
            continue
        stood.clear()
        index = next(i for i, job in enumerate(left) if job.id == choice.job_ids[0])
        job = left.pop(index)
        end = max(at, free[asker_id]) + asker.run_seconds(job, warm[asker_id])
        done[job.id], free[asker_id], warm[asker_id] = end, end, job.checkpoint or warm[asker_id]
        heapq.heappush(asks, (end, asker_id))
        for pk in waiting:  # this job's end is an event they ask again at, if none comes sooner
            heapq.heappush(asks, (min(t for t, _ in asks if t > at), pk))
        waiting.clear()
    return done, free, warm, left


def _list_schedule(
    nodes: Sequence[Node],
    jobs: list[Job],
    free: dict[int, float],
    warm: dict[int, str],
    done: dict[int, float],
    *,
    most: int,
) -> list[Job]:
    """Earliest-finish list scheduling of the first `most` of `jobs` (each to the node that finishes it
    first), into `done`, `free` and `warm`; returns the jobs after them."""
    for job in jobs[:most]:
        best, best_at = None, None
        for node in nodes:
            if (best_at is not None and free[node.id] >= best_at) or not node.can_run(job):
                continue
            at = free[node.id] + node.run_seconds(job, warm[node.id])
            if best_at is None or at < best_at:
                best, best_at = node, at
        if best is None or best_at is None:
            continue
        done[job.id] = best_at
        free[best.id], warm[best.id] = best_at, job.checkpoint or warm[best.id]
    return jobs[most:]


def _head_for(
    asker: Node, left: list[Job], size: int, nodes: Sequence[Node], runnable: set[int]
) -> list[Job]:
    """The first `size` jobs of `left` that `asker` can run, as its lease's window holds only those (jobs no
    node can run are dropped from `left` on the way; `runnable` remembers those some node can run)."""
    head: list[Job] = []
    index = 0
    while len(head) < size and index < len(left):
        job = left[index]
        if job.id not in runnable:
            if not _anyone_runs(job, nodes):
                del left[index]
                continue
            runnable.add(job.id)
        if asker.can_run(job):
            head.append(job)
        index += 1
    return head


def _anyone_runs(job: Job, nodes: Sequence[Node]) -> bool:
    return any(node.can_run(job) for node in nodes)


def arrival_shares(
    arrived: Mapping[int | None, float],
    nodes: Sequence[Node],
    *,
    usage: Mapping[int | None, float],
    weights: Mapping[int | None, float] | None = None,
    window: float = ARRIVAL_WINDOW,
) -> dict[int | None, float]:
    """Per user, the share of the farm's capacity that other users' arrivals take before their queued work,
    if those users keep submitting as they did lately: `arrived` is each user's work submitted in the last
    `window` seconds. Fair share serves a user who used less (per weight) first, so their new tasks go ahead
    of a user who used more; max-min fairness leaves every user at least an equal share of the farm, so the
    share taken by others is at most 1 - 1/(users)."""
    weights = weights or {}
    capacity = sum(1.0 / max(1e-12, n.default_seconds_per_unit) for n in nodes)  # work units per second
    if not capacity or not arrived:
        return {}
    rates = {u: work / window / capacity for u, work in arrived.items() if work > 0}
    users = set(rates) | set(usage)

    def standing(u: int | None) -> float:
        return usage.get(u, 0.0) / max(1e-6, weights.get(u, 1.0))

    shares = {}
    for user in users:
        taken = sum(rate for v, rate in rates.items() if v != user and standing(v) < standing(user))
        if taken > 0:
            shares[user] = min(taken, 1.0 - 1.0 / len(users | {user}))
    return shares


# --- Learned costs and recent usage: the arithmetic, shared by the services and the benchmark -------------
EWMA_ALPHA = 0.1  # forgets slowly: about the last ten attempts carry the estimate
USAGE_HALF_LIFE = 600.0  # seconds: fair share looks at about the last ten minutes of GPU use


def ewma(old: float | None, observed: float, samples: int) -> float:
    """An exponentially weighted mean that starts as the plain mean of its first 1/EWMA_ALPHA samples."""
    if old is None or samples <= 0:
        return observed
    return old + max(EWMA_ALPHA, 1.0 / (samples + 1)) * (observed - old)


def decayed(usage: float, elapsed: float) -> float:
    """Recent usage `elapsed` seconds later: it halves every USAGE_HALF_LIFE."""
    return usage * 0.5 ** (max(0.0, elapsed) / USAGE_HALF_LIFE)
