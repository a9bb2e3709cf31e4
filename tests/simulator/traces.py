"""Loading the recorded ComfyUI traces (tests/fixtures/comfyui_traces) and normalising them for comparison.

A trace is a list of JSON lines (see the README in the fixtures folder). `normalize()` turns the lines of a
trace, or of a recording of the simulator in the same format (recorder.py), into a comparable form:
prompt ids become P0, P1... in order of appearance, timestamps become "<ts>", `number` values become
offsets from the scenario's first number, tracebacks and printed tensors become their shape. What stays
must match exactly: event types and order, node ids, progress values, queue counts, file names, HTTP
statuses, content types and bodies.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TRACES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui_traces"
SCENARIOS = (
    "success",
    "cached_resubmit",
    "batch2",
    "validation_errors",
    "execution_error",
    "interrupt_running",
    "delete_pending",
    "ws_reconnect_midrun",
    "no_client_id",
    "progress_savews",
    "progress_savews_metadata",
    "restart_lost",
)
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def load_trace(name: str) -> list[dict[str, Any]]:
    """The lines of `<name>.jsonl`, in recorded order."""
    path = TRACES_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_json(name: str) -> Any:
    return json.loads((TRACES_DIR / name).read_text(encoding="utf-8"))


def http_requests(
    lines: list[dict[str, Any]], method: str | None = None, path: str | None = None
) -> list[dict]:
    """The `http_request` lines, optionally filtered by method and exact path."""
    return [
        line
        for line in lines
        if line["dir"] == "http_request"
        and (method is None or line["method"] == method)
        and (path is None or line["path"] == path)
    ]


def prompt_bodies(lines: list[dict[str, Any]]) -> list[Any]:
    """The JSON bodies sent to POST /prompt (as the trace's client sent them), in order."""
    return [line["body"] for line in http_requests(lines, "POST", "/prompt") if "body" in line]


def ws_messages(lines: list[dict[str, Any]], ws: str | None = None) -> list[dict[str, Any]]:
    return [line["msg"] for line in lines if line["dir"] == "ws_text" and (ws is None or line["ws"] == ws)]


# --- normalisation --------------------------------------------------------------------------------------


def _number_base(lines: list[dict[str, Any]]) -> int:
    """The number the scenario's first POST /prompt got: the first visible number minus the numbers used
    by earlier POSTs (every JSON body without an explicit `number` uses one, rejected ones included)."""
    used = 0
    pending_request: dict[str, Any] | None = None
    for line in lines:
        if line["dir"] == "http_request" and line["method"] == "POST" and line["path"].endswith("/prompt"):
            pending_request = line
        elif (
            line["dir"] == "http_response"
            and pending_request is not None
            and line["path"].endswith("/prompt")
        ):
            body = line.get("body")
            if isinstance(body, dict) and "number" in body:
                return int(body["number"]) - used
            request_body = pending_request.get("body")
            if "body" in pending_request and not (
                isinstance(request_body, dict) and "number" in request_body
            ):
                used += 1
            pending_request = None
    return 0


class _Normalizer:
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.ids: dict[str, str] = {}
        self.base = _number_base(lines)
        for line in lines:  # prompt ids in order of first appearance in POST /prompt answers
            body = line.get("body")
            if line["dir"] == "http_response" and isinstance(body, dict) and "prompt_id" in body:
                self._id(body["prompt_id"])

    def _id(self, value: str) -> str:
        return self.ids.setdefault(value, f"P{len(self.ids)}")

    def text(self, value: str) -> str:
        return UUID_RE.sub(lambda match: self._id(match.group(0)), value)

    def value(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return self.mapping(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def mapping(self, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = self.text(key)
            if key == "timestamp":
                out[key] = "<ts>"
            elif key == "traceback" and isinstance(value, list):
                out[key] = "<traceback>"
            elif key == "exception_message" and isinstance(value, str):
                out[key] = value.splitlines()[0] if value else value
            elif key == "current_inputs" and isinstance(value, dict):
                out[key] = sorted(value)
            elif key in ("current_outputs", "executed") and isinstance(value, list):
                out[key] = sorted(self.value(value))
            elif key == "number" and isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = value - self.base
            elif key in ("prompt", "queue_running", "queue_pending") and isinstance(value, list):
                out[key] = self.queue_items(key, value)
            elif key == "sid" and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value):
                out[key] = "<sid>"
            else:
                out[key] = self.value(value, key)
        return out

    def queue_items(self, key: str, value: list[Any]) -> list[Any]:
        """History `prompt` is one 5-element item; queue lists hold several. Their number is relative."""
        items = [value] if key == "prompt" else value
        normalized = []
        for item in items:
            item = self.value(item)
            if isinstance(item, list) and len(item) == 5 and isinstance(item[0], int | float):
                item = [item[0] - self.base, *item[1:]]
            normalized.append(item)
        return normalized[0] if key == "prompt" else normalized


def _shape(value: Any) -> Any:
    """Only the key structure (for answers whose values legitimately differ, like /system_stats)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return "<value>"


def normalize(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """{"ws": {label: [events]}, "http": [exchanges]}; repeated identical polls count once."""
    norm = _Normalizer(lines)
    ws: dict[str, list[Any]] = {}
    http: list[Any] = []
    request: dict[str, Any] | None = None
    for line in lines:
        kind = line["dir"]
        if kind == "ws_text":
            ws.setdefault(line["ws"], []).append(norm.value(line["msg"]))
        elif kind == "ws_binary":
            event: dict[str, Any] = {
                "binary": line["event_type"],
                "png_size": line.get("image", {}).get("png_size"),
            }
            if "image_format" in line:
                event["image_format"] = line["image_format"]
            if "metadata" in line:
                event["metadata"] = norm.value(line["metadata"])
            ws.setdefault(line["ws"], []).append(event)
        elif kind == "ws_close":
            ws.setdefault(line["ws"], []).append({"closed_by": line["initiator"], "how": line["how"]})
        elif kind == "http_request":
            request = line
        elif kind == "http_response":
            assert request is not None
            http.append(_exchange(norm, request, line))
            request = None
    collapsed: list[Any] = []
    for exchange in http:
        if not collapsed or collapsed[-1] != exchange:
            collapsed.append(exchange)
    return {"ws": ws, "http": collapsed}


def _exchange(norm: _Normalizer, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    path = norm.text(request["path"])
    body = response.get("body")
    if path.split("?")[0].endswith("/system_stats"):
        body = _shape(body)
    elif isinstance(body, dict) and "sha256" in body:
        body = {"png_size": body.get("png_size")}
    else:
        body = norm.value(body)
    exchange = {
        "request": [request["method"], path, norm.value(request.get("body", request.get("body_text")))],
        "status": response["status"],
        "content_type": response.get("content_type"),
        "body": body,
    }
    if response.get("content_disposition"):
        exchange["content_disposition"] = response["content_disposition"]
    if response["status"] is None:
        exchange["error"] = "connection failed"
    return exchange
