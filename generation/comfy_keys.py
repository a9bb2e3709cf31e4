"""ComfyUI URL keys: `/comfy/k/<key>/…` serves every front-door route (HTTP and the socket) as the user who
owns the key, for clients that cannot send headers.

The key leaves the path before anything logs it: the ASGI handler (t2i_project.asgi) rewrites the request's
path in place to `/comfy/…` (so the server's access log never sees it) and hands the key on in the
KEY_HEADER header, which `ComfyKeyMiddleware` does for requests that reach Django another way (WSGI, the
test client). `MaskComfyKeys`, a filter on the log handler, masks any key path a log line still carries
(a server that logged the raw request line before the rewrite, e.g. runserver's Daphne)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

KEY_HEADER = "x-t2i-comfy-key"
META_KEY = "HTTP_X_T2I_COMFY_KEY"
MASK = "****"
# /comfy/k/<key> then the route (a route with a `..` segment is not split: it 404s as it is).
_KEY_PATH = re.compile(r"/comfy/k/([A-Za-z0-9_-]{1,100})(/(?:(?!\.\.(?:/|$))[^?#])*)?")
_ANY_KEY = re.compile(r"(/comfy/k/)[^/\s\"'?#]+")


def split(path: str) -> tuple[str, str] | None:
    """(key, the path without it) for `/comfy/k/<key>/route`, else None."""
    match = _KEY_PATH.fullmatch(path)
    if match is None:
        return None
    return match.group(1), "/comfy" + (match.group(2) or "/")


def mask(text: str) -> str:
    """`text` with every `/comfy/k/<key>` as `/comfy/k/****`."""
    return _ANY_KEY.sub(r"\1" + MASK, text) if "/comfy/k/" in text else text


def rewrite_scope(scope: dict[str, Any]) -> None:
    """An ASGI http or websocket scope for a key path: its path without the key (in place, so the server's
    own access log shows that), the key in KEY_HEADER; a KEY_HEADER the client sent itself is dropped."""
    headers = [(n, v) for n, v in scope.get("headers", []) if n.lower() != KEY_HEADER.encode()]
    found = split(scope.get("path", ""))
    if found is None:
        if len(headers) != len(scope.get("headers", [])):
            scope["headers"] = headers
        return
    key, path = found
    scope["path"] = path
    scope["raw_path"] = path.encode()
    scope["headers"] = [*headers, (KEY_HEADER.encode(), key.encode())]


class ComfyKeyMiddleware:
    """For requests that did not come through the ASGI handler: take the key out of the path before URL
    resolution and any logging (first in MIDDLEWARE); a client's own KEY_HEADER counts for nothing.

    Sync and async capable, with no I/O: under ASGI a sync-only middleware would put every request, the
    lease long polls included, on a thread (workers_app.long_poll)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        _take_key(request)
        return self.get_response(request)  # a coroutine in async mode: the caller awaits it


def _take_key(request: HttpRequest) -> None:
    found = split(request.path_info)
    if found is not None:
        request.META[META_KEY] = found[0]
        request.path_info = found[1]
        request.path = request.META["PATH_INFO"] = request.META.get("SCRIPT_NAME", "") + found[1]
    elif getattr(request, "scope", None) is None:
        request.META.pop(META_KEY, None)  # under ASGI the handler already dropped the client's own


class MaskComfyKeys(logging.Filter):
    """Masks URL keys in a record's message (LOGGING: on the console handler, so on every line written)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/comfy/k/" in message:
            record.msg, record.args = mask(message), None
        return True
