"""Reads behind the operations console and /metrics: farm figures as aggregate queries.

Every query is bounded by an index, so the figures stay fast with a million tasks: the queue by
task_claim_idx (status, -priority, id), the last hour by task_finished_idx (status, finished_at) and
attempt_worker_finished_idx (worker, finished_at), a worker's live attempts by attempt_worker_outcome_idx.
Percentiles use PostgreSQL's percentile_cont; on SQLite the same interpolated value comes from
ORDER BY … LIMIT/OFFSET over the indexed range.
"""

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    IntegerField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, Greatest, Least, RowNumber, TruncMinute
from django.utils import timezone

from generation.models import Task, TaskAttempt, WorkflowTemplate
from workers_app.models import Worker

Status = Task.Status
Outcome = TaskAttempt.Outcome
WINDOW = timedelta(hours=1)


def duration(end: str, start: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(end) - F(start), output_field=DurationField())


WAIT = ("leased_at", "created_at")  # queued until the lease that ran it
RUN = ("finished_at", "started_at")  # ComfyUI started until the result was stored


class Epoch(Func):
    """An interval in seconds (PostgreSQL)."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)::double precision"
    output_field = FloatField()


class PercentileCont(Aggregate):
    """PostgreSQL's interpolated percentile, an ordered-set aggregate."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra) -> None:
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentiles(qs: QuerySet, span: tuple[str, str], fractions: tuple[float, ...]) -> list[float | None]:
    """Interpolated percentiles (as percentile_cont computes them) of `span` seconds over the rows of `qs`."""
    end, start = span
    qs = qs.filter(**{f"{end}__isnull": False, f"{start}__isnull": False}).order_by()
    if connection.vendor == "postgresql":
        seconds = Epoch(duration(end, start))
        row = qs.aggregate(**{f"p{i}": PercentileCont(seconds, f) for i, f in enumerate(fractions)})
        return [row[f"p{i}"] for i in range(len(fractions))]
    count = qs.count()
    if not count:
        return [None] * len(fractions)
    ordered = qs.annotate(d=duration(end, start)).order_by("d").values_list("d", flat=True)
    result = []
    for fraction in fractions:
        rank = fraction * (count - 1)
        lo, hi = math.floor(rank), math.ceil(rank)
        pair = [d.total_seconds() for d in ordered[lo : hi + 1]]
        result.append(pair[0] + (pair[-1] - pair[0]) * (rank - lo))
    return result


# --- The farm dashboard ---------------------------------------------------------------------------------


@dataclass
class WorkerUtilisation:
    worker: Worker
    busy_seconds: float
    online_seconds: float

    @property
    def ratio(self) -> float | None:
        return self.busy_seconds / self.online_seconds if self.online_seconds else None


@dataclass
class FarmFigures:
    now: datetime
    since: datetime
    queue_by_priority: list[tuple[int, int]]
    tasks_by_status: dict[str, int]
    completed_last_hour: int
    failed_last_hour: int
    per_minute: list[tuple[datetime, int, int]]
    wait_p50: float | None
    wait_p95: float | None
    run_p50: float | None
    run_p95: float | None
    oldest_queued_age: float | None
    running: list[Task]
    utilisation: list[WorkerUtilisation] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return sum(n for _, n in self.queue_by_priority)

    @property
    def throughput_per_minute(self) -> float:
        minutes = (self.now - self.since).total_seconds() / 60
        return self.completed_last_hour / minutes if minutes else 0.0

    def recent_throughput_per_minute(self, minutes: int = 5) -> float:
        """Completed per minute over the last `minutes` minute buckets of `per_minute` (the current, partial
        minute included), divided by the time they cover: what the farm does now, not the hour's average."""
        recent = self.per_minute[-minutes:]
        if not recent:
            return 0.0
        covered = (self.now - recent[0][0]).total_seconds() / 60
        return sum(completed for _, completed, _ in recent) / covered if covered > 0 else 0.0

    @property
    def per_minute_max(self) -> int:
        return max((c + f for _, c, f in self.per_minute), default=0)


