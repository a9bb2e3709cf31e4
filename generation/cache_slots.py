"""Numbered slots in the shared cache (settings.CACHES): at most `limit` holders of one name at once, counted
across every server and job process. A slot is claimed with `cache.add` (atomic on Redis and the database
cache: Redis SET NX, an INSERT on the cache table's primary key) and freed by deleting it; one left by a
killed process expires after `seconds`. Cache errors (CACHE_ERRORS) reach the caller, which decides what a
silent cache means."""

from django.core.cache import cache
from django.db import DatabaseError
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

CACHE_ERRORS = (ConnectionInterrupted, RedisError, DatabaseError)


def slot_claim(name: str, *, limit: int, seconds: int) -> str | None:
    """The key of a free slot of `name`, now held; None when all `limit` are held."""
    for slot in range(1, limit + 1):
        key = f"t2i:slot:{name}:{slot}"
        if cache.add(key, 1, seconds):
            return key
    return None


def slot_free(key: str) -> None:
    cache.delete(key)
