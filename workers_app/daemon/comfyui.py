"""HTTP + WebSocket client for one ComfyUI server (see the ComfyUI protocol fact sheet).

One long-lived socket with a stable client id is read on its own thread and feeds a ``PromptTracker``;
``wait()`` follows one prompt from those events and falls back to polling ``/history`` and ``/queue``
when the socket is down or silent, so a dropped socket never strands a prompt. Every failure is a
``ComfyUIError`` that says whether a retry can help.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import requests
import websocket

from . import socket_images
from .http import environment_session
from .prompt_tracker import (
    OutcomeStatus,
    PromptOutcome,
    PromptState,
    PromptTracker,
    outcome_from_history,
    queue_position,
    sanitize_error,
)
from .socket_images import SocketImage

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 10
STABLE_CONNECTION = 5.0  # seconds a socket must stay up before a drop reconnects without delay
# Longest sleep of ``wait()`` between checks when nothing is due: the prompt's events, socket changes and
# ``wake()`` end it early, so this only bounds how late a missed wake-up could be noticed.
WAIT_TICK = 1.0
# The socket reader's receive timeout: it only re-checks the closing flag (``close()`` aborts the socket).
RECV_TIMEOUT = 5.0
RECV_CHUNK = 65536


class ComfyUIError(Exception):
    """Any ComfyUI failure. ``code`` is machine-readable; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool, code: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code
        self.details = details or {}

    def __repr__(self) -> str:
        return f"ComfyUIError({self.message!r}, code={self.code!r}, retryable={self.retryable})"


# -- pure parsing of POST /prompt answers --------------------------------------------------------------
def parse_prompt_response(status: int, body: Any, workflow: dict[str, Any]) -> str:
    """Return the prompt id of a ``POST /prompt`` answer, or raise ``ComfyUIError`` (protocol 3.1, 13.1)."""
    if status == 200 and isinstance(body, dict) and isinstance(body.get("prompt_id"), str):
        if body.get("node_errors"):
            message, details = describe_workflow_error({}, body["node_errors"], workflow)
            details["prompt_id"] = body["prompt_id"]
            raise ComfyUIError(
                f"some outputs failed validation: {message}",
                retryable=False,
                code="workflow_invalid",
                details=details,
            )
        return body["prompt_id"]
    if status == 400 and isinstance(body, dict):
        message, details = describe_workflow_error(body.get("error"), body.get("node_errors"), workflow)
        raise ComfyUIError(message, retryable=False, code="workflow_invalid", details=details)
    text = body if isinstance(body, str) else json.dumps(body)[:200]
    if status == 500:
        # A text 500 means ComfyUI could not parse the request (protocol 1, 11): retrying cannot help.
        raise ComfyUIError(
            f"ComfyUI rejected the request (HTTP 500: {_first_line(text)})",
            retryable=False,
            code="workflow_invalid",
            details={"status": status},
        )
    raise _status_error("POST /prompt", status, text)


