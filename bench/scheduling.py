"""`python -m bench.scheduling` (also `python -m bench --only scheduling`): first-come-first-served against
placement (generation.placement), replayed in simulated time: no processes, no sleeping, no database.

The farm is a discrete-event simulation. A worker that is free asks for work exactly as the lease path does:
FIFO takes the oldest task it can run; smart runs `order_jobs` (strict priorities, aging, weighted fair
queuing on recent GPU-seconds) and `plan` (earliest finish across the farm) over a window of the queue, and
may get nothing (another worker that frees sooner will finish it first): it asks again at the next event.
Speeds and switch costs are learned from finished jobs with `placement.ewma`, starting from the defaults, as
the scheduler learns them; the simulated truth is the issue's farm. Each task's ETA is predicted when it is
submitted with `placement.finish_estimates` (what /status and the task answers show) and compared with when
it really finished.

Farms (issue 15): "mixed" = 8 workers (2 fast x2, 4 normal, 2 slow x0.5), all holding 3 checkpoints, warm
2-3-3, a 4 s switch; one job = 512x512, 20 steps = 2 s at x1; user 1 submits 400 tasks at once (checkpoints
round-robin), users 2 and 3 one task every 3 s (seeded). "mixed-64" = the same mix scaled to 64 workers and
10,000 flood tasks. "uniform" = 8 identical workers, one checkpoint.

The replay's workers ask when they are free and run each job in exactly its true time. `--prefetch-lead S`
makes them hold a prefetched task as the daemons do (prefetch 2: the next is asked for when the running one
ends within S seconds), `--jitter X` makes each run take its true time x (1 +- up to X), seeded by `--seed`.

`--live` runs the mixed farm on real processes instead (bench.scheduling_live; its flags follow).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import Figure
from generation import placement
from generation.placement import Job, Node

UNIT = placement.work_units(512, 512, 20, 1)
JOB_SECONDS = 2.0  # one UNIT at speed x1
CHECKPOINTS = ("sd15.safetensors", "sdxl.safetensors", "flux.safetensors")


@dataclass
class SimWorker:
    id: int
    speed: float
    warm: str
    switch: float = 4.0
    checkpoints: tuple[str, ...] = CHECKPOINTS
    busy_until: float = 0.0
    running: Job | None = None
    started: float = 0.0
    next: Job | None = None  # prefetched: held behind the running job (the daemons' prefetch 2)
    prefetch_at: float = -1.0  # when the running job's prefetch is due
    learned: dict[str, tuple[float, int]] = field(default_factory=dict)  # checkpoint -> (spu, samples)
    switch_learned: tuple[float | None, int] = (None, 0)
    busy: list[tuple[float, float, int | None, int]] = field(default_factory=list)  # start, end, user, job

    def true_seconds(self, job: Job) -> float:
        switch = self.switch if job.checkpoint != self.warm else 0.0
        return job.work / UNIT * JOB_SECONDS / self.speed + switch


@dataclass
class Farm:
    name: str
    workers: list[tuple[float, str]]  # (speed, warm checkpoint)
    flood: int
    checkpoints: tuple[str, ...] = CHECKPOINTS
    trickle_every: float = 3.0
    trickle_users: int = 2
    trickle_until: float = 60.0  # the trickle users submit while the flood runs, for this long


def mixed(scale: int = 1, flood: int = 400) -> Farm:
    speeds = [2.0] * 2 + [1.0] * 4 + [0.5] * 2
    warm = [CHECKPOINTS[0]] * 2 + [CHECKPOINTS[1]] * 3 + [CHECKPOINTS[2]] * 3
    rng = random.Random(15)
    order = list(range(8))
    rng.shuffle(order)  # which speed holds which warm model: fixed, not aligned
    workers = [(speeds[i], warm[order[i]]) for i in range(8)] * scale
    return Farm(name=f"mixed {8 * scale} workers x {flood} tasks", workers=workers, flood=flood)


def uniform() -> Farm:
    return Farm(
        name="identical 8 workers, 1 checkpoint",
        workers=[(1.0, CHECKPOINTS[0])] * 8,
        flood=400,
        checkpoints=CHECKPOINTS[:1],
    )


@dataclass
class Result:
    makespan: float
    all_done: float
    switches: int
    busy_share: float
    trickle_p50: float
    trickle_p95: float
    fair_flood: float
    fair_trickle: float
    eta_p50: float
    eta_p95: float
    eta_bias: float  # the signed median of (predicted - actual) / actual: < 0 when ETAs come early
    eta_trickle_p50: float  # the trickle users' tasks alone
    shown_p50: float
    shown_p95: float
    choice_ms: float


def arrivals(farm: Farm, seed: int = 1) -> list[tuple[float, Job]]:
    """The flood at t=0 (round-robin checkpoints), then each trickle user's task every few seconds."""
    rng = random.Random(seed)
    ids = itertools.count(1)
    out = []
    for i in range(farm.flood):
        ckpt = farm.checkpoints[i % len(farm.checkpoints)]
        out.append((0.0, Job(id=next(ids), user=1, checkpoint=ckpt, priority=0, work=UNIT, queued_at=0.0)))
    for user in range(2, 2 + farm.trickle_users):
        t = rng.uniform(0, farm.trickle_every)
        while t < farm.trickle_until:
            ckpt = rng.choice(farm.checkpoints)
            out.append((t, Job(id=0, user=user, checkpoint=ckpt, priority=0, work=UNIT, queued_at=t)))
            t += farm.trickle_every
    out.sort(key=lambda a: a[0])
    return [(t, job._replace(id=next(ids)) if job.id == 0 else job) for t, job in out]


