"""SchedulerClient against a tiny local HTTP server that answers as docs/worker-api.md says."""

from __future__ import annotations

import email
import logging
import socket
from http import HTTPStatus

import pytest

from tests.daemon.fakes import FakeSchedulerServer, png_bytes
from workers_app.daemon.scheduler import (
    PROTOCOL_VERSION,
    AuthError,
    LeasedTask,
    LeaseLost,
    ProtocolUnsupported,
    RegisterRequired,
    SchedulerClient,
    SchedulerError,
    SchedulerUnavailable,
    WorkerDisabled,
    server_wait,
)

TOKEN = "s3cret-worker-token"
TASK = "6f1c2d3e-0000-0000-0000-000000000001"


@pytest.fixture
def server():
    fake = FakeSchedulerServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(server):
    sched = SchedulerClient(server.url, TOKEN, timeout=2)
    yield sched
    sched.close()


def test_register_sends_token_and_capabilities(server, client):
    server.answers["register"] = [
        (
            200,
            {
                "worker_id": 3,
                "name": "gpu-01",
                "status": "idle",
                "heartbeat_interval": 2.5,
                "lease_seconds": 30,
            },
        )
    ]
    reg = client.register(name="gpu-01", prefetch=2, capabilities={"checkpoints": ["a"]})
    assert (reg.worker_id, reg.heartbeat_interval, reg.lease_seconds) == (3, 2.5, 30.0)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert server.json() == {"name": "gpu-01", "prefetch": 2, "capabilities": {"checkpoints": ["a"]}}


def test_heartbeat_carries_leases_and_returns_cancel_and_lost(server, client):
    server.answers["heartbeat"] = [
        (200, {"worker_status": "busy", "renewed": [TASK], "cancel": [TASK], "lost": []})
    ]
    reply = client.heartbeat([(TASK, "lt")])
    assert server.json() == {"tasks": [{"task_id": TASK, "lease_token": "lt"}]}
    assert reply.cancel == [TASK] and reply.lost == [] and reply.worker_status == "busy"


def test_lease_nothing_to_do(server, client):
    server.answers["lease"] = [(HTTPStatus.NO_CONTENT, None)]
    assert client.lease(wait=0, prefetch=True) is None
    assert server.json() == {"wait": 0, "prefetch": True}


def test_lease_returns_the_task(server, client):
    body = {
        "task_id": TASK,
        "lease_token": "lt",
        "attempt": 2,
        "workflow": {"1": {}},
        "width": 512,
        "batch_size": 1,
    }
    server.answers["lease"] = [(200, body)]
    lease = client.lease(wait=45)
    assert (lease.task_id, lease.lease_token, lease.attempt, lease.workflow) == (TASK, "lt", 2, {"1": {}})
    assert server.json()["wait"] == 30  # clamped to the API's 0..30
    assert "lt" not in repr(lease)


def test_a_lease_answer_tells_its_expected_seconds_and_how_long_it_waited(server, client):
    body = {"task_id": TASK, "lease_token": "lt", "workflow": {"1": {}}, "expected_seconds": 4.5}
    server.answers["lease"] = [(200, body), (200, {**body, "expected_seconds": None})]
    server.headers["lease"] = {"Server-Timing": "db;dur=2, wait;dur=1250.5"}
    lease = client.lease(wait=3, prefetch=True)
    assert (lease.expected_seconds, lease.waited) == (4.5, pytest.approx(1.2505))
    server.headers["lease"] = {}
    lease = client.lease(wait=3, prefetch=True)
    assert (lease.expected_seconds, lease.waited) == (None, 0.0)  # no learned costs; answered at once


@pytest.mark.parametrize(
    "header,seconds",
    [
        ("wait;dur=250", 0.25),
        ('wait;desc="long poll";dur="1500"', 1.5),
        ("cache;dur=3, wait ; dur = 40", 0.04),
        ("waiting;dur=250", 0.0),  # another metric
        ("wait", 0.0),  # no duration
        ("wait;dur=soon", 0.0),  # not a number
        ("wait;dur=-5", 0.0),
        ("", 0.0),
    ],
)
def test_the_wait_is_read_off_the_server_timing_header(header, seconds):
    assert server_wait(header) == pytest.approx(seconds)


