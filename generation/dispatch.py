"""The one event channel between the scheduler's processes and instances: small signals, sent on commit.

`publish(kind, data)` inside the transaction that made the change. On PostgreSQL it is a
`NOTIFY t2i_events` with a JSON payload (under NOTIFY's 8,000-byte cap: large things travel through the
database or storage and the event carries their ids), so every process of every instance that shares the
database hears it, and only if the transaction commits. Each process keeps one `LISTEN` connection, on a
thread, and hands each event to the callbacks `subscribe`d to its kind. The publishing process delivers its
own events on commit without the round trip (the listener skips its own echo). Without NOTIFY (SQLite, or
`T2I_LISTEN_NOTIFY=0`) events reach only the publishing process; subscribers that must hear other processes
poll slowly as a fallback (workers_app.waiting).

Kinds in use: `work` (tasks were queued: `{"count": n, "checkpoint": name, "owner": user id}`), `task` (a
task changed: `{"id", "owner"}`, for event streams; a completion's also carries the task's JSON as it landed,
`state`, when it fits), `worker` (a worker went offline or was disabled:
`{"id"}`, ends its lease waits) and `reconnected` (this process's listener is back: events may have been
missed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)

CHANNEL = "t2i_events"
MAX_PAYLOAD_BYTES = 8000  # PostgreSQL refuses longer NOTIFY payloads
ORIGIN = uuid.uuid4().hex[:12]  # this process: the listener drops the echo of its own events

Callback = Callable[[dict[str, Any]], None]
_subscribers: dict[str, list[Callback]] = defaultdict(list)
_listener_lock = threading.Lock()
_listener: threading.Thread | None = None
_listening = threading.Event()  # set while the LISTEN connection is up


def subscribe(kind: str, callback: Callback) -> None:
    """Call `callback(data)` for every event of `kind`. It runs on the listener's or the committer's thread:
    it must be quick and thread-safe."""
    _subscribers[kind].append(callback)


def publish(kind: str, data: dict[str, Any] | None = None) -> None:
    """Send an event when the current transaction commits (at once outside one)."""
    data = data or {}
    if notify_enabled():
        payload = _payload(kind, data)
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"{kind} event of {len(payload)} bytes: send ids, not payloads")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
    transaction.on_commit(lambda: deliver(kind, data))


def fits(kind: str, data: dict[str, Any]) -> bool:
    """Whether `publish(kind, data)` fits under NOTIFY's cap (always where NOTIFY is not in use)."""
    return not notify_enabled() or len(_payload(kind, data).encode()) <= MAX_PAYLOAD_BYTES


def _payload(kind: str, data: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "origin": ORIGIN, "data": data}, separators=(",", ":"))


def announce_work(count: int = 1, *, checkpoint: str = "", owner: int | None = None) -> None:
    """Call inside the transaction that queued `count` task(s); waiting workers wake after it commits, one per
    task, preferably one that has the task's `checkpoint`. `owner`, the tasks' user: placement's list of
    users with queued work (generation.farm_snapshot) adds them at once."""
    data: dict[str, Any] = {"count": count}
    if checkpoint:
        data["checkpoint"] = checkpoint
    if owner is not None:
        data["owner"] = owner
    publish("work", data)


def deliver(kind: str, data: dict[str, Any]) -> None:
    """Hand an event to this process's subscribers; a failing callback is logged, never raised."""
    for callback in list(_subscribers.get(kind, ())):
        try:
            callback(data)
        except Exception:
            logger.exception("event %s: subscriber %r failed", kind, callback)


def notify_enabled() -> bool:
    return connection.vendor == "postgresql" and settings.T2I["LISTEN_NOTIFY"]


def listening() -> bool:
    """True while this process hears other processes' events (its LISTEN connection is up)."""
    return _listening.is_set()


def ensure_listener() -> None:
    """Start this process's listener thread once, where NOTIFY is in use."""
    global _listener
    if _listener is not None or not notify_enabled():
        return
    with _listener_lock:
        if _listener is None:
            params = connection.get_connection_params()
            _listener = threading.Thread(target=_listen, args=(params,), name="t2i-events", daemon=True)
            _listener.start()


def _listen(params: dict) -> None:
    """Forward other processes' notifications to this process's subscribers; reconnect when the connection
    drops (a database restart), telling subscribers so they look for what they may have missed."""
    import psycopg

    params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context", "prepare_threshold")}
    while True:
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                _listening.set()
                deliver("reconnected", {})
                for notify in conn.notifies():
                    _receive(notify.payload)
        except Exception as exc:  # keep listening through database restarts
            logger.warning("event listener reconnecting: %s", str(exc).strip()[:200])
        _listening.clear()
        time.sleep(1)


def _receive(payload: str) -> None:
    try:
        event = json.loads(payload)
        kind, origin, data = event["kind"], event.get("origin"), event.get("data") or {}
    except (ValueError, KeyError, TypeError):
        logger.warning("event listener: unreadable payload dropped")
        return
    if origin != ORIGIN:
        deliver(kind, data)
