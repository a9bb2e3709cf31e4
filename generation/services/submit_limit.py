"""The submit limit: at most T2I_SUBMIT_RATE submits per user (per client address for anonymous submits) in
each window of time, one count for the web form, the REST API and the seed's POST /generate.

The count lives in the shared cache (settings.CACHES: Redis, or the database's cache table), never in a
process's memory, so every server process and instance sees the same one. A submit claims the next numbered
slot of its window with `cache.add`, which every backend does atomically (Redis SET NX, an INSERT on the
database cache's primary key): two submits never claim the same slot, so no more than the limit get through
however many arrive at once. (A counter read and written back, which is what `cache.incr` does on the
database cache, would lose counts under concurrency.) The slot last claimed is kept as a hint of where to
start; it may lag behind, never run ahead, so the worst it costs is a few more `add`s.

Windows are fixed (a minute for `/min`, from the start of the minute), so a burst at the end of one and the
start of the next may pass twice the rate; a refused submit is told when its window ends (Retry-After).
"""

import ipaddress
import logging
import math
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from generation.cache_slots import CACHE_ERRORS
from generation.client_address import parse
from generation.exceptions import Throttled, Unavailable

logger = logging.getLogger(__name__)

PERIOD_WORDS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


def submit_claim(*, user, address: str, now: datetime | None = None) -> None:
    """Count one submit by `user` (or, anonymous, from `address`); Throttled when the window's limit is
    reached, Unavailable when the shared cache does not answer (the submit is refused rather than let
    through uncounted)."""
    limit, period = settings.T2I["SUBMIT_RATE"]
    seconds = (now or timezone.now()).timestamp()
    window = int(seconds // period)
    left = (window + 1) * period - seconds
    key = f"t2i:submit:{submitter_key(user, address)}:{window}"
    timeout = math.ceil(left) + 1  # the slots outlive their window by a little, never less
    try:
        claimed = cache.get(f"{key}:n") or 0
        for slot in range(claimed + 1, limit + 1):
            if cache.add(f"{key}:{slot}", 1, timeout):
                cache.set(f"{key}:n", slot, timeout)
                return
    except CACHE_ERRORS as exc:
        logger.warning("submit limit: the shared cache did not answer: %s", str(exc).strip()[:200])
        raise Unavailable("The submit limit cannot be checked just now; retry shortly.", retry_after=2)
    wait = math.ceil(left)
    raise Throttled(
        f"At most {limit} submits per {PERIOD_WORDS.get(period, f'{period} s')}; retry in {wait} s.",
        retry_after=wait,
    )


def submitter_key(user, address: str) -> str:
    """Whom a submit is counted for: the user, or for an anonymous submit the client's address (an IPv6
    client's /64, since one machine can take any address in it)."""
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    parsed = parse(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return f"net:{ipaddress.IPv6Network((parsed, 64), strict=False)}"
    return f"addr:{parsed or address}"
