"""Deleting tasks for good, with their attempts, webhook deliveries, images and files: the retention job, and
an account's deletion, which takes everything the account made with it."""

import logging
from collections.abc import Iterable

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet, Sum

from generation.models import Image, InputImage, MetricCounter, Task, WebhookDelivery

logger = logging.getLogger(__name__)

# The failed webhook tries of deleted deliveries (generation.metrics adds them to the remaining rows' count).
PURGED_WEBHOOK_FAILURES = "_webhook_failures_purged"
BATCH = 500


def tasks_delete(*, tasks: QuerySet[Task]) -> tuple[int, list[str]]:
    """Delete these tasks with their attempts, webhook deliveries and images, in the caller's transaction.
    Returns how many tasks went and the names of their stored files (images and thumbnails), for the caller
    to remove once that transaction has committed (files_delete): a crash in between leaves at worst a file
    without a row, which the orphaned-files job removes, never a row pointing at a missing file.

    The tasks are locked as they are chosen, so one that stops matching `tasks` meanwhile (a retried task
    the retention job had picked) is left alone."""
    with transaction.atomic():
        task_ids = list(tasks.select_for_update().order_by().values_list("pk", flat=True))
        images = Image.objects.filter(task_id__in=task_ids)
        files = [name for pair in images.values_list("file", "thumbnail") for name in pair if name]
        _keep_webhook_failures(task_ids)
        images.delete()
        Task.objects.filter(pk__in=task_ids).delete()
    return len(task_ids), files


def files_delete(names: Iterable[str]) -> None:
    """Remove stored files; one that cannot be removed is logged and left to the orphaned-files job."""
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete %s", name, exc_info=True)


def user_delete(*, user: AbstractBaseUser) -> int:
    """Delete an account with every task it submitted, their images and, once committed, their files; returns
    the number of tasks deleted. The admin deletes users through this. (`Task.owner` cascades too, so an
    account deleted another way still takes its rows; only its files then wait for the orphaned-files job.)"""
    files: list[str] = []
    deleted = 0
    with transaction.atomic():
        owned = Task.objects.filter(owner=user).order_by().values_list("pk", flat=True)
        while batch := list(owned[:BATCH]):
            count, names = tasks_delete(tasks=Task.objects.filter(pk__in=batch))
            deleted, files = deleted + count, files + names
        files += list(InputImage.objects.filter(owner=user).values_list("file", flat=True))
        user_id = user.pk
        user.delete()
        transaction.on_commit(lambda: files_delete(files), robust=True)
    logger.info("account %s deleted with %d task(s) and %d file(s)", user_id, deleted, len(files))
    return deleted


def _keep_webhook_failures(task_ids: list[int]) -> None:
    """The failed webhook tries of deliveries about to be deleted, kept in a counter so that
    t2i_webhook_failures_total (computed from the remaining rows plus this) never goes down."""
    figures = WebhookDelivery.objects.filter(task_id__in=task_ids).aggregate(
        tries=Sum("attempts"), delivered=Count("pk", filter=Q(delivered_at__isnull=False))
    )
    failures = (figures["tries"] or 0) - figures["delivered"]
    if failures:
        counter, _ = MetricCounter.objects.get_or_create(name=PURGED_WEBHOOK_FAILURES, labels="")
        MetricCounter.objects.filter(pk=counter.pk).update(value=F("value") + failures)
