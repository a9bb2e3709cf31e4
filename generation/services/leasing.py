"""Handing tasks to workers, and what a worker reports while it runs one (started, progress)."""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from generation import api_workflows, dispatch, farm_snapshot, placement, workflows
from generation.exceptions import InvalidInput, LeaseLost, RegisterRequired, TooManyLeases, WorkerDisabled
from generation.models import Task, TaskAttempt, WorkflowTemplate
from generation.services.inputs import worker_inputs
from generation.services.transitions import LEASE_LOST, farm_setting, fenced, lease_completed, task_changed
from workers_app.models import Worker

logger = logging.getLogger(__name__)

Status = Task.Status


@dataclass(frozen=True)
class TaskLease:
    """A task handed to a worker: the task, its attempt (token, expiry) and the workflow to run."""

    task: Task
    attempt: TaskAttempt
    workflow: dict
    filename_prefix: str
    inputs: list = field(default_factory=list)  # uploads the worker fetches first (services.inputs)


def worker_assert_live(*, worker: Worker) -> None:
    """Disabled workers are refused; offline (or never registered) ones must register first."""
    if worker.status == Worker.Status.DISABLED:
        raise WorkerDisabled("This worker is disabled by an operator.")
    if worker.status == Worker.Status.OFFLINE or worker.registered_at is None:
        raise RegisterRequired("Register before heartbeats and leases (the scheduler has you offline).")


def task_lease_next(
    *, worker: Worker, prefetch: bool = False, now: datetime | None = None
) -> TaskLease | None:
    """Hand the best queued task this worker can run to it, or return None.

    T2I_SCHEDULER=smart (the default): the task generation.placement plans for this worker (strict
    priorities, aging, fair share between users, earliest finish across the farm); None when another worker
    should run the queued work it could take (that worker is woken). fifo: highest priority, then oldest.
    Either way the claim is one short transaction: on PostgreSQL the pick is locked with SKIP LOCKED, so
    concurrent workers pass over each other's picks; SQLite ignores row locks, but our transactions are
    BEGIN IMMEDIATE, so one writer at a time runs this block; the claim is a conditional UPDATE either way.
    An empty queue costs the read that finds it empty (and, without prefetch, the depth check), not a plan:
    a long poll's first attempt and a completion's lease_next on an idle farm.
    """
    worker_assert_live(worker=worker)
    if worker.status == Worker.Status.DRAINING:
        return None
    queued_keys = _queued_requirement_keys()
    if not queued_keys:
        if not prefetch:
            _check_depth(worker, Task.objects.filter(worker=worker, status__in=Task.ACTIVE_STATUSES).count())
        return None
    templates = _templates_runnable_by(worker)
    needs = _queued_workflow_needs(queued_keys - {""})
    requirement_keys = sorted(api_workflows.keys_runnable(needs, worker.capabilities))
    if not templates and not requirement_keys:
        return None
    runnable = _runnable(worker, list(templates), requirement_keys)
    now = now or timezone.now()
    smart = farm_setting("SCHEDULER") == "smart"
    workers: list[farm_snapshot.LiveWorker | Worker] = [*farm_snapshot.live_workers(now)] if smart else []
    # The asker as its row is now (the live list is cached a moment): its inventory may just have changed.
    workers = [w for w in workers if w.pk != worker.pk] + [worker]
    # An idle worker another stands back for is woken by an event; without NOTIFY (SQLite) only this process
    # would hear it, so then only busy workers (which ask again as they finish) compete.
    defer_to_idle = dispatch.notify_enabled()
    farm = farm_snapshot.snapshot(
        now=now, workers=workers, workflow_needs=needs, asker=worker.pk, defer_to_idle=defer_to_idle
    )
    held = len(farm.held.get(worker.pk, ()))
    if prefetch and held >= max(1, worker.prefetch):
        return None  # full: a prefetching request raced the lease it already got
    _check_depth(worker, held)
    if prefetch and held and not _prefetch_allowed(worker, runnable):
        return None
    choice = _place(worker, farm, runnable, defer_to_idle=defer_to_idle) if smart else None
    if choice is not None and not choice.job_ids:
        _wake_passed_over(farm, choice)
        return None
    expires = now + timedelta(seconds=farm_setting("LEASE_SECONDS"))
    token = uuid.uuid4()
    with transaction.atomic():
        task, reason = _pick(runnable, choice)
        if task is None:
            return None
        claim = {
            "status": Status.LEASED,
            "worker": worker,
            "lease_token": token,
            "lease_expires_at": expires,
            "leased_at": now,
            "started_at": None,
            "progress_value": 0,
            "progress_max": 0,
        }
        counted = {"attempts": F("attempts") + 1, "lease_count": F("lease_count") + 1}
        if not Task.objects.filter(pk=task.pk, status=Status.QUEUED).update(**claim, **counted):
            return None  # cannot happen while the pick is locked or we are the only writer; never hand it out
        for name, value in claim.items():  # the row as the UPDATE left it, without reading it again
            setattr(task, name, value)
        task.attempts, task.lease_count = task.attempts + 1, task.lease_count + 1
        task.template = templates[task.template_id] if task.template_id is not None else None
        expected, switched = _expectation(farm.nodes[worker.pk], task)
        attempt = TaskAttempt.objects.create(
            task=task,
            worker=worker,
            number=task.lease_count,
            lease_token=token,
            lease_expires_at=expires,
            leased_at=now,
            placement=reason,
            expected_seconds=expected,
            switched=switched,
        )
        task_changed(task.public_id, task.owner_id)
    prefix = f"t2i/{task.public_id}_a{attempt.number}"
    logger.info("task leased", extra={"task": task.public_id, "worker": worker.name})
    workflow = task_workflow(task, prefix)
    names, inputs = worker_inputs(task)
    if names:
        workflow = api_workflows.with_input_names(workflow, names)
    return TaskLease(task=task, attempt=attempt, workflow=workflow, filename_prefix=prefix, inputs=inputs)


