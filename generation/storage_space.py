"""Free space of the media storage (MEDIA_ROOT): shown by /healthz and the dashboard, and checked before a
completion writes its images, so a full disk refuses the completion (507, retried by the daemon) instead of
storing half of it."""

import errno
import shutil
from pathlib import Path

from django.conf import settings

from generation.exceptions import InsufficientStorage

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_AFTER = 60  # seconds: someone has to free space first


def media_free_bytes() -> int | None:
    """Bytes free on the file system that holds (or will hold) MEDIA_ROOT; None when it cannot be read."""
    path = Path(settings.MEDIA_ROOT).absolute()
    while not path.exists() and path != path.parent:  # not made yet: its parent's file system
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full() -> InsufficientStorage:
    return InsufficientStorage(
        "The image storage is full; nothing was stored. Retry later.", retry_after=RETRY_AFTER
    )


def storage_assert_room(needed: int) -> None:
    """InsufficientStorage unless writing `needed` bytes leaves T2I_MEDIA_MIN_FREE_BYTES free."""
    free = media_free_bytes()
    if free is not None and free - needed < settings.T2I["MEDIA_MIN_FREE_BYTES"]:
        raise disk_full()