def held(worker: SimWorker, now: float) -> list[tuple[Job, float]]:
    """The worker's running and prefetched jobs with their expected ends, as the scheduler sees them: from
    learned costs only (the defaults until it has finished work)."""
    rates = {c: spu for c, (spu, _) in worker.learned.items()}
    default = statistics.fmean(rates.values()) if rates else placement.DEFAULT_SECONDS_PER_UNIT
    switch = worker.switch_learned[0] or placement.DEFAULT_SWITCH_SECONDS
    out, end, warm = [], worker.started, worker.warm
    for job in (worker.running, worker.next):
        if job is None:
            break
        end += job.work * rates.get(job.checkpoint, default) + (switch if job.checkpoint != warm else 0.0)
        end, warm = max(now, end), job.checkpoint
        out.append((job, end))
    return out


def node_of(worker: SimWorker, now: float) -> Node:
    """The worker as the scheduler sees it: learned costs only (the defaults until it has finished work)."""
    rates = {c: spu for c, (spu, _) in worker.learned.items()}
    default = statistics.fmean(rates.values()) if rates else placement.DEFAULT_SECONDS_PER_UNIT
    holds = held(worker, now)
    free_at, warm = (holds[-1][1], holds[-1][0].checkpoint) if holds else (now, worker.warm)
    switch = worker.switch_learned[0]
    return Node(
        id=worker.id,
        checkpoints=frozenset(worker.checkpoints),
        warm=warm,
        free_at=free_at,
        seconds_per_unit=rates,
        default_seconds_per_unit=default,
        switch_seconds=placement.DEFAULT_SWITCH_SECONDS if switch is None else switch,
    )


def learn(worker: SimWorker, job: Job, seconds: float, switched: bool) -> None:
    if switched:
        known = worker.learned.get(job.checkpoint)
        if known is None:
            return
        old, samples = worker.switch_learned
        extra = max(0.0, seconds - job.work * known[0])
        worker.switch_learned = (placement.ewma(old, extra, samples), samples + 1)
        return
    old, samples = worker.learned.get(job.checkpoint, (None, 0))
    worker.learned[job.checkpoint] = (placement.ewma(old, seconds / job.work, samples), samples + 1)


