"""ASGI entry point: `gunicorn -c t2i_project/gunicorn.conf.py` (uvicorn workers) and `manage.py runserver`
(Daphne's) serve the scheduler through it."""

import functools
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.db import close_old_connections
from django.urls import Resolver404, get_resolver, reverse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
django.setup(set_prefix=False)

from generation import comfy_keys  # noqa: E402  (after django.setup)
from generation.steps import step  # noqa: E402
from workers_app import long_poll  # noqa: E402

# Requests that wait (lease long polls, event streams), and short worker calls (a few queries, no files; at a
# busy farm's rate, progress once a second per GPU, making and joining a thread per request was a fifth of
# their cost): their synchronous parts run on the process's one shared thread.
SHARED_THREAD_URL_NAMES = ("worker-api:lease", "seed-task", "worker-api:heartbeat", "api:task-events-mine")
SHARED_THREAD_TASK_URL_NAMES = (
    "worker-api:progress",
    "worker-api:start",
    "worker-api:frames",
    "api:task-events",
)


@functools.cache
def _shared_thread_paths() -> re.Pattern[str]:
    sample = str(uuid.UUID(int=0))
    exact = [re.escape(reverse(name)) for name in SHARED_THREAD_URL_NAMES]
    per_task = [
        re.escape(reverse(name, args=[sample])).replace(re.escape(sample), "[0-9a-f-]{36}")
        for name in SHARED_THREAD_TASK_URL_NAMES
    ]
    return re.compile("(?:" + "|".join(exact + per_task) + ")")


def on_shared_thread(path: str) -> bool:
    return _shared_thread_paths().fullmatch(path) is not None


@functools.lru_cache(maxsize=1024)
def _view(path: str):
    """The view `path` names, or None (a static file, a 404); the URLconf is fixed for the process's life."""
    try:
        return get_resolver().resolve(path).func
    except Resolver404:
        return None


def synchronous_view(path: str) -> bool:
    """Whether `path` names a synchronous view or a lease long poll, whose attempts are synchronous. A path
    that names no view (a static file, a 404) is False: Django's own path serves it."""
    view = _view(path)
    return view is not None and (not iscoroutinefunction(view) or long_poll_view(path))


def long_poll_view(path: str) -> bool:
    """Whether `path` names a lease long poll (workers_app.long_poll)."""
    return hasattr(_view(path), "synchronous_attempt")


class SynchronousHandler(BaseHandler):
    """settings.MIDDLEWARE in Django's synchronous mode. A long poll's URL runs its synchronous attempt (the
    lease view): Handler waits between attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.load_middleware(is_async=False)

    def resolve_request(self, request):
        match = super().resolve_request(request)
        match.func = getattr(match.func, "synchronous_attempt", match.func)
        return match


class Handler(ASGIHandler):
    """Django's ASGI handler, but waiting requests and short worker calls share one thread per process.

    Django gives every request a thread of its own for its synchronous parts, kept until the request ends:
    a worker's lease wait or a client's event stream would hold one for minutes. Outside that per-request
    context asgiref runs them on its single shared thread, so hundreds of waits and streams cost no thread
    at all (workers_app.long_poll, generation.streams), and a heartbeat or a progress report does not make
    and join a thread.

    A request for a synchronous view (the DRF views, the pages, the admin, each attempt of a lease long
    poll; not the event streams or the front door's async views) runs its middleware and its view in
    Django's synchronous mode, in one hop: to that thread for the worker calls above, to a kept thread for
    the others (completions, the REST API, pages). In Django's async mode each synchronous middleware
    (SecurityMiddleware, sessions, CSRF, ...) hops to the thread and back for its request half and again for
    its response half: a dozen hops per request, which cost more CPU than a heartbeat's view (bench/README.md,
    "Per-request overhead"). The same middleware in the same order: the answers are the same; only the hops
    change."""

    def __init__(self) -> None:
        super().__init__()
        self.synchronous = SynchronousHandler()  # settings.MIDDLEWARE again, for synchronous views
        # The other synchronous views' hop (completions, the REST API, pages): threads kept for the process's
        # life, at most one per pooled database connection, instead of a thread made and joined per request.
        self.kept_threads = max(4, settings.DB_POOL_SIZE)
        self.request_threads = ThreadPoolExecutor(self.kept_threads, thread_name_prefix="request")

    async def get_response_async(self, request):
        if not synchronous_view(request.path_info):
            return await super().get_response_async(request)
        if long_poll_view(request.path_info):
            # Each attempt in one hop to the shared thread, which gives its connection back: none is held
            # while the request waits.
            attempt = step(self.synchronous.get_response)
            return await long_poll.attempt_then_wait(request, lambda: attempt(request))
        if on_shared_thread(request.path_info):
            return await sync_to_async(self.synchronous.get_response)(request)
        return await sync_to_async(
            self.on_request_thread, thread_sensitive=False, executor=self.request_threads
        )(request)

    def on_request_thread(self, request):
        """The middleware and the view in one go on a kept thread. Its database connections are treated as
        Django treats a request thread's at the request's start and end (closed unless CONN_MAX_AGE keeps
        them; pooled ones go back to the pool): Django's request signals run on the shared thread here."""
        close_old_connections()
        try:
            return self.synchronous.get_response(request)
        finally:
            close_old_connections()

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/comfy/"):
            comfy_keys.rewrite_scope(scope)  # in place: the server's access log never shows a URL key
        if scope["type"] == "websocket":
            await websocket(scope, receive, send)
        elif scope["type"] == "http" and (on_shared_thread(scope["path"]) or synchronous_view(scope["path"])):
            await self.handle(scope, receive, send)  # no thread of its own (get_response_async)
        else:
            await super().__call__(scope, receive, send)


async def websocket(scope, receive, send) -> None:
    """The WebSocket routes: the ComfyUI front door's socket (generation.comfy_ws) and the worker socket
    (workers_app.worker_socket); others are refused."""
    from generation import comfy_ws
    from workers_app import worker_socket

    if scope["path"] in comfy_ws.WS_PATHS:
        await comfy_ws.serve(scope, receive, send)
    elif scope["path"] == worker_socket.PATH:
        await worker_socket.serve(scope, receive, send)
    elif (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


application = Handler()
