"""A slow webhook receiver delays only its own deliveries (SECURITY.md, "Callbacks"): short timeouts, one try
per receiver at once across job processes, slow receivers kept off the job processes' immediate tries, and
the webhooks job sending each receiver's deliveries in a thread of its own.

Receivers are HTTP servers on 127.0.0.1; the slow one holds each request 3 s at most."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache
from django.utils import timezone

from generation import webhooks
from generation.cache_slots import slot_claim, slot_free
from generation.models import WebhookDelivery
from tests.factories import TaskFactory

pytestmark = pytest.mark.django_db(transaction=True)  # the job's sender threads use their own connections

HOLD_SECONDS = 3.0  # the slow receiver's delay before it answers
TIMEOUT = 0.5  # T2I_WEBHOOK_TIMEOUT in these tests


class Receiver:
    def __init__(self, delay: float = 0.0) -> None:
        self.hits: list[float] = []
        self.stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hits.append(time.monotonic())
                receiver.stop.wait(delay)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow():
    server = Receiver(delay=HOLD_SECONDS)
    yield server
    server.close()


@pytest.fixture
def fast():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _settings(settings, monkeypatch):
    settings.T2I = settings.T2I | {
        "WEBHOOK_SECRET": "s3cret",
        "WEBHOOK_TIMEOUT": TIMEOUT,
        "WEBHOOK_ALLOW_NETWORKS": ["127.0.0.0/8"],
        "WEBHOOK_PER_RECEIVER": 1,
        "WEBHOOK_SENDERS": 8,
    }
    queued: list = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: queued.append(args))
    yield queued
    cache.clear()  # committed here (not rolled back): no receiver stays marked slow for later tests


def due_delivery(url: str, *, age: int = 0) -> WebhookDelivery:
    task = TaskFactory(callback_url=url, status="completed", finished_at=timezone.now())
    return WebhookDelivery.objects.create(
        task=task,
        url=url,
        event="task.completed",
        payload={"event": "task.completed"},
        next_try_at=timezone.now() - timezone.timedelta(seconds=age),
    )


def test_the_webhooks_job_is_not_held_up_by_a_slow_receiver(slow, fast):
    """Five due deliveries to a slow receiver (older, so first in line) and one to a quick one: the quick
    one lands at once, the slow receiver costs one timeout, not five, and its others wait."""
    stuck = [due_delivery(slow.url, age=60 - n) for n in range(5)]
    quick = due_delivery(fast.url)
    started = time.monotonic()
    assert webhooks.webhooks_deliver_due() == 1
    took = time.monotonic() - started

    assert fast.hits and fast.hits[0] - started < TIMEOUT, fast.hits[0] - started
    quick.refresh_from_db()
    assert quick.delivered_at is not None
    assert len(slow.hits) == 1  # its round ended at the first timeout
    assert took < 3 * TIMEOUT, took  # about one timeout (five in a row before)
    tried = WebhookDelivery.objects.filter(pk__in=[d.pk for d in stuck], attempts=1)
    assert tried.count() == 1 and "Timeout" in tried.get().last_error
    assert WebhookDelivery.objects.filter(pk__in=[d.pk for d in stuck], attempts=0).count() == 4


def test_a_receiver_busy_with_one_try_makes_the_next_wait_without_holding_a_process(slow):
    delivery = due_delivery(slow.url)
    held = slot_claim(f"webhook:{webhooks.receiver_of(slow.url)}", limit=1, seconds=60)
    try:
        started = time.monotonic()
        assert webhooks.webhook_deliver(delivery.pk) is False
        assert time.monotonic() - started < 0.5 and slow.hits == []
    finally:
        slot_free(held)
    delivery.refresh_from_db()
    assert delivery.attempts == 0 and delivery.next_try_at <= timezone.now()  # due again, nothing counted


def test_a_receiver_that_timed_out_skips_the_immediate_try_of_its_next_deliveries(slow, fast, _settings):
    first = due_delivery(slow.url)
    started = time.monotonic()
    assert webhooks.webhook_deliver(first.pk) is False
    assert time.monotonic() - started < TIMEOUT + 1.0  # the read timeout, not the receiver's 3 s
    assert webhooks.receiver_is_slow(webhooks.receiver_of(slow.url))

    webhooks._try_soon(due_delivery(slow.url).pk, slow.url)
    webhooks._try_soon(quick := due_delivery(fast.url).pk, fast.url)
    assert _settings == [("generation.webhooks.webhook_deliver", quick)]  # the slow one waits for the job


def test_a_receiver_is_its_scheme_host_and_port():
    assert webhooks.receiver_of("https://Hooks.Example.com/a?b") == "https://hooks.example.com:443"
    assert webhooks.receiver_of("http://10.0.0.5:8080/x") == "http://10.0.0.5:8080"
