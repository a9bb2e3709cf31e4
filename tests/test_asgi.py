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
from tests.conftest import make_worker

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
        ("/api/v1/worker/lease", False),  # the long poll: a coroutine
        ("/task", False),
        (f"/api/v1/tasks/{TASK}/events", False),
        ("/static/img/favicon.svg", False),  # no view: servestatic, in Django's own path
        ("/no/such/page", False),
    ],
)
def test_which_paths_name_a_synchronous_view(path, synchronous):
    assert synchronous_view(path) is synchronous


@pytest.mark.django_db(transaction=True)
def test_a_synchronous_views_request_makes_one_hop_to_its_thread(monkeypatch):
    """Three: Django's request_started signal, the middleware with the view, and closing the response. In
    Django's async mode each half of each synchronous middleware made one, so did the view and its
    rendering: 19 for this request."""
    _, token = make_worker()
    hops = []
    hop = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await hop(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
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
