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

A stream gathers the other changes of its tasks for READ_SECONDS, then reads each changed task once, as it
stands then: the changes of a running task come in bursts (queued, leased, started, progress), and a short
job's would otherwise cost a read each while the worker's completion waits for the same process. A final
change (completed, failed, cancelled: the event says so) goes out at once, without a read when the event
carries the task's JSON, and stands for the changes gathered before it.

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
READ_SECONDS = 0.1  # a stream gathers changes this long before it reads them; final changes go out at once
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
    final: set[str] = field(default_factory=set)  # changed tasks whose last event was final: sent at once
    gathering_since: float | None = None  # time.monotonic() of the first change that waits for its read
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

    def look(self, listener: Listener, task_ids: set[str]) -> None:
        """Read these tasks of `listener` again now (its own looks: the fallback, the queue moving)."""
        with self._lock:
            listener.changed |= task_ids
            listener.gathering_since = time.monotonic() - READ_SECONDS

    def take(self, listener: Listener) -> dict[str, dict | None]:
        """The changed tasks `listener` sends now (`_due`), each with the JSON its event carried or None (read
        it), taken off its changes."""
        with self._lock:
            due = _due(listener, time.monotonic())
            listener.changed -= due
            listener.final -= due
            if not listener.changed:
                listener.gathering_since = None
            return {task_id: listener.states.pop(task_id, None) for task_id in due}

    def __len__(self) -> int:
        with self._lock:
            return len({listener for group in self._by_task.values() for listener in group})

    def changed(self, data: dict[str, Any]) -> None:
        task_id, owner_id, state = str(data.get("id", "")), data.get("owner"), data.get("state")
        final = bool(data.get("final"))
        with self._lock:
            listeners = set(self._by_task.get(task_id, ()))
            if owner_id is not None:
                listeners |= self._by_owner.get(owner_id, set())
            for listener in listeners:
                if listener.gathering_since is None and not final and not isinstance(state, dict):
                    listener.gathering_since = time.monotonic()
                listener.changed.add(task_id)
                (listener.final.add if final else listener.final.discard)(task_id)
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
    listener.gathering_since = time.monotonic() if follow.task_ids else None
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
            if not _due(listener, time.monotonic()) and not (queue_due and queue_due <= loop.time()):
                deaf = not dispatch.listening()  # SQLite with other processes: look again now and then
                pause = FALLBACK_SECONDS if deaf else KEEPALIVE_SECONDS
                if queue_due:
                    pause = min(pause, queue_due - loop.time())
                gathering_since = listener.gathering_since
                if listener.changed and gathering_since is not None:  # changes gathered for their read
                    pause = min(pause, gathering_since + READ_SECONDS - time.monotonic())
                try:
                    await asyncio.wait_for(listener.wake, max(0.0, min(pause, deadline - loop.time())))
                except TimeoutError:
                    if deaf:
                        registry.look(listener, follow.task_ids)
                    elif not listener.queue_moved and not listener.changed:
                        yield ": keep-alive\n\n"
                        continue
            if listener.queue_moved and queue_looked + QUEUE_SECONDS <= loop.time():
                listener.queue_moved, queue_looked = False, loop.time()
                registry.look(listener, {task_id for task_id, e in sent.items() if e["status"] == "queued"})
            changed = registry.take(listener)
            for task_id, state in sorted(changed.items()):
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


def _due(listener: Listener, now: float) -> set[str]:
    """The changed tasks to send now: all of them once the changes have been gathered for READ_SECONDS, else
    the final ones and those whose JSON the event carried (no read)."""
    since = listener.gathering_since
    if since is not None and now >= since + READ_SECONDS:
        return set(listener.changed)
    return {t for t in listener.changed if t in listener.final or t in listener.states}


def sse(event: dict) -> str:
    """One server-sent event; its id is the time it was sent (ms), which the all-tasks stream resumes from."""
    return f"id: {int(time.time() * 1000)}\nevent: task\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def since(last_event_id: str | None) -> datetime | None:
    """The time a `Last-Event-ID` names, or None."""
    try:
        return datetime.fromtimestamp(int(last_event_id or "") / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
