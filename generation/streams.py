"""Task event streams: clients follow tasks without polling (server-sent events).

`GET /api/v1/tasks/{id}/events` follows one task; `GET /api/v1/tasks/events` follows all of the caller's
unfinished tasks. Each event is `event: task` with the task's JSON exactly as `GET /api/v1/tasks/{id}/` gives
it. A stream opens with the current state of what it follows, so a client that reconnects (EventSource does,
after a scheduler restart too) never misses a final event: a finished task's first event is its last. The
all-tasks stream also sends, on reconnect, the tasks that finished since its `Last-Event-ID`.

An open stream is a coroutine (under ASGI; t2i_project.asgi): it holds no thread and no database connection
and runs no query until one of its tasks changes. Changes arrive as `task` events on the event channel
(generation.dispatch, published by the services in the transaction that made the change); a completion's
event carries the task's JSON as it landed, which the stream sends without reading the task. Where the
process cannot hear other processes (SQLite), a stream also looks at its tasks every FALLBACK_SECONDS. A
stream keeps only the set of its tasks that changed (and the latest JSON an event carried for each), never a
queue, so a client that does not read cannot grow the server's memory; a stream ends after STREAM_SECONDS
and the client reconnects.

A queued task's position moves when a task ahead of it is leased or cancelled, which is another task's event:
streams that follow queued tasks hear every task event as "the queue moved" and look at their queued tasks
again, at most once per QUEUE_SECONDS, so a farm busy leasing costs each such stream one look per interval.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from generation import dispatch
from generation.api_errors import error_body
from generation.steps import step

KEEPALIVE_SECONDS = 15.0  # a comment line keeps proxies from closing an idle stream
FALLBACK_SECONDS = 2.0  # where this process cannot hear the others (SQLite): how often a stream looks itself
STREAM_SECONDS = 600.0  # then the client reconnects (EventSource waits RETRY_MS)
RETRY_MS = 2000
QUEUE_SECONDS = 1.0  # how often a stream following queued tasks looks again at their queue positions
FINISHED = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Follow:
    """What a stream follows, as the first (synchronous, DRF) step found it."""

    user: Any
    snapshot: Callable[[HttpRequest, Any, str], dict | None]  # (request, user, task id) -> task JSON or None
    # (request, the `state` of a task event) -> the task JSON to send: a completion's event carries the task
    # as it landed (generation.services.transitions.task_changed), sent without a snapshot
    landed: Callable[[HttpRequest, dict], dict]
    events: list[dict]  # the first events to send
    task_ids: set[str]
    owner_id: int | None = None  # follow every task of this owner (the all-tasks stream)
    single: bool = False  # one task: the stream ends with its final event


@dataclass(eq=False)
class Listener:
    loop: asyncio.AbstractEventLoop
    changed: set[str] = field(default_factory=set)
    # The JSON of changed tasks whose last event carried it (`state`): sent without a read.
    states: dict[str, dict] = field(default_factory=dict)
    wake: asyncio.Future | None = None
    queue_moved: bool = False  # another task changed while this stream follows queued ones


class Registry:
    """This process's open streams, by task id and by owner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, set[Listener]] = defaultdict(set)
        self._by_owner: dict[int, set[Listener]] = defaultdict(set)
        self._queued: set[Listener] = set()  # streams that follow a queued task

    def add(self, listener: Listener, task_ids: set[str], owner_id: int | None) -> None:
        with self._lock:
            for task_id in task_ids:
                self._by_task[task_id].add(listener)
            if owner_id is not None:
                self._by_owner[owner_id].add(listener)

    def following_queued(self, listener: Listener, queued: bool) -> None:
        """Whether `listener` follows a queued task (and so hears every task event as the queue moving)."""
        with self._lock:
            (self._queued.add if queued else self._queued.discard)(listener)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self._queued.discard(listener)
            for index in (self._by_task, self._by_owner):
                for key in [k for k, listeners in index.items() if listener in listeners]:
                    index[key].discard(listener)
                    if not index[key]:
                        del index[key]

    def __len__(self) -> int:
        with self._lock:
            return len({listener for group in self._by_task.values() for listener in group})

    def changed(self, data: dict[str, Any]) -> None:
        task_id, owner_id, state = str(data.get("id", "")), data.get("owner"), data.get("state")
        with self._lock:
            listeners = set(self._by_task.get(task_id, ()))
            if owner_id is not None:
                listeners |= self._by_owner.get(owner_id, set())
            for listener in listeners:
                listener.changed.add(task_id)
                if isinstance(state, dict):
                    listener.states[task_id] = state
                else:  # a later change without one: read the task
                    listener.states.pop(task_id, None)
            moved = {listener for listener in self._queued - listeners if not listener.queue_moved}
            for listener in moved:
                listener.queue_moved = True
        for listener in listeners | moved:
            try:
                listener.loop.call_soon_threadsafe(_wake, listener)
            except RuntimeError:  # its loop is gone: the stream ended
                self.remove(listener)