def test_start_and_progress_return_the_cancel_flag(server, client):
    server.answers[f"tasks/{TASK}/start"] = [(200, {"cancel": False})]
    server.answers[f"tasks/{TASK}/progress"] = [(200, {"cancel": True})]
    assert client.start(TASK, "lt", "prompt-1") is False
    assert server.json() == {"lease_token": "lt", "comfyui_prompt_id": "prompt-1"}
    assert client.progress(TASK, "lt", 3, 20) is True
    assert server.json() == {"lease_token": "lt", "value": 3, "max": 20}


def test_complete_uploads_images_as_multipart(server, client):
    server.answers[f"tasks/{TASK}/complete"] = [(200, {"task_id": TASK, "status": "completed", "images": []})]
    image = png_bytes()
    assert (
        client.complete(TASK, "lt", [("a.png", image), ("b.png", image)], prompt_id="p1")["status"]
        == "completed"
    )
    request = server.requests[-1]
    message = email.message_from_bytes(
        f"Content-Type: {request['headers']['Content-Type']}\r\n\r\n".encode() + request["raw"]
    )
    parts = {
        (p.get_param("name", header="content-disposition"), p.get_filename()): p
        for p in message.get_payload()
    }
    assert parts[("lease_token", None)].get_payload() == "lt"
    assert parts[("comfyui_prompt_id", None)].get_payload() == "p1"
    assert parts[("images", "a.png")].get_payload(decode=True) == image
    assert ("images", "b.png") in parts


def test_complete_sends_each_images_node_id_in_order(server, client):
    server.answers[f"tasks/{TASK}/complete"] = [(200, {"task_id": TASK, "status": "completed", "images": []})]
    client.complete(TASK, "lt", [("a.png", png_bytes(), "9"), ("b.png", png_bytes(), "12")])
    request = server.requests[-1]
    message = email.message_from_bytes(
        f"Content-Type: {request['headers']['Content-Type']}\r\n\r\n".encode() + request["raw"]
    )
    node_ids = [
        p.get_payload()
        for p in message.get_payload()
        if p.get_param("name", header="content-disposition") == "node_ids"
    ]
    assert node_ids == ["9", "12"]


def test_complete_can_ask_for_the_next_lease(server, client):
    following = {"task_id": TASK, "lease_token": "next-lt", "workflow": {"1": {}}, "batch_size": 1}
    server.answers[f"tasks/{TASK}/complete"] = [(200, {"status": "completed", "next": following})] * 2
    answer = client.complete(TASK, "lt", [("a.png", png_bytes())], lease_next=True)
    fields = {
        p.get_param("name", header="content-disposition"): p.get_payload()
        for p in email.message_from_bytes(
            f"Content-Type: {server.requests[-1]['headers']['Content-Type']}\r\n\r\n".encode()
            + server.requests[-1]["raw"]
        ).get_payload()
    }
    assert (fields["lease_next"], fields["prefetch"]) == ("true", "true")
    carried = LeasedTask.carried(answer)
    assert (carried.task_id, carried.lease_token) == (TASK, "next-lt")
    assert LeasedTask.carried({"status": "completed", "next": None}) is None


def test_complete_refuses_to_send_no_images(client):
    with pytest.raises(ValueError):
        client.complete(TASK, "lt", [])


def test_fail_release_offline(server, client):
    client.fail(TASK, "lt", code="execution_error", message="boom", retryable=True, details={"node_id": "4"})
    assert server.json() == {
        "lease_token": "lt",
        "code": "execution_error",
        "message": "boom",
        "retryable": True,
        "details": {"node_id": "4"},
    }
    client.release(TASK, "lt", reason="shutdown")
    assert server.requests[-1]["path"] == f"tasks/{TASK}/release"
    assert server.json() == {"lease_token": "lt", "reason": "shutdown"}
    client.offline()
    assert server.requests[-1]["path"] == "offline"


