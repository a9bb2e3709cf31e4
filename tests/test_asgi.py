"""The ASGI handler (t2i_project.asgi): a synchronous view's request runs its middleware in Django's
synchronous mode, in one hop to its thread, with the answers Django's own handler gives."""

import asyncio
import json
import threading
from http import HTTPStatus

import pytest
from asgiref.sync import SyncToAsync
from django.core.handlers.asgi import ASGIHandler

from t2i_project.asgi import application, synchronous_view
from tests.conftest import make_worker, submit_task

TASK = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


def call(app, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""):
    """One HTTP request through an ASGI application: (status, headers, body)."""
    headers = {"host": "testserver", "content-length": str(len(body)), **(headers or {})}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
    }  # fmt: skip
    sent: list[dict] = []
    inbox: asyncio.Queue = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})

    async def receive():
        return await inbox.get()  # then nothing: the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return (
        start["status"],
        sorted((k.decode().lower(), v.decode()) for k, v in start["headers"]),
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


@pytest.mark.parametrize(
    ("path", "synchronous"),
    [
        ("/api/v1/worker/heartbeat", True),
        (f"/api/v1/worker/tasks/{TASK}/complete", True),
        ("/api/v1/tasks/", True),
        ("/healthz", True),
        ("/api/v1/worker/lease", True),  # the long poll's attempts; it waits between them
        ("/task", True),  # the seed's lease long poll
        (f"/api/v1/tasks/{TASK}/events", False),
        ("/static/img/favicon.svg", False),  # no view: servestatic, in Django's own path
        ("/no/such/page", False),
    ],
)
def test_which_paths_name_a_synchronous_view(path, synchronous):
    assert synchronous_view(path) is synchronous


def counted_hops(monkeypatch) -> list[str]:
    """The functions each `sync_to_async` hop runs, in order, from now on."""
    hops: list[str] = []
    hop = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await hop(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return hops


@pytest.mark.django_db(transaction=True)
def test_a_synchronous_views_request_makes_one_hop_to_its_thread(monkeypatch):
    """Three: Django's request_started signal, the middleware with the view, and closing the response. In
    Django's async mode each half of each synchronous middleware made one, so did the view and its
    rendering: 19 for this request."""
    _, token = make_worker()
    hops = counted_hops(monkeypatch)
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    status, _, body = call(application, "POST", "/api/v1/worker/heartbeat", auth, b"{}")
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["worker_status"] == "idle"
    assert hops == ["Signal.asend.<locals>.sync_send", "BaseHandler.get_response", "HttpResponseBase.close"]


@pytest.mark.django_db(transaction=True)
def test_a_synchronous_views_request_makes_no_thread_of_its_own(monkeypatch):
    """Requests off the shared thread (the REST API, completions, pages) run on threads kept for the
    process's life (a few at most); Django's own handler makes and joins a thread for each."""
    started = []
    start = threading.Thread.start

    def counted(self):
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    requests = 3 * application.kept_threads
    for _ in range(requests):
        assert call(application, "GET", "/api/v1/tasks/")[0] == HTTPStatus.UNAUTHORIZED
    assert len(started) < requests
    started.clear()
    for _ in range(requests):
        call(ASGIHandler(), "GET", "/api/v1/tasks/")
    assert len(started) >= requests


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("method", "path", "authorized"),
    [
        ("POST", "/api/v1/worker/heartbeat", False),  # 401, WWW-Authenticate
        ("POST", "/api/v1/worker/tasks/not-a-uuid/start", True),  # 404 from the URLconf
        ("POST", f"/api/v1/worker/tasks/{TASK}/progress", True),  # 400 naming the fields
        ("POST", "/api/v1/worker/heartbeat", True),  # 200
        ("GET", "/api/v1/tasks/", False),  # the REST API: 401
        ("GET", "/healthz", False),  # a plain function view
        ("GET", "/static/img/favicon.svg", False),  # servestatic
    ],
)
def test_the_answers_and_headers_are_djangos_own(method, path, authorized):
    """The same request through Django's own ASGI handler (every middleware in async mode) and ours."""
    _, token = make_worker()
    headers = {"content-type": "application/json"}
    if authorized:
        headers["authorization"] = f"Bearer {token}"
    ours = call(application, method, path, headers, b"{}" if method == "POST" else b"")
    django = call(ASGIHandler(), method, path, headers, b"{}" if method == "POST" else b"")
    assert ours[0] == django[0]
    # never_cache's Expires is the clock's second: its value may differ, never its presence
    assert [(k, "" if k == "expires" else v) for k, v in ours[1]] == [
        (k, "" if k == "expires" else v) for k, v in django[1]
    ]
    if (path.endswith("heartbeat") and authorized) or path == "/healthz":  # times and figures move
        assert json.loads(ours[2]).keys() == json.loads(django[2]).keys()
    else:
        assert ours[2] == django[2]


