"""``WorkerSocket``: the scheduler's worker socket (protocol 3), which carries a daemon's start, progress,
frames and heartbeat calls on one connection instead of one HTTP request each (docs/worker-api.md).

A call is sent and its answer read before the next one goes (a lock), so callers on several threads (the
heartbeat, each task's reports) share the one socket. The socket is opened on the first call; one idle longer
than ``IDLE_SECONDS`` is opened afresh (the server's keep-alive pings go unanswered while nothing reads it).
When the socket cannot carry a call (refused handshake, connection lost twice, no answer in time) the call
raises ``SocketDown`` and the caller sends it over HTTP, as protocol 2 does; the socket is tried again after
``RETRY_SECONDS``. Each of these calls is safe to send twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import websocket

logger = logging.getLogger(__name__)

IDLE_SECONDS = 30.0
RETRY_SECONDS = 60.0


class SocketDown(Exception):
    """The socket cannot carry this call now: send it over HTTP."""


class WorkerSocket:
    """Thread-safe. ``call(op, body)`` returns the answer's (status, body), the HTTP call's own."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        ca_bundle: str | None = None,
        connect: Callable[..., Any] = websocket.create_connection,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._headers = [f"{name}: {value}" for name, value in headers.items()]
        self._timeout = timeout
        self._sslopt = {"ca_certs": ca_bundle, "cert_reqs": ssl.CERT_REQUIRED} if ca_bundle else None
        self._connect = connect
        self._clock = clock
        self._lock = threading.Lock()
        self._ws: Any = None
        self._used_at = 0.0
        self._down_until = float("-inf")
        self._next_id = 0

    def call(self, op: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            if self._clock() < self._down_until:
                raise SocketDown("the worker socket is down")
            if self._ws is not None and self._clock() - self._used_at > IDLE_SECONDS:
                self._drop()
            reused = self._ws is not None
            try:
                return self._exchange(op, body)
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                self._drop()
                if not reused:
                    return self._down(exc)
            try:  # a socket that was open may have been closed by the server meanwhile: once more, afresh
                return self._exchange(op, body)
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                self._drop()
                return self._down(exc)

    @property
    def is_open(self) -> bool:
        return self._ws is not None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _exchange(self, op: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self._ws is None:
            self._ws = self._connect(
                self.url,
                header=self._headers,
                timeout=self._timeout,
                sslopt=self._sslopt,
                skip_utf8_validation=True,  # json.loads checks it; websocket-client's check is a Python loop
                enable_multithread=False,  # the lock above already serializes every use
            )
            logger.debug("worker socket open: %s", self.url)
        self._next_id += 1
        call_id = self._next_id
        self._ws.send(json.dumps({"id": call_id, "op": op, **body}, separators=(",", ":")))
        while True:
            answer = json.loads(self._ws.recv())
            if isinstance(answer, dict) and answer.get("id") == call_id:
                break  # (an answer to a call given up on earlier cannot come: that socket was dropped)
        self._used_at = self._clock()
        status = answer.get("status")
        if not isinstance(status, int):
            raise ValueError("the answer has no status")
        return status, answer.get("body")

    def _drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self._ws.close(timeout=0.2)
            self._ws = None

    def _down(self, exc: Exception) -> tuple[int, Any]:
        self._down_until = self._clock() + RETRY_SECONDS
        logger.info("worker socket %s unusable (%s); using HTTP for %.0fs", self.url, exc, RETRY_SECONDS)
        raise SocketDown(str(exc)) from exc
