"""``WorkerSurface``: the worker's own small HTTP server (``runworker --port``), for operators and the
original design's tooling. Read-only, JSON unless said otherwise (docs/worker-api.md, "The worker's own
HTTP surface"):

- ``GET /status/{id}``: the worker's record of a task it ran recently (farm task id or ComfyUI prompt id);
- ``GET /images/{filename}``: a local copy of an image it made (``ImageCache``);
- ``GET /healthz``: scheduler and ComfyUI reachable, what it is doing (200, or 503);
- ``GET /metrics``: Prometheus text (``WorkerMetrics``).

A stdlib ``ThreadingHTTPServer`` on a thread of its own. Bound beyond loopback, every request needs the
worker's token (``Authorization: Bearer <token>``), compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import mimetypes
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from .activity import WorkerActivity
from .image_cache import BadFileName, ImageCache

logger = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_TTL = 2.0  # seconds a health answer is reused: a busy scraper does not multiply the probes
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request


@dataclass(frozen=True)
class SurfaceConfig:
    port: int  # 0: any free port (tests)
    listen: str = "127.0.0.1"
    images_dir: str = "images"
    images_max_age: float = 6 * 3600.0  # seconds
    images_max_bytes: int = 1 << 30


@dataclass(frozen=True)
class Health:
    """One health check: the probes' answers (None when fine, else what went wrong) and the work in hand."""

    scheduler_error: str | None
    comfyui_error: str | None
    phase: str  # starting, working, stopping
    doing: str

    @property
    def ok(self) -> bool:
        return self.scheduler_error is None and self.comfyui_error is None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "scheduler": _reachability(self.scheduler_error),
            "comfyui": _reachability(self.comfyui_error),
            "phase": self.phase,
            "doing": self.doing,
        }


def _reachability(error: str | None) -> dict[str, Any]:
    return {"reachable": True} if error is None else {"reachable": False, "detail": error}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def needs_token(listen: str) -> bool:
    """Beyond loopback (``0.0.0.0``, a LAN address, a host name) every request must carry the token."""
    return not is_loopback(listen)


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>``; constant time in its content."""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((authorization or "").encode("utf-8", "surrogateescape"), expected)


class WorkerSurface:
    """``start()`` binds and serves on a thread; ``stop()`` ends it. ``health`` runs the probes (cached for
    HEALTH_TTL seconds)."""

    def __init__(
        self,
        config: SurfaceConfig,
        *,
        token: str,
        activity: WorkerActivity,
        health: Callable[[], Health],
        cache: ImageCache | None,
        name: str = "",
    ) -> None:
        self.config = config
        self.activity = activity
        self.cache = cache
        self.name = name
        self.require_token = needs_token(config.listen)
        self._token = token
        self._health = health
        self._health_lock = threading.Lock()
        self._health_at = -HEALTH_TTL
        self._health_last: Health | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WorkerSurface({self.config.listen}:{self.config.port})"

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self.config.port

    @property
    def url(self) -> str:
        host = self.config.listen
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind (raises OSError when the port is taken) and serve on a thread."""
        server_class = _Server6 if ":" in self.config.listen else _Server
        server = server_class((self.config.listen.strip("[]"), self.config.port), _Handler)
        server.surface = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.2,), name="surface", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def authorized(self, authorization: str | None) -> bool:
        return not self.require_token or token_matches(authorization, self._token)

    def health(self) -> Health:
        with self._health_lock:
            now = time.monotonic()
            if self._health_last is None or now - self._health_at >= HEALTH_TTL:
                self._health_last = self._health()
                self._health_at = time.monotonic()
            return self._health_last


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up the daemon's exit
    surface: WorkerSurface


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "t2i-worker"
    sys_version = ""

    def do_GET(self) -> None:
        surface = self.server.surface
        if not surface.authorized(self.headers.get("Authorization")):
            self._json(
                HTTPStatus.UNAUTHORIZED,
                {"error": "not_authenticated", "detail": "Authorization: Bearer <worker token> is required"},
                headers={"WWW-Authenticate": 'Bearer realm="t2i-worker"'},
            )
            return
        path = urlsplit(self.path).path
        route, _, rest = path.lstrip("/").partition("/")
        if route == "status" and rest:
            self._status(surface, unquote(rest))
        elif route == "images" and rest:
            self._image(surface, unquote(rest))
        elif path == "/healthz":
            health = surface.health()
            body = {"worker": surface.name, **health.as_json(), "tasks": _active(surface)}
            self._json(HTTPStatus.OK if health.ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif path == "/metrics":
            self._send(HTTPStatus.OK, surface.activity.metrics.exposition(), PROMETHEUS_TEXT)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": f"no route {path}"})

    def do_POST(self) -> None:
        self._json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": "method_not_allowed", "detail": "the worker's surface is read-only: GET"},
            headers={"Allow": "GET"},
        )

    do_PUT = do_DELETE = do_PATCH = do_POST

    # -- routes -------------------------------------------------------------------------------------------
    def _status(self, surface: WorkerSurface, key: str) -> None:
        record = surface.activity.find(key)
        if record is None:
            detail = "this worker has not run that task recently (task id or ComfyUI prompt id)"
            self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": detail})
            return
        self._json(HTTPStatus.OK, record.as_json())

    def _image(self, surface: WorkerSurface, name: str) -> None:
        if surface.cache is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": "this worker keeps no images"})
            return
        try:
            size, file = surface.cache.open_file(name)
        except BadFileName:
            detail = "a plain file name of the images folder: no path, no leading dot"
            body = {"error": "invalid", "detail": detail, "fields": {"filename": [detail]}}
            self._json(HTTPStatus.BAD_REQUEST, body)
            return
        except FileNotFoundError:
            detail = "no such image here (it may be older than the cache keeps: ask the scheduler)"
            self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": detail})
            return
        with file:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", mimetypes.guess_type(name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            shutil.copyfileobj(file, self.wfile)

    # -- answers ------------------------------------------------------------------------------------------
    def _json(self, status: HTTPStatus, body: Any, *, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers=headers)

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, *, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (a malformed request line, an unsupported method) as JSON too."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        if status == HTTPStatus.NOT_IMPLEMENTED:
            status = HTTPStatus.METHOD_NOT_ALLOWED
        self.close_connection = True
        self._json(status, {"error": "bad_request", "detail": message or status.phrase})

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines at DEBUG only; headers (the token) are never logged."""
        logger.debug("surface %s: " + format, self.address_string(), *args)


def _active(surface: WorkerSurface) -> list[dict[str, Any]]:
    return [
        {"task_id": r.task_id, "prompt_id": r.prompt_id, "state": r.state, "progress": r.percent}
        for r in surface.activity.active()
    ]