class Queue:
    """Queued jobs per user in submit order, and in global order (FIFO)."""

    def __init__(self) -> None:
        self.by_user: dict[int | None, dict[int, Job]] = defaultdict(dict)
        self.all: dict[int, Job] = {}
        self.arrived: list[Job] = []  # every job queued so far, oldest first (the arrival rates)

    def add(self, job: Job) -> None:
        self.arrived.append(job)
        self.by_user[job.user][job.id] = job
        self.all[job.id] = job

    def remove(self, job: Job) -> None:
        del self.by_user[job.user][job.id]
        del self.all[job.id]
        if not self.by_user[job.user]:
            del self.by_user[job.user]

    def window(self, size: int) -> list[Job]:
        """As generation.farm_snapshot.queue_window: the head of the queue and the first jobs of the users it
        does not show."""
        head = list(itertools.islice(self.all.values(), size))
        seen = {j.user for j in head}
        others = [
            j
            for user, jobs in self.by_user.items()
            if user not in seen
            for j in itertools.islice(jobs.values(), size)
        ]
        return head + sorted(others, key=lambda j: j.id)[:size]


@dataclass(frozen=True)
class Daemons:
    """How the simulated workers behave beyond the farm's truth. `lead`: each also holds a prefetched task, as
    the daemons do (prefetch 2), asking for it when the running one ends within `lead` seconds (None: no
    prefetch, a worker asks when it is free). `jitter`: each run takes its true time x (1 +- up to this
    share), drawn from `seed` (0: exactly its true time)."""

    lead: float | None = None
    jitter: float = 0.0
    seed: int = 0


def simulate(farm: Farm, smart: bool, learned: bool = True, daemons: Daemons = Daemons()) -> Result:
    """One run. `learned`: the farm has run before, so its speeds and switch costs are learned (ten earlier
    jobs per worker and checkpoint, and ten switches, through the same EWMA); else it starts from defaults."""
    workers = [
        SimWorker(id=i + 1, speed=speed, warm=warm, checkpoints=farm.checkpoints)
        for i, (speed, warm) in enumerate(farm.workers)
    ]
    for worker in workers if learned else ():
        for checkpoint in farm.checkpoints:
            for _ in range(10):
                learn(worker, Job(0, None, checkpoint, 0, UNIT, 0.0), JOB_SECONDS / worker.speed, False)
        for _ in range(10):
            extra = Job(0, None, farm.checkpoints[0], 0, UNIT, 0.0)
            learn(worker, extra, JOB_SECONDS / worker.speed + worker.switch, True)
    pending = arrivals(farm)
    flood_ids = {j.id for _, j in pending if j.user == 1}
    submitted = {j.id: t for t, j in pending}
    queue = Queue()
    events: list[tuple[float, int, int]] = [(t, 0, i) for i, (t, _) in enumerate(pending)]  # kind 0: arrival
    events += [(10.0 * k, 2, 0) for k in range(1, 10_000)]  # kind 2: the ETAs shown, every 10 s
    heapq.heapify(events)
    share = Share()
    shown: list[tuple[int, float, float]] = []  # (job, shown at, predicted finish)
    started_at: dict[int, float] = {}
    finished_at: dict[int, float] = {}
    predicted: dict[int, float] = {}
    switches = 0
    choice_seconds: list[float] = []
    asking = list(workers)  # idle workers, and busy ones whose prefetch is due: longest waiting first
    noise = random.Random(daemons.seed)

    def start(worker: SimWorker, job: Job, now: float) -> None:
        nonlocal switches
        switches += job.checkpoint != worker.warm
        worker.running, worker.started = job, now
        started_at[job.id] = now
        seconds = worker.true_seconds(job)
        if daemons.jitter:
            seconds *= 1 + noise.uniform(-daemons.jitter, daemons.jitter)
        heapq.heappush(events, (now + seconds, 1, worker.id - 1))
        if daemons.lead is not None:  # the daemon asks for the next task when this one ends within its lead
            worker.prefetch_at = max(now, now + seconds - daemons.lead)
            heapq.heappush(events, (worker.prefetch_at, 3, worker.id - 1))

    while events:
        now, kind, ref = heapq.heappop(events)
        if kind == 2:
            if (
                not queue.all
                and all(w.running is None for w in workers)
                and all(k == 2 for _, k, _ in events)
            ):
                break
            if queue.all:
                shown += [(j, now, at) for j, at in _estimates(queue, workers, share, now).items()]
            continue
        if kind == 0:
            queue.add(pending[ref][1])
            if events and events[0][0] == now and events[0][1] == 0:
                continue  # the rest of a burst first, then one ETA for all of it
            _predict(queue, workers, share, now, predicted)
        elif kind == 1:
            worker = workers[ref]
            job = worker.running
            seconds = now - worker.started
            learn(worker, job, seconds, switched=job.checkpoint != worker.warm)
            worker.busy.append((worker.started, now, job.user, job.id))
            worker.warm, worker.running = job.checkpoint, None
            finished_at[job.id] = now
            share.charge(job.user, seconds, now)
            if worker.next is not None:
                job, worker.next = worker.next, None
                start(worker, job, now)
            elif worker not in asking:
                asking.append(worker)
        else:  # kind 3: a busy worker's prefetch is due
            worker = workers[ref]
            if worker.prefetch_at != now or worker.next is not None or worker in asking:
                continue
            asking.append(worker)
        still_asking = []
        for worker in asking:
            if not queue.all:
                still_asking.append(worker)
                continue
            t0 = time.perf_counter()
            job = _choose(worker, workers, queue, share, now) if smart else _first(worker, queue)
            choice_seconds.append(time.perf_counter() - t0)
            if job is None:
                still_asking.append(worker)  # it asks again at the next event
                continue
            queue.remove(job)
            if worker.running is None:
                start(worker, job, now)
            else:
                worker.next = job
        asking = still_asking
    timings = Timings(submitted, started_at, finished_at, predicted, shown)
    return _measure(workers, flood_ids, timings, switches, choice_seconds)


