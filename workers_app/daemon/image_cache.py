"""``ImageCache``: the worker's local copy of the images it made, served by its own HTTP surface.

A cache of hours, not an archive: the farm's storage is the record. Files are bounded by age and by total
size, pruned after every write and every ``prune_every`` seconds. Copies are written on a thread of their
own, so the task that made them never waits for the disk, and a failed write is logged and forgotten.

The folder is marked with ``MARKER`` when the cache takes it; a folder that holds files but no marker is
refused, so that pointing ``--images-dir`` at someone's photos never prunes them.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

MARKER = ".t2i-image-cache"
MAX_NAME_LENGTH = 255
_STOP = None  # the writer's sentinel


class CacheFolderError(Exception):
    """The images folder cannot be used as a cache (not a folder, or holds files not ours)."""


class BadFileName(ValueError):
    """Not a plain file name of the cache folder (a path, ``..``, a hidden name, control characters)."""


def is_plain_file_name(name: str) -> bool:
    """A name that can only mean a file directly in the folder: no separator, no leading dot (which also
    refuses ``.``, ``..``, the marker and temporary files), no control characters, at most 255 characters."""
    return (
        0 < len(name) <= MAX_NAME_LENGTH
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and all(ch >= " " and ch != "\x7f" for ch in name)
    )


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int
    mtime: float


def plan_prune(files: Iterable[CachedFile], *, now: float, max_age: float, max_bytes: int) -> list[str]:
    """The names to delete: every file older than ``max_age`` seconds, then the oldest of the rest until the
    total is at most ``max_bytes`` (a file bigger than the whole cache is not kept)."""
    doomed: list[str] = []
    kept: list[CachedFile] = []
    for each in files:
        if now - each.mtime > max_age:
            doomed.append(each.name)
        else:
            kept.append(each)
    total = 0
    for each in sorted(kept, key=lambda f: f.mtime, reverse=True):  # newest first
        if total + each.size <= max_bytes:
            total += each.size
        else:
            doomed.append(each.name)
    return doomed


class ImageCache:
    """The images folder: ``open()`` it, ``store_later()`` copies, ``open_file()`` one to serve, ``close()``.
    Thread-safe."""

    def __init__(
        self,
        folder: str | Path,
        *,
        max_age: float = 6 * 3600.0,
        max_bytes: int = 1 << 30,
        prune_every: float = 60.0,
        queue_size: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder)
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.prune_every = prune_every
        self.clock = clock
        self._queue: queue.Queue[Sequence[tuple[str, bytes]] | None] = queue.Queue(queue_size)
        self._writer: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()  # one prune or write at a time

    # -- life cycle ---------------------------------------------------------------------------------------
    def open(self) -> None:
        """Create or adopt the folder, prune it, start the writer. Raises CacheFolderError."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            marker = self.folder / MARKER
            if not marker.exists():
                strangers = [p.name for p in self.folder.iterdir()]
                if strangers:
                    raise CacheFolderError(
                        f"{self.folder} holds files and is not a worker image cache (no {MARKER}); "
                        "choose an empty or new folder"
                    )
                marker.write_text("The worker's image cache: files here are deleted after some hours.\n")
        except OSError as exc:
            raise CacheFolderError(f"{self.folder}: {exc.strerror or exc}") from exc
        self.prune()
        self._writer = threading.Thread(target=self._write_loop, name="image-cache", daemon=True)
        self._writer.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop the writer."""
        with self._lock:
            self._closed = True
        writer = self._writer
        if writer is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            logger.warning("image cache: writer busy at shutdown; queued copies are dropped")
        writer.join(timeout)

    # -- writing --------------------------------------------------------------------------------------------
    def store_later(self, images: Sequence[tuple[str, bytes]]) -> bool:
        """Queue copies of ``images`` (name, bytes) for the writer; never blocks. False when dropped."""
        if self._closed or self._writer is None:
            return False
        try:
            self._queue.put_nowait(list(images))
        except queue.Full:
            logger.warning("image cache: %d copy(ies) dropped, the writer is behind", len(images))
            return False
        return True

    def write(self, name: str, data: bytes) -> None:
        """Write one file atomically (a hidden temporary file renamed into place). Raises BadFileName or
        OSError."""
        if not is_plain_file_name(name):
            raise BadFileName(name)
        temporary = self.folder / f".{name}.{threading.get_ident()}.tmp"
        try:
            temporary.write_bytes(data)
            os.replace(temporary, self.folder / name)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise

    def _write_loop(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=self.prune_every)
            except queue.Empty:
                self._prune_quietly()
                continue
            if batch is _STOP:
                return
            with self._lock:
                for name, data in batch:
                    try:
                        self.write(name, data)
                    except (OSError, BadFileName) as exc:
                        logger.warning("image cache: could not keep a copy of %r (%s)", name, exc)
            self._prune_quietly()

    # -- pruning --------------------------------------------------------------------------------------------
    def files(self) -> list[CachedFile]:
        """The cached files (plain names, regular files; not the marker or temporary files)."""
        found = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if not is_plain_file_name(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(CachedFile(entry.name, info.st_size, info.st_mtime))
        return found

    def prune(self) -> int:
        """Delete what ``plan_prune`` names; returns how many files went."""
        with self._lock:
            doomed = plan_prune(
                self.files(), now=self.clock(), max_age=self.max_age, max_bytes=self.max_bytes
            )
            for name in doomed:
                (self.folder / name).unlink(missing_ok=True)
        if doomed:
            logger.debug("image cache: pruned %d file(s)", len(doomed))
        return len(doomed)

    def _prune_quietly(self) -> None:
        try:
            self.prune()
        except OSError as exc:
            logger.warning("image cache: pruning failed (%s)", exc)

    # -- reading --------------------------------------------------------------------------------------------
    def open_file(self, name: str) -> tuple[int, BinaryIO]:
        """(size, open binary file) of a cached file. Raises BadFileName for anything but a plain name,
        FileNotFoundError for a name that is not a regular file here (missing, pruned, a folder, a link)."""
        if not is_plain_file_name(name):
            raise BadFileName(name)
        path = self.folder / name
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise FileNotFoundError(name) from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise FileNotFoundError(name)
        return info.st_size, os.fdopen(fd, "rb")
