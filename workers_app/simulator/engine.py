"""The simulator's state and executor: queue, history, sockets, and the run of one prompt at a time.

Everything here runs on the aiohttp event loop (image work goes to a worker thread), so no locks are
needed. The event order, routing and quirks follow ComfyUI 0.3.64 as recorded in the traces (see the
protocol sheet, sections 3, 4 and 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import json
import logging
import random
import shutil
import socket
import struct
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from PIL import Image

from . import images as imaging
from . import nodes
from .config import PREVIEW_METHODS, SimulatorConfig
from .validation import full_type_name, input_info

logger = logging.getLogger("workers_app.simulator")

MAXIMUM_HISTORY_SIZE = 10000
# Events whose wall-clock time GET /simulator/stats reports per prompt (for the benchmarks).
TIMED_EVENTS = ("execution_start", "execution_success", "execution_error", "execution_interrupted")
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG_FORMAT = 1
PNG_FORMAT = 2
_TCP_CORK = getattr(socket, "TCP_CORK", None)

# A queue item, as in the real server: (number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive).
QueueItem = tuple[float, str, dict[str, Any], dict[str, Any], list[str], dict[str, Any]]


def log(message: str, *args: Any, level: int = logging.INFO) -> None:
    logger.log(level, "[comfyui-simulator] " + message, *args)


def now_ms() -> int:
    return int(time.time() * 1000)


class OutOfMemoryError(RuntimeError):
    """Stand-in for torch's OOM error, so that `exception_type` reads `torch.OutOfMemoryError`."""


OutOfMemoryError.__module__ = "torch"


class DowntimeHost(Protocol):
    """The server around the app (runner.py): stops listening now and listens again after `seconds`."""

    async def go_down(self, seconds: float) -> None: ...


@dataclass
class SocketEntry:
    """One registered WebSocket and the feature flags it announced."""

    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    feature_flags: dict[str, Any] = field(default_factory=dict)
    corked: bool = False

    async def send_str(self, message: str) -> None:
        if self.ws.closed:
            return
        self._cork()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(message)

    async def send_bytes(self, payload: bytes) -> None:
        if self.ws.closed:
            return
        self._cork()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(payload)

    def _cork(self) -> None:
        """Holds the frames sent in this turn of the event loop and lets them go together at its end
        (TCP_CORK, Linux): a burst such as progress_state + progress is one packet and one wake-up of the
        client instead of one per frame. The frames and their order do not change."""
        if self.corked or _TCP_CORK is None or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        except OSError:
            return
        self.corked = True
        asyncio.get_running_loop().call_soon(self._uncork, sock)

    def _uncork(self, sock: Any) -> None:
        self.corked = False
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)

    def abort(self) -> None:
        """Drops the connection without a close frame, like a dying server or a network cut."""
        if self.transport is not None:
            self.transport.abort()


class Interrupted(Exception):
    """Raised at the next interrupt check (node start or progress step) after POST /interrupt."""


class NodeFailure(Exception):
    """A node raised; carries what the execution_error payload needs."""

    def __init__(self, node_id: str, error: BaseException, current_inputs: dict[str, list[Any]]) -> None:
        super().__init__(str(error))
        self.node_id = node_id
        self.error = error
        self.current_inputs = current_inputs


