"""Small helpers of the end-to-end tests: polling with a deadline, and reading the farm's rows and files."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from generation.models import Image, Task, TaskAttempt

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float = 20.0, what: str = "", interval=0.05) -> T:
    """Poll `predicate` until it returns something truthy (and return that), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


@contextmanager
def recorded_logs(*names: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the records of these loggers (from any thread) at INFO and above while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.removeHandler(handler)
            log.setLevel(level)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def statuses(tasks: list[Task]) -> dict[str, str]:
    """{task uuid: status}, read fresh from the database."""
    ids = [t.pk for t in tasks]
    return {str(pid): s for pid, s in Task.objects.filter(pk__in=ids).values_list("public_id", "status")}


def all_finished(tasks: list[Task]) -> bool:
    finished = Task.objects.filter(pk__in=[t.pk for t in tasks], status__in=Task.FINISHED_STATUSES)
    return finished.count() == len(tasks)


def outcomes(task: Task) -> list[str]:
    """The outcome of each attempt of `task`, in lease order."""
    return list(TaskAttempt.objects.filter(task=task).order_by("number").values_list("outcome", flat=True))


def assert_completed_once(task: Task, media_root: Path, *, attempts: list[str] | None = None) -> Image:
    """The task is completed by exactly one attempt, with one stored image whose file matches its row."""
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED, (task.status, task.error_code, task.error_message)
    assert task.lease_token is None and task.finished_at is not None
    done = TaskAttempt.objects.filter(task=task, outcome=TaskAttempt.Outcome.COMPLETED)
    assert done.count() == 1
    if attempts is not None:
        assert outcomes(task) == attempts
    assert not TaskAttempt.objects.filter(task=task, outcome=TaskAttempt.Outcome.ACTIVE).exists()
    images = list(Image.objects.filter(task=task))
    assert len(images) == task.batch_size == 1
    image = images[0]
    assert image.attempt_id == done.get().pk
    path = media_root / image.file.name
    assert path.is_file(), path
    assert path.stat().st_size == image.size_bytes
    assert sha256_of(path) == image.sha256
    assert (image.width, image.height) == (task.width, task.height)
    return image
