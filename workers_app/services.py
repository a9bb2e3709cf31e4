"""Worker lifecycle: creation, register, heartbeat, liveness and operator states."""

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from generation import dispatch
from generation.exceptions import InvalidInput, WorkerDisabled
from generation.models import Task, TaskAttempt
from generation.services import (
    TaskLease,
    task_lease_next,
    tasks_reap_expired,
    tasks_requeue_for_worker,
    worker_assert_live,
)
from workers_app.models import Worker, hash_token, new_token
from workers_app.object_info_specs import SHA256_HEX, object_info_specs_prune

logger = logging.getLogger(__name__)

# What a worker may report, at most, per list: above what real ComfyUI installs report (node classes with many
# custom nodes run to a few thousand), far below what would bloat every generate page and lease check.
CAPABILITY_LISTS = {
    "checkpoints": 1000,
    "node_classes": 5000,
    "samplers": 200,
    "schedulers": 200,
    "output_nodes": 5000,
}
# model_inputs: {class_type: {input name: [file, …]}}, the choices of loader inputs (api_workflows).
MODEL_INPUTS_MAX = 500  # (class, input) pairs
MODEL_FILES_MAX = 5000  # files per input
# object_info_sha256: the worker's whole /object_info, stored once per distinct body (ObjectInfoSpec).