def _check_depth(worker: Worker, held: int) -> None:
    """A lease asked without prefetch while the worker holds its depth would hoard the queue."""
    if held >= max(1, worker.prefetch):
        raise TooManyLeases(
            f"This worker already holds {held} task(s), its prefetch depth; finish or release one first."
        )


def _place(
    worker: Worker, farm: farm_snapshot.Farm, runnable: QuerySet[Task], *, defer_to_idle: bool
) -> placement.Choice:
    """The plan's tasks for this worker, best first (generation.placement)."""
    window = farm_snapshot.queue_window(runnable, size=placement.window_size(farm.live))
    farm_snapshot.add_users(farm, {job.user for job in window})
    ordered = farm_snapshot.ordered(farm, window)
    return placement.plan(
        farm.nodes[worker.pk],
        list(farm.nodes.values()),
        ordered,
        now=farm.now,
        want=1,
        defer_to_idle=defer_to_idle,
    )


def _pick(runnable: QuerySet[Task], choice: placement.Choice | None) -> tuple[Task | None, str]:
    """Lock and return the first of the chosen tasks still queued, else the head of the queue (another
    worker took them meanwhile); inside the claim's transaction. A chosen task was read from `runnable`, and
    what makes a task runnable here (template, checkpoint, requirements) never changes after submit: its
    status is all there is to check again."""
    for pk in choice.job_ids if choice else ():
        task = Task.objects.filter(pk=pk, status=Status.QUEUED).select_for_update(skip_locked=True).first()
        if task is not None:
            return task, choice.reason
    task = runnable.select_for_update(skip_locked=True).order_by("-priority", "id").first()
    return task, placement.FIFO


def _expectation(node: placement.Node, task: Task) -> tuple[float, bool]:
    """Seconds the worker should take for `task` after the work it holds; whether it must switch models."""
    job = farm_snapshot.job_of(
        tuple(getattr(task, name) for name in farm_snapshot.JOB_FIELDS), task.created_at.timestamp()
    )
    return node.run_seconds(job), bool(job.checkpoint and job.checkpoint != node.warm)


def _wake_passed_over(farm: farm_snapshot.Farm, choice: placement.Choice) -> None:
    """This worker stands back for others the plan gives the work to: wake those that are idle now."""
    idle = {n for n in choice.planned.values() if farm.nodes[n].free_at <= farm.now}
    for worker_id in sorted(idle)[:4]:
        dispatch.publish("work", {"count": 1, "worker": worker_id})


def task_workflow(task: Task, filename_prefix: str) -> dict:
    """The task's ComfyUI workflow: its template with every bound field filled in, or its whole workflow
    with each SaveImage writing under this attempt's prefix (api_workflows.with_prefix)."""
    if task.workflow is not None:
        return api_workflows.with_prefix(task.workflow, filename_prefix)
    values = {name: getattr(task, name) for name in workflows.TASK_FIELDS_BOUND}
    if not task.checkpoint:
        del values["checkpoint"]  # the template's own checkpoint stays
    values["filename_prefix"] = filename_prefix
    return workflows.build_workflow(task.template.workflow, task.template.bindings, values)


def _templates_runnable_by(worker: Worker) -> dict[int, WorkflowTemplate]:
    """The templates whose every node class this worker reported, by id."""
    nodes = worker.node_classes
    templates = WorkflowTemplate.objects.order_by()
    return {t.pk: t for t in templates if workflows.node_classes(t.workflow) <= nodes}