def _wake(listener: Listener) -> None:
    if listener.wake is not None and not listener.wake.done():
        listener.wake.set_result(True)


registry = Registry()
dispatch.subscribe("task", registry.changed)


def event_stream(view_class: type) -> Callable[..., Any]:
    """An async view around a DRF view whose GET checks access and answers with a Follow (`response.follow`):
    errors are that view's; a Follow becomes a stream of server-sent events."""
    first = step(view_class.as_view())

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = await first(request, *args, **kwargs)
        follow: Follow | None = getattr(response, "follow", None)
        if follow is None:
            return response
        if not isinstance(request, ASGIRequest):
            # Under WSGI Django would collect the whole stream before sending any of it: say so, and the
            # client polls instead (static/js/progress.js does).
            return JsonResponse(
                error_body(
                    "streams_unavailable",
                    "Event streams need the ASGI server (gunicorn -c t2i_project/gunicorn.conf.py, or "
                    "runserver); poll GET /api/v1/tasks/{id}/ instead.",
                ),
                status=HTTPStatus.SERVICE_UNAVAILABLE,
            )
        dispatch.ensure_listener()
        stream = StreamingHttpResponse(events(request, follow), content_type="text/event-stream")
        stream["Cache-Control"] = "no-cache"
        stream["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
        return stream

    view.cls = view_class  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    view.csrf_exempt = True  # type: ignore[attr-defined]  (GET only: nothing to forge)
    return view


async def events(request: HttpRequest, follow: Follow) -> AsyncIterator[str]:
    """The stream: the first events, then one per change of a followed task, until the end."""
    if follow.single and all(e["status"] in FINISHED for e in follow.events):
        yield f"retry: {RETRY_MS}\n\n" + "".join(sse(event) for event in follow.events)
        return
    loop = asyncio.get_running_loop()
    # Listen before sending anything; the first look again after it catches what changed since the snapshot.
    listener = Listener(loop, changed=set(follow.task_ids))
    registry.add(listener, follow.task_ids, follow.owner_id)
    snapshot = step(follow.snapshot)
    sent = {event["id"]: event for event in follow.events}
    queue_looked = loop.time()
    try:
        yield f"retry: {RETRY_MS}\n\n" + "".join(sse(event) for event in follow.events)
        deadline = loop.time() + STREAM_SECONDS
        while loop.time() < deadline:
            registry.following_queued(listener, any(e["status"] == "queued" for e in sent.values()))
            listener.wake = loop.create_future()
            queue_due = queue_looked + QUEUE_SECONDS if listener.queue_moved else None
            if not listener.changed and not (queue_due and queue_due <= loop.time()):
                deaf = not dispatch.listening()  # SQLite with other processes: look again now and then
                pause = FALLBACK_SECONDS if deaf else KEEPALIVE_SECONDS
                if queue_due:
                    pause = min(pause, queue_due - loop.time())
                try:
                    await asyncio.wait_for(listener.wake, min(pause, deadline - loop.time()))
                except TimeoutError:
                    if deaf:
                        listener.changed |= follow.task_ids
                    elif not listener.queue_moved:
                        yield ": keep-alive\n\n"
                        continue
            if listener.queue_moved and queue_looked + QUEUE_SECONDS <= loop.time():
                listener.queue_moved, queue_looked = False, loop.time()
                listener.changed |= {task_id for task_id, e in sent.items() if e["status"] == "queued"}
            changed, listener.changed = listener.changed, set()
            for task_id in sorted(changed):
                state = listener.states.pop(task_id, None)
                if state is not None:  # the task's JSON as its change left it: no read
                    event = follow.landed(request, state)
                else:
                    event = await snapshot(request, follow.user, task_id)
                if event is None or sent.get(task_id) == event:
                    continue
                sent[task_id] = event
                if task_id not in follow.task_ids:  # a new task of the followed owner
                    follow.task_ids.add(task_id)
                    registry.add(listener, {task_id}, None)
                yield sse(event)
                if follow.single and event["status"] in FINISHED:
                    return
    finally:
        registry.remove(listener)


def sse(event: dict) -> str:
    """One server-sent event; its id is the time it was sent (ms), which the all-tasks stream resumes from."""
    return f"id: {int(time.time() * 1000)}\nevent: task\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def since(last_event_id: str | None) -> datetime | None:
    """The time a `Last-Event-ID` names, or None."""
    try:
        return datetime.fromtimestamp(int(last_event_id or "") / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
