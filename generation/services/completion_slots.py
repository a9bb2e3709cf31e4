"""At most T2I_MAX_CONCURRENT_COMPLETIONS uploads at once per worker, counted across server processes.

A completion counts itself on the worker's row (`Worker.completing`) before its body is read, with one
conditional UPDATE that only succeeds below the limit, and counts itself off when done: in the UPDATE of the
worker's counters that its own transaction makes anyway when it lands (`Slot`, `services.task_complete`),
else by one more UPDATE. The database is what every process and instance shares. A count left by a killed
process is forgotten once no completion has begun for SLOT_SECONDS (each holder began at or before
`completing_since`, and none runs that long), as an entry of a shared cache would expire. More at once is a
429 the daemon retries: a compromised worker cannot make the server spool and decode many uploads in
parallel."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from generation.exceptions import TooManyCompletions
from workers_app.models import Worker

logger = logging.getLogger(__name__)

SLOT_SECONDS = 300  # longer than any upload takes; only a killed process leaves a count to be forgotten


@dataclass
class Slot:
    """A completion slot of a worker, held until counted off (`held` False once it is)."""

    worker_id: int
    held: bool = True


def slot_release() -> dict:
    """The UPDATE assignment that counts one completion off the worker's row (never below zero: a count that
    was forgotten may be counted off late)."""
    return {"completing": Greatest(F("completing") - 1, Value(0))}


@contextmanager
def completion_slot(*, worker_id: int) -> Iterator[Slot]:
    """Hold one of the worker's completion slots for the block; TooManyCompletions when all are taken."""
    limit = settings.T2I["MAX_CONCURRENT_COMPLETIONS"]
    now = timezone.now()
    mine = Worker.objects.filter(pk=worker_id)
    stale = now - timedelta(seconds=SLOT_SECONDS)
    claimed = mine.filter(completing__lt=limit).update(completing=F("completing") + 1, completing_since=now)
    if not claimed and not mine.filter(completing_since__lt=stale).update(completing=1, completing_since=now):
        raise TooManyCompletions(
            f"At most {limit} completions of one worker at once; retry when one has finished.", retry_after=1
        )
    slot = Slot(worker_id)
    try:
        yield slot
    finally:
        if slot.held:
            try:
                mine.update(**slot_release())
            except DatabaseError:
                logger.warning(
                    "completion slots: could not free one of worker %d's; forgotten %d s after the last",
                    worker_id,
                    SLOT_SECONDS,
                )
