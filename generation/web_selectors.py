"""Reads for the web pages: keyset pages of the gallery, and how long a queued task will wait."""

import statistics
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from generation import selectors
from generation.models import Image, Task
from workers_app.models import Worker

GALLERY_PAGE_SIZE = 48
MAX_ID = 2**63 - 1  # ids beyond a signed 64-bit integer match nothing (and would overflow the query)
ETA_SAMPLE = 50  # completed tasks whose run time the ETA is based on
DEFAULT_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc")
DEFAULT_SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform")


# --- Gallery ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryFilters:
    q: str = ""
    mine: bool = False
    checkpoint: str = ""
    date_from: date | None = None
    date_to: date | None = None


@dataclass(frozen=True)
class GalleryPage:
    images: list[Image]
    newer: int | None  # for ?after=: the first image id on this page, when newer images exist
    older: int | None  # for ?before=: the last image id on this page, when older images exist


def images_visible_to(user, *, anonymous_tasks: Collection[str] = ()) -> QuerySet[Image]:
    """What the gallery lists: staff every image; users their own; an anonymous visitor only the images of
    `anonymous_tasks`, the tasks this browser's session submitted (the view lets them in only while anonymous
    submission is on). There is no publishing: nobody else's images and no other anonymous task's."""
    images = Image.objects.all()
    if user.is_authenticated and user.is_staff:
        return images
    if user.is_authenticated:
        return images.filter(task__owner=user)
    return images.filter(task__owner=None, task__public_id__in=list(anonymous_tasks))


def gallery_page(
    user,
    filters: GalleryFilters,
    *,
    before: int | None = None,
    after: int | None = None,
    size: int | None = None,
    anonymous_tasks: Collection[str] = (),
) -> GalleryPage:
    """One page of images, newest first, keyed by image id (no OFFSET: a deep page costs what page 1 does).

    `before` gives the page of images older than that id; `after` the page just newer than it.
    """
    size = size or GALLERY_PAGE_SIZE
    visible = images_visible_to(user, anonymous_tasks=anonymous_tasks)
    images = _filtered(visible, user, filters).select_related("task").only(
        "id", "public_id", "file", "thumbnail", "width", "height", "created_at", "index",
        "task__public_id", "task__prompt", "task__checkpoint", "task__owner_id",
    )  # fmt: skip
    if after is not None:
        rows = list(images.filter(id__gt=after).order_by("id")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        return GalleryPage(
            images=rows,
            newer=rows[0].id if has_newer else None,
            older=rows[-1].id if rows else None,
        )
    if before is not None:
        images = images.filter(id__lt=before)
    rows = list(images.order_by("-id")[: size + 1])
    has_older = len(rows) > size
    rows = rows[:size]
    return GalleryPage(
        images=rows,
        newer=rows[0].id if before is not None and rows else None,
        older=rows[-1].id if has_older else None,
    )


def _filtered(images: QuerySet[Image], user, filters: GalleryFilters) -> QuerySet[Image]:
    if filters.mine and user.is_authenticated:
        images = images.filter(task__owner=user)
    if filters.q:
        images = images.filter(task__prompt__icontains=filters.q)
    if filters.checkpoint:
        images = images.filter(task__checkpoint=filters.checkpoint)
    if filters.date_from:
        images = images.filter(created_at__gte=_start_of(filters.date_from))
    if filters.date_to and filters.date_to < date.max:
        images = images.filter(created_at__lt=_start_of(filters.date_to + timedelta(days=1)))
    return images


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


# --- Waiting time ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtaBasis:
    median_run_seconds: float | None  # of recently completed tasks; None before any completed
    online_workers: int

    def seconds(self, position: int | None) -> float | None:
        return eta_seconds(position, self.median_run_seconds, self.online_workers)

    def for_task(self, task: Task, position: int | None) -> float | None:
        """Until a queued task is done (by position), or what is left of a running one (by progress)."""
        if position:
            return self.seconds(position)
        if task.is_active and self.median_run_seconds is not None:
            return self.median_run_seconds * (1 - task.progress_percent / 100)
        return None


def eta_basis(*, sample: int = ETA_SAMPLE) -> EtaBasis:
    """The figures the ETA is estimated from: the median run time of the last `sample` completed tasks
    and the number of workers that take tasks now."""
    # Newest first by id (the primary key) rather than finished_at, which has no index.
    recent = (
        Task.objects.filter(status=Task.Status.COMPLETED, started_at__isnull=False)
        .order_by("-id")
        .values_list("started_at", "finished_at")[:sample]
    )
    durations = [(end - start).total_seconds() for start, end in recent if end and end >= start]
    online = Worker.objects.filter(status=Worker.Status.IDLE).count()
    return EtaBasis(statistics.median(durations) if durations else None, online)


def eta_seconds(position: int | None, median_run_seconds: float | None, online_workers: int) -> float | None:
    """Median run time × queue position / online workers: the time until a queued task is done.

    None when the task is not queued, nothing has completed yet, or no worker is online to take it.
    """
    if not position or median_run_seconds is None or online_workers <= 0:
        return None
    return median_run_seconds * position / online_workers


# --- Choices for the generate form -----------------------------------------------------------------------


def worker_options() -> tuple[list[str], list[str]]:
    """Samplers and schedulers that recently seen workers (selectors.workers_recently_seen) reported (a
    usual list until one has)."""
    samplers: set[str] = set()
    schedulers: set[str] = set()
    for caps in selectors.workers_recently_seen().values_list("capabilities", flat=True):
        samplers.update(caps.get("samplers") or [])
        schedulers.update(caps.get("schedulers") or [])
    return sorted(samplers or DEFAULT_SAMPLERS), sorted(schedulers or DEFAULT_SCHEDULERS)
