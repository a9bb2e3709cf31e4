"""SchedulerClient with several scheduler URLs: sticky, and on to the next one when an instance fails."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
import requests

from tests.daemon.fakes import DROP, FakeComfy, FakeSchedulerServer, make_lease, png_bytes, wait_until
from workers_app.daemon.runner import RunnerSettings, TaskResult, run_task
from workers_app.daemon.scheduler import SchedulerClient, SchedulerError, SchedulerUnavailable

TOKEN = "s3cret-worker-token"
TASK = make_lease(1).task_id


def closed_port_url() -> str:
    """A URL on which nothing listens: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def servers() -> Iterator[list[FakeSchedulerServer]]:
    fakes = [FakeSchedulerServer().start(), FakeSchedulerServer().start()]
    yield fakes
    for fake in fakes:
        fake.stop()


def client_for(*urls: str, **kwargs: Any) -> SchedulerClient:
    kwargs.setdefault("timeout", 2)
    return SchedulerClient(",".join(urls), TOKEN, **kwargs)


def test_a_refused_connection_sends_the_following_calls_to_the_next_url(servers, caplog):
    caplog.set_level(logging.DEBUG, logger="workers_app.daemon")
    second = servers[1]
    second.answers["lease"] = [(200, make_lease(1).raw)]
    second.answers[f"tasks/{TASK}/complete"] = [(200, {"status": "completed"})]
    dead = closed_port_url()
    client = client_for(dead, second.url)
    with pytest.raises(SchedulerUnavailable):
        client.heartbeat([])  # the call that found the first URL down still fails: the caller retries it
    assert client.base_url == second.url
    client.register(name="w", prefetch=1, capabilities={})
    client.heartbeat([])
    assert client.lease(wait=0).task_id == TASK
    client.complete(TASK, "lt", [("a.png", png_bytes())])
    assert second.paths() == ["register", "heartbeat", "lease", f"tasks/{TASK}/complete"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"scheduler {dead} is not answering; switching to {second.url}"]
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    "status,moves",
    [(502, True), (503, True), (504, True), (500, False), (429, False), (409, False), (400, False)],
)
def test_gateway_and_unavailable_answers_move_on_other_errors_do_not(servers, status, moves):
    first, second = servers
    first.answers["heartbeat"] = [(status, {"error": "x", "detail": "", "fields": {}}), (200, {})]
    client = client_for(first.url, second.url)
    with pytest.raises(SchedulerError):
        client.heartbeat([])
    client.heartbeat([])
    assert (len(second.requests), client.base_url) == ((1, second.url) if moves else (0, first.url))


def test_a_timeout_moves_on():
    second = FakeSchedulerServer().start()
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        client = client_for(f"http://127.0.0.1:{silent.getsockname()[1]}", second.url, timeout=0.2)
        with pytest.raises(SchedulerUnavailable) as caught:
            client.heartbeat([])
    client.heartbeat([])
    second.stop()
    assert "Timeout" in caught.value.message and second.paths() == ["heartbeat"]


def test_after_the_last_url_the_first_is_tried_again(servers):
    first = servers[0]
    first.answers["heartbeat"] = [(503, {"error": "unavailable"}), (200, {})]
    dead = closed_port_url()
    client = client_for(first.url, dead)
    for _ in range(2):  # the first answers 503, then the second refuses
        with pytest.raises(SchedulerUnavailable):
            client.heartbeat([])
    assert client.heartbeat([]).worker_status == ""
    assert client.base_url == first.url and first.paths() == ["heartbeat", "heartbeat"]


def test_a_single_url_stays_put_and_logs_no_switch(servers, caplog):
    caplog.set_level(logging.WARNING, logger="workers_app.daemon")
    first = servers[0]
    first.answers["lease"] = [(503, {"error": "unavailable"}), (HTTPStatus.NO_CONTENT, None)]
    client = client_for(first.url)
    with pytest.raises(SchedulerUnavailable):
        client.lease(wait=0)
    assert client.lease(wait=0) is None
    assert client.base_urls == (first.url,) and first.paths() == ["lease", "lease"]
    assert not caplog.records


class ScriptedSession(requests.Session):
    """Fails every call to a.test and b.test (the first call to a.test only once ``hang_up`` is set), and
    answers 200 ``{}`` anywhere else."""

    def __init__(self) -> None:
        super().__init__()
        self.hang_up = threading.Event()
        self.urls: list[str] = []

    def post(self, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.urls.append(url)
        if url.startswith("http://a.test") and len(self.urls) == 1:
            self.hang_up.wait(5)
        if url.startswith(("http://a.test", "http://b.test")):
            raise requests.ConnectionError("connection reset")
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        return response


def test_a_late_failure_from_a_url_already_left_does_not_move_back():
    """A long call on a.test fails only after other calls have moved on to b.test and then c.test."""
    session = ScriptedSession()
    client = client_for("http://a.test", "http://b.test", "http://c.test", session=session)
    errors: list[Exception] = []

    def long_call() -> None:
        try:
            client.lease(wait=20)
        except SchedulerUnavailable as exc:
            errors.append(exc)

    thread = threading.Thread(target=long_call)
    thread.start()
    assert wait_until(lambda: len(session.urls) == 1)
    for _ in range(2):  # a.test fails, then b.test
        with pytest.raises(SchedulerUnavailable):
            client.heartbeat([])
    assert client.base_url == "http://c.test"
    session.hang_up.set()
    thread.join(5)
    assert len(errors) == 1 and client.base_url == "http://c.test"
    client.heartbeat([])
    assert session.urls[-1] == "http://c.test/api/v1/worker/heartbeat"


def test_an_interrupted_completion_is_retried_on_the_next_url_once(servers):
    """The first instance takes the upload and hangs up (it may have committed): the runner's retry goes to
    the second with the same lease token, where the scheduler's idempotent completion answers 200."""
    first, second = servers
    lease = make_lease(1)
    complete = f"tasks/{lease.task_id}/complete"
    first.answers[complete] = [(DROP, None)]
    second.answers[complete] = [(200, {"task_id": lease.task_id, "status": "completed", "next": None})]
    client = client_for(first.url, second.url)
    comfy = FakeComfy(auto_finish=False)
    results = []
    settings = RunnerSettings(sleep=lambda s: None)
    thread = threading.Thread(
        target=lambda: results.append(run_task(lease, comfy=comfy, scheduler=client, settings=settings))
    )
    thread.start()
    assert wait_until(lambda: first.paths() == [f"tasks/{lease.task_id}/start"])  # sent while ComfyUI runs
    comfy.finish("p1")
    thread.join(5)
    assert results == [TaskResult.COMPLETED]
    assert first.paths() == [f"tasks/{lease.task_id}/start", complete]
    assert second.paths() == [complete]
    tokens = [r["raw"].count(lease.lease_token.encode()) for r in (first.requests[-1], second.requests[0])]
    assert tokens == [1, 1]