@dataclass
class Timings:
    submitted: dict[int, float]
    started: dict[int, float]
    finished: dict[int, float]
    predicted: dict[int, float]
    shown: list[tuple[int, float, float]]


class Share:
    """Each user's recent GPU-seconds (decayed) and when they were last served, as UserShare keeps them."""

    def __init__(self) -> None:
        self.usage: dict[int | None, float] = {}
        self.at: dict[int | None, float] = {}

    def charge(self, user: int | None, seconds: float, now: float) -> None:
        old = placement.decayed(self.usage.get(user, 0.0), now - self.at.get(user, now))
        self.usage[user], self.at[user] = old + seconds, now

    def recent(self, workers: list[SimWorker], now: float) -> tuple[dict, dict]:
        usage = {u: placement.decayed(v, now - self.at[u]) for u, v in self.usage.items()}
        served = dict(self.at)
        for w in workers:  # held work (what is left of it) counts for its owner, served now
            begin = now
            for job, end in held(w, now):
                usage[job.user] = usage.get(job.user, 0.0) + max(0.0, end - begin)
                served[job.user], begin = now, end
        return usage, served


def _first(worker: SimWorker, queue: Queue) -> Job | None:
    return next((j for j in queue.all.values() if j.checkpoint in worker.checkpoints), None)


def _choose(
    worker: SimWorker, workers: list[SimWorker], queue: Queue, share: Share, now: float
) -> Job | None:
    nodes = [node_of(w, now) for w in workers]
    usage, served = share.recent(workers, now)
    ordered = placement.order_jobs(
        queue.window(placement.window_size(len(workers))),
        now=now,
        usage=usage,
        served_at=served,
        job_seconds=JOB_SECONDS,
    )
    choice = placement.plan(nodes[worker.id - 1], nodes, ordered, now=now)
    return queue.all[choice.job_ids[0]] if choice.job_ids else None


