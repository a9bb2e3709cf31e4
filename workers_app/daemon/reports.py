"""``Reports``: a task's start and progress reports, sent on a thread of their own.

Following ComfyUI (its socket's events, the end of the prompt, fetching the images) never waits for the
scheduler's answer to a report, and the task's final report (complete, fail, release) does not wait for them
either: the scheduler marks a task started at its completion when no start report has landed, and answers a
report that arrives after the completion without changing anything (docs/worker-api.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Report = tuple[str, tuple[Any, ...]]  # ("start", (prompt_id,)) or ("progress", (value, maximum))


class Outbox:
    """Items sent in order on a short-lived thread of their own that ends when none is left (a task that runs
    for minutes holds no idle thread). A progress item not yet sent when a newer one comes is replaced by it
    (a slow scheduler never builds a backlog); ``close()`` drops what has not been sent. Thread-safe: ``put``
    never blocks. Subclasses say how the thread sends (``_drain``)."""

    max_pending: int | None = None  # beyond it new items are dropped (progress still replaces progress)
    replaced: frozenset[str] = frozenset()  # kinds of which only the newest pending item is kept

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._pending: list = []
        self._closed = False
        self._thread: threading.Thread | None = None  # the one sending now, if any

    def _put(self, kind: str, item: Any) -> None:
        with self._lock:
            if self._closed:
                return
            if kind == "progress" and self._pending and self._pending[-1][0] == "progress":
                self._pending[-1] = item
            elif kind in self.replaced:
                self._pending = [pending for pending in self._pending if pending[0] != kind]
                self._pending.append(item)
            elif self.max_pending is None or len(self._pending) < self.max_pending:
                self._pending.append(item)
            if self._thread is not None:
                return  # the thread sending now takes this one too
            self._thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """No more items: the task's final report is on its way. One being sent finishes on its own."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the sending thread to end; True when none is left."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._thread is None

    def _take(self, take: Callable[[list], tuple[Any, list]]) -> tuple[bool, Any]:
        """Under the lock: (False, None) and the thread ends when closed or nothing is left; else (True,
        what `take(pending)` took, leaving what it returns as pending)."""
        with self._lock:
            if self._closed or not self._pending:
                self._thread = None
                return False, None
            taken, self._pending = take(self._pending)
            return True, taken

    def _drain(self) -> None:
        raise NotImplementedError


class Reports(Outbox):
    """A task's start and progress reports, sent one at a time in the order they were put."""

    def __init__(self, send: Callable[[str, tuple[Any, ...]], None], *, name: str = "reports") -> None:
        super().__init__(name=name)
        self._send = send

    def put(self, kind: str, *args: Any) -> None:
        self._put(kind, (kind, args))

    def _drain(self) -> None:
        while True:
            more, report = self._take(lambda pending: (pending[0], pending[1:]))
            if not more:
                return
            kind, args = report
            self._send(kind, args)
