"""The Prometheus collector behind GET /metrics (generation.ops_views.metrics).

Every figure comes from the database, so any number of server processes (gunicorn workers, qcluster) report
the same values; in-process counters would be split between processes and reset on every restart.

Gauges (tasks and workers by status, the oldest queued task's age, webhook deliveries) are counted at scrape
time over indexed ranges. Counters and histograms (finished tasks by worker and checkpoint, wait and run
times, attempts and lease expiries) are running totals in generation.MetricCounter, which the roll-up
(`metrics_rollup`, every minute as generation.jobs.metrics_job, and before each retention purge) advances:
it adds the rows that finished since its watermark (a range of task_finished_idx and
attempt_worker_finished_idx) under a lock on the watermark row, so concurrent roll-ups never count a row
twice, and the retention purge does not lower a counter.

A scrape only reads: the totals and the watermark in one SELECT (one snapshot, since a roll-up writes both in
one transaction), plus what finished after that watermark, counted on the fly and not stored. So scrapes take
no lock, write nothing, agree with each other whatever the roll-up does meanwhile, and cost the same with a
million tasks as with a hundred (the range after the watermark is about a minute's).
"""

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from generation import dashboard
from generation.models import MetricCounter, Task, TaskAttempt, WebhookDelivery
from generation.services.deletion import PURGED_WEBHOOK_FAILURES
from workers_app.models import Worker

Status = Task.Status

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
RUN_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
HISTOGRAMS = {
    "t2i_task_wait_seconds": (
        dashboard.WAIT,
        WAIT_BUCKETS,
        "Queued until the lease that ran it, completed tasks.",
    ),
    "t2i_task_run_seconds": (
        dashboard.RUN,
        RUN_BUCKETS,
        "Started until the images were stored, completed tasks.",
    ),
}
COUNTERS = {
    "t2i_tasks_completed": ("Tasks completed, by worker and checkpoint.", ["worker", "checkpoint"]),
    "t2i_tasks_failed": (
        "Tasks failed for good, by the last worker and checkpoint.",
        ["worker", "checkpoint"],
    ),
    "t2i_tasks_cancelled": ("Tasks cancelled, by checkpoint.", ["checkpoint"]),
    "t2i_task_attempts": ("Leases that ended, by worker and how.", ["worker", "outcome"]),
    "t2i_lease_expiries": ("Leases that expired (the worker went silent), by worker.", ["worker"]),
}
# Rows named "_…" are bookkeeping, not metrics: the roll-up's watermark (a Unix time) and the failed
# webhook tries of deliveries the retention purge deleted (generation.jobs).
WATERMARK = "_counted_until"
# Rows are counted once they finished this long ago: a finish is stamped inside a transaction that commits
# moments later, and a row that is not yet visible must not be skipped for good.
ROLLUP_LAG = timedelta(seconds=5)


def _labels(**values) -> str:
    return json.dumps(values, sort_keys=True)


def metrics_rollup(*, now: datetime | None = None) -> bool:
    """Add what finished since the last roll-up to the counters. False when there was nothing to add."""
    upto = (now or timezone.now()) - ROLLUP_LAG
    with transaction.atomic():
        mark = MetricCounter.objects.select_for_update().filter(name=WATERMARK, labels="").first()
        if mark is None:
            mark = MetricCounter.objects.create(name=WATERMARK, labels="", value=0.0)
        since = datetime.fromtimestamp(mark.value, tz=UTC)
        if upto <= since:
            return False
        deltas = {key: value for key, value in _finished_between(since, upto).items() if value}
        # Every writer holds the watermark lock, so read-add-write cannot lose an update.
        existing = {(c.name, c.labels): c for c in MetricCounter.objects.exclude(name__startswith="_")}
        changed, new = [], []
        for (name, labels), value in deltas.items():
            counter = existing.get((name, labels))
            if counter is None:
                new.append(MetricCounter(name=name, labels=labels, value=value))
            else:
                counter.value += value
                changed.append(counter)
        MetricCounter.objects.bulk_create(new)
        MetricCounter.objects.bulk_update(changed, ["value"], batch_size=500)
        MetricCounter.objects.filter(pk=mark.pk).update(value=upto.timestamp())
    return True


