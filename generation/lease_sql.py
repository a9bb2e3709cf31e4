"""The worker hot path's statements, written out as SQL.

Every lease, start, progress report and completion runs these. Built with the ORM, each call spent more
CPU compiling its queries than the database spent running them (a lease+complete cycle was 18 queries and
about 14 ms of CPU), and that CPU is what limited a farm's throughput. The rules stay in
generation.services; this module only runs the statements, each fenced the same way: a conditional UPDATE
naming the lease token and the states it may leave, whose row count the caller checks.

Only table and column names (from the models) are formatted into the SQL; every value is a parameter.
"""

import json
import uuid
from datetime import datetime

from django.db import connection

from generation import rows
from generation.models import Image, Task, TaskAttempt, WorkflowTemplate
from workers_app.models import Worker

TASK = Task._meta.db_table
ATTEMPT = TaskAttempt._meta.db_table
IMAGE = Image._meta.db_table
TEMPLATE = WorkflowTemplate._meta.db_table
WORKER = Worker._meta.db_table

_WORKER_BY_TOKEN = f"SELECT {rows.columns(Worker, 'w')} FROM {WORKER} w WHERE w.token_hash = %s"  # noqa: S608

QUEUED, LEASED, RUNNING = Task.Status.QUEUED.value, Task.Status.LEASED.value, Task.Status.RUNNING.value
COMPLETED = Task.Status.COMPLETED.value

# What a lease hands back: enough of the task to build its workflow and answer the worker.
LEASED_COLUMNS = (
    "id", "public_id", "prompt", "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler",
    "seed", "batch_size", "checkpoint", "template_id", "priority", "status", "attempts", "lease_count",
    "max_attempts", "callback_url",
)  # fmt: skip
_RETURNING = ", ".join(f"t.{c}" for c in LEASED_COLUMNS)
_RETURNING_PLAIN = ", ".join(LEASED_COLUMNS)

_CLAIM_SET = (
    "status = %s, worker_id = %s, lease_token = %s, lease_expires_at = %s, leased_at = %s, "
    "started_at = NULL, progress_value = 0, progress_max = 0, attempts = attempts + 1, "
    "lease_count = lease_count + 1"
)
_ATTEMPT_COLUMNS = (
    "task_id, worker_id, number, lease_token, lease_expires_at, leased_at, outcome, error_code, "
    "error_message, comfyui_prompt_id"
)
_RUNNABLE = "status = %s AND template_id IN ({}) AND (checkpoint = '' OR checkpoint IN ({}))"

# PostgreSQL: one statement picks the best queued task (SKIP LOCKED passes over rows other leases hold),
# claims it, records the attempt, marks an idle worker busy and returns the task with its template. Task row
# first, then the worker row: the lock order of every other path.
_PG_LEASE = f"""
WITH picked AS (
    SELECT id FROM {TASK}
    WHERE status = %s AND template_id = ANY(%s::bigint[])
        AND (checkpoint = '' OR checkpoint = ANY(%s::text[]))
    ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {TASK} t SET {_CLAIM_SET} FROM picked WHERE t.id = picked.id AND t.status = %s
    RETURNING {_RETURNING}
), attempt AS (
    INSERT INTO {ATTEMPT} ({_ATTEMPT_COLUMNS})
    SELECT id, %s, lease_count, %s, %s, %s, 'active', '', '', '' FROM claimed RETURNING id
), busy AS (
    UPDATE {WORKER} SET status = 'busy' WHERE id = %s AND status = 'idle' AND EXISTS (SELECT 1 FROM claimed)
)
SELECT claimed.*, attempt.id, tpl.workflow, tpl.bindings
FROM claimed JOIN attempt ON true JOIN {TEMPLATE} tpl ON tpl.id = claimed.template_id
"""  # noqa: S608


