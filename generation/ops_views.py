"""Operations endpoints: GET /metrics (Prometheus text format; the figures come from generation.metrics)
and GET /healthz (JSON)."""

import hmac
from http import HTTPStatus

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import choose_encoder

from generation import dashboard, storage_space
from generation.metrics import registry
from generation.models import Task
from workers_app.models import Worker


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
    """200 when the database answers and every migration is applied, else 503. Workers and the media
    storage's free space are reported, not required: a farm with no GPU online, or a full disk, still accepts
    and queues work."""
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
        status__in=[Worker.Status.IDLE, Worker.Status.DRAINING]
    ).count()
    body["queued_tasks"] = Task.objects.filter(status=Task.Status.QUEUED).count()
    body["oldest_queued_task_age_seconds"] = dashboard.oldest_queued_age(now)
    free = storage_space.media_free_bytes()
    body["media_free_bytes"] = free
    # Reported, not a failure: below the floor, completions answer 507 and the daemons retry them.
    body["media_storage"] = (
        "ok" if free is not None and free >= settings.T2I["MEDIA_MIN_FREE_BYTES"] else "low"
    )
    if pending:
        body["status"] = "error"
        return JsonResponse(body, status=HTTPStatus.SERVICE_UNAVAILABLE)
    return JsonResponse(body)