class Simulator:
    """One simulated ComfyUI server process: what a restart throws away lives in `_reset_state`."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.random_seed)
        self.object_info = nodes.load_object_info(config.checkpoints, config.loras)
        self._own_root = config.output_dir is None
        root = (
            Path(tempfile.mkdtemp(prefix="comfyui-simulator-")) if self._own_root else Path(config.output_dir)
        )
        self.root_dir = root.resolve()
        self.dirs = {kind: str(self.root_dir / kind) for kind in ("output", "input", "temp")}
        for folder in self.dirs.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.sockets: dict[str, SocketEntry] = {}
        self.generation = 0  # bumped by restart(): handlers of older sockets must not touch new state
        self.downtime_host: DowntimeHost | None = None
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.number = 0
        self.queue: list[QueueItem] = []
        self.currently_running: dict[int, QueueItem] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self.cache = nodes.OutputCache()
        self.timings: dict[str, dict[str, Any]] = {}  # prompt_id -> wall-clock times, oldest first
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupt_flag = False
        self.loaded_checkpoint: str | None = None  # what the last CheckpointLoaderSimple loaded (switch_time)

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the executor (the real server's prompt worker thread)."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="comfyui-simulator-worker"
            )
        log("started, files in %s", self.root_dir)

    async def stop_executor(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def abort_sockets(self) -> int:
        entries = list(self.sockets.values())
        for entry in entries:
            entry.abort()
        return len(entries)

    async def close(self) -> None:
        """Stops everything and removes the temporary folder (when the simulator made it)."""
        await self.stop_executor()
        self.abort_sockets()
        self.sockets.clear()
        if self._own_root:
            shutil.rmtree(self.root_dir, ignore_errors=True)
        log("stopped")

    async def restart(self, downtime: float = 0.0) -> None:
        """A crash and restart: queue, history, cache and sockets are lost, `number` starts at 0 again.
        Output files stay; temp files go. With `downtime`, HTTP is refused for that many seconds."""
        running = [item[1] for item in self.currently_running.values()]
        log(
            "restart: dropping %d running, %d pending, %d history entries and %d sockets (downtime %.2f s)",
            len(running),
            len(self.queue),
            len(self.history),
            len(self.sockets),
            downtime,
        )
        self.generation += 1
        await self.stop_executor()
        self.abort_sockets()
        self.sockets.clear()
        shutil.rmtree(self.dirs["temp"], ignore_errors=True)
        Path(self.dirs["temp"]).mkdir(parents=True, exist_ok=True)
        self._reset_state()
        await self.start()
        if downtime > 0:
            if self.downtime_host is None:
                log("no server host attached: downtime of %.2f s ignored", downtime, level=logging.WARNING)
            else:
                await self.downtime_host.go_down(downtime)

    def update_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Changes fault knobs at run time (ValueError for bad ones); returns all current knobs."""
        new_config = self.config.with_faults(changes)
        if "random_seed" in changes:
            self.rng = random.Random(new_config.random_seed)
        self.config = new_config
        log("faults changed: %s", json.dumps(changes, sort_keys=True))
        return self.config.faults()

    # --- messages -------------------------------------------------------------------------------------

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.currently_running)}}

    async def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """A text event to the socket registered as `sid`, or to every socket when `sid` is None.
        An event for an id with no socket is lost, as on the real server."""
        message = json.dumps({"type": event, "data": data})
        if sid is None:
            targets = list(self.sockets.values())
        else:
            entry = self.sockets.get(sid)
            targets = [entry] if entry is not None else []
        for entry in targets:
            await entry.send_str(message)

    async def send_binary(self, payload: bytes, sid: str | None) -> None:
        if sid is None:
            targets = list(self.sockets.values())
        else:
            entry = self.sockets.get(sid)
            targets = [entry] if entry is not None else []
        for entry in targets:
            await entry.send_bytes(payload)

    def supports_preview_metadata(self, sid: str | None) -> bool:
        entry = self.sockets.get(sid) if sid is not None else None
        return entry is not None and entry.feature_flags.get("supports_preview_metadata") is True

    async def queue_updated(self) -> None:
        await self.send("status", {"status": self.queue_info()}, None)

    # --- timings (GET /simulator/stats) ----------------------------------------------------------------

    def note_received(self, prompt_id: str, received: float, prompt: dict[str, Any]) -> None:
        """Remember when a valid prompt arrived (`received`: time.time() at the start of POST /prompt)."""
        if len(self.timings) >= MAXIMUM_HISTORY_SIZE:
            self.timings.pop(next(iter(self.timings)))
        prefixes = [
            node["inputs"]["filename_prefix"]
            for node in prompt.values()
            if isinstance(node, dict)
            and isinstance(node.get("inputs"), dict)
            and "filename_prefix" in node["inputs"]
        ]
        self.timings[prompt_id] = {
            "prompt_id": prompt_id,
            "filename_prefix": prefixes[0] if prefixes else None,
            "received": received,
        }

    def note_event(self, prompt_id: str, event: str) -> None:
        entry = self.timings.get(prompt_id)
        if entry is not None and event in TIMED_EVENTS:
            entry[event] = time.time()

    # --- queue ----------------------------------------------------------------------------------------

    async def put(self, item: QueueItem) -> None:
        heapq.heappush(self.queue, item)
        client_id = item[3].get("client_id") if isinstance(item[3], dict) else None
        log("prompt %s queued (number %s, client_id %s, outputs %s)", item[1], item[0], client_id, item[4])
        await self.queue_updated()
        self._wakeup.set()

    async def _get(self) -> tuple[QueueItem, int]:
        while not self.queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = heapq.heappop(self.queue)
        item_id = self.task_counter
        self.currently_running[item_id] = copy.deepcopy(item)
        self.task_counter += 1
        await self.queue_updated()
        return item, item_id

    async def wipe_queue(self) -> None:
        self.queue = []
        await self.queue_updated()

    async def delete_queue_item(self, predicate: Callable[[QueueItem], bool]) -> bool:
        """Removes the first matching pending item; deleting the last one broadcasts `status` twice."""
        for index, item in enumerate(self.queue):
            if predicate(item):
                if len(self.queue) == 1:
                    await self.wipe_queue()
                else:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                log("prompt %s deleted from the queue", item[1])
                await self.queue_updated()
                return True
        return False

    def interrupt(self, prompt_id: str | None) -> None:
        """Sets the interrupt flag, for the given prompt only when it is the running one."""
        if prompt_id:
            if any(item[1] == prompt_id for item in self.currently_running.values()):
                log("interrupting prompt %s", prompt_id)
                self.interrupt_flag = True
            else:
                log("prompt %s is not currently running, skipping interrupt", prompt_id)
        else:
            log("global interrupt (no prompt_id specified)")
            self.interrupt_flag = True

    # --- history --------------------------------------------------------------------------------------

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """GET /history: oldest first; `max_items` alone gives the newest N (the server's arithmetic)."""
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for i, key in enumerate(self.history):
            if i >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return copy.deepcopy(out)

    def _task_done(self, item_id: int, result: dict[str, Any], status: dict[str, Any]) -> None:
        item = self.currently_running.pop(item_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[item[1]] = {"prompt": list(item[:5]), "outputs": {}, "status": status, **result}

    # --- executor -------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            item, item_id = await self._get()
            try:
                await self._run(item, item_id)
            except Exception:
                logger.exception("[comfyui-simulator] internal error after prompt %s", item[1])
                self.currently_running.pop(item_id, None)

    async def _run(self, item: QueueItem, item_id: int) -> None:
        prompt_id = item[1]
        started = time.monotonic()
        run = PromptRun(self, item)
        try:
            success, messages, result = await run.execute()
        except Exception:
            logger.exception("[comfyui-simulator] internal error while running prompt %s", prompt_id)
            success, messages, result = False, run.messages, {"outputs": {}, "meta": {}}
            run.outcome = "internal simulator error"
        log("prompt %s finished: %s in %.2f s", prompt_id, run.outcome, time.monotonic() - started)
        if self.config.history_delay > 0:
            await asyncio.sleep(self.config.history_delay)
        status = {"status_str": "success" if success else "error", "completed": success, "messages": messages}
        self._task_done(item_id, result, copy.deepcopy(status))
        log("prompt %s history written", prompt_id)
        await self.queue_updated()
        if self.client_id is not None:
            await self.send("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)


class PromptRun:
    """The execution of one prompt: cache check, nodes in dependency order, one terminal event."""

    def __init__(self, sim: Simulator, item: QueueItem) -> None:
        self.sim = sim
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute = item[:5]
        self.messages: list[list[Any]] = []
        self.executed: list[str] = []
        self.values: dict[str, tuple[Any, ...]] = {}
        self.ui_outputs: dict[str, Any] = {}
        self.progress_nodes: dict[str, dict[str, Any]] = {}
        self.outcome = "success"
        self.clock = 0.0  # the loop time this prompt's simulated work has reached (_Context.sleep)
        self._current = ""

    @property
    def client_id(self) -> str | None:
        return self.sim.client_id

    def class_type(self, node_id: str) -> str:
        return self.prompt[node_id]["class_type"]

    async def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        self.sim.note_event(self.prompt_id, event)
        data = {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            await self.sim.send(event, data, self.client_id)

    # --- progress_state -------------------------------------------------------------------------------

    async def _send_progress_state(self) -> None:
        nodes_state = {
            node_id: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, entry in self.progress_nodes.items()
        }
        await self.sim.send(
            "progress_state", {"prompt_id": self.prompt_id, "nodes": nodes_state}, self.client_id
        )

    async def _progress_start(self, node_id: str) -> None:
        self.progress_nodes[node_id] = {"state": "running", "value": 0.0, "max": 1.0}
        await self._send_progress_state()

    async def _progress_finish(self, node_id: str) -> None:
        entry = self.progress_nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        await self._send_progress_state()

    def check_interrupt(self) -> None:
        if self.sim.interrupt_flag:
            self.sim.interrupt_flag = False
            raise Interrupted

    async def report_progress(
        self,
        node_id: str,
        value: int,
        total: int,
        preview: Image.Image | None,
        preview_format: str = "PNG",
    ) -> None:
        """The progress hook: interrupt check, progress_state, `progress`, and a preview frame
        (type 4 before `progress` for a socket that announced metadata support, else type 1 after)."""
        self.check_interrupt()
        entry = self.progress_nodes.setdefault(node_id, {"state": "running", "value": 0.0, "max": 1.0})
        entry["value"], entry["max"] = min(value, total), total
        await self._send_progress_state()
        png = None  # the encoded preview, PNG or JPEG
        jpeg = preview_format == "JPEG"
        if preview is not None:
            encode = imaging.encode_jpeg if jpeg else imaging.encode_png
            png = await asyncio.get_running_loop().run_in_executor(None, encode, preview)
        with_metadata = self.sim.supports_preview_metadata(self.client_id)
        if png is not None and self.client_id is not None and with_metadata:
            metadata = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": self.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/jpeg" if jpeg else "image/png",
                }
            ).encode("utf-8")
            frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(metadata)) + metadata + png
            await self.sim.send_binary(frame, self.client_id)
        progress = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id}
        await self.sim.send("progress", progress, self.client_id)
        if png is not None and not with_metadata:
            image_format = JPEG_FORMAT if jpeg else PNG_FORMAT
            await self.sim.send_binary(struct.pack(">II", PREVIEW_IMAGE, image_format) + png, self.client_id)

    # --- planning -------------------------------------------------------------------------------------

    def _signatures(self) -> dict[str, str]:
        """Input signature per node (class, literal inputs, linked nodes' signatures), as the cache key."""
        memo: dict[str, str] = {}

        def signature(node_id: Any, stack: frozenset[Any]) -> str:
            if not isinstance(node_id, str) or node_id not in self.prompt or node_id in stack:
                return f"missing:{node_id!r}"
            if node_id in memo:
                return memo[node_id]
            node = self.prompt[node_id]
            inputs = node.get("inputs", {}) if isinstance(node.get("inputs"), dict) else {}
            parts: list[Any] = [node["class_type"]]
            for name in sorted(inputs):
                value = inputs[name]
                if isinstance(value, list) and len(value) == 2:
                    parts.append([name, signature(value[0], stack | {node_id}), value[1]])
                else:
                    parts.append([name, value])
            if node["class_type"] in nodes.ALWAYS_CHANGED:
                parts.append(time.time())
            changed = nodes.IS_CHANGED.get(node["class_type"])
            if changed is not None:
                parts.append(changed(inputs, self.sim.dirs))
            memo[node_id] = hashlib.sha256(
                json.dumps(parts, sort_keys=True, default=str).encode()
            ).hexdigest()
            return memo[node_id]

        return {
            node_id: signature(node_id, frozenset())
            for node_id, node in self.prompt.items()
            if isinstance(node, dict) and node.get("class_type") in nodes.IMPLEMENTATIONS
        }

    def _links(self, node_id: str) -> list[str]:
        class_info = self.sim.object_info[self.class_type(node_id)]
        inputs = self.prompt[node_id]["inputs"]
        linked = []
        for name, value in inputs.items():
            if input_info(class_info, name)[0] is not None and isinstance(value, list) and len(value) == 2:
                linked.append(value[0])
        return linked

    def _plan(self, cached: set[str]) -> list[str]:
        """Nodes in dependency order from each output: the ones to run, plus cached outputs to replay."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str, root: bool) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            if node_id in cached:
                if root:
                    order.append(node_id)
                return
            for linked in self._links(node_id):
                visit(linked, False)
            order.append(node_id)

        for output in self.outputs_to_execute:
            visit(output, True)
        return order

    def _durations(self, to_run: list[str]) -> dict[str, float]:
        """Spreads job_time over the nodes that run: samplers get 80 % (or steps x step_time)."""
        config = self.sim.config
        samplers = [n for n in to_run if self.class_type(n) in nodes.SAMPLERS]
        others = [n for n in to_run if n not in samplers]
        sampler_share = config.job_time * (0.8 if others else 1.0) / len(samplers) if samplers else 0.0
        other_share = config.job_time * (0.2 if samplers else 1.0) / len(others) if others else 0.0
        durations = {}
        for node_id in to_run:
            class_type = self.class_type(node_id)
            if class_type in nodes.SAMPLERS:
                base = sampler_share
                if config.step_time is not None:
                    base = config.step_time * int(self.prompt[node_id]["inputs"].get("steps", 1))
            else:
                base = other_share
            if class_type == "CheckpointLoaderSimple":
                checkpoint = str(self.prompt[node_id]["inputs"].get("ckpt_name", ""))
                if checkpoint != self.sim.loaded_checkpoint:
                    base += config.switch_time
                    self.sim.loaded_checkpoint = checkpoint
            extra = config.node_delay + config.class_delays.get(class_type, 0.0)
            durations[node_id] = (base + extra) / config.speed_factor
        return durations

    # --- running --------------------------------------------------------------------------------------

    async def execute(self) -> tuple[bool, list[list[Any]], dict[str, Any]]:
        """Runs the prompt; returns (success, status messages, history outputs/meta)."""
        sim = self.sim
        sim.interrupt_flag = False
        sim.client_id = self.extra_data.get("client_id", None)
        await self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        signatures = self._signatures()
        sim.cache.set_prompt(set(signatures.values()))
        cached = [
            node_id
            for node_id in self.prompt
            if node_id in signatures and sim.cache.get(signatures[node_id]) is not None
        ]
        await self.add_message(
            "execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, broadcast=False
        )
        for node_id in cached:
            entry = sim.cache.get(signatures[node_id])
            assert entry is not None
            self.values[node_id] = entry.outputs
        plan = self._plan(set(cached))
        to_run = [node_id for node_id in plan if node_id not in cached]
        durations = self._durations(to_run)
        drop_at, fail_at = self._draw_faults(to_run)
        log("prompt %s started: %d node(s) to run, %d cached", self.prompt_id, len(to_run), len(cached))
        try:
            for node_id in plan:
                if node_id in cached:
                    await self._replay(node_id, signatures[node_id])
                else:
                    await self._run_node(
                        node_id, signatures[node_id], durations[node_id], node_id == drop_at, fail_at
                    )
        except Interrupted:
            node_id = self._current
            self.outcome = f"interrupted at node {node_id} ({self.class_type(node_id)})"
            await self.add_message(
                "execution_interrupted",
                {
                    "prompt_id": self.prompt_id,
                    "node_id": node_id,
                    "node_type": self.class_type(node_id),
                    "executed": list(self.executed),
                },
                broadcast=True,
            )
            return False, self.messages, {"outputs": {}, "meta": {}}
        except NodeFailure as failure:
            error = failure.error
            self.outcome = (
                f"execution_error at node {failure.node_id} ({full_type_name(type(error))}: {error})"
            )
            await self.add_message(
                "execution_error",
                {
                    "prompt_id": self.prompt_id,
                    "node_id": failure.node_id,
                    "node_type": self.class_type(failure.node_id),
                    "executed": list(self.executed),
                    "exception_message": str(error),
                    "exception_type": full_type_name(type(error)),
                    "traceback": traceback.format_tb(error.__traceback__),
                    "current_inputs": failure.current_inputs,
                    "current_outputs": list(self.prompt),
                },
                broadcast=False,
            )
            return False, self.messages, {"outputs": {}, "meta": {}}
        finally:
            sim.last_node_id = None
        await self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)
        meta = {
            node_id: {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            for node_id in self.ui_outputs
        }
        return True, self.messages, {"outputs": self.ui_outputs, "meta": meta}

    def _draw_faults(self, to_run: list[str]) -> tuple[str | None, str | None]:
        """Per prompt: whether (and at which node) sockets drop, and whether a node fails."""
        config, rng = self.sim.config, self.sim.rng
        drop = config.ws_drop_rate > 0 and rng.random() < config.ws_drop_rate
        fail = config.error_rate > 0 and rng.random() < config.error_rate
        if not to_run:
            return None, None
        drop_at = to_run[len(to_run) // 2] if drop else None
        fail_at = None
        if fail:
            samplers = [n for n in to_run if self.class_type(n) in nodes.SAMPLERS]
            fail_at = samplers[0] if samplers else rng.choice(to_run)
        return drop_at, fail_at

    async def _replay(self, node_id: str, signature: str) -> None:
        """A cached output node: `executed` replays the earlier UI result; nothing runs, no new file."""
        entry = self.sim.cache.get(signature)
        assert entry is not None
        self.values[node_id] = entry.outputs
        if entry.ui:
            self.ui_outputs[node_id] = entry.ui
        if self.client_id is not None:
            await self.sim.send(
                "executed",
                {"node": node_id, "display_node": node_id, "output": entry.ui, "prompt_id": self.prompt_id},
                self.client_id,
            )
        await self._progress_finish(node_id)

    def _inputs(self, node_id: str) -> dict[str, Any]:
        """Declared inputs: literal values as validated, links resolved to the linked node's output."""
        class_info = self.sim.object_info[self.class_type(node_id)]
        inputs = self.prompt[node_id]["inputs"]
        values: dict[str, Any] = {}
        for name, value in inputs.items():
            input_type, category, _ = input_info(class_info, name)
            if input_type is None or category == "hidden":
                continue
            if isinstance(value, list) and len(value) == 2:
                linked = self.values.get(value[0])
                values[name] = linked[value[1]] if linked is not None else None
            else:
                values[name] = value
        return values

    def _current_inputs(self, node_id: str, values: dict[str, Any]) -> dict[str, list[Any]]:
        """`current_inputs` of an execution_error: each input as a one-element list, plus hidden ones."""
        formatted = {name: [nodes.describe(value)] for name, value in values.items()}
        hidden = self.sim.object_info[self.class_type(node_id)]["input"].get("hidden", {})
        for name, kind in hidden.items():
            if kind == "PROMPT":
                formatted[name] = [str(self.prompt)]
            elif kind == "EXTRA_PNGINFO":
                formatted[name] = [nodes.describe(self.extra_data.get("extra_pnginfo"))]
            elif kind == "UNIQUE_ID":
                formatted[name] = [node_id]
        return formatted

    async def _run_node(
        self, node_id: str, signature: str, duration: float, drop_sockets: bool, fail_at: str | None
    ) -> None:
        sim = self.sim
        class_type = self.class_type(node_id)
        self._current = node_id
        await self._progress_start(node_id)
        if self.client_id is not None:
            sim.last_node_id = node_id
            await sim.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                self.client_id,
            )
        values = self._inputs(node_id)
        self.check_interrupt()
        if drop_sockets:
            log("fault: dropping %d socket(s) during prompt %s", sim.abort_sockets(), self.prompt_id)
        context = _Context(self, node_id, duration)
        try:
            if node_id == fail_at:
                self._raise_injected(node_id, class_type)
            result = await nodes.IMPLEMENTATIONS[class_type](context, **values)
        except Interrupted:
            raise
        except Exception as error:
            raise NodeFailure(node_id, error, self._current_inputs(node_id, values)) from error
        self.values[node_id] = result.outputs
        sim.cache.store(signature, nodes.CacheEntry(result.outputs, result.ui))
        if result.ui:
            self.ui_outputs[node_id] = result.ui
            if self.client_id is not None:
                await sim.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": result.ui,
                        "prompt_id": self.prompt_id,
                    },
                    self.client_id,
                )
        await self._progress_finish(node_id)
        self.executed.append(node_id)

    def _raise_injected(self, node_id: str, class_type: str) -> None:
        kind = self.sim.config.error_kind
        log(
            "fault: injecting an %s error at node %s (%s) of prompt %s",
            kind,
            node_id,
            class_type,
            self.prompt_id,
        )
        if kind == "oom":
            raise OutOfMemoryError(
                "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
                "Currently allocated     : 7.62 GiB\nRequested               : 2.00 GiB\n"
                "Device limit            : 8.00 GiB\n[injected by the comfyui-simulator]"
            )
        raise Exception("Simulated node failure [injected by the comfyui-simulator]")


