"""At most T2I_MAX_CONCURRENT_COMPLETIONS uploads at once per worker, counted across server processes.

A completion claims one of the worker's slots in the shared cache (generation.cache_slots) before its body
is read, and frees it when done; a slot left by a killed process expires after SLOT_SECONDS. More at once is
a 429 the daemon retries: a compromised worker cannot make the server spool and decode many uploads in
parallel."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from generation.cache_slots import CACHE_ERRORS, slot_claim, slot_free
from generation.exceptions import TooManyCompletions, Unavailable

logger = logging.getLogger(__name__)

SLOT_SECONDS = 300  # longer than any upload takes; only a killed process leaves a slot to expire


@contextmanager
def completion_slot(*, worker_id: int) -> Iterator[None]:
    """Hold one of the worker's completion slots for the block; TooManyCompletions when all are taken."""
    limit = settings.T2I["MAX_CONCURRENT_COMPLETIONS"]
    try:
        key = slot_claim(f"completing:{worker_id}", limit=limit, seconds=SLOT_SECONDS)
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
            slot_free(key)
        except CACHE_ERRORS:
            logger.warning("completion slots: could not free %s; it expires in %d s", key, SLOT_SECONDS)
