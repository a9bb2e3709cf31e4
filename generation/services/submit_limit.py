"""The submit limit: at most T2I_SUBMIT_RATE submits per user (per client address for anonymous submits) in
each window of time, one count for the web form, the REST API and the seed's POST /generate.

The count lives in the database (SubmitCount: one row per submitter and window), which every server process
and instance already shares, with Redis or without. A submit takes one conditional UPDATE, `count = count + 1
WHERE count < limit`, whose row count says whether it got through: the database does the check and the
increment in one step, so however many submits arrive at once, no more than the limit get through. When it
changes no row, the window's row is full (a refused submit reads its count), was not there yet (the window's
first submit inserts it), or was made since by a concurrent first submit (read, or met as the unique
constraint of the INSERT: then the UPDATE runs once more). Rows of ended windows are deleted by the
retention job, not by submits.

Windows are fixed (a minute for `/min`, from the start of the minute), so a burst at the end of one and the
start of the next may pass twice the rate; a refused submit is told when its window ends (Retry-After).
"""

import ipaddress
import logging
import math
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from generation.client_address import parse
from generation.exceptions import Throttled, Unavailable
from generation.models import SubmitCount

logger = logging.getLogger(__name__)

PERIOD_WORDS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


def submit_claim(*, user, address: str, now: datetime | None = None) -> None:
    """Count one submit by `user` (or, anonymous, from `address`); Throttled when the window's limit is
    reached, Unavailable when the database does not answer (the submit is refused rather than let through
    uncounted)."""
    limit, period = settings.T2I["SUBMIT_RATE"]
    seconds = (now or timezone.now()).timestamp()
    window_end = (int(seconds // period) + 1) * period
    try:
        allowed = _count_one(submitter_key(user, address), window_end, limit)
    except DatabaseError as exc:
        logger.warning("submit limit: the database did not answer: %s", str(exc).strip()[:200])
        raise Unavailable("The submit limit cannot be checked just now; retry shortly.", retry_after=2)
    if allowed:
        return
    wait = math.ceil(window_end - seconds)
    raise Throttled(
        f"At most {limit} submits per {PERIOD_WORDS.get(period, f'{period} s')}; retry in {wait} s.",
        retry_after=wait,
    )


def _count_one(submitter: str, window_end: int, limit: int) -> bool:
    """Add one to the window's count if it is below `limit`; whether it was."""
    window = SubmitCount.objects.filter(submitter=submitter, window_end=window_end)  # submit_count_unique
    below = window.filter(count__lt=limit)
    if below.update(count=F("count") + 1):
        return True
    count = window.values_list("count", flat=True).first()
    if count is not None:  # full, or made by a concurrent first submit since the UPDATE looked
        return count < limit and bool(below.update(count=F("count") + 1))  # a count never goes down
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction survives a lost race
            SubmitCount.objects.create(submitter=submitter, window_end=window_end, count=1)
        return True
    except IntegrityError:  # a concurrent first submit made the row since the SELECT looked
        return bool(below.update(count=F("count") + 1))


def submit_counts_delete_ended(*, now: datetime | None = None) -> int:
    """Delete the counts of windows that have ended (the retention job); how many."""
    ended = SubmitCount.objects.filter(window_end__lte=(now or timezone.now()).timestamp())
    return ended.delete()[0]


def submitter_key(user, address: str) -> str:
    """Whom a submit is counted for: the user, or for an anonymous submit the client's address (an IPv6
    client's /64, since one machine can take any address in it)."""
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    parsed = parse(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return f"net:{ipaddress.IPv6Network((parsed, 64), strict=False)}"
    return f"addr:{parsed or address}"[:100]
