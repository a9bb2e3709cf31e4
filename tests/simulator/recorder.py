"""A client that talks to a (simulated) ComfyUI and records what it sees in the trace line format.

HTTP goes through `requests` (no Origin header, like the capture's urllib); sockets through
websocket-client 1.9.2 with one reader thread each, as in the capture script. `lines` can be fed to
traces.normalize() and compared with a recorded trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
import websocket
from PIL import Image

TIMEOUT = 10.0


def describe_image(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        size = list(image.size)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "png_size": size}


class Recorder:
    """Records HTTP exchanges and socket frames; `wait_for` blocks until a matching socket line arrives."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.lines: list[dict[str, Any]] = []
        self.sockets: dict[str, websocket.WebSocket] = {}
        self._readers: dict[str, threading.Thread] = {}
        self._closing: set[str] = set()
        self._cond = threading.Condition()
        self._t0 = time.monotonic()

    def _add(self, kind: str, **fields: Any) -> dict[str, Any]:
        line = {"t_ms": round((time.monotonic() - self._t0) * 1000, 1), "dir": kind, **fields}
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()
        return line

    # --- HTTP -----------------------------------------------------------------------------------------

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: str | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """Sends one request (JSON `body`, or a `raw` text body) and returns the recorded response line."""
        request: dict[str, Any] = {"method": method, "path": path}
        kwargs: dict[str, Any] = {"timeout": TIMEOUT}
        if raw is not None:
            request.update(body_text=raw, content_type=content_type)
            kwargs.update(data=raw.encode(), headers={"Content-Type": content_type or "text/plain"})
        elif body is not None:
            request["body"] = body
            kwargs["json"] = body
        self._add("http_request", **request)
        try:
            response = requests.request(method, self.base_url + path, **kwargs)
        except requests.ConnectionError as error:
            return self._add(
                "http_response", method=method, path=path, status=None, error=repr(error), body=None
            )
        content_type_header = response.headers.get("Content-Type", "")
        fields: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": response.status_code,
            "content_type": content_type_header,
        }
        if "Content-Disposition" in response.headers:
            fields["content_disposition"] = response.headers["Content-Disposition"]
        if content_type_header.startswith("image/"):
            fields["body"] = describe_image(response.content)
            fields["raw"] = response.content
        elif not response.content:
            fields["body"] = ""
        else:
            try:
                fields["body"] = response.json()
            except ValueError:
                fields["body"] = response.text
        return self._add("http_response", **fields)

    def post_prompt(self, body: Any) -> dict[str, Any]:
        return self.http("POST", "/prompt", body)

    # --- WebSocket ------------------------------------------------------------------------------------

    def connect(
        self, label: str, client_id: str | None = "trace-client", feature_flags: bool = False
    ) -> None:
        path = "/ws" if client_id is None else f"/ws?clientId={client_id}"
        url = self.base_url.replace("http://", "ws://", 1) + path
        ws = websocket.create_connection(url, timeout=TIMEOUT)
        self.sockets[label] = ws
        self._add("ws_connect", ws=label, path=path, handshake_status=ws.getstatus())
        if feature_flags:
            message = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            ws.send(json.dumps(message))
            self._add("ws_send", ws=label, msg=message)
        reader = threading.Thread(target=self._read, args=(label, ws), name=f"recorder-{label}", daemon=True)
        self._readers[label] = reader
        reader.start()

    def _read(self, label: str, ws: websocket.WebSocket) -> None:
        while True:
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as error:
                if label in self._closing:
                    self._add("ws_close", ws=label, initiator="client", how="close_frame", close_code=1000)
                else:
                    self._add(
                        "ws_close", ws=label, initiator="server", how="exception", exception=repr(error)
                    )
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._add("ws_text", ws=label, msg=json.loads(data.decode("utf-8")))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self._add("ws_binary", ws=label, **_binary_fields(data))
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                initiator = "client" if label in self._closing else "server"
                self._add("ws_close", ws=label, initiator=initiator, how="close_frame", close_code=1000)
                return

    def close(self, label: str) -> None:
        """Closes a socket with a close frame (code 1000) and waits for its reader to finish."""
        ws = self.sockets.pop(label)
        self._closing.add(label)
        self._add("ws_client_close", ws=label, close_code=1000)
        with contextlib.suppress(Exception):  # the server may have dropped it already
            ws.send_close()
        self._readers.pop(label).join(TIMEOUT)
        ws.shutdown()

    def close_all(self) -> None:
        for label in list(self.sockets):
            self.close(label)

    # --- waiting --------------------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first recorded line (any time) matching `predicate`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting; last lines: {self.lines[-5:]}")
                self._cond.wait(remaining)

    def wait_count(
        self, predicate: Callable[[dict[str, Any]], bool], count: int, timeout: float = TIMEOUT
    ) -> list[dict[str, Any]]:
        """The recorded lines matching `predicate` once there are at least `count`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found := [line for line in self.lines if predicate(line)]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {count} lines, have {len(found)}")
                self._cond.wait(remaining)
            return found

    def wait_event(self, event: str, ws: str | None = None, timeout: float = TIMEOUT, **data: Any) -> dict:
        """Waits for a text event of type `event` whose data contains the given items."""

        def matches(line: dict[str, Any]) -> bool:
            if line["dir"] != "ws_text" or (ws is not None and line["ws"] != ws):
                return False
            msg = line["msg"]
            return msg["type"] == event and all(
                msg["data"].get(key, object()) == value for key, value in data.items()
            )

        return self.wait_for(matches, timeout)["msg"]

    def events(self, ws: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [
                line["msg"] for line in self.lines if line["dir"] == "ws_text" and ws in (None, line["ws"])
            ]

    def binaries(self, ws: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [line for line in self.lines if line["dir"] == "ws_binary" and ws in (None, line["ws"])]


def _binary_fields(data: bytes) -> dict[str, Any]:
    event_type = struct.unpack(">I", data[:4])[0]
    fields: dict[str, Any] = {"event_type": event_type, "bytes": len(data), "header": data[:16].hex()}
    if event_type == 1:
        fields["image_format"] = struct.unpack(">I", data[4:8])[0]
        fields["image"] = describe_image(data[8:])
        fields["raw_image"] = data[8:]
    elif event_type == 4:
        length = struct.unpack(">I", data[4:8])[0]
        fields["metadata"] = json.loads(data[8 : 8 + length].decode("utf-8"))
        fields["image"] = describe_image(data[8 + length :])
        fields["raw_image"] = data[8 + length :]
    return fields