@pytest.mark.parametrize(
    "status,error,exc_type",
    [
        (409, "lease_lost", LeaseLost),
        (409, "register_required", RegisterRequired),
        (401, "authentication_failed", AuthError),
        (403, "worker_disabled", WorkerDisabled),
        (503, "unavailable", SchedulerUnavailable),
        (507, "insufficient_storage", SchedulerUnavailable),  # full disk: the upload is retried later
        (429, "too_many_completions", SchedulerUnavailable),
        (500, None, SchedulerUnavailable),
        (400, "invalid", SchedulerError),
    ],
)
def test_errors_map_to_exceptions(server, client, status, error, exc_type):
    body = {"error": error, "detail": "words", "fields": {"value": ["bad"]}} if error else None
    server.answers[f"tasks/{TASK}/progress"] = [(status, body)]
    with pytest.raises(exc_type) as caught:
        client.progress(TASK, "lt", 1, 2)
    assert type(caught.value) is exc_type
    if error:
        assert caught.value.code == error


def test_connection_refused_is_retryable_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = SchedulerClient(f"http://127.0.0.1:{port}", TOKEN, timeout=1)
    with pytest.raises(SchedulerUnavailable) as caught:
        client.heartbeat([])
    assert caught.value.retryable


def test_token_is_never_logged_or_shown(server, client, caplog):
    caplog.set_level(logging.DEBUG)
    server.answers["lease"] = [(401, {"error": "authentication_failed", "detail": "bad token"})]
    with pytest.raises(AuthError) as caught:
        client.lease(wait=0)
    assert TOKEN not in repr(client) and TOKEN not in str(caught.value)
    assert TOKEN not in caplog.text


def test_every_request_carries_the_protocol_version(server, client):
    server.answers["lease"] = [(HTTPStatus.NO_CONTENT, None)]
    server.answers[f"tasks/{TASK}/complete"] = [(200, {"status": "completed"})]
    client.register(name="w", prefetch=1, capabilities={})
    client.heartbeat([])
    client.lease(wait=0)
    client.complete(TASK, "lt", [("a.png", png_bytes())])
    client.release(TASK, "lt")
    client.offline()
    assert PROTOCOL_VERSION == 3
    assert [r["headers"]["T2I-Protocol"] for r in server.requests] == ["3"] * 6


@pytest.mark.parametrize("header,expected", [("2", 2), ("3", 3), (None, None), ("two", None)])
def test_the_scheduler_protocol_is_read_from_its_answers(server, client, header, expected):
    server.protocol = header
    client.register(name="w", prefetch=1, capabilities={})
    assert client.server_protocol == expected


@pytest.mark.parametrize(
    "header,words",
    [
        ("2", "scheduler speaks protocol 2; this daemon needs 3 — upgrade the scheduler first"),
        ("4", "scheduler speaks protocol 4; this daemon needs 3 — upgrade this worker first"),
        (None, "scheduler speaks another protocol; this daemon needs 3 — upgrade the scheduler first"),
    ],
)
def test_protocol_unsupported_is_a_fatal_error_that_names_both_versions(server, client, header, words):
    server.protocol = header
    server.answers["register"] = [
        (400, {"error": "protocol_unsupported", "detail": "not '3'", "fields": {"T2I-Protocol": ["?"]}})
    ]
    with pytest.raises(ProtocolUnsupported) as caught:
        client.register(name="w", prefetch=1, capabilities={})
    assert caught.value.message == f"{words} (not '3')"
    assert not caught.value.retryable and caught.value.code == "protocol_unsupported"


def test_probe_gets_healthz_without_the_token_and_says_what_went_wrong(server, client):
    assert client.probe() is None
    assert server.requests[-1]["path"] == "/healthz"
    assert "Authorization" not in server.requests[-1]["headers"]
    server.answers["/healthz"] = [(503, {"status": "error"})]
    assert client.probe() == f"{server.url}/healthz answered 503"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert (
        SchedulerClient(f"http://127.0.0.1:{port}", TOKEN).probe(timeout=1) == "unreachable (ConnectionError)"
    )
