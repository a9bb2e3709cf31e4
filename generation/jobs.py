"""Background jobs, run by django-q2 (`python manage.py qcluster`) on the schedules in SCHEDULES.

Each job is a small function that calls the services and returns what it did, so a test (or an operator in
`manage.py shell`) can run one step directly. They do the work that has no request to hang on: thumbnails,
webhooks and retention (old tasks, and the submit limit's counts of ended windows). The liveness sweep
(workers offline, expired leases) is workers_app.jobs; its schedule goes through ensure_schedules too.
"""

import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from generation.metrics import metrics_rollup
from generation.models import Image, InputImage, Task
from generation.services.deletion import files_delete, tasks_delete
from generation.services.frames import task_previews_delete_ended
from generation.services.inputs import input_images_purge_temp
from generation.services.submit_limit import submit_counts_delete_ended
from generation.thumbnails import images_make_missing_thumbnails
from generation.webhooks import webhooks_deliver_due

logger = logging.getLogger(__name__)

# (schedule name, function, every N minutes). ensure_schedules() makes the django_q Schedule rows match.
SCHEDULE_PREFIX = "t2i: "
SCHEDULES = [
    ("t2i: webhook retries", "generation.jobs.webhooks_job", 1),
    ("t2i: missing thumbnails", "generation.jobs.thumbnails_job", 5),
    ("t2i: retention", "generation.jobs.retention_job", 60),
    ("t2i: orphaned files", "generation.jobs.orphans_job", 60),
    ("t2i: metrics roll-up", "generation.jobs.metrics_job", 1),
]


def thumbnails_job() -> str:
    return f"{images_make_missing_thumbnails()} thumbnail(s) made"


def webhooks_job() -> str:
    return f"{webhooks_deliver_due()} webhook(s) delivered"


def metrics_job() -> str:
    """Advance /metrics' stored counters, so a scrape only reads (generation.metrics)."""
    return "counters rolled up" if metrics_rollup() else "nothing to roll up"


def retention_job() -> str:
    """Tasks past RETENTION_DAYS, the submit limit's counts of ended windows (kept to one hour's), temp
    uploads past TEMP_UPLOAD_HOURS that no queued or running task needs, and the latent previews of tasks no
    longer running."""
    purged, ended = tasks_purge_expired(), submit_counts_delete_ended()
    temp, previews = input_images_purge_temp(), task_previews_delete_ended()
    return (
        f"{purged} task(s) purged"
        + (f", {ended} ended submit count(s) deleted" if ended else "")
        + (f", {temp} temp upload(s) deleted" if temp else "")
        + (f", {previews} preview(s) deleted" if previews else "")
    )


def orphans_job() -> str:
    return f"{media_sweep_orphans()} orphaned file(s) removed"


def media_sweep_orphans(*, now: datetime | None = None, batch: int = 500) -> int:
    """Remove stored images, thumbnails and input images that no row names, once older than
    ORPHAN_GRACE_SECONDS, and Django's temporary upload files as old.

    A completion writes its files before the transaction that inserts their rows, and removes them again if
    that fails; a process killed in between leaves them behind, and so does a request killed while Django
    spooled its upload to a temporary file. Nothing in flight is that old.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.T2I["ORPHAN_GRACE_SECONDS"])
    removed = 0
    for names in _stored_files("images", cutoff, batch):
        named = Image.objects.filter(Q(file__in=names) | Q(thumbnail__in=names)).values_list(
            "file", "thumbnail"
        )
        kept = {name for pair in named for name in pair}
        for name in names:
            if name not in kept:
                default_storage.delete(name)
                removed += 1
    for names in _stored_files("inputs", cutoff, batch):  # input images (services.inputs)
        kept = set(InputImage.objects.filter(file__in=names).values_list("file", flat=True))
        for name in names:
            if name not in kept:
                default_storage.delete(name)
                removed += 1
    removed += _temporary_uploads_remove(cutoff)
    if removed:
        logger.warning("removed %d orphaned file(s) older than %s", removed, cutoff)
    return removed


def _stored_files(folder: str, cutoff: datetime, batch: int):
    """Names of the files under `folder` in storage last modified before `cutoff`, in lists of `batch`."""
    found: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            dirs, files = default_storage.listdir(current)
        except FileNotFoundError:
            continue
        pending += [f"{current}/{name}" for name in dirs]
        for name in files:
            path = f"{current}/{name}"
            if default_storage.get_modified_time(path) < cutoff:
                found.append(path)
            if len(found) >= batch:
                yield found
                found = []
    if found:
        yield found


def _temporary_uploads_remove(cutoff: datetime) -> int:
    """Django's spooled uploads (`*.upload*` in FILE_UPLOAD_TEMP_DIR or the system's) older than `cutoff`."""
    folder = Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir())
    removed = 0
    for path in folder.glob("*.upload*"):
        try:
            if path.is_file() and datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def tasks_purge_expired(*, now: datetime | None = None, batch: int = 500) -> int:
    """Delete tasks finished more than RETENTION_DAYS ago, with their attempts, webhook deliveries, images
    and the image and thumbnail files. Off (returns 0) while RETENTION_DAYS is 0.

    Rows go first, in batches, each in its own transaction; files are removed after the commit, so a crash
    leaves at worst an orphaned file, never a row pointing at a missing one.
    """
    days = settings.T2I["RETENTION_DAYS"]
    if not days:
        return 0
    metrics_rollup()  # what is about to go is in /metrics' stored counters first, never lost from them
    cutoff = (now or timezone.now()) - timedelta(days=days)
    expired = Task.objects.filter(
        status__in=Task.FINISHED_STATUSES, finished_at__lt=cutoff
    )  # task_finished_idx
    total = 0
    while pks := list(expired.order_by().values_list("pk", flat=True)[:batch]):
        with transaction.atomic():
            count, files = tasks_delete(tasks=expired.filter(pk__in=pks))
        files_delete(files)
        total += count
        if len(pks) < batch:
            break
    if total:
        logger.info("retention: deleted %d task(s) finished before %s", total, cutoff.isoformat())
    return total


def ensure_schedules(*, schedules=SCHEDULES, schedule_model=None) -> int:
    """Create or update the django_q Schedule rows in `schedules` and drop the stale ones: rows named with
    SCHEDULE_PREFIX that run a function of a module `schedules` names, but that it no longer lists. Each
    app's jobs module owns its list (this one, workers_app.jobs.SCHEDULES), and one app's call never drops
    another's rows.

    Idempotent: run by migrations generation/0005 and workers_app/0002, and safe to run again (e.g. after
    changing a list). `schedule_model` lets a migration pass its historical model. Returns the number of
    schedules.
    """
    if schedule_model is None:
        from django_q.models import Schedule as schedule_model
    for name, func, minutes in schedules:
        schedule_model.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1},
        )
    names = [name for name, _, _ in schedules]
    modules = {func.rpartition(".")[0] for _, func, _ in schedules}
    ours = schedule_model.objects.filter(name__startswith=SCHEDULE_PREFIX).exclude(name__in=names)
    for stale in ours:
        if stale.func.rpartition(".")[0] in modules:
            stale.delete()
    return len(schedules)