LEASE = "/api/v1/worker/lease"


def same_headers(ours: list, django: list, *, moving: tuple[str, ...] = ("expires",)) -> bool:
    """The same headers, with the same values but for those in `moving` (present in both all the same)."""

    def kept(headers: list) -> list:
        return [(k, "" if k in moving else v) for k, v in headers]

    return kept(ours) == kept(django)


def lease(app, token: str, body: dict) -> tuple:
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json", "t2i-protocol": "3"}
    return call(app, "POST", LEASE, auth, json.dumps(body).encode())


def in_a_thread(fn):
    """`fn()` on a thread of its own (an open wait), its result in the returned future."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def run():
        try:
            return fn()
        finally:
            connection.close()

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


def waiting_workers() -> list[int]:
    from workers_app import waiting

    return sorted(w.worker_id for w in waiting.room._waiters)


def eventually(condition) -> None:
    import time

    for _ in range(500):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.mark.django_db(transaction=True)
def test_a_lease_that_finds_work_makes_one_hop(monkeypatch):
    """The lease view's first attempt runs through the middleware in one hop, as a heartbeat does; in
    Django's async mode it took 19 (the long poll was an async view)."""
    _, token = make_worker()
    submit_task()
    hops = counted_hops(monkeypatch)
    status, _, body = lease(application, token, {})
    assert status == HTTPStatus.OK, body
    assert hops == ["Signal.asend.<locals>.sync_send", "step.<locals>.run", "HttpResponseBase.close"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("found", {}),  # 200 at once
        ("empty", {}),  # 204 at once (no wait asked)
        ("empty", {"wait": 0.2}),  # 204 once the wait ran out
        ("unknown token", {}),  # 401, WWW-Authenticate
        ("unregistered", {}),  # 409 register_required
        ("disabled", {"wait": 5}),  # 403 worker_disabled
        ("bad input", {"wait": "soon"}),  # 400 naming the field
        ("too many waits", {"wait": 3}),  # 429, while another wait of the worker is open
    ],
)
def test_the_lease_answers_and_headers_are_djangos_own(case, body):
    """POST lease through Django's own ASGI handler (the long poll as an async view, every middleware in
    async mode) and through ours (each attempt through the middleware in one hop, the wait between)."""
    from workers_app.models import Worker

    answers = []
    for app in (application, ASGIHandler()):
        worker, token = make_worker(f"gpu-{len(answers)}", register=case != "unregistered")
        if case == "found":
            submit_task()
        if case == "unknown token":
            token = "no-such-token"
        if case == "disabled":
            Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DISABLED)
        if case == "too many waits":
            Worker.objects.filter(pk=worker.pk).update(prefetch=1)
            first = in_a_thread(lambda t=token, a=app: lease(a, t, {"wait": 1}))
            eventually(lambda w=worker: waiting_workers() == [w.pk])
        answers.append(lease(app, token, body))
        if case == "too many waits":
            assert first.result(timeout=5)[0] == HTTPStatus.NO_CONTENT
    ours, django = answers
    assert ours[0] == django[0], (ours, django)
    assert same_headers(ours[1], django[1], moving=("content-length",)), (ours[1], django[1])
    if case == "found":
        assert json.loads(ours[2]).keys() == json.loads(django[2]).keys()
    else:
        assert ours[2] == django[2]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ["found", "offline"])
def test_the_lease_answers_after_a_wait_are_djangos_own(case):
    """A wait that a task ends (200), or the worker going offline (409 register_required), through both
    handlers: the answer comes from the lease view called again when the wait is woken."""
    from workers_app import services as worker_services

    answers = []
    for app in (application, ASGIHandler()):
        worker, token = make_worker(f"gpu-{len(answers)}")
        answer = in_a_thread(lambda t=token, a=app: lease(a, t, {"wait": 10}))
        eventually(lambda w=worker: waiting_workers() == [w.pk])
        if case == "found":
            submit_task()
        else:
            worker_services.worker_go_offline(worker=worker)
        answers.append(answer.result(timeout=5))
        assert waiting_workers() == []
    ours, django = answers
    assert ours[0] == django[0] == (HTTPStatus.OK if case == "found" else HTTPStatus.CONFLICT), ours
    # Both name how long they waited for work (Server-Timing), each its own wait.
    moving = ("content-length", "server-timing")
    assert same_headers(ours[1], django[1], moving=moving), (ours[1], django[1])
    assert "server-timing" in dict(ours[1])
    if case == "found":
        assert json.loads(ours[2]).keys() == json.loads(django[2]).keys()
    else:
        assert ours[2] == django[2]