def queue_by_priority() -> list[tuple[int, int]]:
    """[(priority, queued tasks)], highest priority first (task_claim_idx)."""
    rows = (
        Task.objects.filter(status=Status.QUEUED)
        .order_by()
        .values("priority")
        .annotate(n=Count("pk"))
        .order_by("-priority")
    )
    return [(row["priority"], row["n"]) for row in rows]


def active_tasks_by_status() -> dict[str, int]:
    """Queued, leased and running counts (task_claim_idx ranges; finished tasks are never scanned)."""
    active = [Status.QUEUED, *Task.ACTIVE_STATUSES]
    rows = Task.objects.filter(status__in=active).order_by().values("status").annotate(n=Count("pk"))
    counts = {str(s): 0 for s in active}
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def finished_since(since: datetime) -> dict[str, int]:
    """Completed and failed tasks that finished after `since` (task_finished_idx)."""
    done = [Status.COMPLETED, Status.FAILED]
    rows = (
        Task.objects.filter(status__in=done, finished_at__gte=since)
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
    )
    counts = {str(s): 0 for s in done}
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def finished_per_minute(since: datetime, now: datetime) -> list[tuple[datetime, int, int]]:
    """[(minute, completed, failed)] for every minute from `since` to `now`, zeros included."""
    rows = (
        Task.objects.filter(status__in=[Status.COMPLETED, Status.FAILED], finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .order_by()
        .values("minute")
        .annotate(
            completed=Count("pk", filter=Q(status=Status.COMPLETED)),
            failed=Count("pk", filter=Q(status=Status.FAILED)),
        )
    )
    by_minute = {row["minute"]: (row["completed"], row["failed"]) for row in rows}
    first = since.replace(second=0, microsecond=0)
    minutes = int((now - first).total_seconds() // 60) + 1
    series = []
    for i in range(minutes):
        minute = first + timedelta(minutes=i)
        series.append((minute, *by_minute.get(minute, (0, 0))))
    return series


def oldest_queued_age(now: datetime) -> float | None:
    """Seconds the oldest queued task has waited.

    MIN(created_at) over the queued range of task_claim_idx; not ORDER BY id LIMIT 1, which PostgreSQL runs
    as a walk along the primary key through every finished task older than the queue.
    """
    oldest = Task.objects.filter(status=Status.QUEUED).aggregate(oldest=Min("created_at"))["oldest"]
    return max((now - oldest).total_seconds(), 0.0) if oldest else None


def worker_utilisation(since: datetime, now: datetime) -> list[WorkerUtilisation]:
    """Per worker: seconds spent running tasks (attempt started until finished, clipped to the window) over
    seconds online in the window.

    Online time has no history of its own: a worker counts as online from max(registered_at, since) until now
    while it is online, or until its last heartbeat once it went offline.
    """
    workers = list(Worker.objects.exclude(registered_at=None).order_by("name"))
    clipped = ExpressionWrapper(
        Least(Coalesce(F("finished_at"), Value(now)), Value(now)) - Greatest(F("started_at"), Value(since)),
        output_field=DurationField(),
    )
    busy: Counter = Counter()
    ids = [w.pk for w in workers]
    windows = [
        # attempts that ended in the window (attempt_worker_finished_idx) ...
        TaskAttempt.objects.filter(worker_id__in=ids, finished_at__gte=since),
        # ... and the ones still running (attempt_worker_outcome_idx)
        TaskAttempt.objects.filter(worker_id__in=ids, outcome=Outcome.ACTIVE),
    ]
    for attempts in windows:
        rows = (
            attempts.filter(started_at__isnull=False, started_at__lt=now, worker__isnull=False)
            .order_by()
            .values("worker_id")
            .annotate(busy=Sum(clipped))
        )
        for row in rows:
            if row["busy"] is not None:
                busy[row["worker_id"]] += max(row["busy"].total_seconds(), 0.0)
    result = []
    for worker in workers:
        start = max(worker.registered_at, since)
        end = now if worker.is_online else min(worker.last_heartbeat or start, now)
        online = max((end - start).total_seconds(), 0.0)
        result.append(WorkerUtilisation(worker, busy[worker.pk], online))
    return result


def running_tasks(limit: int = 20) -> list[Task]:
    return list(
        Task.objects.filter(status__in=Task.ACTIVE_STATUSES)
        .select_related("worker", "template")
        .order_by("leased_at")[:limit]
    )


def farm_figures(*, now: datetime | None = None, window: timedelta = WINDOW) -> FarmFigures:
    now = now or timezone.now()
    since = now - window
    finished = finished_since(since)
    completed_window = Task.objects.filter(status=Status.COMPLETED, finished_at__gte=since)
    wait = percentiles(completed_window, WAIT, (0.5, 0.95))
    run = percentiles(completed_window, RUN, (0.5, 0.95))
    return FarmFigures(
        now=now,
        since=since,
        queue_by_priority=queue_by_priority(),
        tasks_by_status=active_tasks_by_status(),
        completed_last_hour=finished[Status.COMPLETED],
        failed_last_hour=finished[Status.FAILED],
        per_minute=finished_per_minute(since, now),
        wait_p50=wait[0],
        wait_p95=wait[1],
        run_p50=run[0],
        run_p95=run[1],
        oldest_queued_age=oldest_queued_age(now),
        running=running_tasks(),
        utilisation=worker_utilisation(since, now),
    )


# --- Workers: the admin's columns -----------------------------------------------------------------------


def start_of_today(now: datetime | None = None) -> datetime:
    local = timezone.localtime(now or timezone.now())
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _attempts_today(since: datetime, outcomes: list[str]) -> Coalesce:
    counted = (
        TaskAttempt.objects.filter(worker=OuterRef("pk"), finished_at__gte=since, outcome__in=outcomes)
        .order_by()
        .values("worker")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


FAILED_OUTCOMES = [Outcome.FAILED, Outcome.EXPIRED]


def workers_with_stats(qs: QuerySet[Worker], *, since: datetime) -> QuerySet[Worker]:
    """Annotate done_today and failed_today (attempts that failed or whose lease expired) since `since`.

    Two correlated counts over attempt_worker_finished_idx. The failure rate is derived from them in Python
    (failure_rate()): as an annotation PostgreSQL would evaluate both subqueries a second time.
    """
    return qs.annotate(
        done_today=_attempts_today(since, [Outcome.COMPLETED]),
        failed_today=_attempts_today(since, FAILED_OUTCOMES),
    )


def failure_rate(worker: Worker) -> float | None:
    """Failed over ended attempts, from the workers_with_stats annotations; None when nothing ended."""
    done, failed = getattr(worker, "done_today", 0), getattr(worker, "failed_today", 0)
    return failed / (done + failed) if done + failed else None


def median_run_seconds(worker_ids: list[int], *, since: datetime) -> dict[int, float]:
    """Median run time of each worker's attempts completed since `since`: one query for the whole page."""
    if not worker_ids:
        return {}
    attempts = TaskAttempt.objects.filter(
        worker_id__in=worker_ids, outcome=Outcome.COMPLETED, finished_at__gte=since, started_at__isnull=False
    )
    if connection.vendor == "postgresql":
        rows = (
            attempts.order_by()
            .values("worker_id")
            .annotate(median=PercentileCont(Epoch(duration(*RUN)), 0.5))
        )
        return {row["worker_id"]: row["median"] for row in rows}
    # SQLite: the middle row(s) of each worker's durations, by window functions.
    ranked = (
        attempts.annotate(d=duration(*RUN))
        .annotate(
            rn=Window(RowNumber(), partition_by=[F("worker_id")], order_by=F("d").asc()),
            n=Window(Count("pk"), partition_by=[F("worker_id")]),
        )
        .values_list("worker_id", "d", "rn", "n")
    )
    middles: dict[int, list[float]] = {}
    for worker_id, d, rn, n in ranked:
        if rn in ((n + 1) // 2, n // 2 + 1):
            middles.setdefault(worker_id, []).append(d.total_seconds())
    return {worker_id: sum(values) / len(values) for worker_id, values in middles.items()}


def active_tasks_by_worker(worker_ids: list[int]) -> dict[int, list[Task]]:
    tasks: dict[int, list[Task]] = {}
    for task in Task.objects.filter(worker_id__in=worker_ids, status__in=Task.ACTIVE_STATUSES).only(
        "public_id", "status", "worker_id", "progress_value", "progress_max"
    ):
        tasks.setdefault(task.worker_id, []).append(task)
    return tasks


def version_skew(workers: list[Worker] | None = None) -> dict[int, list[str]]:
    """Workers whose ComfyUI version or node set differs from what most online workers run.

    Returns {worker id: [notes]}. With no strict majority (e.g. two online workers that differ), there is
    nothing to compare against and nothing is flagged.
    """
    online = [
        w for w in Worker.objects.exclude(registered_at=None).only("status", "capabilities") if w.is_online
    ]
    version = _majority(w.capabilities.get("comfyui_version", "") for w in online)
    nodes = _majority(frozenset(w.node_classes) for w in online)
    notes: dict[int, list[str]] = {}
    for worker in workers if workers is not None else online:
        if worker.registered_at is None:
            continue
        mine = []
        worker_version = worker.capabilities.get("comfyui_version", "")
        if version is not None and worker_version != version:
            mine.append(f"ComfyUI {worker_version or '?'} (most run {version})")
        if nodes is not None and frozenset(worker.node_classes) != nodes:
            missing, extra = len(nodes - worker.node_classes), len(worker.node_classes - nodes)
            mine.append(f"node set differs: {missing} missing, {extra} extra")
        if mine:
            notes[worker.pk] = mine
    return notes


def _majority(values):
    ranked = Counter(values).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


# --- Workflow templates against the workers -------------------------------------------------------------


ANY_CHECKPOINT = "any (chosen per task)"


def template_checkpoint(template: WorkflowTemplate) -> str | None:
    """The checkpoint the template needs on a worker.

    A template that binds `checkpoint` runs whatever checkpoint its task names (the farm's DEFAULT_CHECKPOINT
    when that is set, else any checkpoint a worker reported: ANY_CHECKPOINT). One that does not bind it runs
    the ckpt_name written in its loader node. None when the workflow loads no checkpoint at all.
    """
    if template.binds("checkpoint"):
        return settings.T2I["DEFAULT_CHECKPOINT"] or ANY_CHECKPOINT
    for node in (template.workflow or {}).values():
        name = node.get("inputs", {}).get("ckpt_name") if isinstance(node, dict) else None
        if isinstance(name, str) and name:
            return name
    return None


@dataclass
class WorkerFit:
    worker: Worker
    missing_nodes: list[str]
    checkpoint: str | None
    has_checkpoint: bool

    @property
    def ok(self) -> bool:
        return not self.missing_nodes and self.has_checkpoint


def template_fit(template: WorkflowTemplate, workers: list[Worker]) -> list[WorkerFit]:
    """Per worker: the template's node classes it lacks, and whether it has the checkpoint it needs."""
    needed = template.node_classes
    checkpoint = template_checkpoint(template)

    def has(worker: Worker) -> bool:
        if checkpoint is None:
            return True
        if checkpoint == ANY_CHECKPOINT:
            return bool(worker.checkpoints)
        return checkpoint in worker.checkpoints

    return [
        WorkerFit(
            worker=w,
            missing_nodes=sorted(needed - w.node_classes),
            checkpoint=checkpoint,
            has_checkpoint=has(w),
        )
        for w in workers
    ]


def online_workers() -> list[Worker]:
    return [w for w in Worker.objects.exclude(registered_at=None).order_by("name") if w.is_online]