def worker_by_token_hash(token_hash: str) -> Worker | None:
    """The worker with this token hash, or None."""
    with connection.cursor() as cursor:
        cursor.execute(_WORKER_BY_TOKEN, [token_hash])
        found = rows.instances(connection, Worker, cursor.fetchall())
    return found[0] if found else None


def _uuid(value: uuid.UUID):
    """A UUID as the backend stores it (SQLite: 32 hex characters)."""
    return value if connection.vendor == "postgresql" else value.hex


def _when(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def _in(values: list) -> str:
    return ", ".join(["%s"] * len(values)) or "NULL"


def template_workflows() -> list[tuple[int, dict]]:
    """(id, workflow) of every template, for matching them against a worker's node classes."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, workflow FROM {TEMPLATE}")  # noqa: S608
        return [(pk, _json(workflow)) for pk, workflow in cursor.fetchall()]


def _json(value):
    return json.loads(value) if isinstance(value, str | bytes) else value


def lease_claim(
    *,
    worker_id: int,
    template_ids: list[int],
    checkpoints: list[str],
    token: uuid.UUID,
    now: datetime,
    expires: datetime,
) -> tuple[dict, int, dict, dict] | None:
    """Claim the best queued task this worker can run: (task columns, attempt id, workflow, bindings), or
    None when there is none. Call inside transaction.atomic()."""
    claim = [LEASED, worker_id, _uuid(token), _when(expires), _when(now)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            attempt = [worker_id, token, _when(expires), _when(now)]
            cursor.execute(
                _PG_LEASE, [QUEUED, template_ids, checkpoints, *claim, QUEUED, *attempt, worker_id]
            )
            row = cursor.fetchone()
            if row is None:
                return None
            n = len(LEASED_COLUMNS)
            return (
                dict(zip(LEASED_COLUMNS, row[:n], strict=True)),
                row[n],
                _json(row[n + 1]),
                _json(row[n + 2]),
            )
        # SQLite: BEGIN IMMEDIATE makes this transaction the only writer, so the subquery's pick cannot be
        # taken by anyone else before the UPDATE; the UPDATE still re-checks the status.
        runnable = _RUNNABLE.format(_in(template_ids), _in(checkpoints))
        cursor.execute(
            f"UPDATE {TASK} SET {_CLAIM_SET} WHERE id = (SELECT id FROM {TASK} WHERE {runnable} "  # noqa: S608
            f"ORDER BY priority DESC, id LIMIT 1) AND status = %s RETURNING {_RETURNING_PLAIN}",
            [*claim, QUEUED, *template_ids, *checkpoints, QUEUED],
        )
        row = cursor.fetchone()
        if row is None:
            return None
        task = dict(zip(LEASED_COLUMNS, row, strict=True))
        cursor.execute(
            f"INSERT INTO {ATTEMPT} ({_ATTEMPT_COLUMNS}) "  # noqa: S608
            "VALUES (%s, %s, %s, %s, %s, %s, 'active', '', '', '') RETURNING id",
            [task["id"], worker_id, task["lease_count"], _uuid(token), _when(expires), _when(now)],
        )
        attempt_id = cursor.fetchone()[0]
        cursor.execute(f"UPDATE {WORKER} SET status = 'busy' WHERE id = %s AND status = 'idle'", [worker_id])  # noqa: S608
        cursor.execute(f"SELECT workflow, bindings FROM {TEMPLATE} WHERE id = %s", [task["template_id"]])  # noqa: S608
        workflow, bindings = cursor.fetchone()
        return task, attempt_id, _json(workflow), _json(bindings)


def count_active_of(worker_id: int) -> int:
    """How many tasks the worker holds (leased or running)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {TASK} WHERE worker_id = %s AND status IN (%s, %s)",  # noqa: S608
            [worker_id, LEASED, RUNNING],
        )
        return cursor.fetchone()[0]


