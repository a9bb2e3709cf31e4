"""HTTP client of the scheduler's worker API (docs/worker-api.md). Never logs or shows the token."""

from __future__ import annotations

import gzip
import hashlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import requests

from .http import environment_session
from .worker_socket import SocketDown, WorkerSocket

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/worker/"
PROTOCOL_VERSION = 3  # sent on every request; docs/worker-api.md has the history
PROTOCOL_HEADER = "T2I-Protocol"
SOCKET_PROTOCOL = 3  # a scheduler that speaks it has the worker socket
SOCKET_PATH = "socket"
# Answers that say "this instance cannot serve you now": the next call goes to the next URL.
FAILOVER_STATUSES = frozenset({502, 503, 504})


class SchedulerError(Exception):
    """A scheduler answer the daemon cannot use as is (e.g. 400 ``invalid``); not retryable."""

    retryable = False

    def __init__(self, message: str, *, code: str = "error", status: int | None = None, fields: Any = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.fields = fields or {}


class SchedulerUnavailable(SchedulerError):
    """Connection error, timeout or 5xx: try again later."""

    retryable = True


class AuthError(SchedulerError):
    """401: no or wrong token. The daemon stops."""


class WorkerDisabled(SchedulerError):
    """403 ``worker_disabled``: an operator disabled this worker; idle and retry slowly."""

    retryable = True


class LeaseLost(SchedulerError):
    """409 ``lease_lost``: the task is no longer ours; abandon it and report nothing."""


class RegisterRequired(SchedulerError):
    """409 ``register_required``: call ``register`` again."""

    retryable = True


class ProtocolUnsupported(SchedulerError):
    """400 ``protocol_unsupported``: the scheduler does not speak this daemon's protocol. The daemon stops."""


def scheduler_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The scheduler base URLs in ``value`` (comma-separated, or a list): checked, without a trailing slash,
    empty entries and repeats dropped. Raises ValueError naming the bad entry."""
    entries = value.split(",") if isinstance(value, str) else value
    urls: list[str] = []
    for entry in entries:
        if not entry.strip():
            continue
        _check_url(entry.strip())
        url = entry.strip().rstrip("/")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError("no scheduler URL given")
    return tuple(urls)


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL ({exc})") from None
    if "@" in parts.netloc:  # not echoed: it may hold a password
        raise ValueError(
            f"the scheduler URL for {parts.hostname} carries credentials; the token is the credential"
        )
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must be a base URL, without a query or fragment")


@dataclass(frozen=True)
class Registration:
    worker_id: int | None
    name: str
    status: str
    heartbeat_interval: float
    lease_seconds: float
    # "have": the scheduler stores the /object_info the capabilities named; "send": object_info() it;
    # None: a scheduler older than this, or no digest was sent.
    object_info: str | None = None


@dataclass(frozen=True)
class InventoryReply:
    changed: bool
    object_info: str | None = None  # as Registration.object_info


@dataclass(frozen=True)
class HeartbeatReply:
    worker_status: str
    renewed: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LeasedTask:
    """One leased task, as ``POST lease`` returns it."""

    task_id: str
    lease_token: str = field(repr=False)
    workflow: dict[str, Any] = field(repr=False)
    attempt: int = 1
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    filename_prefix: str = ""
    lease_expires_at: str | None = None
    relay_frames: bool = False  # a ComfyUI front-door client follows it: send its socket frames (frames())
    checkpoint: str = ""
    # The client's `extra_data.preview_method` for its ComfyUI ("" leaves ComfyUI's own setting).
    preview_method: str = ""
    # Uploaded images its LoadImage nodes name: {sha256, name, subfolder} (fetch with input_image()).
    inputs: tuple[dict[str, str], ...] = ()
    # Seconds the scheduler expects it to take from ComfyUI's start to its end (None: it cannot tell).
    expected_seconds: float | None = None
    waited: float = 0.0  # seconds the scheduler held the request waiting for work (its Server-Timing)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> LeasedTask:
        try:
            return cls(
                task_id=str(body["task_id"]),
                lease_token=str(body["lease_token"]),
                workflow=dict(body["workflow"]),
                attempt=int(body.get("attempt") or 1),
                width=body.get("width"),
                height=body.get("height"),
                batch_size=int(body.get("batch_size") or 1),
                filename_prefix=str(body.get("filename_prefix") or ""),
                lease_expires_at=body.get("lease_expires_at"),
                relay_frames=body.get("relay_frames") is True,
                checkpoint=str(body.get("checkpoint") or ""),
                preview_method=str(body.get("preview_method") or ""),
                inputs=tuple(
                    {k: str(item[k]) for k in ("sha256", "name", "subfolder")}
                    for item in body.get("inputs") or ()
                ),
                expected_seconds=_seconds(body.get("expected_seconds")),
                raw=body,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchedulerError(f"malformed lease answer ({exc!r})", code="bad_response") from exc

    @classmethod
    def carried(cls, answer: dict[str, Any]) -> LeasedTask | None:
        """The lease a completion's answer carries in ``next``, if any."""
        following = answer.get("next")
        return cls.from_json(following) if isinstance(following, dict) else None


class SchedulerClient:
    """The worker API: register, heartbeat, lease, start, progress, complete, fail, release, offline.

    ``base_url`` may name several scheduler instances (one database): calls stick to one URL and move to the
    next after a connection error, a timeout or a 502/503/504, which still raises ``SchedulerUnavailable``
    so that the caller's retry goes to the next URL. Thread-safe."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str,
        *,
        timeout: float = 15.0,
        session: requests.Session | None = None,
    ):
        self.base_urls = scheduler_urls(base_url)
        self.timeout = timeout
        # One keep-alive session per URL (proxy rules are per host); a given ``session`` serves them all.
        # No ~/.netrc: its Basic auth would replace the Bearer token.
        self._sessions = [session or environment_session(url, netrc=False) for url in self.base_urls]
        for each in self._sessions:
            each.headers["Authorization"] = f"Bearer {token}"
            each.headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
        self._protocols: list[int | None] = [None] * len(self.base_urls)
        self._sockets: list[WorkerSocket | None] = [None] * len(self.base_urls)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The URL calls go to now."""
        return self.base_urls[self._current]

    @property
    def server_protocol(self) -> int | None:
        """The protocol version the current URL's last answer declared (None: no header, protocol 1)."""
        return self._protocols[self._current]

    @property
    def socket_open(self) -> bool:
        """Whether the current URL's worker socket (protocol 3) is open now."""
        socket = self._sockets[self._current]
        return socket is not None and socket.is_open

    def __repr__(self) -> str:
        return f"SchedulerClient({self.base_url!r})"

    def close(self) -> None:
        for each in self._sessions:
            each.close()
        for socket in self._sockets:
            if socket is not None:
                socket.close()

    # -- transport ------------------------------------------------------------------------------------
    def _call(
        self, path: str, *, json: Any = None, timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        index = self._current
        url = f"{self.base_urls[index]}{API_PREFIX}{path}"
        try:
            response = self._sessions[index].post(url, json=json, timeout=timeout or self.timeout, **kwargs)
        except requests.RequestException as exc:
            self._fail_over(index)
            raise SchedulerUnavailable(
                f"scheduler unreachable: POST {path} ({type(exc).__name__})", code="unreachable"
            ) from exc
        self._protocols[index] = _protocol_of(response)
        if response.status_code in FAILOVER_STATUSES:
            self._fail_over(index)
        if response.status_code >= 400:
            raise _error_for(path, response)
        return response

    def _socket_post(self, op: str, path: str, body: dict[str, Any], *, task_id: str = "") -> dict[str, Any]:
        """``op`` on the worker socket when the scheduler has one (protocol 3), else ``POST path``; the same
        answers and errors either way."""
        index = self._current
        socket = self._socket(index)
        if socket is not None:
            try:
                status, answer = socket.call(op, {"task_id": task_id, **body} if task_id else body)
            except SocketDown:
                pass
            else:
                if status in FAILOVER_STATUSES:
                    self._fail_over(index)
                if status >= 400:
                    raise _error(path, status, answer, protocol=self._protocols[index])
                return answer if isinstance(answer, dict) else {}
        return self._post(path, body)

    def _socket(self, index: int) -> WorkerSocket | None:
        if (self._protocols[index] or 1) < SOCKET_PROTOCOL:
            return None
        with self._lock:
            if self._sockets[index] is None:
                session = self._sessions[index]
                self._sockets[index] = WorkerSocket(
                    "ws" + self.base_urls[index].removeprefix("http") + API_PREFIX + SOCKET_PATH,
                    {name: session.headers[name] for name in ("Authorization", PROTOCOL_HEADER)},
                    timeout=self.timeout,
                    ca_bundle=session.verify if isinstance(session.verify, str) else None,
                )
            return self._sockets[index]

    def _fail_over(self, index: int) -> None:
        """Move on from URL ``index``, unless another call already did."""
        if len(self.base_urls) < 2:
            return
        with self._lock:
            if self._current != index:
                return
            self._current = (index + 1) % len(self.base_urls)
            following = self.base_urls[self._current]
        logger.warning("scheduler %s is not answering; switching to %s", self.base_urls[index], following)

    def _post(self, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        response = self._call(path, json=body if body is not None else {}, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            data = response.json()
        except ValueError as exc:
            raise SchedulerUnavailable(f"POST {path}: answer is not JSON", code="bad_response") from exc
        return data if isinstance(data, dict) else {}

    # -- the API --------------------------------------------------------------------------------------
    def register(self, *, name: str, prefetch: int, capabilities: dict[str, Any]) -> Registration:
        body = self._post("register", {"name": name, "prefetch": prefetch, "capabilities": capabilities})
        return Registration(
            worker_id=body.get("worker_id"),
            name=str(body.get("name") or name),
            status=str(body.get("status") or "idle"),
            heartbeat_interval=float(body.get("heartbeat_interval") or 5.0),
            lease_seconds=float(body.get("lease_seconds") or 30.0),
            object_info=_wanted(body),
        )

    def inventory(self, capabilities: dict[str, Any]) -> InventoryReply:
        """Send what this worker's ComfyUI has now (register's ``capabilities``)."""
        body = self._post("inventory", {"capabilities": capabilities})
        return InventoryReply(changed=bool(body.get("changed")), object_info=_wanted(body))

    def object_info(self, sha256: str, body: bytes) -> bool:
        """Send the JSON bytes of ComfyUI's ``/object_info`` (gzip-compressed) that ``sha256`` names; True
        when the scheduler stored them now, False when it had them already."""
        packed = gzip.compress(body, compresslevel=5, mtime=0)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        response = self._call(
            f"object_info/{sha256}", data=packed, headers=headers, timeout=max(self.timeout, 60.0)
        )
        try:
            return bool(response.json().get("stored"))
        except (ValueError, AttributeError):
            return False

    def heartbeat(
        self, leases: Iterable[tuple[str, str]], *, warm_checkpoint: str | None = None
    ) -> HeartbeatReply:
        tasks = [{"task_id": task_id, "lease_token": token} for task_id, token in leases]
        body = self._socket_post("heartbeat", "heartbeat", {"tasks": tasks, **_warm(warm_checkpoint)})
        return HeartbeatReply(
            worker_status=str(body.get("worker_status") or ""),
            renewed=[str(t) for t in body.get("renewed") or []],
            cancel=[str(t) for t in body.get("cancel") or []],
            lost=[str(t) for t in body.get("lost") or []],
        )

    def lease(
        self, *, wait: float = 20.0, prefetch: bool = False, warm_checkpoint: str | None = None
    ) -> LeasedTask | None:
        """Long-poll for a task for up to ``wait`` seconds; None when there is nothing to do (204).
        ``warm_checkpoint``: what this worker's ComfyUI has loaded, as far as it knows (None: unknown)."""
        wait = max(0.0, min(wait, 30.0))
        body = {"wait": wait, "prefetch": prefetch, **_warm(warm_checkpoint)}
        response = self._call("lease", json=body, timeout=wait + self.timeout)
        if response.status_code == 204 or not response.content:
            return None
        try:
            lease = LeasedTask.from_json(response.json())
        except ValueError as exc:
            raise SchedulerError("lease answer is not JSON", code="bad_response") from exc
        return replace(lease, waited=server_wait(response.headers.get("Server-Timing", "")))

    def start(self, task_id: str, lease_token: str, prompt_id: str) -> bool:
        """Mark the task running; returns True when the user already cancelled it."""
        body = self._socket_post(
            "start",
            f"tasks/{task_id}/start",
            {"lease_token": lease_token, "comfyui_prompt_id": prompt_id},
            task_id=task_id,
        )
        return bool(body.get("cancel"))

    def progress(self, task_id: str, lease_token: str, value: float, maximum: float) -> bool:
        """Report progress; returns True when the user cancelled the task."""
        body = self._socket_post(
            "progress",
            f"tasks/{task_id}/progress",
            {"lease_token": lease_token, "value": value, "max": maximum},
            task_id=task_id,
        )
        return bool(body.get("cancel"))

    def frames(self, task_id: str, lease_token: str, frames: list[list[Any]]) -> None:
        """Relay ComfyUI socket frames ``[type, data]`` of this task to its front-door client."""
        body = {"lease_token": lease_token, "frames": frames}
        self._socket_post("frames", f"tasks/{task_id}/frames", body, task_id=task_id)

    def input_image(self, task_id: str, lease_token: str, sha256: str) -> bytes:
        """The bytes of one of the task's uploaded input images (LeaseLost once the lease is not ours)."""
        response = self._call(f"tasks/{task_id}/inputs/{sha256}", json={"lease_token": lease_token})
        if hashlib.sha256(response.content).hexdigest() != sha256:
            raise SchedulerUnavailable(f"input {sha256[:12]}: the bytes do not match", code="bad_response")
        return response.content

    def complete(
        self,
        task_id: str,
        lease_token: str,
        images: Sequence[tuple[str, bytes] | tuple[str, bytes, str]],
        *,
        prompt_id: str | None = None,
        lease_next: bool | None = None,
    ) -> dict[str, Any]:
        """Upload the images (multipart ``images``, each optionally with the node id that saved it, sent as
        ``node_ids`` in the same order) and mark the task completed. Safe to retry.

        ``lease_next`` (the ``prefetch`` flag to lease with, or None) asks the scheduler to lease the next
        task in the same round trip; it comes back in the answer's ``next`` (see ``LeasedTask.carried``)."""
        if not images:
            raise ValueError("complete() needs at least one image")
        data = {"lease_token": lease_token}
        if prompt_id:
            data["comfyui_prompt_id"] = prompt_id
        if lease_next is not None:
            data["lease_next"] = "true"
            data["prefetch"] = "true" if lease_next else "false"
        files = [("images", (image[0], image[1], "image/png")) for image in images]
        node_ids = [image[2] if len(image) > 2 else "" for image in images]
        if any(node_ids):
            data = [*data.items(), *(("node_ids", node_id) for node_id in node_ids)]
        response = self._call(
            f"tasks/{task_id}/complete", data=data, files=files, timeout=max(self.timeout, 60.0)
        )
        try:
            return response.json()
        except ValueError:
            return {}

    def fail(
        self,
        task_id: str,
        lease_token: str,
        *,
        code: str,
        message: str,
        retryable: bool,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {
            "lease_token": lease_token,
            "code": code,
            "message": message[:2000],
            "retryable": retryable,
            "details": details or {},
        }
        return self._post(f"tasks/{task_id}/fail", body)

    def release(self, task_id: str, lease_token: str, *, reason: str = "shutdown") -> None:
        self._post(f"tasks/{task_id}/release", {"lease_token": lease_token, "reason": reason})

    def offline(self) -> None:
        self._post("offline", {})

    def probe(self, *, timeout: float = 2.0) -> str | None:
        """``GET /healthz`` of the current URL, without the token: None when it answers 200, else what
        went wrong (the worker's own ``/healthz``)."""
        index = self._current
        url = f"{self.base_urls[index]}/healthz"
        try:  # a header set to None is left out: the token goes to the worker API only
            response = self._sessions[index].get(url, timeout=timeout, headers={"Authorization": None})
        except requests.RequestException as exc:
            return f"unreachable ({type(exc).__name__})"
        if response.status_code != 200:
            return f"{url} answered {response.status_code}"
        return None


def _error_for(path: str, response: requests.Response) -> SchedulerError:
    """Map an error answer (``{"error", "detail", "fields"}``) to one exception type."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    return _error(path, response.status_code, body, reason=response.reason, protocol=_protocol_of(response))


def _error(path: str, status: int, body: Any, *, reason: str = "", protocol: int | None) -> SchedulerError:
    """An error answer's exception, from the HTTP call or the worker socket."""
    body = body if isinstance(body, dict) else {}
    code = str(body.get("error") or f"http_{status}")
    detail = str(body.get("detail") or reason or "")
    message = f"POST {path}: {status} {code}" + (f" ({detail})" if detail else "")
    kwargs = {"code": code, "status": status, "fields": body.get("fields")}
    if code == "protocol_unsupported" and status < 500:
        return ProtocolUnsupported(_protocol_message(protocol, detail), **kwargs)
    if status >= 500 or status == 429:
        return SchedulerUnavailable(message, **kwargs)
    if status == 401:
        return AuthError(message, **kwargs)
    if status == 403 and code == "worker_disabled":
        return WorkerDisabled(message, **kwargs)
    if status == 403:
        return AuthError(message, **kwargs)
    if status == 409 and code == "register_required":
        return RegisterRequired(message, **kwargs)
    if status == 409 or (status == 404 and path.startswith("tasks/")):
        return LeaseLost(message, **kwargs)
    return SchedulerError(message, **kwargs)


def _protocol_of(response: requests.Response) -> int | None:
    try:
        return int(response.headers.get(PROTOCOL_HEADER, ""))
    except ValueError:
        return None


def _protocol_message(theirs: int | None, detail: str) -> str:
    spoken = "another protocol" if theirs is None else f"protocol {theirs}"
    upgrade = "this worker" if theirs is not None and theirs > PROTOCOL_VERSION else "the scheduler"
    message = f"scheduler speaks {spoken}; this daemon needs {PROTOCOL_VERSION} — upgrade {upgrade} first"
    return message + (f" ({detail})" if detail else "")


def _wanted(body: dict[str, Any]) -> str | None:
    wanted = body.get("object_info")
    return wanted if wanted in ("have", "send") else None


def _warm(checkpoint: str | None) -> dict[str, str]:
    """The `warm_checkpoint` field, sent only when the worker knows it."""
    return {} if checkpoint is None else {"warm_checkpoint": checkpoint}


def _seconds(value: Any) -> float | None:
    """A lease answer's seconds: a non-negative number, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def server_wait(header: str) -> float:
    """Seconds of the `wait` metric in a Server-Timing header (`wait;dur=<ms>`): how long the scheduler held a
    lease request waiting for work; 0 when the header has none."""
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        if name != "wait":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    return max(0.0, float(value.strip().strip('"')) / 1000)
                except ValueError:
                    return 0.0
    return 0.0
