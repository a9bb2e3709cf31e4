"""`GET /comfy/ws?clientId=…`: ComfyUI's socket for the front door, one coroutine per client.

A client gets the frames of its own prompts (those it submitted with this `client_id`), as ComfyUI sends
them: `status` first (with `sid`), then per prompt `execution_start`, `execution_cached`, `executing` and
`progress` relayed from the worker that runs it (workers_app.daemon.frames → generation.services.frames →
the `comfy_frames` event), and, once the farm has stored its images, `executed` per output node (with names
/comfy/view serves), the terminal frame, `status` and `executing` with `node: null` (built here from the
task, on its `task` event). Frames travel on the event channel (generation.dispatch): on PostgreSQL they
reach the socket in whichever server process holds it; on SQLite only sockets in the process that got the
worker's report.

Auth: a URL key (`/comfy/k/<key>/ws`, generation.comfy_keys), the `Authorization` header, checked by the
REST API's own authentication classes, or, when
T2I_ALLOW_ANONYMOUS_SUBMIT is on, the shared anonymous space. A refused handshake is closed before it is
accepted (the server answers 403).
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.settings import api_settings

from generation import comfy_keys, comfy_selectors, comfy_shapes, dispatch
from generation.models import ApiToken, Image, Task
from generation.services.api_tokens import api_token_user
from generation.services.frames import EVENT, PREVIEW
from generation.steps import step

WS_PATHS = frozenset({"/comfy/ws", "/comfy/api/ws"})
PREVIEW_IMAGE = 1
FORMAT_CODES = {"jpeg": 1, "png": 2}
CLIENT_ID_MAX = 100
MAX_QUEUED = 1000  # items waiting for a slow client; the oldest go first


@dataclass(eq=False)
class Connection:
    """One open socket: who it is, and what the event channel has for it."""

    loop: asyncio.AbstractEventLoop
    owner_id: int | None
    client_id: str
    items: deque = field(default_factory=lambda: deque(maxlen=MAX_QUEUED))
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, item: tuple[str, Any]) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self._push, item)

    def _push(self, item: tuple[str, Any]) -> None:
        self.items.append(item)
        self.wake.set()


class Hub:
    """This process's open sockets, by (owner, client id) for frames and by owner for task changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        with self._lock:
            self._connections.add(connection)

    def remove(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _matching(self, test) -> list[Connection]:
        with self._lock:
            return [c for c in self._connections if test(c)]

    def frames(self, data: dict[str, Any]) -> None:
        owner, client_id = data.get("owner"), data.get("client_id")
        for connection in self._matching(lambda c: c.owner_id == owner and c.client_id == client_id):
            self._push(connection, ("frames", data.get("frames") or []))

    def task(self, data: dict[str, Any]) -> None:
        """Task changes of a connection's owner; anonymous sockets also look at changes that name no owner
        (start and progress reports), since their own tasks have none."""
        owner, state = data.get("owner"), data.get("state")
        if isinstance(state, dict) and state.get("template") is not None:
            return  # a template's task: in no front-door space (comfy_selectors.space), nothing to read
        landed = isinstance(state, dict) and state.get("status") == Task.Status.COMPLETED
        for connection in self._matching(lambda c: c.owner_id == owner):
            self._push(connection, ("task", (str(data.get("id", "")), landed)))

    def _push(self, connection: Connection, item: tuple[str, Any]) -> None:
        try:
            connection.push(item)
        except RuntimeError:  # its loop is gone: the socket ended
            self.remove(connection)


hub = Hub()
dispatch.subscribe(EVENT, hub.frames)
dispatch.subscribe("task", hub.task)


async def serve(scope: dict, receive, send) -> None:
    """The ASGI WebSocket application (t2i_project.asgi routes WS_PATHS here)."""
    if (await receive())["type"] != "websocket.connect":
        return
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    client_id = (query.get("clientId") or [""])[0] or uuid.uuid4().hex
    user = await step(authenticate)(scope)
    if user is None or len(client_id) > CLIENT_ID_MAX or not client_id.isprintable():
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    await step(dispatch.ensure_listener)()
    connection = Connection(asyncio.get_running_loop(), user.pk if user.is_authenticated else None, client_id)
    hub.add(connection)
    session = Session(user, client_id)
    reader = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await _send(send, await step(session.status)(sid=True))
        while not reader.done():
            waiting = asyncio.ensure_future(connection.wake.wait())
            await asyncio.wait({reader, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            connection.wake.clear()
            while connection.items and not reader.done():
                kind, value = connection.items.popleft()
                if kind == "frames":
                    frames = session.relayed(value)
                else:
                    # The task is read as it is now, maybe ended since this event: the worker's frames that
                    # came meanwhile go first, before its end frames close the prompt.
                    frames = [f for batch in _take_frames(connection.items) for f in session.relayed(batch)]
                    frames += await step(session.task_changed)(*value)
                for frame in frames:
                    if isinstance(frame, dict) and frame["type"] == PREVIEW:  # stored by the worker: read it
                        frame = await step(session.preview)(frame["data"])
                        if frame is None:
                            continue
                    await _send(send, frame)
    except OSError:
        pass  # the client went away mid-send
    finally:
        hub.remove(connection)
        reader.cancel()


def _take_frames(items: deque) -> list[list[list[Any]]]:
    """Remove the frame batches from `items`, in order, leaving the rest as they were."""
    batches = [value for kind, value in items if kind == "frames"]
    if batches:
        rest = [item for item in items if item[0] != "frames"]
        items.clear()
        items.extend(rest)
    return batches


async def _until_disconnect(receive) -> None:
    """Read (and ignore) what the client sends until it goes; ComfyUI's socket takes nothing either."""
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _send(send, frame: dict[str, Any] | bytes) -> None:
    if isinstance(frame, bytes):
        await send({"type": "websocket.send", "bytes": frame})
    else:
        await send({"type": "websocket.send", "text": json.dumps(frame, separators=(",", ":"))})


def binary_image_frame(image_format: str, data: bytes) -> bytes:
    """ComfyUI's PREVIEW_IMAGE frame (protocol 4.6) as it sends one to a socket that did not announce
    preview metadata, as the farm's /features says: JPEG (1) or PNG (2), then the file."""
    return struct.pack(">II", PREVIEW_IMAGE, FORMAT_CODES.get(image_format, 2)) + data


def authenticate(scope: dict) -> Any:
    """The user the REST API's authentication classes find in the `Authorization` header (sessions aside: a
    socket has no CSRF check), the anonymous user where anonymous clients are let in, or None (refused)."""
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])
    }
    key = headers.get(comfy_keys.KEY_HEADER, "")
    if key:
        return api_token_user(key, kind=ApiToken.Kind.COMFY_KEY)
    header = headers.get("authorization", "")
    if not header:
        return AnonymousUser() if settings.T2I["ALLOW_ANONYMOUS_SUBMIT"] else None
    request = HttpRequest()
    request.META["HTTP_AUTHORIZATION"] = header
    for auth_class in api_settings.DEFAULT_AUTHENTICATION_CLASSES:
        if issubclass(auth_class, SessionAuthentication):
            continue
        try:
            found = auth_class().authenticate(Request(request))
        except AuthenticationFailed:
            return None
        if found is not None:
            return found[0]
    return None


