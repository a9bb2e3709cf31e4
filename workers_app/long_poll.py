"""Lease long polls as coroutines: a waiting worker costs no thread, no database connection and no query.

The lease view (`LeaseApi`) makes one attempt: authentication, the protocol check, validation and errors are
exactly those of every other worker API call. When it found nothing and the worker may wait, its 204 carries
a `PendingWait`, and `wait_for_work` enters the waiting room (workers_app.waiting); each time the wait is
woken it calls the view again, with the wait as `request.waited`, for one more attempt. Under ASGI,
t2i_project.asgi runs each of those calls through the middleware in one hop to the process's shared thread,
then waits here, between them; under Django's own handlers (WSGI, the test client) the URL's async view,
`long_poll(LeaseApi)`, runs the view as a step and waits the same way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from generation.api_errors import exception_handler
from generation.exceptions import TooManyWaits
from generation.steps import step
from workers_app import waiting
from workers_app.apis import PROTOCOL_HEADER, PROTOCOL_VERSION, LeaseApi, PendingWait

SPREAD = 0.2
SPREAD_FROM = 5.0  # seconds: shorter waits end when asked


def long_poll(view_class: type[LeaseApi]) -> Callable[..., Any]:
    """An async view around a lease view: its first attempt, then waiting for work until `wait` runs out.
    `synchronous_attempt` is the lease view itself, for handlers that run it in their own way."""
    synchronous = view_class.as_view()
    attempt = step(synchronous)

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return await attempt_then_wait(request, lambda: attempt(request, *args, **kwargs))

    view.synchronous_attempt = synchronous  # type: ignore[attr-defined]
    # What DRF's as_view() leaves on its view, for the URL resolver, CSRF and the schema generator.
    view.cls = view_class  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    view.csrf_exempt = True  # type: ignore[attr-defined]
    return view


async def attempt_then_wait(
    request: HttpRequest, attempt: Callable[[], Awaitable[HttpResponse]]
) -> HttpResponse:
    """A lease request: its first `attempt`, then, when that found nothing, its wait for work
    (`wait_for_work`, which calls `attempt` again for each wake-up)."""
    announced = waiting.room.announced  # work announced after this may escape the first attempt's look
    response = await attempt()
    return await wait_for_work(request, response, attempt, announced=announced)


async def wait_for_work(
    request: HttpRequest,
    response: HttpResponse,
    again: Callable[[], Awaitable[HttpResponse]],
    *,
    announced: int,
) -> HttpResponse:
    """The answer to a lease request whose first attempt answered `response`: that answer unless it found
    nothing and may wait; else the first answer of `again` (the lease view called with `request.waited`
    set) that is not another 204 to wait on (a lease, or an error), each call made when a wake-up comes,
    or `response` when the wait runs out. `announced` is `waiting.room.announced` from before the first
    attempt looked at the queue: work announced since then woke nobody, so the wait looks again at once."""
    pending: PendingWait | None = getattr(response, "pending_wait", None)
    if pending is None or pending.seconds <= 0:
        return response
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + spread(pending.seconds)
    waiter = waiting.Waiter(pending.worker_id, pending.checkpoints, loop, warm=pending.warm)
    try:
        waiting.room.enter(waiter, limit=pending.limit, announced=announced)
    except TooManyWaits as exc:  # another wait of this worker opened since its view looked (no middleware)
        return error_response(exc)
    request.waited = pending  # type: ignore[attr-defined]
    unused: dict | None = None  # a wake this request got but did not use: handed on if it ends here
    try:
        while await waiting.wait(waiter, deadline - loop.time()):
            woken = loop.time()
            unused = waiter.event
            try:
                answer = await again()
            except Exception:
                unused = None
                raise
            nothing: PendingWait | None = getattr(answer, "pending_wait", None)
            if nothing is None:
                unused = None
                # How long this request waited for work, up to the wake-up this answer comes from: not what
                # getting a task costs (the daemon's prefetch lead).
                answer["Server-Timing"] = f"wait;dur={(woken - started) * 1000:.1f}"
                return answer
            waiting.room.rearm(waiter)
            event, unused = unused, None
            if nothing.queued and event is not None:
                waiting.hand_on(event)
        return response
    finally:
        waiting.room.leave(waiter)
        if unused is not None:
            waiting.hand_on(unused)


def spread(seconds: float) -> float:
    """A long wait ends up to SPREAD earlier, at random: a farm whose daemons started together (a restart)
    stops coming back in one burst at the end of every wait."""
    return seconds * (1 - SPREAD * random.random()) if seconds >= SPREAD_FROM else seconds


def error_response(exc: Exception) -> Response:
    """The error answer any worker API view gives for `exc` (generation.api_errors): JSON, with the
    protocol header, as the worker API answers."""
    response = exception_handler(exc, {})
    if response is None:
        raise exc
    response.accepted_renderer = JSONRenderer()
    response.accepted_media_type = "application/json"
    response.renderer_context = {}
    response[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
    return response.render()