def worker_create(*, name: str) -> tuple[Worker, str]:
    """Create a worker and return it with its token. The token is shown once; only its hash is kept."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput(
            "A worker needs a name of 1 to 100 characters.", fields={"name": ["Invalid name."]}
        )
    if Worker.objects.filter(name=name).exists():
        raise InvalidInput(f"A worker named {name!r} exists.", fields={"name": ["Already taken."]})
    token = new_token()
    worker = Worker(name=name)
    worker.set_token(token)
    worker.save()
    return worker, token


def worker_rotate_token(*, worker: Worker) -> str:
    token = new_token()
    worker.set_token(token)
    worker.save(update_fields=["token_hash", "token_hint"])
    return token


def worker_by_token(token: str) -> Worker | None:
    """The worker this token belongs to. Looked up by its SHA-256, so nothing secret is compared in SQL."""
    try:
        return Worker.objects.get(token_hash=hash_token(token))
    except Worker.DoesNotExist:
        return None


def worker_register(*, worker: Worker, capabilities: dict, prefetch: int = 2) -> Worker:
    """Record what the worker's ComfyUI can do and mark it live. Idempotent.

    A register means the daemon (re)started, so any lease it still held is lost: those tasks go back to
    the queue now instead of waiting for their leases to expire.
    """
    if worker.status == Worker.Status.DISABLED:
        raise WorkerDisabled("This worker is disabled by an operator.")
    now = timezone.now()
    clean = _clean_capabilities(capabilities)
    with transaction.atomic():
        tasks_requeue_for_worker(worker_id=worker.pk, reason="The worker restarted and registered again.")
        status = Worker.Status.DRAINING if worker.status == Worker.Status.DRAINING else Worker.Status.IDLE
        Worker.objects.filter(pk=worker.pk).update(
            capabilities=clean,
            prefetch=prefetch,
            registered_at=now,
            inventory_at=now,
            last_heartbeat=now,
            status=status,
        )
    before = (worker.capabilities or {}).get("object_info_sha256")
    worker.refresh_from_db()
    if before and before != clean.get("object_info_sha256"):
        object_info_specs_prune(now=now)
    logger.info("worker registered", extra={"worker": worker.name})
    return worker


def worker_update_inventory(*, worker: Worker, capabilities: dict) -> bool:
    """What the worker's ComfyUI has now (its daemon read `/object_info` again: ComfyUI restarted, a timer, a
    model "not in the list"): stored when it differs from what the scheduler has, validated and bounded as at
    register. Unlike register it keeps the worker's leases. True when it changed; an open lease wait of the
    worker then asks again at once, with what it has now."""
    worker_assert_live(worker=worker)
    clean = _clean_capabilities(capabilities)
    with transaction.atomic():
        row = Worker.objects.select_for_update().filter(pk=worker.pk)
        if row.values_list("capabilities", flat=True).first() == clean:
            return False
        now = timezone.now()
        Worker.objects.filter(pk=worker.pk).update(capabilities=clean, inventory_at=now)
        dispatch.publish("work", {"count": 1, "worker": worker.pk})
    before = worker.capabilities or {}
    worker.capabilities, worker.inventory_at = clean, now
    if before.get("object_info_sha256") and before.get("object_info_sha256") != clean.get(
        "object_info_sha256"
    ):
        object_info_specs_prune(now=now)
    logger.info(
        "worker inventory changed: %d checkpoint(s) (was %d), %d node class(es) (was %d)",
        len(clean["checkpoints"]),
        len(before.get("checkpoints") or ()),
        len(clean["node_classes"]),
        len(before.get("node_classes") or ()),
        extra={"worker": worker.name},
    )
    return True


def _clean_capabilities(capabilities: dict) -> dict:
    if not isinstance(capabilities, dict):
        raise InvalidInput("capabilities must be an object.", fields={"capabilities": ["Must be an object."]})
    clean = {}
    for key, most in CAPABILITY_LISTS.items():
        values = capabilities.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and len(v) <= 255 for v in values):
            raise InvalidInput(
                f"{key} must be a list of strings.", fields={f"capabilities.{key}": ["Invalid."]}
            )
        values = sorted(set(values))
        if len(values) > most:
            raise InvalidInput(
                f"{key}: at most {most} names.", fields={f"capabilities.{key}": [f"At most {most} names."]}
            )
        clean[key] = values
    for key in ("comfyui_version", "device_name"):
        value = capabilities.get(key, "")
        if not isinstance(value, str) or len(value) > 255:
            raise InvalidInput(f"{key} must be a string.", fields={f"capabilities.{key}": ["Invalid."]})
        clean[key] = value
    vram = capabilities.get("vram_total", 0)
    if not isinstance(vram, int) or isinstance(vram, bool) or vram < 0:
        raise InvalidInput(
            "vram_total must be a whole number.", fields={"capabilities.vram_total": ["Invalid."]}
        )
    clean["vram_total"] = vram
    if "model_inputs" in capabilities:
        clean["model_inputs"] = _clean_model_inputs(capabilities["model_inputs"])
    digest = capabilities.get("object_info_sha256")
    if digest is not None:
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise InvalidInput(
                "object_info_sha256 must be 64 lowercase hex digits.",
                fields={"capabilities.object_info_sha256": ["64 lowercase hex digits."]},
            )
        clean["object_info_sha256"] = digest
    return clean


def _clean_model_inputs(value) -> dict[str, dict[str, list[str]]]:
    def bad(message: str) -> InvalidInput:
        return InvalidInput(message, fields={"capabilities.model_inputs": [message]})

    if not isinstance(value, dict):
        raise bad("Must be an object of class name to {input name: [file, …]}.")
    clean: dict[str, dict[str, list[str]]] = {}
    pairs = 0
    for class_type, inputs in value.items():
        if not isinstance(class_type, str) or len(class_type) > 255 or not isinstance(inputs, dict):
            raise bad("Must be an object of class name to {input name: [file, …]}.")
        for name, files in inputs.items():
            pairs += 1
            if not isinstance(name, str) or len(name) > 255 or not isinstance(files, list):
                raise bad("Each input must name a list of files.")
            if len(files) > MODEL_FILES_MAX or not all(isinstance(f, str) and len(f) <= 255 for f in files):
                raise bad(f"At most {MODEL_FILES_MAX} file names of at most 255 characters per input.")
            clean.setdefault(class_type, {})[name] = sorted(set(files))
    if pairs > MODEL_INPUTS_MAX:
        raise bad(f"At most {MODEL_INPUTS_MAX} inputs.")
    return clean


@dataclass
class HeartbeatResult:
    worker_status: str
    lease_expires_at: datetime
    renewed: list[uuid.UUID] = field(default_factory=list)
    cancel: list[uuid.UUID] = field(default_factory=list)
    lost: list[uuid.UUID] = field(default_factory=list)


def worker_heartbeat(*, worker: Worker, leases: list[tuple[uuid.UUID, uuid.UUID]]) -> HeartbeatResult:
    """Mark the worker alive and renew the leases it still holds; tell it which tasks to drop.

    `leases` is (task public id, lease token) for every task the daemon holds. A lease that was cancelled
    comes back in `cancel`; one that is no longer this worker's (expired, re-leased, finished) in `lost`.
    """
    worker_assert_live(worker=worker)
    now = timezone.now()
    expires = now + timedelta(seconds=settings.T2I["LEASE_SECONDS"])
    tokens = [token for _, token in leases]
    # Lock order: task rows, then the worker row, as in lease, complete, fail and cancel. The other
    # order deadlocks on PostgreSQL against a completion of one of these tasks.
    renewed: set[uuid.UUID] = set()
    with transaction.atomic():
        if tokens:
            held = Task.objects.filter(
                worker=worker, status__in=Task.ACTIVE_STATUSES, lease_token__in=tokens
            ).select_for_update()
            renewed = set(held.values_list("public_id", flat=True))
            if renewed:
                held.update(lease_expires_at=expires)
                TaskAttempt.objects.filter(
                    worker=worker, outcome=TaskAttempt.Outcome.ACTIVE, lease_token__in=tokens
                ).update(lease_expires_at=expires)
        Worker.objects.filter(pk=worker.pk).update(last_heartbeat=now)
    lost = [token for task_id, token in leases if task_id not in renewed]
    cancelled = set()
    if lost:
        cancelled = set(
            TaskAttempt.objects.filter(
                worker=worker, outcome=TaskAttempt.Outcome.CANCELLED, lease_token__in=lost
            ).values_list("task__public_id", flat=True)
        )
    shown = Worker.Status.BUSY if worker.status == Worker.Status.IDLE and renewed else worker.status
    result = HeartbeatResult(worker_status=shown, lease_expires_at=expires, renewed=sorted(renewed, key=str))
    for task_id, _ in leases:
        if task_id in renewed:
            continue
        (result.cancel if task_id in cancelled else result.lost).append(task_id)
    return result


def worker_note_warm(*, worker: Worker, checkpoint: str) -> None:
    """Store the checkpoint the daemon says its ComfyUI has loaded (placement prefers its tasks); a write
    only when it changed."""
    if worker.warm_checkpoint != checkpoint:
        Worker.objects.filter(pk=worker.pk).update(warm_checkpoint=checkpoint)
        worker.warm_checkpoint = checkpoint


def worker_lease_next(*, worker: Worker, prefetch: bool = False) -> TaskLease | None:
    """The worker's next task (generation.services.task_lease_next), after the lazy liveness sweep."""
    if maybe_reap(timezone.now()):
        worker.refresh_from_db(fields=["status"])  # the sweep may just have found this worker silent
    return task_lease_next(worker=worker, prefetch=prefetch)