class Session:
    """What one socket has told its client: the prompts it has ended, the last queue count."""

    def __init__(self, user, client_id: str) -> None:
        self.user = user
        self.client_id = client_id
        self.ended: set[str] = set()  # prompt ids whose end was sent: late worker frames are dropped
        self.remaining: int | None = None
        self.previews: dict[str, int] = {}  # task id -> the seq of the last preview sent

    def preview(self, marker: dict[str, Any]) -> bytes | None:
        """The binary frame of the task's newest preview, unless it was sent already (markers of previews
        replaced meanwhile find it sent) or the prompt has ended."""
        task_id = str(marker.get("task") or "")
        if marker.get("prompt_id") in self.ended:
            return None
        try:
            row = comfy_selectors.preview_after(task_id, self.previews.get(task_id, 0))
        except (ValidationError, ValueError):  # a malformed id from the event channel
            return None
        if row is None:
            return None
        self.previews[task_id] = row.seq
        return binary_image_frame(row.image_format, bytes(row.data))

    def relayed(self, frames: list[list[Any]]) -> list[dict[str, Any]]:
        return [
            {"type": kind, "data": data}
            for kind, data in frames
            if isinstance(data, dict) and data.get("prompt_id") not in self.ended
        ]

    def status(self, *, sid: bool = False) -> dict[str, Any]:
        self.remaining = comfy_selectors.queue_remaining(self.user)
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.remaining}}}
        if sid:
            data["sid"] = self.client_id
        return {"type": "status", "data": data}

    def task_changed(self, task_id: str, landed: bool = False) -> list[dict[str, Any] | bytes]:
        """A task of this space changed: its end frames if it is this client's and just ended, and a status
        frame when the queue count moved. `landed`: the event was a completion's, so the task is read with
        its images in one query."""
        images = None
        try:
            if landed:
                task, images = comfy_selectors.landed_entry(self.user, task_id)
            else:
                task = comfy_selectors.task_entry(self.user, task_id)
        except (ValidationError, ValueError):  # a malformed id from the event channel
            return []
        if task is None:
            return []
        frames: list[dict[str, Any] | bytes] = []
        if task.client_id == self.client_id and task.is_finished:
            if images is None:
                images = list(task.images.only(*comfy_selectors.IMAGE_FIELDS))  # only end frames name them
            frames = self.end_frames(task, images)
        before = self.remaining
        status = self.status()
        if frames or status["data"]["status"]["exec_info"]["queue_remaining"] != before:
            frames.insert(len(frames) - 1 if frames else 0, status)
        return frames

    def end_frames(self, task: Task, images: list[Image]) -> list[dict[str, Any] | bytes]:
        """The images of its socket image nodes (SaveImageWebsocket) as binary frames, executed per output
        node, the terminal frame and executing null, once per prompt (history's rule: a prompt deleted before
        it ran ends without a trace)."""
        prompt_id = comfy_shapes.prompt_id_of(task)
        entry = comfy_shapes.history_entry(task, images)
        if prompt_id in self.ended or entry is None:
            return []
        self.ended.add(prompt_id)
        self.previews.pop(str(task.public_id), None)
        frames: list[dict[str, Any] | bytes] = [
            binary_image_frame(comfy_shapes.image_format(image), _read(image))
            for image in comfy_shapes.socket_images(task, images)
        ]
        frames += [
            {
                "type": "executed",
                "data": {"node": node, "display_node": node, "output": output, "prompt_id": prompt_id},
            }
            for node, output in entry["outputs"].items()
        ]
        kind, data = entry["status"]["messages"][-1]
        frames.append({"type": kind, "data": data})
        frames.append(
            {"type": "executing", "data": {"node": None, "display_node": None, "prompt_id": prompt_id}}
        )
        return frames


def _read(image) -> bytes:
    with image.file.open("rb") as stored:
        return stored.read()