# How far a prompt's clock may fall behind the loop and still catch up: a host stall shorter than this is not
# added to the job; a longer one is (as a GPU that was itself held up).
CLOCK_SLACK = 0.1


class _Context:
    """The NodeContext given to a node implementation (see nodes.NodeContext)."""

    def __init__(self, run: PromptRun, node_id: str, duration: float) -> None:
        self._run = run
        self.node_id = node_id
        self.duration = duration
        self.prompt = run.prompt
        self.extra_data = run.extra_data
        # ComfyUI's set_preview_method: the prompt's choice, else (absent or "default") the server's.
        method = run.extra_data.get("preview_method")
        if method not in PREVIEW_METHODS or method == "default":
            method = run.sim.config.preview_method
        self.previews = method != "none"
        self.output_dir = run.sim.dirs["output"]
        self.temp_dir = run.sim.dirs["temp"]
        self.input_dir = run.sim.dirs["input"]

    async def sleep(self, seconds: float) -> None:
        """Advance the prompt's own clock by `seconds`: a GPU computes at its own pace, so the time this
        process spends between steps (sending progress, a busy host) is not added to the job's length."""
        loop = asyncio.get_running_loop()
        run = self._run
        run.clock = max(run.clock or loop.time(), loop.time() - CLOCK_SLACK) + seconds
        delay = run.clock - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def progress(
        self, value: int, total: int, preview: Image.Image | None = None, preview_format: str = "PNG"
    ) -> None:
        await self._run.report_progress(self.node_id, value, total, preview, preview_format)

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def random_letters(self, count: int) -> str:
        return "".join(self._run.sim.rng.choice(nodes.TEMP_LETTERS) for _ in range(count))
