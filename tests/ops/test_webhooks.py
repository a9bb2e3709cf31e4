"""Callbacks: signed with HMAC-SHA256 over the raw body, recorded, retried with exponential backoff.

A real HTTP server on 127.0.0.1 receives them; nothing leaves the machine.
"""

import json
import socket
import threading
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from generation import webhooks
from generation.models import Task, WebhookDelivery
from tests.factories import TaskFactory
from tests.ops.conftest import run

pytestmark = pytest.mark.django_db

SECRET = "test-webhook-secret"


class Receiver:
    """A local HTTP server that records each POST and answers with the next queued status code."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"nope")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _webhook_settings(settings, monkeypatch):
    settings.T2I = {
        **settings.T2I,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_MAX_TRIES": 3,
        "WEBHOOK_BACKOFF": 60.0,
        "WEBHOOK_TIMEOUT": 5.0,
        "PUBLIC_URL": "http://farm.example",
        "WEBHOOK_ALLOW_NETWORKS": ["127.0.0.0/8"],  # the test receiver
    }
    queued: list = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: queued.append(args))
    return queued


def finished_task_with_callback(worker, url, capture, *, complete=True) -> Task:
    TaskFactory(callback_url=url)
    with capture(execute=True):
        return run(worker, complete=complete)


def test_signature_is_hmac_sha256_over_the_raw_body():
    body = b'{"event":"task.completed"}'
    header = webhooks.signature(body, "s3cret")
    assert header == "sha256=" + __import__("hmac").new(b"s3cret", body, "sha256").hexdigest()
    assert webhooks.signature_is_valid(body, "s3cret", header)
    assert not webhooks.signature_is_valid(body + b" ", "s3cret", header)
    assert not webhooks.signature_is_valid(body, "other", header)


def test_completed_task_records_a_delivery_and_queues_a_try(
    worker, receiver, django_capture_on_commit_callbacks, _webhook_settings
):
    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(task=task)
    assert delivery.event == "task.completed" and delivery.url == receiver.url
    assert delivery.next_try_at is not None and delivery.attempts == 0
    assert _webhook_settings == [("generation.webhooks.webhook_deliver", delivery.pk)]
    body = delivery.payload["task"]
    assert body["id"] == str(task.public_id) and body["status"] == "completed"
    assert body["images"][0]["url"].startswith("http://farm.example/media/images/")
    assert body["images"][0]["thumbnail_url"].endswith(".thumb.jpg")


def test_delivery_is_signed_and_recorded(worker, receiver, django_capture_on_commit_callbacks):
    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(task=task)
    assert webhooks.webhook_deliver(delivery.pk) is True
    [(headers, body)] = receiver.requests
    assert webhooks.signature_is_valid(body, SECRET, headers["X-T2I-Signature"])
    assert headers["Content-Type"] == "application/json"
    assert headers["X-T2I-Event"] == "task.completed" and headers["X-T2I-Delivery"] == str(delivery.pk)
    assert json.loads(body) == delivery.payload
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None and delivery.next_try_at is None
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (1, 200, "")
    assert webhooks.webhook_deliver(delivery.pk) is False  # delivered: never sent twice
    assert len(receiver.requests) == 1


def test_a_second_hook_run_records_no_second_delivery(worker, receiver, django_capture_on_commit_callbacks):
    from generation.hooks import task_finished

    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    task_finished(task.pk)
    assert WebhookDelivery.objects.filter(task=task).count() == 1


def test_failed_task_sends_task_failed(worker, receiver, django_capture_on_commit_callbacks):
    task = finished_task_with_callback(
        worker, receiver.url, django_capture_on_commit_callbacks, complete=False
    )
    delivery = WebhookDelivery.objects.get(task=task)
    assert delivery.event == "task.failed"
    assert delivery.payload["task"]["error"]["code"] == "comfyui_error"


def test_failures_back_off_exponentially_then_give_up(worker, receiver, django_capture_on_commit_callbacks):
    receiver.statuses = [500, 503, 502]
    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(task=task)

    assert webhooks.webhook_deliver(delivery.pk) is False
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_status_code) == (1, 500)
    assert "HTTP 500" in delivery.last_error
    wait = delivery.next_try_at - delivery.last_tried_at
    assert wait == timedelta(seconds=60)
    # Not due yet: the job leaves it alone.
    assert webhooks.webhooks_deliver_due() == 0 and len(receiver.requests) == 1

    later = delivery.next_try_at + timedelta(seconds=1)
    assert webhooks.webhooks_deliver_due(now=later) == 0
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.last_status_code == 503
    assert delivery.next_try_at - delivery.last_tried_at == timedelta(seconds=120)

    webhooks.webhooks_deliver_due(now=delivery.next_try_at + timedelta(seconds=1))
    delivery.refresh_from_db()
    assert delivery.attempts == 3 and delivery.next_try_at is None and delivery.state == "gave up"
    assert len(receiver.requests) == 3
    # Every try sends the same bytes.
    assert len({body for _, body in receiver.requests}) == 1


def test_unreachable_receiver_is_retried(worker, django_capture_on_commit_callbacks):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    task = finished_task_with_callback(
        worker, f"http://127.0.0.1:{port}/hook", django_capture_on_commit_callbacks
    )
    delivery = WebhookDelivery.objects.get(task=task)
    assert webhooks.webhook_deliver(delivery.pk) is False
    delivery.refresh_from_db()
    assert delivery.last_status_code is None and "ConnectionError" in delivery.last_error
    assert delivery.next_try_at is not None


def test_a_claimed_try_is_not_sent_twice(worker, receiver, django_capture_on_commit_callbacks):
    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(task=task)
    # Another process claimed it: next_try_at moved into the future.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_try_at=timezone.now() + timedelta(seconds=60))
    assert webhooks.webhook_deliver(delivery.pk) is False
    assert receiver.requests == []


def test_without_a_secret_nothing_is_sent(worker, receiver, settings, django_capture_on_commit_callbacks):
    settings.T2I = {**settings.T2I, "WEBHOOK_SECRET": ""}
    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get(task=task)
    assert webhooks.webhook_deliver(delivery.pk) is False
    delivery.refresh_from_db()
    assert delivery.state == "gave up" and "T2I_WEBHOOK_SECRET" in delivery.last_error
    assert receiver.requests == []


def test_no_callback_no_delivery(worker, django_capture_on_commit_callbacks):
    TaskFactory()
    with django_capture_on_commit_callbacks(execute=True):
        run(worker)
    assert not WebhookDelivery.objects.exists()


def test_a_broken_broker_does_not_break_the_hook(
    worker, receiver, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("django_q.tasks.async_task", broken)
    task = finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    assert task.status == Task.Status.COMPLETED
    assert webhooks.webhooks_deliver_due() == 1  # the job sends it instead
    assert len(receiver.requests) == 1


def test_submit_api_stores_http_callback_urls(api, worker):
    body = {"prompt": "a fox", "width": 64, "height": 64, "callback_url": "https://hooks.example/t2i"}
    response = api.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert Task.objects.get(public_id=response.json()["id"]).callback_url == "https://hooks.example/t2i"


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "javascript:alert(1)", "not a url"])
def test_submit_api_refuses_other_callback_urls(api, worker, url):
    body = {"prompt": "a fox", "width": 64, "height": 64, "callback_url": url}
    response = api.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "callback_url" in json.dumps(response.json())
    assert not Task.objects.exists()


# --- Where a callback may go (nothing is sent to check a refusal) ----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.1.20/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://224.0.0.1/hook",
        "http://0.0.0.0/hook",
        "http://user:secret@hooks.example/hook",
    ],
)
def test_submit_refuses_callbacks_into_the_farms_own_network(api, worker, settings, url):
    settings.T2I = {**settings.T2I, "WEBHOOK_ALLOW_NETWORKS": []}
    body = {"prompt": "a fox", "width": 64, "height": 64, "callback_url": url}
    response = api.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.json()
    assert list(response.json()["fields"]) == ["callback_url"]
    assert not Task.objects.exists()


def test_an_allowed_lan_network_may_receive_callbacks(api, worker, settings):
    settings.T2I = {**settings.T2I, "WEBHOOK_ALLOW_NETWORKS": ["192.168.1.0/24"]}
    body = {"prompt": "a fox", "width": 64, "height": 64, "callback_url": "http://192.168.1.20/hook"}
    assert api.post("/api/v1/tasks/", body, format="json").status_code == HTTPStatus.CREATED
    body["callback_url"] = "http://192.168.2.20/hook"
    assert api.post("/api/v1/tasks/", body, format="json").status_code == HTTPStatus.BAD_REQUEST


def test_a_name_that_resolves_into_the_farm_is_refused_at_send_time(
    worker, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """The host passed the submit check (a name), then resolves to the metadata address: nothing is sent."""
    settings.T2I = {**settings.T2I, "WEBHOOK_ALLOW_NETWORKS": []}
    resolved = []

    def fake_getaddrinfo(host, port, *args, **kwargs):
        resolved.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    def no_request(*args, **kwargs):
        raise AssertionError("a request was made")

    monkeypatch.setattr("generation.callback_targets.socket.getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(webhooks, "_post", no_request)
    finished_task_with_callback(worker, "http://hooks.example/t2i", django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    assert webhooks.webhook_deliver(delivery.pk) is False
    delivery.refresh_from_db()
    assert resolved == ["hooks.example"]
    assert delivery.next_try_at is None and delivery.delivered_at is None  # given up, not retried
    assert delivery.last_error.startswith("Not sent: hooks.example resolves to 169.254.169.254")


def test_the_request_goes_to_the_address_that_was_checked(
    worker, receiver, monkeypatch, django_capture_on_commit_callbacks
):
    """A name resolved once: the connection is made to that address, with the URL's host in Host."""
    port = receiver.server.server_address[1]
    calls = []

    def fake_getaddrinfo(host, port_, *args, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port_))]

    monkeypatch.setattr("generation.callback_targets.socket.getaddrinfo", fake_getaddrinfo)
    url = f"http://hooks.example:{port}/hook"
    finished_task_with_callback(worker, url, django_capture_on_commit_callbacks)
    assert webhooks.webhook_deliver(WebhookDelivery.objects.get().pk) is True
    # The name once, then the connection made to the address that was checked.
    assert calls == ["hooks.example", "127.0.0.1"]
    assert receiver.requests[0][0]["Host"] == f"hooks.example:{port}"


def test_a_receivers_reply_body_is_never_stored(worker, receiver, django_capture_on_commit_callbacks):
    receiver.statuses = [500]  # its reply body says "nope"
    finished_task_with_callback(worker, receiver.url, django_capture_on_commit_callbacks)
    assert webhooks.webhook_deliver(WebhookDelivery.objects.get().pk) is False
    delivery = WebhookDelivery.objects.get()
    assert delivery.last_error == "HTTP 500"
