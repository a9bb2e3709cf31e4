"""Waking long-polling lease requests the moment work is queued.

Within one server process a condition variable wakes the waiting request threads. Across processes, on
PostgreSQL, the transaction that queues work sends `NOTIFY t2i_work` (delivered only if it commits) and each
process keeps one listening connection that forwards notifications to its condition variable. Waiters also
wake on a short timeout, so even without notifications (SQLite with several processes) a task is picked up
within `POLL_SLICE` seconds.
"""

import logging
import threading

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)

CHANNEL = "t2i_work"
POLL_SLICE = 0.1

_condition = threading.Condition()
_generation = 0
_listener_started = False
_listener_lock = threading.Lock()


def announce_work() -> None:
    """Call inside the transaction that queued work; waiters wake after it commits."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    transaction.on_commit(_wake_local)


def _wake_local() -> None:
    global _generation
    with _condition:
        _generation += 1
        _condition.notify_all()


def current_generation() -> int:
    return _generation


def wait_for_work(since: int, timeout: float) -> int:
    """Block until work is announced after generation `since`, or `timeout` (capped at POLL_SLICE) passes."""
    _ensure_listener()
    with _condition:
        if _generation == since:
            _condition.wait(min(timeout, POLL_SLICE))
        return _generation


def _ensure_listener() -> None:
    global _listener_started
    if _listener_started or connection.vendor != "postgresql" or not settings.T2I["LISTEN_NOTIFY"]:
        return
    with _listener_lock:
        if _listener_started:
            return
        _listener_started = True
        params = connection.get_connection_params()
        threading.Thread(target=_listen, args=(params,), name="t2i-notify-listener", daemon=True).start()


def _listen(params: dict) -> None:
    """Forward PostgreSQL notifications to this process's waiters; reconnect if the connection drops."""
    import time

    import psycopg

    params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context", "prepare_threshold")}
    while True:
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                for _ in conn.notifies():
                    _wake_local()
        except Exception as exc:  # keep listening through database restarts
            logger.warning("work notification listener reconnecting: %s", exc)
            time.sleep(1)
