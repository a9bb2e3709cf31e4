"""Who may queue what: only staff jump the queue, and a cap on each user's queued tasks. Shared by the
template and the whole-workflow submits."""

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser

from generation.exceptions import Forbidden, QueueFull
from generation.models import Task
from generation.services.transitions import farm_setting

Status = Task.Status

PRIORITY_DEFAULT = Task._meta.get_field("priority").default


def check_priority(priority: int, owner: AbstractBaseUser | None) -> None:
    """Only staff may jump the queue: a priority above the default is theirs to set."""
    if priority > PRIORITY_DEFAULT and not (owner is not None and owner.is_authenticated and owner.is_staff):
        raise Forbidden(
            f"Only staff may set a priority above {PRIORITY_DEFAULT}.",
            fields={"priority": [f"Only staff may set a priority above {PRIORITY_DEFAULT}."]},
            code="priority_forbidden",
        )


def check_queued_cap(owner_id: int | None) -> None:
    """At most T2I_MAX_QUEUED_PER_USER queued tasks per user (0: no cap), counted inside the submit's
    transaction under a lock on the user's row, so concurrent submits cannot both pass the last place."""
    cap = farm_setting("MAX_QUEUED_PER_USER")
    if not cap or owner_id is None:
        return
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk", flat=True))
    queued = Task.objects.filter(owner_id=owner_id, status=Status.QUEUED).count()
    if queued >= cap:
        raise QueueFull(
            f"You already have {queued} tasks queued, the most allowed ({cap}); wait for some to start.",
            code="queue_full",
            retry_after=5,
        )
