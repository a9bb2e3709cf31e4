"""What finished attempts teach: each worker's speed per checkpoint and its model-switch cost, and each
user's recent GPU-seconds for fair share. Called by the completion (services.completion) in a transaction of
its own, once the completion has committed: estimates, which the next completion corrects, not state.
"""

from datetime import datetime

from django.db import transaction
from django.db.models import F

from generation import placement
from generation.models import Task, TaskAttempt, UserShare
from workers_app.models import Worker, WorkerSpeed


def task_work(task: Task) -> float:
    return placement.work_units(task.width, task.height, task.steps, task.batch_size)


def attempt_learn(
    *, worker: Worker, task: Task, attempt: TaskAttempt, started: datetime, finished: datetime
) -> None:
    """Fold one completed attempt into the worker's learned costs and the owner's usage, in one transaction
    (none when there is nothing to write). Only this worker writes its own speed rows, one completion at a
    time."""
    run = (finished - started).total_seconds()
    work = task_work(task)
    if task.owner_id is None and (run <= 0 or work <= 0):
        return
    with transaction.atomic():
        if task.owner_id is not None:
            user_charge(user_id=task.owner_id, seconds=max(0.0, run), at=finished)
        if run > 0 and work > 0:
            _speed_learn(worker=worker, task=task, attempt=attempt, run=run, work=work)


def _speed_learn(*, worker: Worker, task: Task, attempt: TaskAttempt, run: float, work: float) -> None:
    speed = (
        WorkerSpeed.objects.select_for_update()
        .filter(worker=worker, checkpoint=task.checkpoint, shape=task.shape)
        .first()
    )
    if attempt.switched:
        known = speed.seconds_per_unit if speed else _mean_speed(worker, task.checkpoint)
        if known is None:
            return  # nothing to tell the switch apart from the work yet
        row = Worker.objects.select_for_update().only("switch_seconds", "switch_samples").get(pk=worker.pk)
        extra = max(0.0, run - work * known)
        Worker.objects.filter(pk=worker.pk).update(
            switch_seconds=placement.ewma(row.switch_seconds, extra, row.switch_samples),
            switch_samples=F("switch_samples") + 1,
        )
        return
    if speed is None:
        WorkerSpeed.objects.create(
            worker=worker,
            checkpoint=task.checkpoint,
            shape=task.shape,
            seconds_per_unit=run / work,
            samples=1,
        )
        return
    speed.seconds_per_unit = placement.ewma(speed.seconds_per_unit, run / work, speed.samples)
    speed.samples += 1
    speed.save(update_fields=["seconds_per_unit", "samples", "updated_at"])


def _mean_speed(worker: Worker, checkpoint: str) -> float | None:
    """What the worker is known to take per unit: on this checkpoint (any shape), else on any."""
    rows = list(WorkerSpeed.objects.filter(worker=worker).values_list("checkpoint", "seconds_per_unit"))
    rates = [rate for name, rate in rows if name == checkpoint] or [rate for _, rate in rows]
    return sum(rates) / len(rates) if rates else None


def user_charge(*, user_id: int, seconds: float, at: datetime) -> None:
    """Add GPU-seconds to the user's recent usage, decayed to `at`."""
    share = UserShare.objects.select_for_update().filter(user_id=user_id).first()
    if share is None:
        UserShare.objects.bulk_create([UserShare(user_id=user_id)], ignore_conflicts=True)
        share = UserShare.objects.select_for_update().get(user_id=user_id)
    elapsed = (at - share.usage_at).total_seconds() if share.usage_at else 0.0
    share.usage_seconds = placement.decayed(share.usage_seconds, elapsed) + seconds
    share.usage_at = at
    share.save(update_fields=["usage_seconds", "usage_at"])