def count_idle_others(worker_id: int, alive_since: datetime) -> int:
    """Other idle workers that sent a heartbeat since `alive_since`."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {WORKER} WHERE status = 'idle' AND id <> %s AND last_heartbeat >= %s",  # noqa: S608
            [worker_id, _when(alive_since)],
        )
        return cursor.fetchone()[0]


def count_runnable(template_ids: list[int], checkpoints: list[str], limit: int) -> int:
    """Queued tasks the worker could run, counted up to `limit`."""
    with connection.cursor() as cursor:
        runnable = _RUNNABLE.format(_in(template_ids), _in(checkpoints))
        cursor.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM {TASK} WHERE {runnable} LIMIT %s) AS runnable",  # noqa: S608
            [QUEUED, *template_ids, *checkpoints, limit],
        )
        return cursor.fetchone()[0]


def _fence(columns: str) -> str:
    return (
        f"UPDATE {TASK} SET {columns} "  # noqa: S608
        "WHERE public_id = %s AND lease_token = %s AND worker_id = %s AND status IN (%s, %s)"
    )


_START = _fence("status = %s, started_at = COALESCE(started_at, %s)")
_PROGRESS = _fence(
    "status = %s, progress_value = %s, progress_max = %s, started_at = COALESCE(started_at, %s)"
)
_ATTEMPT_STARTED = (
    f"UPDATE {ATTEMPT} SET started_at = %s, comfyui_prompt_id = %s "  # noqa: S608
    "WHERE lease_token = %s AND started_at IS NULL"
)


def _fence_params(task_id: uuid.UUID, lease_token: uuid.UUID, worker_id: int) -> list:
    return [_uuid(task_id), _uuid(lease_token), worker_id, LEASED, RUNNING]


def task_mark_started(
    *, task_id: uuid.UUID, lease_token: uuid.UUID, worker_id: int, now: datetime, comfyui_prompt_id: str
) -> bool:
    """Move the leased task to running (fenced); False when the lease is not this worker's."""
    with connection.cursor() as cursor:
        cursor.execute(_START, [RUNNING, _when(now), *_fence_params(task_id, lease_token, worker_id)])
        if cursor.rowcount != 1:
            return False
        cursor.execute(_ATTEMPT_STARTED, [_when(now), comfyui_prompt_id, _uuid(lease_token)])
        return True


def task_mark_progress(
    *, task_id: uuid.UUID, lease_token: uuid.UUID, worker_id: int, now: datetime, value: float, maximum: float
) -> bool:
    """Record progress (fenced); False when the lease is not this worker's."""
    with connection.cursor() as cursor:
        params = [RUNNING, value, maximum, _when(now), *_fence_params(task_id, lease_token, worker_id)]
        cursor.execute(_PROGRESS, params)
        return cursor.rowcount == 1


# --- Completion -----------------------------------------------------------------------------------------

COMPLETING_COLUMNS = (
    "id", "public_id", "width", "height", "batch_size", "callback_url", "owner_id", "progress_max", "status",
)  # fmt: skip
_COMPLETING = (
    f"SELECT a.id, a.number, a.comfyui_prompt_id, {', '.join(f't.{c}' for c in COMPLETING_COLUMNS)} "  # noqa: S608
    f"FROM {ATTEMPT} a JOIN {TASK} t ON t.id = a.task_id WHERE a.lease_token = %s AND a.worker_id = %s "
    "AND t.public_id = %s AND t.lease_token = %s AND t.status IN (%s, %s)"
)


def completing_attempt(
    *, task_id: uuid.UUID, lease_token: uuid.UUID, worker_id: int
) -> tuple[int, int, str, dict] | None:
    """(attempt id, number, ComfyUI prompt id, task columns) of the live lease being completed, or None."""
    token = _uuid(lease_token)
    with connection.cursor() as cursor:
        cursor.execute(_COMPLETING, [token, worker_id, _uuid(task_id), token, LEASED, RUNNING])
        row = cursor.fetchone()
    if row is None:
        return None
    task = dict(zip(COMPLETING_COLUMNS, row[3:], strict=True))
    return row[0], row[1], row[2], task


