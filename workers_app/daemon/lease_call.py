"""``LeaseCall``: one ``POST lease`` on a helper thread, so that the loop can stop during the long poll."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .scheduler import LeasedTask

logger = logging.getLogger(__name__)


class LeaseCall:
    """Runs ``call`` (a ``SchedulerClient.lease``) at once on a daemon thread.

    The loop polls ``wait()`` and then takes ``result()``, or, when it stops first, ``abandon()``s the call:
    the task the call brings, now or later, then goes to the handler (which releases it), exactly once."""

    def __init__(self, call: Callable[[], LeasedTask | None], *, long_poll: bool) -> None:
        self.long_poll = long_poll  # it asked to wait (wait > 0): the scheduler may hold it open
        self._call = call
        self._done = threading.Event()
        self._lock = threading.Lock()  # orders the answer's arrival against abandon()
        self._lease: LeasedTask | None = None
        self._error: Exception | None = None
        self._on_late: Callable[[LeasedTask], None] | None = None
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> bool:
        """The request is open: the scheduler has not answered yet."""
        return not self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """True once the answer (or the call's error) is in."""
        return self._done.wait(timeout)

    def result(self) -> LeasedTask | None:
        """The leased task or None (nothing to do); raises the call's error. Once ``wait()`` is True."""
        if self._error is not None:
            raise self._error
        return self._lease

    def abandon(self, on_late: Callable[[LeasedTask], None]) -> None:
        """Stop waiting: a task the call brings, already or later, goes to ``on_late`` instead of the loop."""
        with self._lock:
            if not self._done.is_set():
                self._on_late = on_late  # _run hands it over when the answer comes
                return
        if self._lease is not None:
            on_late(self._lease)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the call and its late handler to end; True when they have."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        lease: LeasedTask | None = None
        error: Exception | None = None
        try:
            lease = self._call()
        except Exception as exc:  # handed to the loop by result(); no traceback lost
            error = exc
        with self._lock:
            self._lease, self._error = lease, error
            self._done.set()
            on_late = self._on_late
        if on_late is None:
            return
        if lease is not None:
            on_late(lease)
        elif error is not None:
            logger.debug("abandoned lease request ended with %r", error)
