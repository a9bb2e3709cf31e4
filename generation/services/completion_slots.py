"""At most T2I_MAX_CONCURRENT_COMPLETIONS uploads at once per worker, counted across server processes.

A completion claims one of the worker's numbered slots in the shared cache (`cache.add`, atomic on Redis and
the database cache, as in submit_limit) before its body is read, and frees it when done; a slot left by a
killed process expires after SLOT_SECONDS. More at once is a 429 the daemon retries: a compromised worker
cannot make the server spool and decode many uploads in parallel.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache

from generation.exceptions import TooManyCompletions, Unavailable
from generation.services.submit_limit import CACHE_ERRORS

logger = logging.getLogger(__name__)

SLOT_SECONDS = 300  # longer than any upload takes; only a killed process leaves a slot to expire


@contextmanager
def completion_slot(*, worker_id: int) -> Iterator[None]:
    """Hold one of the worker's completion slots for the block; TooManyCompletions when all are taken."""
    limit = settings.T2I["MAX_CONCURRENT_COMPLETIONS"]
    key = None
    try:
        for slot in range(1, limit + 1):
            if cache.add(f"t2i:completing:{worker_id}:{slot}", 1, SLOT_SECONDS):
                key = f"t2i:completing:{worker_id}:{slot}"
                break
    except CACHE_ERRORS as exc:
        logger.warning("completion slots: the shared cache did not answer: %s", str(exc).strip()[:200])
        raise Unavailable("The completion limit cannot be checked just now; retry shortly.", retry_after=2)
    if key is None:
        raise TooManyCompletions(
            f"At most {limit} completions of one worker at once; retry when one has finished.", retry_after=1
        )
    try:
        yield
    finally:
        try:
            cache.delete(key)
        except CACHE_ERRORS:
            logger.warning("completion slots: could not free %s; it expires in %d s", key, SLOT_SECONDS)
