"""GET /metrics (Prometheus text format) and GET /healthz (JSON).

Every figure is computed from the database at scrape time by one collector, so any number of server
processes (gunicorn workers, qcluster) report the same values: an in-process counter would be split between
processes and reset on each restart. Counters are counts of rows (a retention purge lowers them, which
Prometheus reads as a counter reset). All queries are aggregates over indexed ranges or grouped scans.
"""

import hmac
import time
from datetime import timedelta
from http import HTTPStatus

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from generation import dashboard
from generation.models import Task, TaskAttempt, WebhookDelivery
from workers_app.models import Worker

Status = Task.Status

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
RUN_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


class FarmCollector:
    """Reads the farm's figures from the database on every scrape."""

    def collect(self):
        started = time.perf_counter()
        now = timezone.now()
        yield from self._tasks(now)
        yield from self._workers()
        yield from self._finished()
        yield self._histogram(
            "t2i_task_wait_seconds", "Queued until leased, completed tasks.", dashboard.WAIT
        )
        yield self._histogram("t2i_task_run_seconds", "Started until stored, completed tasks.", dashboard.RUN)
        yield from self._attempts()
        yield from self._webhooks()
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
        counts = dict(Worker.objects.order_by().values_list("status").annotate(n=Count("pk")))
        for status in Worker.Status.values:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge

    def _finished(self):
        names = dict(Worker.objects.values_list("pk", "name"))
        rows = (
            Task.objects.filter(status__in=Task.FINISHED_STATUSES)
            .order_by()
            .values_list("status", "worker_id", "checkpoint")
            .annotate(n=Count("pk"))
        )
        families = {
            status: CounterMetricFamily(
                f"t2i_tasks_{status}", f"Tasks {status}, by the last worker and checkpoint.", labels=labels
            )
            for status, labels in (
                (Status.COMPLETED, ["worker", "checkpoint"]),
                (Status.FAILED, ["worker", "checkpoint"]),
                (Status.CANCELLED, ["checkpoint"]),
            )
        }
        for status, worker_id, checkpoint, n in rows:
            if status == Status.CANCELLED:
                families[status].add_metric([checkpoint], n)
            else:
                families[status].add_metric([names.get(worker_id, ""), checkpoint], n)
        yield from families.values()

    def _histogram(self, name: str, documentation: str, span: tuple[str, str]):
        end, start = span
        completed = Task.objects.filter(
            status=Status.COMPLETED, **{f"{end}__isnull": False, f"{start}__isnull": False}
        ).annotate(d=dashboard.duration(end, start))
        buckets = WAIT_BUCKETS if span == dashboard.WAIT else RUN_BUCKETS
        figures = completed.order_by().aggregate(
            total=Count("pk"),
            seconds=Sum("d"),
            **{f"le{i}": Count("pk", filter=Q(d__lte=timedelta(seconds=b))) for i, b in enumerate(buckets)},
        )
        family = HistogramMetricFamily(name, documentation)
        family.add_metric(
            [],
            [(str(float(b)), figures[f"le{i}"]) for i, b in enumerate(buckets)]
            + [("+Inf", figures["total"])],
            sum_value=figures["seconds"].total_seconds() if figures["seconds"] else 0.0,
        )
        return family

    def _attempts(self):
        names = dict(Worker.objects.values_list("pk", "name"))
        rows = TaskAttempt.objects.order_by().values_list("worker_id", "outcome").annotate(n=Count("pk"))
        attempts = CounterMetricFamily(
            "t2i_task_attempts",
            "Leases handed out, by worker and how they ended.",
            labels=["worker", "outcome"],
        )
        expiries = CounterMetricFamily(
            "t2i_lease_expiries", "Leases that expired (worker lost), by worker.", labels=["worker"]
        )
        for worker_id, outcome, n in rows:
            attempts.add_metric([names.get(worker_id, ""), outcome], n)
            if outcome == TaskAttempt.Outcome.EXPIRED:
                expiries.add_metric([names.get(worker_id, "")], n)
        yield attempts
        yield expiries

    def _webhooks(self):
        figures = WebhookDelivery.objects.aggregate(
            tries=Sum("attempts"),
            delivered=Count("pk", filter=Q(delivered_at__isnull=False)),
            pending=Count("pk", filter=Q(delivered_at__isnull=True, next_try_at__isnull=False)),
            gave_up=Count("pk", filter=Q(delivered_at__isnull=True, next_try_at__isnull=True)),
        )
        failures = CounterMetricFamily("t2i_webhook_failures", "Webhook tries that did not get a 2xx answer.")
        failures.add_metric([], (figures["tries"] or 0) - figures["delivered"])
        deliveries = GaugeMetricFamily(
            "t2i_webhook_deliveries", "Webhook deliveries by state.", labels=["state"]
        )
        for state in ("delivered", "pending", "gave_up"):
            deliveries.add_metric([state], figures[state])
        yield failures
        yield deliveries


registry = CollectorRegistry(auto_describe=False)
registry.register(FarmCollector())


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.T2I["METRICS_TOKEN"]
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("Unauthorized\n", status=HTTPStatus.UNAUTHORIZED, content_type="text/plain")
    # The text format Prometheus asks for in Accept (OpenMetrics or text 0.0.4/1.0.0), as the library does.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)


_migrations_applied = False


def _pending_migrations(connection) -> int:
    """Migrations not yet applied. Once none are pending, this process stops checking (deploys restart it)."""
    global _migrations_applied
    if _migrations_applied:
        return 0
    executor = MigrationExecutor(connection)
    pending = len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    _migrations_applied = pending == 0
    return pending


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers and every migration is applied, else 503. Workers are reported, not
    required: a farm with no GPU online still accepts and queues work."""
    connection = connections[DEFAULT_DB_ALIAS]
    body: dict = {"status": "ok"}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        body["database"] = "ok"
    except Exception as exc:
        body.update(status="error", database=f"unreachable: {type(exc).__name__}")
        return JsonResponse(body, status=HTTPStatus.SERVICE_UNAVAILABLE)
    pending = _pending_migrations(connection)
    body["migrations"] = "ok" if not pending else f"{pending} pending"
    now = timezone.now()
    body["online_workers"] = Worker.objects.filter(
        status__in=[Worker.Status.IDLE, Worker.Status.BUSY, Worker.Status.DRAINING]
    ).count()
    body["queued_tasks"] = Task.objects.filter(status=Status.QUEUED).count()
    body["oldest_queued_task_age_seconds"] = dashboard.oldest_queued_age(now)
    if pending:
        body["status"] = "error"
        return JsonResponse(body, status=HTTPStatus.SERVICE_UNAVAILABLE)
    return JsonResponse(body)