_COMPLETE_TASK = (
    f"UPDATE {TASK} SET status = %s, finished_at = %s, lease_token = NULL, lease_expires_at = NULL, "  # noqa: S608
    "progress_value = progress_max, error_code = '', error_message = '' "
    "WHERE id = %s AND lease_token = %s AND status IN (%s, %s)"
)
_INSERT_IMAGE = (
    f'INSERT INTO {IMAGE} (task_id, attempt_id, "index", file, thumbnail, width, height, size_bytes, sha256, '  # noqa: S608
    "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_COMPLETE_ATTEMPT = (
    f"UPDATE {ATTEMPT} SET outcome = 'completed', finished_at = %s, comfyui_prompt_id = %s WHERE id = %s"  # noqa: S608
)


def task_mark_completed(*, task_pk: int, lease_token: uuid.UUID, now: datetime) -> bool:
    """The fenced flip to completed; False when the lease ended meanwhile. Call inside a transaction."""
    with connection.cursor() as cursor:
        cursor.execute(_COMPLETE_TASK, [COMPLETED, _when(now), task_pk, _uuid(lease_token), LEASED, RUNNING])
        return cursor.rowcount == 1


def image_insert(*, image: Image) -> int:
    """Insert a stored image's row and return its id."""
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_IMAGE,
            [
                image.task_id, image.attempt_id, image.index, image.file.name, image.thumbnail.name or "",
                image.width, image.height, image.size_bytes, image.sha256, _when(image.created_at),
            ],
        )  # fmt: skip
        return cursor.fetchone()[0]


def attempt_mark_completed(*, attempt_pk: int, now: datetime, comfyui_prompt_id: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_COMPLETE_ATTEMPT, [_when(now), comfyui_prompt_id, attempt_pk])


# --- Heartbeats -----------------------------------------------------------------------------------------


def leases_renew(*, worker_id: int, tokens: list[uuid.UUID], expires: datetime) -> list[uuid.UUID]:
    """Extend the worker's live leases among `tokens` to `expires`; the public ids of their tasks. Task rows
    first, then their attempts: the lock order of every other path. Call inside a transaction."""
    if not tokens:
        return []
    params = [_uuid(t) for t in tokens]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TASK} SET lease_expires_at = %s WHERE worker_id = %s AND status IN (%s, %s) "  # noqa: S608
            f"AND lease_token IN ({_in(tokens)}) RETURNING public_id",
            [_when(expires), worker_id, LEASED, RUNNING, *params],
        )
        renewed = [_as_uuid(row[0]) for row in cursor.fetchall()]
        if renewed:
            cursor.execute(
                f"UPDATE {ATTEMPT} SET lease_expires_at = %s WHERE outcome = 'active' "  # noqa: S608
                f"AND worker_id = %s AND lease_token IN ({_in(tokens)})",
                [_when(expires), worker_id, *params],
            )
    return renewed


def worker_touch(*, worker_id: int, now: datetime) -> None:
    """Record a heartbeat."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {WORKER} SET last_heartbeat = %s WHERE id = %s", [_when(now), worker_id])  # noqa: S608


def cancelled_among(*, worker_id: int, tokens: list[uuid.UUID]) -> set[uuid.UUID]:
    """Public ids of the tasks whose lease among `tokens` (this worker's) was cancelled."""
    if not tokens:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT t.public_id FROM {ATTEMPT} a JOIN {TASK} t ON t.id = a.task_id "  # noqa: S608
            f"WHERE a.worker_id = %s AND a.outcome = 'cancelled' AND a.lease_token IN ({_in(tokens)})",
            [worker_id, *[_uuid(t) for t in tokens]],
        )
        return {_as_uuid(row[0]) for row in cursor.fetchall()}


def _as_uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