def _estimates(queue: Queue, workers: list[SimWorker], share: Share, now: float) -> dict[int, float]:
    """The ETAs the scheduler shows: the whole queue in placement's order, list-scheduled for its head and
    flowing through the farm's learned speed after that, stretched by the share of the farm that other users'
    recent arrivals will take first (generation.eta does the same)."""
    nodes = [node_of(w, now) for w in workers]
    usage, served = share.recent(workers, now)
    ordered = placement.order_jobs(
        queue.all.values(), now=now, usage=usage, served_at=served, job_seconds=JOB_SECONDS
    )
    arrived: dict[int | None, float] = defaultdict(float)
    for job in queue.arrived:
        if job.queued_at > now - placement.ARRIVAL_WINDOW:
            arrived[job.user] += job.work
    ahead = placement.arrival_shares(arrived, nodes, usage=usage)
    return placement.finish_estimates(nodes, ordered, now=now, ahead=ahead)


def _predict(queue: Queue, workers: list[SimWorker], share: Share, now: float, predicted: dict) -> None:
    """The ETAs of the jobs submitted now, as their submitters first see them."""
    estimates = _estimates(queue, workers, share, now)
    for job in queue.all.values():
        if job.id not in predicted and job.queued_at == now and job.id in estimates:
            predicted[job.id] = estimates[job.id]


def _measure(workers, flood_ids, t: Timings, switches: int, choice_seconds: list[float]) -> Result:
    makespan = max(t.finished[j] for j in flood_ids)
    busy = sum(min(e, makespan) - s for w in workers for s, e, _, _ in w.busy if s < makespan)
    trickle = [t.started[j] - at for j, at in t.submitted.items() if j not in flood_ids and at < makespan]
    signed, trickle_errors = [], []
    for j, at in t.predicted.items():
        actual = t.finished[j] - t.submitted[j]
        signed.append(((at - t.submitted[j]) - actual) / actual)
        if j not in flood_ids:
            trickle_errors.append(abs(signed[-1]))
    errors = [abs(e) for e in signed]
    later = [
        abs(at - t.finished[j]) / (t.finished[j] - when) for j, when, at in t.shown if t.finished[j] > when
    ]
    return Result(
        shown_p50=_pct(later, 50),
        shown_p95=_pct(later, 95),
        makespan=makespan,
        all_done=max(t.finished.values()),
        switches=switches,
        busy_share=busy / (len(workers) * makespan),
        trickle_p50=_pct(trickle, 50),
        trickle_p95=_pct(trickle, 95),
        fair_flood=_fairness(workers, t, makespan, users={1}),
        fair_trickle=_fairness(workers, t, makespan, users={2, 3}),
        eta_p50=_pct(errors, 50),
        eta_p95=_pct(errors, 95),
        eta_bias=_pct(signed, 50),
        eta_trickle_p50=_pct(trickle_errors, 50),
        choice_ms=1000 * statistics.fmean(choice_seconds) if choice_seconds else 0.0,
    )


def _fairness(
    workers: list[SimWorker], t: Timings, makespan: float, *, users: set[int], window: float = 60.0
) -> float:
    """The lowest, over users and over 1-minute windows while the flood runs, of the GPU-seconds a user got
    in the window against their max-min fair share of the farm's GPU-seconds for their demand. The flood user
    demands everything; a trickle user the run time of its tasks submitted in the window (a task submitted
    near the window's end runs partly in the next: a ratio a little under 1 is that, not unfairness)."""
    runs = [b for w in workers for b in w.busy]
    everyone = sorted({u for _, _, u, _ in runs if u is not None})
    ratios = []
    start = 0.0
    while start + window <= makespan:
        end = start + window
        got: dict = defaultdict(float)
        demand: dict = {}
        for s, e, u, _ in runs:
            got[u] += max(0.0, min(e, end) - max(s, start))
        for u in everyone:
            asked = [e - s for s, e, uu, j in runs if uu == u and start <= t.submitted[j] < end]
            demand[u] = float("inf") if u == 1 else sum(asked)
        fair = _max_min(len(workers) * window, demand)
        ratios += [min(1.0, got[u] / fair[u]) for u in everyone if u in users and fair[u] > 0]
        start = end
    return min(ratios) if ratios else float("nan")