_reap_lock = threading.Lock()
_last_reap = 0.0


def maybe_reap(now: datetime) -> bool:
    """Sweep lazily on the lease path (at most every REAP_EVERY seconds per process), so correctness never
    depends on the background job runner being up: silent workers go offline and expired leases are
    requeued. True when the sweep ran."""
    global _last_reap
    if time.monotonic() - _last_reap < settings.T2I["REAP_EVERY"] or not _reap_lock.acquire(blocking=False):
        return False
    try:
        _last_reap = time.monotonic()
        workers_mark_offline(now=now)
        tasks_reap_expired(now=now)
        return True
    finally:
        _reap_lock.release()


def worker_go_offline(*, worker: Worker) -> int:
    """The daemon is stopping: mark it offline and requeue whatever it still holds."""
    with transaction.atomic():
        count = tasks_requeue_for_worker(worker_id=worker.pk, reason="The worker shut down.")
        Worker.objects.filter(pk=worker.pk).exclude(status=Worker.Status.DISABLED).update(
            status=Worker.Status.OFFLINE
        )
        worker_changed(worker.pk)
    logger.info("worker offline (shutdown), %d lease(s) requeued", count, extra={"worker": worker.name})
    return count


def worker_changed(worker_id: int) -> None:
    """The worker went offline or was disabled: its open lease waits (in any process) end now with the
    answer that says so, instead of at the end of their wait. Call inside the transaction."""
    dispatch.publish("worker", {"id": worker_id})


