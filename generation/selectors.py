"""Reads with rules in them: who may see or change a task, what the farm can run."""

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone

from generation import rows
from generation.exceptions import NotFound
from generation.models import Image, Task, TaskAttempt, WorkflowTemplate
from workers_app.models import Worker


def task_visible_to(task: Task, user) -> bool:
    """Staff see everything; users their own tasks; anonymous tasks are visible to whoever has the id."""
    if user.is_authenticated and user.is_staff:
        return True
    if task.owner_id is None:
        return True
    return user.is_authenticated and task.owner_id == user.pk


def task_cancellable_by(task: Task, user) -> bool:
    """Whoever may see a task may cancel it, except that an anonymous visitor may cancel an anonymous
    task only while anonymous submission is on."""
    if task.owner_id is None and not user.is_authenticated:
        return settings.T2I["ALLOW_ANONYMOUS_SUBMIT"]
    return task_visible_to(task, user)


def task_for(user, public_id) -> Task:
    """The task with this id if `user` may see it; NotFound otherwise (no hint that it exists)."""
    from generation.services import task_get

    task = task_get(public_id=public_id)
    if not task_visible_to(task, user):
        raise NotFound("No such task.")
    return task


@dataclass(frozen=True)
class TaskStatus:
    """A task as its status read shows it. `task` carries `template_name`, `worker_name`, `owner_username`
    and `queue_position` (None unless queued); each attempt carries `worker_name`."""

    task: Task
    images: list[Image]  # newest first (the REST detail's order)
    attempts: list[TaskAttempt]  # by number; empty unless asked for


_TASK_EXTRA = ("template_name", "worker_name", "owner_username", "queue_position")


def task_status_for(user, public_id, *, with_attempts: bool = True) -> TaskStatus:
    """The task with this id, its images and its attempts if `user` may see it; NotFound otherwise.

    The status read is the hottest one (every watcher polls it once a second), so it is written SQL, built
    once, instead of ORM queries that Django compiles again on every request.
    """
    field = Task._meta.get_field("public_id")
    try:
        public_id = field.to_python(public_id)
    except ValidationError:
        raise NotFound("No such task.")
    connection = connections[Task.objects.db]
    sql = _status_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql["task"], [field.get_db_prep_value(public_id, connection)])
        tasks = rows.instances(connection, Task, cursor.fetchall(), _TASK_EXTRA)
        if not tasks or not task_visible_to(tasks[0], user):
            raise NotFound("No such task.")
        task = tasks[0]
        cursor.execute(sql["images"], [task.pk])
        images = rows.instances(connection, Image, cursor.fetchall())
        attempts = []
        if with_attempts:
            cursor.execute(sql["attempts"], [task.pk])
            attempts = rows.instances(connection, TaskAttempt, cursor.fetchall(), ("worker_name",))
    return TaskStatus(task, images, attempts)


@cache
def _status_sql() -> dict[str, str]:
    """The status read's statements (the same text for SQLite and PostgreSQL)."""

    user = get_user_model()
    names = {
        "task": Task._meta.db_table,
        "image": Image._meta.db_table,
        "attempt": TaskAttempt._meta.db_table,
        "template": WorkflowTemplate._meta.db_table,
        "worker": Worker._meta.db_table,
        "user": user._meta.db_table,
        "username": user._meta.get_field(user.USERNAME_FIELD).column,
        "queued": Task.Status.QUEUED.value,
        "task_columns": rows.columns(Task, "t"),
        "image_columns": rows.columns(Image, "i"),
        "attempt_columns": rows.columns(TaskAttempt, "a"),
    }
    # The queue position counts the queued tasks leasing takes first (services.task_queue_position: higher
    # priority, then lower id) as two range counts on task_claim_idx, so that each reads only the index
    # entries ahead of the task instead of filtering every queued one; only evaluated for a queued task.
    return {
        "task": """
            SELECT {task_columns}, tpl.name, w.name, u."{username}",
                CASE WHEN t.status = '{queued}' THEN 1
                    + (SELECT COUNT(*) FROM {task} q WHERE q.status = '{queued}' AND q.priority > t.priority)
                    + (SELECT COUNT(*) FROM {task} q
                       WHERE q.status = '{queued}' AND q.priority = t.priority AND q.id < t.id)
                END
            FROM {task} t
            JOIN {template} tpl ON tpl.id = t.template_id
            LEFT JOIN {worker} w ON w.id = t.worker_id
            LEFT JOIN {user} u ON u.id = t.owner_id
            WHERE t.public_id = %s
        """.format(**names),  # noqa: S608 (table and column names from the models)
        # Newest first: the order of Image.Meta, which the REST detail has always used.
        "images": """
            SELECT {image_columns} FROM {image} i WHERE i.task_id = %s ORDER BY i.id DESC
        """.format(**names),  # noqa: S608
        "attempts": """
            SELECT {attempt_columns}, w.name FROM {attempt} a LEFT JOIN {worker} w ON w.id = a.worker_id
            WHERE a.task_id = %s ORDER BY a.number
        """.format(**names),  # noqa: S608
    }


def tasks_for(user, *, mine: bool = False, status: str | None = None) -> QuerySet[Task]:
    qs = Task.objects.select_related("template", "worker", "owner").prefetch_related("images")
    if not (user.is_authenticated and user.is_staff) or mine:
        qs = qs.filter(owner=user) if user.is_authenticated else qs.none()
    if status:
        qs = qs.filter(status=status)
    return qs


def checkpoints_available(*, recent_hours: int = 24) -> list[dict]:
    """Checkpoints some online or recently seen worker has, with how many online workers have each."""
    since = timezone.now() - timedelta(hours=recent_hours)
    workers = Worker.objects.exclude(registered_at=None).filter(last_heartbeat__gte=since)
    online, seen = Counter(), set()
    for worker in workers.only("status", "capabilities"):
        for name in worker.checkpoints:
            seen.add(name)
            if worker.is_online:
                online[name] += 1
    default = settings.T2I["DEFAULT_CHECKPOINT"]
    return [{"name": n, "online_workers": online[n], "default": n == default} for n in sorted(seen)]