def _max_min(capacity: float, demand: dict) -> dict:
    fair = dict.fromkeys(demand, 0.0)
    left, users = capacity, sorted(demand, key=lambda u: demand[u])
    while users:
        share = left / len(users)
        u = users[0]
        if demand[u] <= share:
            fair[u] = demand[u]
            left -= demand[u]
            users.pop(0)
        else:
            for v in users:
                fair[v] = share
            break
    return fair


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


ROWS = [
    ("makespan of the flood (s)", "makespan", "{:.1f}"),
    ("all tasks done (s)", "all_done", "{:.1f}"),
    ("model switches", "switches", "{:d}"),
    ("GPU busy share", "busy_share", "{:.1%}"),
    ("trickle wait p50 (s)", "trickle_p50", "{:.2f}"),
    ("trickle wait p95 (s)", "trickle_p95", "{:.2f}"),
    ("fair-share ratio, flood user", "fair_flood", "{:.2f}"),
    ("fair-share ratio, trickle users", "fair_trickle", "{:.2f}"),
    ("ETA error p50, at submit", "eta_p50", "{:.1%}"),
    ("ETA error p95, at submit", "eta_p95", "{:.1%}"),
    ("ETA signed error p50", "eta_bias", "{:+.1%}"),
    ("ETA error p50, trickle tasks", "eta_trickle_p50", "{:.1%}"),
    ("ETA error p50, as shown later", "shown_p50", "{:.1%}"),
    ("ETA error p95, as shown later", "shown_p95", "{:.1%}"),
    ("choice cost per ask (ms)", "choice_ms", "{:.3f}"),
]


def report(farm: Farm, learned: bool = True, daemons: Daemons = Daemons()) -> tuple[Result, Result]:
    t0 = time.perf_counter()
    fifo = simulate(farm, smart=False, learned=learned, daemons=daemons)
    smart = simulate(farm, smart=True, learned=learned, daemons=daemons)
    costs = "learned costs" if learned else "cold start: nothing learned yet"
    if daemons != Daemons():
        costs += f", prefetch lead {daemons.lead} s, run times +-{daemons.jitter:.0%} (seed {daemons.seed})"
    print(f"\n{farm.name}, {costs} (replayed in {time.perf_counter() - t0:.1f} s)")
    print(f"  {'':30} {'FIFO':>10} {'smart':>10} {'change':>9}")
    for label, attr, fmt in ROWS:
        a, b = getattr(fifo, attr), getattr(smart, attr)
        change = f"{(b - a) / a:+.0%}" if isinstance(a, (int, float)) and a and attr != "busy_share" else ""
        print(f"  {label:30} {fmt.format(a):>10} {fmt.format(b):>10} {change:>9}")
    return fifo, smart


def choice_cost(workers: int = 500, queued: int = 10_000, asks: int = 200) -> float:
    """Milliseconds per placement choice (order the window, plan) with `queued` tasks and `workers` busy
    workers, the asker free: the pure part of a lease (the database reads are bench.lease's)."""
    rng = random.Random(3)
    queue = Queue()
    for i in range(queued):
        user, ckpt = rng.randrange(1, 50), rng.choice(CHECKPOINTS)
        queue.add(Job(id=i + 1, user=user, checkpoint=ckpt, priority=0, work=UNIT, queued_at=i * 0.01))
    nodes = [
        Node(
            id=n + 1,
            checkpoints=frozenset(CHECKPOINTS),
            warm=rng.choice(CHECKPOINTS),
            free_at=rng.uniform(0, 4),
            default_seconds_per_unit=placement.DEFAULT_SECONDS_PER_UNIT / rng.choice([0.5, 1, 2]),
        )
        for n in range(workers)
    ]
    usage = {u: rng.uniform(0, 100) for u in range(1, 50)}
    t0 = time.perf_counter()
    for k in range(asks):
        asker = nodes[k % workers]
        asker.free_at = 0.0
        ordered = placement.order_jobs(queue.window(placement.window_size(workers)), now=200.0, usage=usage)
        placement.plan(asker, nodes, ordered, now=0.0)
    return 1000 * (time.perf_counter() - t0) / asks


