"""`GET /api/v1/worker/socket` (WebSocket, protocol 3): a daemon's start, progress, frames and heartbeat calls
on one connection it keeps open, instead of one HTTP request each.

Each call is a text message `{"id": n, "op": "start" | "progress" | "frames" | "heartbeat", "task_id": "…",
…the HTTP call's body}` answered by `{"id": n, "status": <the HTTP call's status>, "body": <its answer>}`,
in order, one at a time. The calls run the very functions the HTTP views run (workers_app.apis), with the
same serializers, services and error bodies; only the request around them goes, which was most of their cost
(docs/worker-api.md, "The worker socket").

The handshake carries the same `Authorization: Bearer <token>` and `T2I-Protocol: 3` headers as every call;
a refused one (unknown token, disabled worker, an older protocol) is closed before it is accepted (the
server answers 403) and the daemon keeps using HTTP, whose answer says why. The worker's row is read again
at every heartbeat: a token replaced or a worker disabled meanwhile ends the socket there, within one
heartbeat interval (reports on leases it no longer holds are refused by their fence in any case).
"""

from __future__ import annotations

import json
import logging
import uuid
from http import HTTPStatus
from typing import Any

from django.http import Http404
from rest_framework.exceptions import AuthenticationFailed

from generation.api_errors import error_body, exception_handler
from generation.exceptions import InvalidInput, WorkerDisabled
from generation.steps import step
from workers_app import apis
from workers_app.models import Worker, hash_token

logger = logging.getLogger(__name__)

PATH = "/api/v1/worker/socket"
SOCKET_PROTOCOL = 3  # the first protocol version that has the socket
MAX_MESSAGE = 1 << 20  # bytes; frames batches are the largest calls (at most 500 frames)
TASK_CALLS = {"start": apis.start, "progress": apis.progress, "frames": apis.frames}
# Close codes (the 4000s are ours): the daemon goes back to HTTP, whose answer says what to do.
CLOSE_REFUSED = 1008
CLOSE_WORKER_CHANGED = 4403


async def serve(scope: dict, receive, send) -> None:
    """The ASGI WebSocket application (t2i_project.asgi routes PATH here)."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    token_hash = _token_hash(headers.get("authorization", ""))
    version = headers.get(apis.PROTOCOL_HEADER.lower(), "")
    served = version.isdigit() and int(version) in apis.PROTOCOLS_SERVED and int(version) >= SOCKET_PROTOCOL
    worker = await step(_live_worker)(token_hash) if token_hash and served else None
    if worker is None:
        await send({"type": "websocket.close", "code": CLOSE_REFUSED})
        return
    await send(
        {
            "type": "websocket.accept",
            "headers": [(apis.PROTOCOL_HEADER.encode(), str(apis.PROTOCOL_VERSION).encode())],
        }
    )
    logger.debug("worker socket open", extra={"worker": worker.name})
    session = Session(worker, token_hash)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                break
            answer = await step(session.answer)(message.get("text") or message.get("bytes") or "")
            await send({"type": "websocket.send", "text": json.dumps(answer, separators=(",", ":"))})
            if session.closed:
                await send({"type": "websocket.close", "code": CLOSE_WORKER_CHANGED})
                break
    except OSError:
        pass  # the daemon went away while its answer was on the way; it sends the call again
    logger.debug("worker socket closed", extra={"worker": worker.name})


def _token_hash(header: str) -> str:
    keyword, _, token = header.partition(" ")
    return hash_token(token.strip()) if keyword.lower() == "bearer" and token.strip() else ""


def _live_worker(token_hash: str) -> Worker | None:
    worker = Worker.objects.filter(token_hash=token_hash).first()
    return None if worker is None or worker.status == Worker.Status.DISABLED else worker


class Session:
    """One open socket's worker; its calls run one at a time (on the process's shared thread)."""

    def __init__(self, worker: Worker, token_hash: str) -> None:
        self.worker = worker
        self.token_hash = token_hash
        self.closed = False

    def answer(self, raw: str | bytes) -> dict[str, Any]:
        """The answer to one message: always a dict with `status` and `body`, never an exception."""
        if len(raw) > MAX_MESSAGE:
            return _error(None, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request_too_large", "Too large.")
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            return _error(None, HTTPStatus.BAD_REQUEST, "parse_error", "The message is not JSON.")
        if not isinstance(message, dict):
            return _error(None, HTTPStatus.BAD_REQUEST, "parse_error", "The message is not a JSON object.")
        call_id = message.pop("id", None)
        if not (call_id is None or isinstance(call_id, int | str)) or len(str(call_id)) > 64:
            call_id = None
        try:
            status, body = HTTPStatus.OK, self._call(message)
        except Exception as exc:  # every error becomes the HTTP call's answer
            response = exception_handler(exc, {})
            if response is None:
                logger.exception("worker socket: %s failed", message.get("op"))
                return _error(call_id, HTTPStatus.INTERNAL_SERVER_ERROR, "server_error", "The call failed.")
            status, body = response.status_code, response.data
        return {"id": call_id, "status": int(status), "body": body}

    def _call(self, message: dict[str, Any]) -> dict:
        op = message.pop("op", None)
        if op == "heartbeat":
            self._refresh()
            return apis.heartbeat(self.worker, message)
        call = TASK_CALLS.get(op) if isinstance(op, str) else None
        if call is None:
            raise InvalidInput("Unknown call.", fields={"op": [f"One of {['heartbeat', *TASK_CALLS]}."]})
        try:
            task_id = uuid.UUID(str(message.pop("task_id", "")))
        except ValueError:
            raise Http404 from None  # as the HTTP route answers a malformed task id
        return call(self.worker, task_id, message)

    def _refresh(self) -> None:
        """The worker's row as it is now; the socket ends when its token or its enabled state changed."""
        worker = Worker.objects.filter(token_hash=self.token_hash).first()
        if worker is None or worker.pk != self.worker.pk:
            self.closed = True
            raise AuthenticationFailed("Unknown worker token.")
        if worker.status == Worker.Status.DISABLED:
            self.closed = True
            raise WorkerDisabled("This worker is disabled by an operator.")
        self.worker = worker


def _error(call_id: Any, status: HTTPStatus, code: str, detail: str) -> dict[str, Any]:
    return {"id": call_id, "status": int(status), "body": error_body(code, detail)}