def _finished_between(since: datetime, upto: datetime) -> Counter:
    names = dict(Worker.objects.values_list("pk", "name"))
    deltas: Counter = Counter()
    window = {"finished_at__gt": since, "finished_at__lte": upto}
    finished = (
        Task.objects.filter(status__in=Task.FINISHED_STATUSES, **window)  # task_finished_idx
        .order_by()
        .values_list("status", "worker_id", "checkpoint")
        .annotate(n=Count("pk"))
    )
    for status, worker_id, checkpoint, n in finished:
        if status == Status.CANCELLED:
            deltas["t2i_tasks_cancelled", _labels(checkpoint=checkpoint)] += n
        else:
            deltas[
                f"t2i_tasks_{status}", _labels(worker=names.get(worker_id, ""), checkpoint=checkpoint)
            ] += n
    for name, (span, buckets, _) in HISTOGRAMS.items():
        end, start = span
        completed = Task.objects.filter(
            status=Status.COMPLETED, **window, **{f"{end}__isnull": False, f"{start}__isnull": False}
        ).annotate(d=dashboard.duration(end, start))
        figures = completed.order_by().aggregate(
            count=Count("pk"),
            sum=Sum("d"),
            **{f"le{i}": Count("pk", filter=Q(d__lte=timedelta(seconds=b))) for i, b in enumerate(buckets)},
        )
        deltas[f"{name}_count", ""] += figures["count"]
        deltas[f"{name}_sum", ""] += figures["sum"].total_seconds() if figures["sum"] else 0.0
        for i, bucket in enumerate(buckets):
            deltas[f"{name}_bucket", _labels(le=float(bucket))] += figures[f"le{i}"]
    attempts = (
        TaskAttempt.objects.filter(worker_id__in=list(names), **window)  # attempt_worker_finished_idx
        .order_by()
        .values_list("worker_id", "outcome")
        .annotate(n=Count("pk"))
    )
    for worker_id, outcome, n in attempts:
        deltas["t2i_task_attempts", _labels(worker=names[worker_id], outcome=outcome)] += n
        if outcome == TaskAttempt.Outcome.EXPIRED:
            deltas["t2i_lease_expiries", _labels(worker=names[worker_id])] += n
    return deltas


def counter_totals(*, now: datetime) -> Counter:
    """Every counter as of `now` - ROLLUP_LAG, read-only: the stored totals plus what finished after their
    watermark. One SELECT reads totals and watermark together, so they belong to the same roll-up."""
    totals: Counter = Counter()
    since = datetime.fromtimestamp(0, tz=UTC)
    for name, labels, value in MetricCounter.objects.values_list("name", "labels", "value"):
        if name == WATERMARK:
            since = datetime.fromtimestamp(value, tz=UTC)
        else:
            totals[name, labels] += value
    upto = now - ROLLUP_LAG
    if upto > since:
        totals.update(_finished_between(since, upto))
    return totals


class FarmCollector:
    """Reads the farm's figures from the database on every scrape."""

    def collect(self):
        started = time.perf_counter()
        now = timezone.now()
        totals = counter_totals(now=now)
        yield from self._tasks(now)
        yield from self._workers()
        yield from self._counters(totals)
        yield from self._webhooks(totals.get((PURGED_WEBHOOK_FAILURES, ""), 0))
        scrape = GaugeMetricFamily("t2i_metrics_scrape_seconds", "Time spent computing these metrics.")
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape

    def _tasks(self, now):
        gauge = GaugeMetricFamily("t2i_tasks", "Tasks waiting or in progress, by status.", labels=["status"])
        for status, n in dashboard.active_tasks_by_status().items():
            gauge.add_metric([status], n)
        yield gauge
        age = dashboard.oldest_queued_age(now)
        oldest = GaugeMetricFamily(
            "t2i_oldest_queued_task_age_seconds", "How long the oldest queued task has waited (0 when none)."
        )
        oldest.add_metric([], age or 0.0)
        yield oldest

    def _workers(self):
        gauge = GaugeMetricFamily("t2i_workers", "Workers by status.", labels=["status"])
        counts: Counter = Counter()
        rows = Worker.objects.with_state().order_by().values("status", "holds_leases").annotate(n=Count("pk"))
        for row in rows:
            busy = row["status"] == Worker.Status.IDLE and row["holds_leases"]
            counts[Worker.Status.BUSY if busy else row["status"]] += row["n"]
        for status in Worker.Status.values:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge

    def _counters(self, totals: dict):
        for name, (documentation, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name, documentation, labels=label_names)
            for (metric, labels), value in sorted(totals.items()):
                if metric == name:
                    values = json.loads(labels)
                    family.add_metric([values[label] for label in label_names], value)
            yield family
        for name, (_, buckets, documentation) in HISTOGRAMS.items():
            cumulative = [
                (str(float(b)), totals.get((f"{name}_bucket", _labels(le=float(b))), 0)) for b in buckets
            ]
            count = totals.get((f"{name}_count", ""), 0)
            family = HistogramMetricFamily(name, documentation)
            family.add_metric(
                [], [*cumulative, ("+Inf", count)], sum_value=totals.get((f"{name}_sum", ""), 0)
            )
            yield family

    def _webhooks(self, purged_failures: float):
        figures = WebhookDelivery.objects.aggregate(
            tries=Sum("attempts"),
            delivered=Count("pk", filter=Q(delivered_at__isnull=False)),
            pending=Count("pk", filter=Q(delivered_at__isnull=True, next_try_at__isnull=False)),
            gave_up=Count("pk", filter=Q(delivered_at__isnull=True, next_try_at__isnull=True)),
        )
        failures = CounterMetricFamily("t2i_webhook_failures", "Webhook tries that did not get a 2xx answer.")
        failures.add_metric([], (figures["tries"] or 0) - figures["delivered"] + purged_failures)
        deliveries = GaugeMetricFamily(
            "t2i_webhook_deliveries", "Webhook deliveries by state.", labels=["state"]
        )
        for state in ("delivered", "pending", "gave_up"):
            deliveries.add_metric([state], figures[state])
        yield failures
        yield deliveries


registry = CollectorRegistry(auto_describe=False)
registry.register(FarmCollector())