def figures(mixed8: tuple[Result, Result], big: tuple[Result, Result] | None, same: tuple[Result, Result],
            choice_ms: float) -> list[Figure]:  # fmt: skip
    """The issue's goals as figures with targets, for python -m bench's table."""

    def fewer(fifo: float, smart: float) -> float:
        return 100 * (1 - smart / fifo) if fifo else float("nan")

    out = []
    for label, pair in [("8 workers x 400", mixed8), ("64 workers x 10,000", big)]:
        if pair is None:
            continue
        fifo, smart = pair

        def fig(name: str, value: float, unit: str, op: str, target: float, label: str = label) -> Figure:
            return Figure("scheduling", f"{label}: {name}", value, unit, "-", op, target)

        out += [
            fig("model switches, fewer than FIFO", fewer(fifo.switches, smart.switches), "%", ">=", 40),
            fig("flood makespan, shorter than FIFO", fewer(fifo.makespan, smart.makespan), "%", ">=", 20),
            fig(
                f"trickle wait p95 (FIFO {fifo.trickle_p95:.0f} s)",
                smart.trickle_p95,
                "s",
                "<=",
                2 * JOB_SECONDS,
            ),
            fig("fair-share ratio, lowest user", min(smart.fair_flood, smart.fair_trickle), "", ">=", 0.9),
            fig(f"ETA error p50 at submit (FIFO {fifo.eta_p50:.0%})", 100 * smart.eta_p50, "%", "<=", 15),
        ]
    fifo, smart = same
    out.append(Figure("scheduling", "identical workers, 1 checkpoint: all done, slower than FIFO",
                      100 * (smart.all_done / fifo.all_done - 1), "%", "-", "<=", 0))  # fmt: skip
    out.append(
        Figure("scheduling", "placement choice, 10,000 queued x 500 workers", choice_ms, "ms", "-", "<=", 5)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the 64-worker x 10,000-task farm")
    parser.add_argument("--json", type=Path, help="write the figures here (used by python -m bench)")
    parser.add_argument(
        "--live", action="store_true", help="run the mixed farm for real instead (bench.scheduling_live)"
    )
    parser.add_argument(
        "--prefetch-lead",
        type=float,
        help="workers also hold a prefetched task, asked for this many seconds before the running one ends",
    )
    parser.add_argument("--jitter", type=float, default=0.0, help="each run's time x (1 +- up to this share)")
    parser.add_argument("--seed", type=int, default=0, help="the jitter's seed")
    args, rest = parser.parse_known_args(argv)
    if args.live:
        from bench import scheduling_live

        return scheduling_live.main(rest + (["--json", str(args.json)] if args.json else []))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    daemons = Daemons(lead=args.prefetch_lead, jitter=args.jitter, seed=args.seed)
    mixed8 = report(mixed(), daemons=daemons)
    report(mixed(), learned=False, daemons=daemons)
    big = None if args.quick else report(mixed(scale=8, flood=10_000), daemons=daemons)
    same = report(uniform(), daemons=daemons)
    choice_ms = choice_cost()
    print(f"\nplacement choice with 10,000 queued tasks and 500 workers: {choice_ms:.2f} ms per ask")
    if args.json:
        found = figures(mixed8, big, same, choice_ms)
        args.json.write_text(json.dumps({"figures": [f.as_dict() for f in found], "series": []}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