def describe_workflow_error(
    error: Any, node_errors: Any, workflow: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """One readable message plus details (node id, class type, input, message) of a validation failure."""
    error = error if isinstance(error, dict) else {}
    errors = _flatten_node_errors(node_errors if isinstance(node_errors, dict) else {}, workflow)
    details: dict[str, Any] = {"error_type": error.get("type")}
    if errors:
        first = errors[0]
        details.update({k: first[k] for k in ("node_id", "node_type", "input")})
        details["errors"] = errors[:MAX_REPORTED_ERRORS]
        where = f"{first['node_type'] or 'node'} (node {first['node_id']})"
        if first["input"]:
            where += f" input {first['input']!r}"
        return f"{where}: {first['message']}", details
    message = str(error.get("message") or "ComfyUI rejected the workflow")
    extra = str(error.get("details") or "")
    node_id = _node_id_from_details(extra)
    if node_id is not None:
        details.update({"node_id": node_id, "node_type": _class_type(workflow, node_id)})
    if extra and extra != message:
        message = f"{message} ({extra})"
    return message, details


def _flatten_node_errors(node_errors: dict[str, Any], workflow: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        node_type = entry.get("class_type") or _class_type(workflow, node_id)
        for err in entry.get("errors") or []:
            if isinstance(err, dict):
                flat.append(_describe_one_error(str(node_id), node_type, err, workflow))
    return flat


def _describe_one_error(node_id: str, node_type: Any, err: dict[str, Any], workflow: dict[str, Any]) -> dict:
    extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
    err_type = str(err.get("type") or "")
    text = str(err.get("message") or err_type)
    detail = str(err.get("details") or "")
    input_name = extra.get("input_name")
    missing = _missing_node(detail) if err_type.startswith("exception_during") else None
    if missing is not None:
        # Filed under the node that links to the missing one; for the inner case input_name is the
        # *output* node's input (protocol 13.1), so find the real input from the workflow.
        input_name = _input_linking_to(workflow, node_id, missing)
        text = f"links to node {missing!r}, which is not in the workflow"
    elif err_type == "required_input_missing":
        input_name = input_name or detail or None
    elif detail and detail not in text:
        text = f"{text}: {detail}"
    described = {
        "node_id": node_id,
        "node_type": None if node_type is None else str(node_type),
        "input": input_name,
        "type": err_type,
        "message": text,
    }
    if err_type == "value_not_in_list" and isinstance(extra.get("received_value"), str):
        described["value"] = extra["received_value"]
    return described


def missing_model(details: dict[str, Any]) -> dict[str, str] | None:
    """The model file a refused prompt named that this ComfyUI lacks ({node_id, node_type, input, value}),
    when every error of the refusal is a model input's `value_not_in_list` (protocol 3.1); else None: a
    workflow another worker would refuse too."""
    errors = details.get("errors") or []
    if not errors or not all(_is_missing_model(err) for err in errors):
        return None
    first = errors[0]
    return {key: str(first[key]) for key in ("node_id", "node_type", "input", "value")}


def _is_missing_model(err: dict[str, Any]) -> bool:
    value, name = err.get("value"), err.get("input")
    if err.get("type") != "value_not_in_list" or not isinstance(value, str) or not err.get("node_type"):
        return False
    named = isinstance(name, str) and _MODEL_INPUT_NAME.fullmatch(name) is not None
    return named or value.endswith(_MODEL_EXTENSIONS)


def _missing_node(detail: str) -> str | None:
    match = re.fullmatch(r"'([^']+)'", detail.strip())
    return match.group(1) if match else None


def _input_linking_to(workflow: dict[str, Any], node_id: str, source_id: str) -> str | None:
    inputs = (workflow.get(node_id) or {}).get("inputs") or {}
    for name, value in inputs.items():
        if isinstance(value, list) and len(value) == 2 and str(value[0]) == source_id:
            return str(name)
    return None


def _node_id_from_details(extra: str) -> str | None:
    match = re.search(r"Node ID '#([^']+)'", extra)
    return match.group(1) if match else None


def _class_type(workflow: dict[str, Any], node_id: str) -> str | None:
    node = workflow.get(node_id)
    return node.get("class_type") if isinstance(node, dict) else None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else "empty body"


def _status_error(what: str, status: int, text: str = "") -> ComfyUIError:
    codes = {400: "bad_request", 403: "forbidden", 404: "not_found"}
    hint = " (Origin header mismatch?)" if status == 403 else ""
    return ComfyUIError(
        f"{what} answered HTTP {status}{hint}",
        retryable=status >= 500 or status == 429,
        code=codes.get(status, "http_error"),
        details={"status": status, "body": text[:200]},
    )


def _combo_options(spec: Any) -> list[str]:
    """Values of a combo input, old (``[[...], {...}]``) or new (``["COMBO", {"options": [...]}]``) style."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(v) for v in spec[0]]
        if len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
            return [str(v) for v in spec[1]["options"]]
    return []


# Inputs whose choices are model files (protocol 13.x): by name, or by options that look like model files.
_MODEL_INPUT_NAME = re.compile(
    r"(ckpt|lora|vae|control_net|unet|clip|clip_vision|style_model|gligen|hypernetwork|upscale_model|model)"
    r"_name\d*"
)
_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")


def model_inputs(object_info: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """The file lists of model inputs in ``/object_info``: {class_type: {input name: [file, …]}}."""
    found: dict[str, dict[str, list[str]]] = {}
    for class_type, node in object_info.items():
        declared = (node or {}).get("input") or {}
        for category in ("required", "optional"):
            for name, spec in (declared.get(category) or {}).items():
                if not (
                    isinstance(spec, list) and spec and (isinstance(spec[0], list) or spec[0] == "COMBO")
                ):
                    continue
                options = _combo_options(spec)
                if _MODEL_INPUT_NAME.fullmatch(name) or any(o.endswith(_MODEL_EXTENSIONS) for o in options):
                    found.setdefault(class_type, {})[name] = options
    return found


# The scheduler reads a worker's capabilities with its row on every call: keep the model lists small.
MODEL_INPUTS_BUDGET = 64 * 1024  # bytes of JSON


def fit_model_inputs(
    found: dict[str, dict[str, list[str]]], budget: int = MODEL_INPUTS_BUDGET
) -> dict[str, dict[str, list[str]]]:
    """``found`` without its longest lists until its JSON fits ``budget``; the inputs left out are not
    checked at submit (any worker with the node class may get the task), and a warning names them."""
    sizes = {
        (cls, name): len(json.dumps(files)) for cls, inputs in found.items() for name, files in inputs.items()
    }
    total = len(json.dumps(found))
    dropped = []
    for key in sorted(sizes, key=sizes.get, reverse=True):
        if total <= budget:
            break
        total -= sizes[key]
        dropped.append(key)
    if not dropped:
        return found
    logger.warning(
        "model lists too long to report, left out: %s", ", ".join(f"{c}.{n}" for c, n in dropped[:20])
    )
    return {
        cls: kept
        for cls, inputs in found.items()
        if (kept := {n: files for n, files in inputs.items() if (cls, n) not in dropped})
    }


def _required_input(object_info: dict[str, Any], class_type: str, name: str) -> Any:
    return (((object_info.get(class_type) or {}).get("input") or {}).get("required") or {}).get(name)


# -- the client -----------------------------------------------------------------------------------------
class ComfyUIClient:
    """Client of one ComfyUI server: HTTP via ``requests.Session``, events via one reconnecting socket."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        timeout: float = 10.0,
        connect_wait: float = 5.0,
        poll_interval: float = 1.0,
        silence_poll_after: float = 10.0,
        final_marker_wait: float = 2.0,
        history_retry_delays: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8),
        lost_after_unreachable: float = 60.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or f"t2i-worker-{uuid.uuid4().hex}"
        self.timeout = timeout
        self.connect_wait = connect_wait
        self.poll_interval = poll_interval
        self.silence_poll_after = silence_poll_after
        self.final_marker_wait = final_marker_wait
        self.history_retry_delays = tuple(history_retry_delays)
        self.lost_after_unreachable = lost_after_unreachable
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.session = session or environment_session(self.base_url)
        self.tracker = PromptTracker()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # socket state changes (wait_connected)
        self._waiters: dict[str, threading.Condition] = {}  # prompt id -> its wait(), same lock
        self._relays: dict[str, Callable[[dict[str, Any]], None]] = {}  # prompt id -> its frames' taker
        self._image_takers: dict[str, Callable[[str, SocketImage], None]] = {}  # prompt id -> its images'
        self._wakes = 0  # bumped by wake(): waiters re-check should_cancel
        self._closing = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ComfyUIClient({self.base_url!r}, client_id={self.client_id!r})"

    @property
    def ws_url(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={quote(self.client_id)}"

    @property
    def connections(self) -> int:
        """How many times the socket has connected: a change means ComfyUI may have restarted."""
        return self.tracker.generation

    @property
    def ws_connected(self) -> bool:
        return self.tracker.connected

    # -- plain HTTP ---------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            return self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise ComfyUIError(f"{method} {path} timed out", retryable=True, code="timeout") from exc
        except requests.RequestException as exc:
            raise ComfyUIError(
                f"ComfyUI at {self.base_url} is unreachable ({type(exc).__name__})",
                retryable=True,
                code="unreachable",
            ) from exc

    def _get_json(self, path: str, **kwargs: Any) -> Any:
        response = self._request("GET", path, **kwargs)
        if response.status_code != 200:
            raise _status_error(f"GET {path}", response.status_code, response.text)
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUIError(
                f"GET {path} returned invalid JSON", retryable=True, code="bad_response"
            ) from exc

    def _post_quiet(self, path: str, body: dict[str, Any]) -> None:
        """POST answered with an empty 200 (``/interrupt``, ``/queue``; no Content-Type, protocol 13.4)."""
        response = self._request("POST", path, json=body)
        if response.status_code != 200:
            raise _status_error(f"POST {path}", response.status_code, response.text)

    def system_stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._get_json("/system_stats", timeout=timeout)

    def object_info(self) -> dict[str, Any]:
        return self._get_json("/object_info", timeout=max(self.timeout, 30.0))

    def capabilities(self) -> dict[str, Any]:
        """The ``capabilities`` object of the scheduler's ``register`` call."""
        stats = self.system_stats()
        info = self.object_info()
        devices = stats.get("devices") or [{}]
        return {
            "comfyui_version": (stats.get("system") or {}).get("comfyui_version"),
            "device_name": devices[0].get("name"),
            "vram_total": devices[0].get("vram_total"),
            "checkpoints": _combo_options(_required_input(info, "CheckpointLoaderSimple", "ckpt_name")),
            "node_classes": sorted(info),
            "samplers": _combo_options(_required_input(info, "KSampler", "sampler_name")),
            "schedulers": _combo_options(_required_input(info, "KSampler", "scheduler")),
            "output_nodes": sorted(name for name, node in info.items() if (node or {}).get("output_node")),
            "model_inputs": fit_model_inputs(model_inputs(info)),
        }

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt, or None (unknown, pending and running give ``{}``)."""
        body = self._get_json(f"/history/{quote(prompt_id)}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) else None

    def queue(self) -> dict[str, Any]:
        body = self._get_json("/queue")
        return body if isinstance(body, dict) else {}

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        response = self._request(
            "GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type}
        )
        if response.status_code != 200:
            raise _status_error(f"GET /view {subfolder}/{filename}", response.status_code)
        if not response.content:
            raise ComfyUIError(
                f"GET /view {subfolder}/{filename} returned no bytes", retryable=True, code="bad_response"
            )
        return response.content

    def upload_image(self, data: bytes, name: str, subfolder: str = "") -> str:
        """POST /upload/image (protocol 3.6) with ``overwrite``; the name a LoadImage node then uses."""
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (name, data, "application/octet-stream")},
            data={"type": "input", "subfolder": subfolder, "overwrite": "true"},
        )
        if response.status_code != 200:
            raise _status_error(f"POST /upload/image {subfolder}/{name}", response.status_code, response.text)
        try:
            body = response.json()
            stored = f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else str(body["name"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ComfyUIError(
                "POST /upload/image returned no name", retryable=True, code="bad_response"
            ) from exc
        return stored

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt the prompt if it is the one running (a no-op otherwise)."""
        self._post_quiet("/interrupt", {"prompt_id": prompt_id})

    def delete_pending(self, prompt_ids: Iterable[str]) -> None:
        """Remove pending prompts from the queue (unknown and running ids are ignored)."""
        self._post_quiet("/queue", {"delete": list(prompt_ids)})

    def cancel(self, prompt_id: str) -> None:
        """Stop a prompt wherever it is: dequeue it if pending, then interrupt it if running."""
        self.delete_pending([prompt_id])
        self.interrupt(prompt_id)

    # -- submit ---------------------------------------------------------------------------------------
    def submit(
        self,
        workflow: dict[str, Any],
        *,
        on_frame: Callable[[dict[str, Any]], None] | None = None,
        on_image: Callable[[str, SocketImage], None] | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> str:
        """Queue a workflow and return its prompt id; the socket is connected first (protocol 5). Each
        socket message about the prompt is also given to ``on_frame``, and each image its nodes send as a
        binary frame to ``on_image(node_id, image)`` (both on the socket's thread: be quick). ``extra_data``
        goes with the prompt (e.g. ``preview_method``)."""
        self.connect()
        if not self.wait_connected(self.connect_wait):
            logger.warning("ComfyUI socket not connected; submitting anyway, progress comes from polling")
        prompt_id = str(uuid.uuid4())
        with self._cond:
            self.tracker.track(prompt_id)  # before the POST: events may beat its answer (protocol 13.5)
            self._take_frames(prompt_id, on_frame, on_image)
        body: dict[str, Any] = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            response = self._request("POST", "/prompt", json=body)
        except ComfyUIError:
            self._forget(prompt_id)
            raise
        answer = _json_or_text(response)
        try:
            real_id = parse_prompt_response(response.status_code, answer, workflow)
        except ComfyUIError as exc:
            self._forget(prompt_id)
            if queued := exc.details.get("prompt_id"):
                self._cancel_quietly(queued)  # 200 with node_errors: it was queued, but we treat it as failed
            raise
        if real_id != prompt_id:  # a server that ignores our prompt_id
            self._forget(prompt_id)
            with self._cond:
                self.tracker.track(real_id)
                self._take_frames(real_id, on_frame, on_image)
        logger.debug("ComfyUI queued prompt %s (number %s)", real_id, answer.get("number"))
        return real_id

    def _take_frames(
        self,
        prompt_id: str,
        on_frame: Callable[[dict[str, Any]], None] | None,
        on_image: Callable[[str, SocketImage], None] | None,
    ) -> None:
        if on_frame is not None:
            self._relays[prompt_id] = on_frame
        if on_image is not None:
            self._image_takers[prompt_id] = on_image

    def _forget(self, prompt_id: str) -> None:
        with self._cond:
            self.tracker.forget(prompt_id)
            self._relays.pop(prompt_id, None)
            self._image_takers.pop(prompt_id, None)

    def _cancel_quietly(self, prompt_id: str) -> None:
        try:
            self.cancel(prompt_id)
        except ComfyUIError as exc:
            logger.warning("could not cancel prompt %s in ComfyUI: %s", prompt_id, exc.message)

    # -- waiting for an outcome -------------------------------------------------------------------------
    def wait(
        self,
        prompt_id: str,
        *,
        on_start: Callable[[], None] | None = None,
        on_progress: Callable[[float, float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> PromptOutcome:
        """Follow a prompt to its end. Callbacks run on the caller's thread, never under the lock.

        When ``should_cancel()`` turns true the prompt is dequeued/interrupted here and the wait goes on
        until ComfyUI confirms (a dequeued prompt vanishes without events: it is reported as interrupted).
        Raises ``ComfyUIError(code="wait_timeout")`` after ``timeout`` seconds.
        """
        watch = _Watch(self, prompt_id, on_start, on_progress, should_cancel, timeout)
        with self._cond:
            self.tracker.track(prompt_id)
            self._waiters[prompt_id] = threading.Condition(self._lock)
        try:
            outcome = watch.run()
            with self._cond:
                state = self.tracker.get(prompt_id)
                gap = state is not None and state.socket_gap
            return replace(outcome, socket_gap=True) if gap else outcome
        finally:
            with self._cond:
                self._waiters.pop(prompt_id, None)
            self._forget(prompt_id)

    def wake(self) -> None:
        """Make every ``wait()`` re-check its ``should_cancel`` now (e.g. after a cancel request)."""
        with self._cond:
            self._wakes += 1
            self._notify_all()

    def _notify_all(self) -> None:
        self._cond.notify_all()
        for waiter in self._waiters.values():
            waiter.notify_all()

    def _snapshot(
        self, prompt_id: str, wait_for: float, seen: tuple[int, ...]
    ) -> tuple[PromptState, bool, int, tuple[int, ...]]:
        """Wait up to ``wait_for`` for news unless some arrived since ``seen``, then copy the prompt's state
        (under the lock). Returns the copy, whether the socket is up, its generation and the new ``seen``."""
        with self._cond:
            state = self.tracker.track(prompt_id)
            if wait_for > 0 and self._seen(state) == seen:
                waiter = self._waiters.get(prompt_id) or self._cond
                waiter.wait(wait_for)
                state = self.tracker.track(prompt_id)
            copy = replace(state, images=list(state.images))
            return copy, self.tracker.connected, self.tracker.generation, self._seen(state)

    def _seen(self, state: PromptState) -> tuple[int, ...]:
        return state.seq, int(self.tracker.connected), self.tracker.generation, self._wakes

    def _mark_started(self, prompt_id: str) -> None:
        with self._cond:
            self.tracker.mark_started(prompt_id)

    def _history_with_retry(self, prompt_id: str) -> dict[str, Any] | None:
        """``GET /history/{id}`` retried briefly: it can still be ``{}`` right after the terminal event."""
        for delay in (*self.history_retry_delays, None):
            try:
                entry = self.history(prompt_id)
            except ComfyUIError as exc:
                if not exc.retryable:
                    raise
                entry = None
            if entry is not None or delay is None:
                return entry
            time.sleep(delay)
        return None

    # -- the socket -------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start the socket thread (idempotent); it keeps reconnecting until ``close()``."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing.clear()
            self._thread = threading.Thread(target=self._ws_loop, name="comfyui-ws", daemon=True)
            self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.tracker.connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def close(self) -> None:
        """Stop the socket thread and close the socket."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            ws.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.session.close()

    def _ws_loop(self) -> None:
        """Connect, read until the socket drops, reconnect with capped exponential backoff."""
        delay = self.reconnect_initial
        failures = 0
        while not self._closing.is_set():
            try:
                # UTF-8 is checked by json.loads; websocket-client's own check is a per-byte Python loop.
                ws = websocket.create_connection(
                    self.ws_url, timeout=self.timeout, skip_utf8_validation=True, class_=_BufferedWebSocket
                )
            except (websocket.WebSocketException, OSError) as exc:
                failures += 1
                log = logger.warning if failures == 1 else logger.debug
                log("ComfyUI socket %s: connect failed (%s); retrying in %.1fs", self.ws_url, exc, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            if self.tracker.generation:
                logger.info("ComfyUI socket reconnected")
            failures = 0
            connected_at = time.monotonic()
            self._serve(ws)
            if time.monotonic() - connected_at < STABLE_CONNECTION:
                self._closing.wait(delay)  # dropped right after connecting: do not hammer the server
                delay = min(delay * 2, self.reconnect_max)
            else:
                delay = self.reconnect_initial

    def _serve(self, ws: websocket.WebSocket) -> None:
        ws.settimeout(RECV_TIMEOUT)
        with self._cond:
            self._ws = ws
            self.tracker.on_connect()
            self._notify_all()
        try:
            if not self._closing.is_set():  # close() may have run before self._ws was set
                self._announce_features(ws)
                self._read_until_closed(ws)
        finally:
            with self._cond:
                self._ws = None
                self.tracker.on_disconnect()
                self._notify_all()
            ws.shutdown()  # always close the old socket before a reconnect with the same id (protocol 4.7)

    def _read_until_closed(self, ws: websocket.WebSocket) -> None:
        while not self._closing.is_set():
            try:
                opcode, payload = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError, AttributeError) as exc:
                if not self._closing.is_set():
                    logger.warning("ComfyUI socket dropped (%s); falling back to polling", type(exc).__name__)
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                logger.warning("ComfyUI closed the socket; falling back to polling")
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_text(payload)
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self._on_binary(payload)

    @staticmethod
    def _announce_features(ws: websocket.WebSocket) -> None:
        """Ask for binary image frames that name their node and prompt (protocol 4.2, 4.6); a ComfyUI that
        does not know the message ignores it and sends frames that name neither."""
        with contextlib.suppress(websocket.WebSocketException, OSError):  # the read sees a dropped socket
            ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))

    def _on_binary(self, payload: bytes) -> None:
        image = socket_images.parse(payload)
        if image is None:
            return
        with self._cond:
            source = self.tracker.image_source(image.prompt_id, image.node_id)
            taker = self._image_takers.get(source[0]) if source is not None else None
            if taker is not None:
                taker(source[1], image)

    def _on_text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            logger.debug("ignoring a non-JSON text frame from ComfyUI")
            return
        if not isinstance(msg, dict):
            return
        if logger.isEnabledFor(logging.DEBUG) and msg.get("type") not in ("progress_state", "progress"):
            data = msg.get("data")
            logger.debug(
                "ws %s %s", msg.get("type"), _brief(sanitize_error(data) if isinstance(data, dict) else data)
            )
        with self._cond:
            about = self.tracker.feed(msg)
            relay = self._relays.get(about) if about is not None else None
            if relay is not None:
                relay(msg)
            changed = self.tracker.changed
            for prompt_id in changed:
                waiter = self._waiters.get(prompt_id)
                if waiter is not None:
                    waiter.notify_all()
            changed.clear()


class _BufferedWebSocket(websocket.WebSocket):
    """Reads the socket in large chunks: websocket-client asks for each frame's header, length and payload
    separately (three system calls per message); a burst of small messages now costs one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = b""
        self._offset = 0

    def _recv(self, bufsize: int) -> bytes:
        if self._offset >= len(self._chunk):
            self._chunk, self._offset = super()._recv(RECV_CHUNK), 0
        start = self._offset
        self._offset = min(start + bufsize, len(self._chunk))
        return self._chunk[start : self._offset]


class _Watch:
    """The loop behind ``ComfyUIClient.wait`` for one prompt (protocol 5, recommended logic)."""

    def __init__(
        self,
        client: ComfyUIClient,
        prompt_id: str,
        on_start: Callable[[], None] | None,
        on_progress: Callable[[float, float], None] | None,
        should_cancel: Callable[[], bool] | None,
        timeout: float | None,
    ) -> None:
        self.client = client
        self.prompt_id = prompt_id
        self.on_start = on_start
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.started_reported = False
        self.progress_seen = 0
        self.cancel_sent = False
        self.terminal_at: float | None = None
        self.last_poll = time.monotonic()
        self.polled_generation = -1
        self.unreachable_since: float | None = None

    def run(self) -> PromptOutcome:
        wait_for, seen = 0.0, ()
        while True:
            state, connected, generation, seen = self.client._snapshot(self.prompt_id, wait_for, seen)
            self._report(state)
            self._maybe_cancel()
            now = time.monotonic()
            if state.terminal and self.terminal_at is None:
                self.terminal_at = now
            if state.finished or (
                self.terminal_at and now - self.terminal_at >= self.client.final_marker_wait
            ):
                outcome = self._resolve(state)
                if outcome is not None:
                    return outcome
            if self.deadline is not None and now >= self.deadline:
                raise ComfyUIError(
                    f"prompt {self.prompt_id} did not finish in time",
                    retryable=True,
                    code="wait_timeout",
                    details={"prompt_id": self.prompt_id},
                )
            if self._poll_due(state, connected, generation, now):
                self.polled_generation = generation
                outcome = self._poll()
                if outcome is not None:
                    return outcome
            wait_for = self._next_wait(state, connected, time.monotonic())

    def _next_wait(self, state: PromptState, connected: bool, now: float) -> float:
        """Seconds until the next timed check (poll, final marker, deadline), at most ``WAIT_TICK``."""
        if not connected or self.cancel_sent:
            due = self.last_poll + self.client.poll_interval
        else:
            due = max(state.last_event_at, self.last_poll) + self.client.silence_poll_after
        if self.terminal_at is not None:
            due = min(due, self.terminal_at + self.client.final_marker_wait)
        if self.deadline is not None:
            due = min(due, self.deadline)
        return min(max(due - now, 0.01), WAIT_TICK)

    def _report(self, state: PromptState) -> None:
        if state.started and not self.started_reported:
            self.started_reported = True
            if self.on_start:
                self.on_start()
        if state.progress_seq != self.progress_seen and state.progress is not None:
            self.progress_seen = state.progress_seq
            if self.on_progress:
                self.on_progress(*state.progress)

    def _maybe_cancel(self) -> None:
        if self.cancel_sent or self.should_cancel is None or not self.should_cancel():
            return
        self.cancel_sent = True
        logger.debug("cancelling prompt %s in ComfyUI", self.prompt_id)
        self.client._cancel_quietly(self.prompt_id)
        self.last_poll = 0.0  # a dequeued prompt sends no event at all: poll right away

    def _poll_due(self, state: PromptState, connected: bool, generation: int, now: float) -> bool:
        since_poll = now - self.last_poll
        if not connected or self.cancel_sent:
            return since_poll >= self.client.poll_interval
        if generation != self.polled_generation and self.polled_generation >= 0:
            return True  # reconnected: events may have been lost while the socket was down
        self.polled_generation = generation
        quiet = now - max(state.last_event_at, self.last_poll)
        return quiet >= self.client.silence_poll_after

    def _poll(self) -> PromptOutcome | None:
        """Look the prompt up by id: history, then queue, then history again (it may finish in between)."""
        self.last_poll = time.monotonic()
        try:
            entry = self.client.history(self.prompt_id)
            if entry is None:
                where = queue_position(self.client.queue(), self.prompt_id)
                if where == "running":
                    self.client._mark_started(self.prompt_id)
                if where is None:
                    entry = self.client.history(self.prompt_id)
                    if entry is None:
                        return self._vanished()
        except ComfyUIError as exc:
            return self._unreachable(exc)
        self.unreachable_since = None
        return None if entry is None else outcome_from_history(self.prompt_id, entry)

    def _vanished(self) -> PromptOutcome:
        if self.cancel_sent:  # we dequeued it ourselves
            return PromptOutcome(
                OutcomeStatus.INTERRUPTED,
                self.prompt_id,
                source="poll",
                exception_message="removed from the ComfyUI queue",
            )
        return PromptOutcome(
            OutcomeStatus.LOST,
            self.prompt_id,
            source="poll",
            exception_message="prompt is in neither the ComfyUI queue nor its history",
        )

    def _unreachable(self, exc: ComfyUIError) -> PromptOutcome | None:
        if not exc.retryable:
            raise exc
        now = time.monotonic()
        self.unreachable_since = self.unreachable_since or now
        if now - self.unreachable_since < self.client.lost_after_unreachable:
            return None
        return PromptOutcome(
            OutcomeStatus.LOST,
            self.prompt_id,
            source="poll",
            exception_message=f"ComfyUI unreachable for {now - self.unreachable_since:.0f}s",
        )

    def _resolve(self, state: PromptState) -> PromptOutcome | None:
        entry = self.client._history_with_retry(self.prompt_id)
        if entry is not None:
            return outcome_from_history(self.prompt_id, entry)
        ws_outcome = state.ws_outcome()
        if ws_outcome is not None:
            logger.warning("history of %s still empty; using the socket's events", self.prompt_id)
            return ws_outcome
        return self._poll()


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _brief(data: Any) -> str:
    text = json.dumps(data, default=str)
    return text if len(text) <= 200 else text[:200] + "…"