def _lock_leases_of(worker_id: int) -> None:
    """Lock the worker's active tasks before its own row: every path that touches both (lease, complete,
    fail, cancel, heartbeat) takes tasks first, so this order cannot deadlock against them on PostgreSQL."""
    list(
        Task.objects.select_for_update()
        .filter(worker_id=worker_id, status__in=Task.ACTIVE_STATUSES)
        .values_list("pk", flat=True)
    )


def workers_mark_offline(*, now: datetime | None = None) -> int:
    """Workers silent for longer than WORKER_OFFLINE_AFTER go offline and their leases are requeued.

    Not while the database has just (re)started: for that long nobody could reach it, so the silence says
    nothing about the workers (their open waits could not be renewed), and they would all go offline and
    drop what they run."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.T2I["WORKER_OFFLINE_AFTER"])
    live = [Worker.Status.IDLE, Worker.Status.DRAINING]
    stale = list(Worker.objects.filter(status__in=live, last_heartbeat__lt=cutoff).values_list("pk", "name"))
    grace = timedelta(seconds=settings.T2I["WORKER_OFFLINE_AFTER"] + settings.T2I["HEARTBEAT_INTERVAL"])
    started = database_started_at() if stale else None
    if started is not None and now - started < grace:
        return 0
    for pk, name in stale:
        with transaction.atomic():
            _lock_leases_of(pk)
            if Worker.objects.filter(pk=pk, status__in=live, last_heartbeat__lt=cutoff).update(
                status=Worker.Status.OFFLINE
            ):
                count = tasks_requeue_for_worker(
                    worker_id=pk, reason="The worker stopped sending heartbeats."
                )
                worker_changed(pk)
                logger.warning(
                    "worker offline (no heartbeat), %d lease(s) requeued", count, extra={"worker": name}
                )
    return len(stale)


def database_started_at() -> datetime | None:
    """When the PostgreSQL server last started (None on SQLite, where the database is a file)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


def worker_set_state(*, worker: Worker, state: str) -> Worker:
    """Operator actions: drain (finish current work, take nothing new), disable, or enable."""
    if state == "drain":
        Worker.objects.filter(pk=worker.pk).exclude(status=Worker.Status.DISABLED).update(
            status=Worker.Status.DRAINING
        )
    elif state == "disable":
        with transaction.atomic():
            _lock_leases_of(worker.pk)
            Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DISABLED)
            tasks_requeue_for_worker(worker_id=worker.pk, reason="The worker was disabled by an operator.")
            worker_changed(worker.pk)
    elif state == "enable":
        # A drained worker is still running: it goes back to taking work. A disabled one lost its leases and
        # must register again.
        Worker.objects.filter(pk=worker.pk, status=Worker.Status.DRAINING).update(status=Worker.Status.IDLE)
        Worker.objects.filter(pk=worker.pk, status=Worker.Status.DISABLED).update(
            status=Worker.Status.OFFLINE
        )
    else:
        raise InvalidInput(f"Unknown state {state!r}.", fields={"state": ["drain, disable or enable."]})
    worker.refresh_from_db()
    return worker
