"""Fakes of the outside world for the daemon tests: recorded traces, a ComfyUI server, in-memory clients.

Plain module (not a conftest) so the daemon tests need neither Django nor the shared fixtures.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from workers_app.daemon.comfyui import ComfyUIError
from workers_app.daemon.prompt_tracker import ImageRef, OutcomeStatus, PromptOutcome
from workers_app.daemon.scheduler import (
    PROTOCOL_HEADER,
    HeartbeatReply,
    InventoryReply,
    LeasedTask,
    Registration,
)

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui_traces"


def load_trace(name: str) -> list[dict[str, Any]]:
    with open(TRACES / f"{name}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_json(name: str) -> Any:
    return json.loads((TRACES / name).read_text(encoding="utf-8"))


def trace_names() -> list[str]:
    return sorted(p.stem for p in TRACES.glob("*.jsonl"))


def png_bytes(width: int = 8, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- a fake ComfyUI server (aiohttp, HTTP + /ws on one port, in its own thread) -------------------------
class FakeComfyUIServer:
    """Answers like ComfyUI; tests script the socket with ``play()`` and set history/queue directly."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prompt_answers: list[tuple[int, Any]] = []  # canned POST /prompt answers, used first
        self.history: dict[str, dict[str, Any]] = {}
        self.empty_history_reads: dict[str, int] = {}  # answer {} this many times first (the race)
        self.queue: dict[str, list] = {"queue_running": [], "queue_pending": []}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.view_status: dict[str, int] = {}  # filename -> forced status
        self.system_stats: dict[str, Any] = load_json("system_stats.json")
        self.object_info: dict[str, Any] = load_json("object_info_subset.json")
        self.requests: list[tuple[str, str, Any]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.ws_connects = 0
        self.ws_received: list[Any] = []  # text messages the client sent on its socket
        self.max_open_sockets = 0
        self.sockets_open_at_post: list[int] = []
        self.refuse_ws = False
        self.on_prompt: Callable[[str, dict[str, Any]], None] | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list[asyncio.Task] = []
        self.port = 0

    # lifecycle
    def start(self) -> FakeComfyUIServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/ws", self._ws),
                web.post("/prompt", self._prompt),
                web.get("/history/{pid}", self._history),
                web.get("/queue", self._queue_get),
                web.post("/queue", self._queue_post),
                web.post("/interrupt", self._interrupt),
                web.get("/view", self._view),
                web.get("/system_stats", self._system_stats),
                web.get("/object_info", self._object_info),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop() -> None:
            for task in self._tasks:
                task.cancel()
            for ws in list(self.sockets):
                await ws.close()
            if self._runner:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [p for m, p, _ in self.requests if method is None or m == method]

    def bodies(self, path: str, method: str = "POST") -> list[Any]:
        with self.lock:
            return [b for m, p, b in self.requests if p == path and m == method]

    # scripting the socket
    def play(self, steps: list[Any], delay: float = 0.005) -> None:
        """Send ws messages (dicts) / run actions (callables, maybe async) / pause (floats), in order."""

        async def _play() -> None:
            for step in steps:
                if isinstance(step, int | float):
                    await asyncio.sleep(step)
                elif callable(step):
                    result = step()
                    if asyncio.iscoroutine(result):
                        await result
                else:
                    await self._broadcast(step)
                    await asyncio.sleep(delay)

        def _schedule() -> None:
            self._tasks.append(self._loop.create_task(_play()))

        self._loop.call_soon_threadsafe(_schedule)

    async def until_connects(self, count: int) -> None:
        while self.ws_connects < count:
            await asyncio.sleep(0.01)

    async def _broadcast(self, msg: dict[str, Any] | bytes) -> None:
        for ws in list(self.sockets):
            if not ws.closed:
                if isinstance(msg, bytes):
                    await ws.send_bytes(msg)
                else:
                    await ws.send_str(json.dumps(msg))

    async def drop_sockets(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    # handlers
    async def _system_stats(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response(self.system_stats)

    async def _object_info(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response(self.object_info)

    def _record(self, request: web.Request, body: Any = None) -> None:
        with self.lock:
            self.requests.append((request.method, request.path, body))

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self._record(request, dict(request.query))
        if self.refuse_ws:
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        self.ws_connects += 1
        self.max_open_sockets = max(self.max_open_sockets, len(self.sockets))
        client_id = request.query.get("clientId", "")
        await ws.send_json(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                if msg.type == WSMsgType.TEXT:
                    self.ws_received.append(json.loads(msg.data))
        finally:
            self.sockets.remove(ws)
        return ws

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        self.sockets_open_at_post.append(len(self.sockets))
        if self.prompt_answers:
            status, answer = self.prompt_answers.pop(0)
        else:
            status, answer = 200, {"prompt_id": body.get("prompt_id"), "number": 1, "node_errors": {}}
        if status == 200 and isinstance(answer, dict) and answer.get("prompt_id") and self.on_prompt:
            self.on_prompt(answer["prompt_id"], body)
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    async def _history(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        self._record(request)
        with self.lock:
            if self.empty_history_reads.get(pid, 0) > 0:
                self.empty_history_reads[pid] -= 1
                return web.json_response({})
            entry = self.history.get(pid)
        return web.json_response({pid: entry} if entry else {})

    async def _queue_get(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response(self.queue)

    async def _queue_post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        with self.lock:
            for pid in body.get("delete", []):
                self.queue["queue_pending"] = [i for i in self.queue["queue_pending"] if i[1] != pid]
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.Response:
        self._record(request, await request.json())
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.Response:
        q = request.query
        self._record(request, dict(q))
        if q.get("filename") in self.view_status:
            return web.Response(status=self.view_status[q["filename"]])
        key = (q.get("filename", ""), q.get("subfolder", ""), q.get("type", "output"))
        if key not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[key], content_type="image/png")


def trace_exchange(
    lines: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(the POST /prompt answer, the ws messages after the POST, the history bodies) of a one-prompt trace."""
    answer: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    history: dict[str, Any] = {}
    posted = False
    for line in lines:
        if line["dir"] == "http_request" and line.get("path") == "/prompt":
            posted = True
        elif line["dir"] == "http_response" and line.get("path") == "/prompt" and not answer:
            answer = line["body"]
        elif line["dir"] == "ws_text" and posted:
            messages.append(line["msg"])
        elif line["dir"] == "http_response" and line.get("path", "").startswith("/history/") and line["body"]:
            history.update(line["body"])
    return answer, messages, history


# -- in-memory ComfyUI client (a queue that runs one prompt at a time) -------------------------------------
class FakeComfy:
    """Stands in for ``ComfyUIClient`` in runner/worker tests. Prompts run in submission order."""

    def __init__(self, *, auto_finish: bool = True, progress: tuple[tuple[float, float], ...] = ()) -> None:
        self.cond = threading.Condition()
        self.auto_finish = auto_finish
        self.progress = progress
        self.queue: list[str] = []
        self.submitted: list[tuple[str, dict[str, Any]]] = []
        self.cancelled: list[str] = []
        self.released: set[str] = set()
        self.started: list[str] = []
        self.outcomes: dict[str, PromptOutcome] = {}
        self.outcome_for: Callable[[str], PromptOutcome] = self.success
        self.submit_errors: list[ComfyUIError] = []
        self.view_errors: list[ComfyUIError] = []
        self.upload_errors: list[ComfyUIError] = []
        self.uploaded: list[
            tuple[str, str, bytes, int]
        ] = []  # (subfolder, name, bytes, prompts submitted before)
        self.health_errors: list[ComfyUIError] = []
        self.viewed: list[str] = []
        self.connected = False
        self.closed = False
        self.wait_error: ComfyUIError | None = None
        self.connections = 1  # socket connections so far (ComfyUIClient.connections)
        self.inventory: dict[str, Any] = {
            "comfyui_version": "0.3.64",
            "checkpoints": ["a.safetensors"],
            "node_classes": ["SaveImage"],
        }
        self.capability_errors: list[ComfyUIError] = []
        self.capability_reads = 0
        self.spec: bytes | None = None  # an /object_info body: capabilities then name its digest
        self.submit_options: dict[str, dict[str, Any]] = {}  # prompt id -> submit()'s keyword arguments
        self.socket_images: list[tuple[str, Any]] = []  # (node id, SocketImage) each prompt sends on start

    @staticmethod
    def success(prompt_id: str) -> PromptOutcome:
        return PromptOutcome(OutcomeStatus.SUCCESS, prompt_id, (ImageRef(f"{prompt_id}.png", "t2i"),))

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.closed = True

    def system_stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        if self.health_errors:
            raise self.health_errors.pop(0)
        return load_json("system_stats.json")

    def capabilities(self) -> dict[str, Any]:
        self.capability_reads += 1
        if self.capability_errors:
            raise self.capability_errors.pop(0)
        caps = json.loads(json.dumps(self.inventory))  # a copy, as a fresh /object_info read would be
        if self.spec is not None:
            caps["object_info_sha256"] = hashlib.sha256(self.spec).hexdigest()
        return caps

    def object_info_body(self, sha256: str) -> bytes | None:
        """The spec of the last capabilities read (ComfyUIClient.object_info_body)."""
        if self.spec is None or hashlib.sha256(self.spec).hexdigest() != sha256:
            return None
        return self.spec

    def submit(self, workflow: dict[str, Any], **options: Any) -> str:
        with self.cond:
            if self.submit_errors:
                raise self.submit_errors.pop(0)
            pid = f"p{len(self.submitted) + 1}"
            self.submitted.append((pid, workflow))
            self.submit_options[pid] = options
            self.queue.append(pid)
            self.cond.notify_all()
            return pid

    def upload_image(self, data: bytes, name: str, subfolder: str = "") -> str:
        with self.cond:
            if self.upload_errors:
                raise self.upload_errors.pop(0)
            self.uploaded.append((subfolder, name, data, len(self.submitted)))
        return f"{subfolder}/{name}" if subfolder else name

    def finish(self, prompt_id: str) -> None:
        with self.cond:
            self.released.add(prompt_id)
            self.cond.notify_all()

    def cancel(self, prompt_id: str) -> None:
        with self.cond:
            self.cancelled.append(prompt_id)
            if prompt_id in self.queue:
                self.queue.remove(prompt_id)
            self.cond.notify_all()

    def wait(self, prompt_id: str, *, on_start=None, on_progress=None, should_cancel=None, timeout=None):
        if self.wait_error is not None:
            raise self.wait_error
        started = False
        while True:
            with self.cond:
                if should_cancel is not None and should_cancel():
                    self.cancelled.append(prompt_id)
                    was_running = self.queue[:1] == [prompt_id]
                    if prompt_id in self.queue:
                        self.queue.remove(prompt_id)
                    self.cond.notify_all()
                    return PromptOutcome(
                        OutcomeStatus.INTERRUPTED, prompt_id, source="ws" if was_running else "poll"
                    )
                begin = not started and self.queue[:1] == [prompt_id]
                if started and (self.auto_finish or prompt_id in self.released):
                    self.queue.remove(prompt_id)
                    self.cond.notify_all()
                    return self.outcomes.get(prompt_id) or self.outcome_for(prompt_id)
                if not begin:
                    self.cond.wait(0.01)
                    continue
                started = True
                self.started.append(prompt_id)
            if on_start:
                on_start()
            on_image = self.submit_options.get(prompt_id, {}).get("on_image")
            for node_id, image in self.socket_images:
                if on_image:
                    on_image(node_id, image)
            for value, maximum in self.progress:
                if on_progress:
                    on_progress(value, maximum)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        self.viewed.append(filename)
        if self.view_errors:
            raise self.view_errors.pop(0)
        return png_bytes()


# -- a fake scheduler server (the worker API over real HTTP, canned answers) ------------------------------
DROP = 0  # a canned status: the fake scheduler reads the request and closes the connection unanswered


class FakeSchedulerServer:
    """Routes ``POST path`` to canned ``(status, body)`` answers and records every request. Answers carry
    ``T2I-Protocol: <protocol>`` unless ``protocol`` is None, and the ``headers`` given for their path.
    ``start()`` it; ``stop()`` it."""

    def __init__(self, protocol: str | None = "2") -> None:
        self.answers: dict[str, list[tuple[int, Any]]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[dict[str, Any]] = []
        self.protocol = protocol
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                path = self.path.removeprefix("/api/v1/worker/")
                fake.requests.append({"path": path, "headers": dict(self.headers), "raw": raw})
                queued = fake.answers.get(path) or [(200, {})]
                status, body = queued.pop(0) if len(queued) > 1 else queued[0]
                if status == DROP:  # read the request, then hang up without an answer
                    self.close_connection = True
                    return
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if fake.protocol is not None:
                    self.send_header(PROTOCOL_HEADER, fake.protocol)
                for name, value in fake.headers.get(path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST  # GET /healthz: SchedulerClient.probe

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def start(self) -> FakeSchedulerServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def json(self, index: int = -1) -> Any:
        return json.loads(self.requests[index]["raw"])

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


# -- in-memory scheduler client ---------------------------------------------------------------------------
class FakeScheduler:
    """Stands in for ``SchedulerClient``: records calls; ``errors[name]`` raises queued exceptions first."""

    def __init__(self, leases: list[LeasedTask] | None = None, *, heartbeat_interval: float = 0.05) -> None:
        self.lock = threading.Lock()
        self.leases = list(leases or [])
        self.heartbeat_interval = heartbeat_interval
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.errors: dict[str, list[Exception]] = {}
        self.cancel_ids: set[str] = set()
        self.lost_ids: set[str] = set()
        self.start_cancel = False
        self.server_protocol: int | None = 2
        # A test clears it: lease calls then stay open (a long poll) until it is set; open_leases counts them.
        self.lease_gate = threading.Event()
        self.lease_gate.set()
        self.open_leases = 0
        self.probe_error: str | None = None  # what probe() (the surface's /healthz) answers
        self.specs_stored: dict[str, bytes] = {}  # object_info bodies it holds, by sha256

    def _call(self, method: str, **kwargs: Any) -> None:
        with self.lock:
            self.calls.append((method, kwargs))
            queued = self.errors.get(method)
            if queued:
                raise queued.pop(0)

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]

    def calls_of(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [kw for n, kw in self.calls if n == name]

    def register(self, *, name: str, prefetch: int, capabilities: dict[str, Any]) -> Registration:
        self._call("register", name=name, prefetch=prefetch, capabilities=capabilities)
        stored = self.specs_stored.get(capabilities.get("object_info_sha256") or "")
        return Registration(1, name, "idle", self.heartbeat_interval, 30.0, _wanted(capabilities, stored))

    def inventory(self, capabilities: dict[str, Any]) -> InventoryReply:
        self._call("inventory", capabilities=capabilities)
        stored = self.specs_stored.get(capabilities.get("object_info_sha256") or "")
        return InventoryReply(True, _wanted(capabilities, stored))

    def object_info(self, sha256: str, body: bytes) -> bool:
        self._call("object_info", sha256=sha256, body=body)
        known = sha256 in self.specs_stored
        self.specs_stored[sha256] = body
        return not known

    def heartbeat(
        self, leases: list[tuple[str, str]], *, warm_checkpoint: str | None = None
    ) -> HeartbeatReply:
        self._call("heartbeat", leases=list(leases), warm_checkpoint=warm_checkpoint)
        ids = {task_id for task_id, _ in leases}
        return HeartbeatReply("busy", sorted(ids), sorted(ids & self.cancel_ids), sorted(ids & self.lost_ids))

    def lease(
        self, *, wait: float = 20.0, prefetch: bool = False, warm_checkpoint: str | None = None
    ) -> LeasedTask | None:
        self._call("lease", wait=wait, prefetch=prefetch, warm_checkpoint=warm_checkpoint)
        with self.lock:
            self.open_leases += 1
        self.lease_gate.wait(10)
        with self.lock:
            self.open_leases -= 1
            lease = self.leases.pop(0) if self.leases else None
        if lease is None:
            time.sleep(0.01)
        return lease

    def start(self, task_id: str, lease_token: str, prompt_id: str) -> bool:
        self._call("start", task_id=task_id, lease_token=lease_token, prompt_id=prompt_id)
        return self.start_cancel

    def progress(self, task_id: str, lease_token: str, value: float, maximum: float) -> bool:
        self._call("progress", task_id=task_id, value=value, max=maximum)
        return False

    def frames(self, task_id: str, lease_token: str, frames: list) -> int:
        self._call("frames", task_id=task_id, frames=frames)
        return len(frames)

    def input_image(self, task_id: str, lease_token: str, sha256: str) -> bytes:
        self._call("input_image", task_id=task_id, lease_token=lease_token, sha256=sha256)
        return f"bytes of {sha256}".encode()

    def complete(
        self,
        task_id: str,
        lease_token: str,
        images: list,
        *,
        prompt_id: str | None = None,
        lease_next: bool | None = None,
    ) -> dict:
        """Like the scheduler: with ``lease_next``, the next queued lease rides on the answer."""
        self._call(
            "complete", task_id=task_id, images=list(images), prompt_id=prompt_id, lease_next=lease_next
        )
        following = None
        if lease_next is not None:
            with self.lock:
                following = self.leases.pop(0).raw if self.leases else None
        return {"task_id": task_id, "status": "completed", "next": following}

    def fail(self, task_id: str, lease_token: str, *, code: str, message: str, retryable: bool, details=None):
        self._call("fail", task_id=task_id, code=code, message=message, retryable=retryable, details=details)
        return {}

    def release(self, task_id: str, lease_token: str, *, reason: str = "shutdown") -> None:
        self._call("release", task_id=task_id, reason=reason)

    def offline(self) -> None:
        self._call("offline")

    def probe(self, *, timeout: float = 2.0) -> str | None:
        return self.probe_error


def make_lease(n: int = 1, **overrides: Any) -> LeasedTask:
    body = {
        "task_id": f"00000000-0000-0000-0000-{n:012d}",
        "lease_token": f"lease-token-{n}",
        "attempt": 1,
        "workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {}},
            "2": {"class_type": "SaveImage", "inputs": {}},
        },
        "filename_prefix": f"t2i/task{n}_a1",
        "width": 8,
        "height": 8,
        "batch_size": 1,
        **overrides,
    }
    return LeasedTask.from_json(body)


def _wanted(capabilities: dict[str, Any], stored: bytes | None) -> str | None:
    if not capabilities.get("object_info_sha256"):
        return None
    return "have" if stored is not None else "send"


# Binary image frames as ComfyUI sends them (protocol 4.6).
def type1(data: bytes, image_format: int = 2) -> bytes:
    return struct.pack(">II", 1, image_format) + data


def type4(data: bytes, **metadata) -> bytes:
    encoded = json.dumps({"image_type": "image/png", **metadata}).encode()
    return struct.pack(">II", 4, len(encoded)) + encoded + data
