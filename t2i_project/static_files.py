"""servestatic's middleware, usable in Django's synchronous mode too (settings.MIDDLEWARE)."""

from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest
from servestatic.middleware import ServeStaticMiddleware


class StaticFilesMiddleware:
    """servestatic's ServeStaticMiddleware, which is async only, around a chain in either mode.

    Django runs the middleware above an async-only one in async mode, a hop to the request's thread and back
    for each half of each synchronous middleware; t2i_project.asgi runs a synchronous view's request in
    Django's synchronous mode in one hop, which this middleware's place in the chain would undo. In
    synchronous mode a path outside the static prefix goes straight on (servestatic passes it on too: it
    serves files under STATIC_URL only, unless SERVESTATIC_ROOT adds others), and a static file is served by
    servestatic as before."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.asynchronous = iscoroutinefunction(get_response)
        inner = get_response if self.asynchronous else sync_to_async(get_response)
        self.static = ServeStaticMiddleware(inner)
        self.prefix = "/" if getattr(settings, "SERVESTATIC_ROOT", None) else self.static.static_prefix
        if self.asynchronous:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.asynchronous:
            return self.static(request)  # a coroutine: the caller awaits it
        if not request.path_info.startswith(self.prefix):
            return self.get_response(request)
        return async_to_sync(self.static)(request)
