"""Lease long polls as coroutines: a waiting worker costs no thread, no database connection and no query.

The URL's view is `long_poll(LeaseApi)`. Its synchronous DRF view makes the first attempt: authentication,
the protocol check, validation and errors are exactly those of every other worker API call. When that attempt
found nothing and the worker may wait, the coroutine enters the waiting room (workers_app.waiting) and makes
one more attempt per wake-up, each a short step on a thread that gives its database connection back at once.
Under ASGI the steps share one thread per process (t2i_project.asgi); under WSGI or the test client they run
on the request's thread.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from generation.api_errors import exception_handler
from generation.exceptions import TooManyWaits, WorkerDisabled
from generation.services import TaskLease
from generation.steps import step
from workers_app import services as worker_services
from workers_app import waiting
from workers_app.apis import PROTOCOL_HEADER, PROTOCOL_VERSION, LeaseApi, PendingWait
from workers_app.models import Worker

SPREAD = 0.2
SPREAD_FROM = 5.0  # seconds: shorter waits end when asked


def long_poll(view_class: type[LeaseApi]) -> Callable[..., Any]:
    """An async view around a lease view: its first attempt, then waiting for work until `wait` runs out."""
    first_attempt = step(view_class.as_view())

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        announced = waiting.room.announced  # work announced after this may escape the first attempt's look
        response = await first_attempt(request, *args, **kwargs)
        pending: PendingWait | None = getattr(response, "pending_wait", None)
        if pending is None or pending.seconds <= 0:
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spread(pending.seconds)
        waiter = waiting.Waiter(pending.worker_id, pending.checkpoints, loop, warm=pending.warm)
        try:
            waiting.room.enter(waiter, limit=pending.limit, announced=announced)
        except TooManyWaits as exc:
            return error_response(exc)
        unused: dict | None = None  # a wake this request got but did not use: handed on if it ends here
        try:
            while await waiting.wait(waiter, deadline - loop.time()):
                unused = waiter.event
                try:
                    result, queued = await lease_again(pending)
                except Exception as exc:
                    unused = None
                    return error_response(exc)
                if result is not None:
                    unused = None
                    return rendered(Response(view_class.lease_answer(result)))
                waiting.room.rearm(waiter)
                event, unused = unused, None
                if queued and event is not None:
                    waiting.hand_on(event)
            return response
        finally:
            waiting.room.leave(waiter)
            if unused is not None:
                waiting.hand_on(unused)

    # What DRF's as_view() leaves on its view, for the URL resolver, CSRF and the schema generator.
    view.cls = view_class  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    view.csrf_exempt = True  # type: ignore[attr-defined]
    return view


def spread(seconds: float) -> float:
    """A long wait ends up to SPREAD earlier, at random: a farm whose daemons started together (a restart)
    stops coming back in one burst at the end of every wait."""
    return seconds * (1 - SPREAD * random.random()) if seconds >= SPREAD_FROM else seconds


@step
def lease_again(pending: PendingWait) -> tuple[TaskLease | None, bool]:
    """An attempt after a wake-up, with the worker as it is now. Also says whether work is still queued."""
    worker = Worker.objects.filter(pk=pending.worker_id).first()
    if worker is None:
        raise exceptions.AuthenticationFailed("Unknown worker token.")
    if worker.status == Worker.Status.DISABLED:
        raise WorkerDisabled("This worker is disabled by an operator.")
    result = worker_services.worker_lease_next(worker=worker, prefetch=pending.prefetch)
    return result, result is None and waiting.work_queued()


def error_response(exc: Exception) -> Response:
    """The error answer any worker API view gives for `exc` (generation.api_errors)."""
    response = exception_handler(exc, {})
    if response is None:
        raise exc
    return rendered(response)


def rendered(response: Response) -> Response:
    """A DRF Response made outside an APIView: JSON, with the protocol header, as the worker API answers."""
    response.accepted_renderer = JSONRenderer()
    response.accepted_media_type = "application/json"
    response.renderer_context = {}
    response[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
    return response
