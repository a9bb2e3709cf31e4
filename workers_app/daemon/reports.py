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


class Reports:
    """Sends reports in the order they were put, one at a time, on a short-lived thread that ends when none
    is left (a task that runs for minutes holds no idle thread). A progress report that has not been sent
    when a newer one comes is replaced by it (a slow scheduler never builds a backlog); ``close()`` drops
    what has not been sent. Thread-safe."""

    def __init__(self, send: Callable[[str, tuple[Any, ...]], None], *, name: str = "reports") -> None:
        self._send = send
        self._name = name
        self._lock = threading.Lock()
        self._pending: list[Report] = []
        self._closed = False
        self._thread: threading.Thread | None = None  # the one sending now, if any

    def put(self, kind: str, *args: Any) -> None:
        with self._lock:
            if self._closed:
                return
            if kind == "progress" and self._pending and self._pending[-1][0] == "progress":
                self._pending[-1] = (kind, args)
            else:
                self._pending.append((kind, args))
            if self._thread is not None:
                return  # the thread sending now takes this one too
            self._thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """No more reports: the task's final report is on its way. One being sent finishes on its own."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the sending thread to end; True when none is left."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._thread is None

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._pending:
                    self._thread = None
                    return
                kind, args = self._pending.pop(0)
            self._send(kind, args)