# Requirements already read, by key (a digest of their content, so an entry never goes stale).
_requirements_seen: dict[str, api_workflows.Requirements] = {}
_REQUIREMENTS_SEEN_MAX = 10_000


def _queued_requirement_keys() -> set[str]:
    """The requirement keys of the queued tasks: "" for template tasks, a digest for each whole workflow's
    needs; empty when nothing is queued."""
    queued = Task.objects.filter(status=Status.QUEUED).order_by()
    return set(queued.values_list("requirements_key", flat=True).distinct())


def _queued_workflow_needs(keys: set[str]) -> dict[str, api_workflows.Requirements]:
    """What the queued whole-workflow tasks with these requirement keys need, by key."""
    queued = Task.objects.filter(status=Status.QUEUED, template=None).order_by()
    unseen = keys - _requirements_seen.keys()
    if unseen:
        if len(_requirements_seen) + len(unseen) > _REQUIREMENTS_SEEN_MAX:
            _requirements_seen.clear()
        for key, needs in queued.filter(requirements_key__in=unseen).values_list(
            "requirements_key", "requirements"
        ):
            _requirements_seen[key] = api_workflows.Requirements.from_json(needs)
    known = {key: _requirements_seen.get(key) for key in keys}  # .get: another thread may clear it
    return {key: needs for key, needs in known.items() if needs is not None}


def _runnable(worker: Worker, template_ids: list[int], requirement_keys: list[str]) -> QuerySet[Task]:
    """Queued tasks of these templates whose checkpoint (if any) the worker has, and queued workflow tasks
    with these requirement keys."""
    of_templates = Q(template_id__in=template_ids) & (Q(checkpoint="") | Q(checkpoint__in=worker.checkpoints))
    whole = Q(template=None, requirements_key__in=requirement_keys)
    return Task.objects.filter(of_templates | whole, status=Status.QUEUED)


def _prefetch_allowed(worker: Worker, runnable: QuerySet[Task]) -> bool:
    """A worker that holds a task (below its depth) prefetches only when more tasks wait than there are
    other idle workers to take them.

    A worker that holds nothing is not prefetching, whatever its request said (the caller does not ask):
    its task finished while it was long-polling with `prefetch: true`. Holding it back for idle others would
    let every such worker defer to the others, and a new task would wait until one of those long-polls
    timed out."""
    alive_since = timezone.now() - timedelta(seconds=farm_setting("WORKER_OFFLINE_AFTER"))
    idle_others = (
        Worker.objects.with_state()
        .filter(status=Worker.Status.IDLE, last_heartbeat__gte=alive_since, holds_leases=False)
        .exclude(pk=worker.pk)
        .count()
    )
    return runnable[: idle_others + 1].count() > idle_others


def task_start(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, comfyui_prompt_id: str = ""
) -> None:
    """ComfyUI began executing the task. A start that arrives after the same lease's completion (which
    marked the task started itself) changes nothing."""
    now = timezone.now()
    with transaction.atomic():
        # One fenced UPDATE both checks the lease and moves the task.
        lease = fenced(task_id=task_id, lease_token=lease_token, worker_id=worker.pk)
        if not lease.update(status=Status.RUNNING, started_at=Coalesce("started_at", now)):
            if lease_completed(task_id=task_id, lease_token=lease_token, worker_id=worker.pk):
                return
            raise LeaseLost(LEASE_LOST)
        task_changed(task_id)
        TaskAttempt.objects.filter(lease_token=lease_token, started_at=None).update(
            started_at=now, comfyui_prompt_id=comfyui_prompt_id[:64]
        )
    logger.info("task started", extra={"task": task_id, "worker": worker.name})


def task_report_progress(
    *, worker: Worker, task_id: uuid.UUID, lease_token: uuid.UUID, value: float, maximum: float
) -> None:
    """Record sampling progress; the first report also marks the task running. A report that arrives after
    the same lease's completion changes nothing."""
    if maximum <= 0 or not 0 <= value <= maximum:
        raise InvalidInput(
            "Progress must satisfy 0 <= value <= max and max > 0.",
            fields={"max" if maximum <= 0 else "value": ["Out of range."]},
        )
    lease = fenced(task_id=task_id, lease_token=lease_token, worker_id=worker.pk)
    if not lease.update(
        status=Status.RUNNING,
        progress_value=value,
        progress_max=maximum,
        started_at=Coalesce("started_at", timezone.now()),
    ):
        if lease_completed(task_id=task_id, lease_token=lease_token, worker_id=worker.pk):
            return
        raise LeaseLost("This lease is no longer yours.")
    task_changed(task_id)
