"""The daemon's side of the worker socket (workers_app.daemon.worker_socket) and SchedulerClient's use of
it: calls go on the socket when the scheduler speaks protocol 3, with the HTTP call's errors, and over HTTP
whenever the socket cannot carry them."""

from __future__ import annotations

import json

import pytest
import websocket

from tests.daemon.fakes import FakeSchedulerServer
from workers_app.daemon.scheduler import LeaseLost, SchedulerClient, WorkerDisabled
from workers_app.daemon.worker_socket import IDLE_SECONDS, RETRY_SECONDS, SocketDown, WorkerSocket

TASK = "6f1c2d3e-0000-0000-0000-000000000001"


class FakeWebSocket:
    """Answers each call with ``status`` and the call echoed; ``fail_next`` makes the next send raise."""

    def __init__(self, opened: list[FakeWebSocket], status: int = 200) -> None:
        self.sent: list[dict] = []
        self.answers: list[str] = []
        self.status = status
        self.fail_next = False
        self.closed = False
        opened.append(self)

    def send(self, text: str) -> None:
        if self.fail_next:
            raise BrokenPipeError("the server closed it")
        message = json.loads(text)
        self.sent.append(message)
        self.answers.append(
            json.dumps({"id": message["id"], "status": self.status, "body": {"echo": message}})
        )

    def recv(self) -> str:
        return self.answers.pop(0)

    def close(self, timeout: float = 0) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def opened() -> list[FakeWebSocket]:
    return []


def make_socket(opened, clock, *, refuse: bool = False) -> tuple[WorkerSocket, list[dict]]:
    connects: list[dict] = []

    def connect(url, **kwargs):
        connects.append({"url": url, **kwargs})
        if refuse:
            raise websocket.WebSocketBadStatusException("Handshake status %d %s", 403, "Forbidden")
        return FakeWebSocket(opened)

    sock = WorkerSocket(
        "ws://127.0.0.1:1/api/v1/worker/socket",
        {"Authorization": "Bearer tok", "T2I-Protocol": "3"},
        timeout=2,
        connect=connect,
        clock=clock,
    )
    return sock, connects


def test_calls_share_one_connection_and_get_their_own_answers(opened):
    sock, connects = make_socket(opened, Clock())
    assert sock.call("progress", {"task_id": TASK, "value": 1}) == (
        200,
        {"echo": {"id": 1, "op": "progress", "task_id": TASK, "value": 1}},
    )
    status, body = sock.call("heartbeat", {"tasks": []})
    assert (status, body["echo"]["id"], body["echo"]["op"]) == (200, 2, "heartbeat")
    assert len(connects) == 1 and len(opened) == 1
    assert connects[0]["header"] == ["Authorization: Bearer tok", "T2I-Protocol: 3"]


def test_a_socket_idle_too_long_is_opened_afresh(opened):
    clock = Clock()
    sock, connects = make_socket(opened, clock)
    sock.call("heartbeat", {})
    clock.now += IDLE_SECONDS + 1
    sock.call("heartbeat", {})
    assert len(connects) == 2 and opened[0].closed


def test_a_socket_the_server_closed_is_reopened_once_and_the_call_goes_through(opened):
    sock, connects = make_socket(opened, Clock())
    sock.call("heartbeat", {})
    opened[0].fail_next = True
    assert sock.call("progress", {"value": 2})[0] == 200
    assert len(connects) == 2 and opened[1].sent[0]["op"] == "progress"


def test_a_refused_socket_sends_calls_over_http_until_it_is_tried_again(opened):
    clock = Clock()
    sock, connects = make_socket(opened, clock, refuse=True)
    with pytest.raises(SocketDown):
        sock.call("heartbeat", {})
    with pytest.raises(SocketDown):
        sock.call("heartbeat", {})
    assert len(connects) == 1  # not tried again meanwhile
    clock.now += RETRY_SECONDS + 1
    with pytest.raises(SocketDown):
        sock.call("heartbeat", {})
    assert len(connects) == 2


def test_reports_and_heartbeats_go_on_the_socket_once_the_scheduler_speaks_protocol_3(opened):
    server = FakeSchedulerServer(protocol="3").start()
    connects = []

    def connect(url, **kwargs):
        connects.append(url)
        return FakeWebSocket(opened)

    client = SchedulerClient(server.url, "tok", timeout=2)
    try:
        client.register(name="w", prefetch=2, capabilities={})
        client._sockets[0] = WorkerSocket(
            client._socket(0).url, {"Authorization": "Bearer tok"}, timeout=2, connect=connect
        )
        client.start(TASK, "lt", "p-1")
        client.progress(TASK, "lt", 3, 20)
        client.heartbeat([(TASK, "lt")])
        client.frames(TASK, "lt", [["executing", {"node": "3"}]])
    finally:
        client.close()
        server.stop()
    assert server.paths() == ["register"]  # nothing else over HTTP
    assert connects == [server.url.replace("http://", "ws://") + "/api/v1/worker/socket"]
    assert [(m["op"], m.get("task_id")) for m in opened[0].sent] == [
        ("start", TASK),
        ("progress", TASK),
        ("heartbeat", None),
        ("frames", TASK),
    ]
    assert opened[0].sent[1] == {
        "id": 2,
        "op": "progress",
        "task_id": TASK,
        "lease_token": "lt",
        "value": 3,
        "max": 20,
    }


@pytest.mark.parametrize(
    "status,body,error",
    [
        (409, {"error": "lease_lost", "detail": "x"}, LeaseLost),
        (403, {"error": "worker_disabled"}, WorkerDisabled),
    ],
)
def test_a_socket_error_answer_raises_what_the_http_answer_raises(opened, status, body, error):
    server = FakeSchedulerServer(protocol="3").start()

    class Refusing(FakeWebSocket):
        def recv(self) -> str:
            message = self.sent[-1]
            return json.dumps({"id": message["id"], "status": status, "body": body})

    client = SchedulerClient(server.url, "tok", timeout=2)
    try:
        client.register(name="w", prefetch=2, capabilities={})
        client._sockets[0] = WorkerSocket("ws://x", {}, timeout=2, connect=lambda url, **kw: Refusing(opened))
        with pytest.raises(error):
            client.progress(TASK, "lt", 1, 2)
    finally:
        client.close()
        server.stop()
    assert server.paths() == ["register"]


def test_without_a_socket_the_calls_go_over_http():
    server = FakeSchedulerServer(protocol="3").start()  # it answers the handshake like any GET: not a socket
    client = SchedulerClient(server.url, "tok", timeout=2)
    try:
        client.register(name="w", prefetch=2, capabilities={})
        server.answers[f"tasks/{TASK}/progress"] = [(200, {"cancel": True})]
        assert client.progress(TASK, "lt", 1, 2) is True
        client.heartbeat([])
    finally:
        client.close()
        server.stop()
    assert server.paths() == ["register", "socket", f"tasks/{TASK}/progress", "heartbeat"]


def test_a_protocol_2_scheduler_gets_http_only():
    server = FakeSchedulerServer(protocol="2").start()
    client = SchedulerClient(server.url, "tok", timeout=2)
    try:
        client.register(name="w", prefetch=2, capabilities={})
        client.progress(TASK, "lt", 1, 2)
    finally:
        client.close()
        server.stop()
    assert server.paths() == ["register", f"tasks/{TASK}/progress"]
